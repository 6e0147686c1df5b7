#!/usr/bin/env python3
"""Atomic read-modify-write instructions executed, per function, from a callgrind profile.

Callgrind counts instructions, and an atomic read-modify-write (a `lock`-prefixed instruction, or
`xchg` with a memory operand: every reference count taken or dropped, every mutex locked or
unlocked) counts as one, although on the benchmark machine it costs tens of cycles. This script
counts them, so that a change to how many a message takes is measured as repeatably as its
instructions are.

    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file=cg.out \\
        ./cim-integrate-bench --only dispatch --quick --dispatch-rounds 1 \\
        --dispatch-rows mem1 --dispatch-side ours
    python3 cim-integrate-bench/tools/atomics.py cg.out "$PWD/cim-integrate-bench" 40000

Arguments: the callgrind file, the objects to read (absolute paths, as callgrind names them;
libc is added), and the number of events to divide by (default 1).
"""
import collections
import re
import subprocess
import sys

from callgrind import executions

LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"


def atomic_addresses(path):
    """Addresses of the atomic read-modify-write instructions of `path` (objdump)."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True).stdout
    found = set()
    for line in out.split("\n"):
        m = re.match(r"\s+([0-9a-f]+):\s+(.*)", line)
        if m and (m.group(2).startswith("lock ") or (m.group(2).startswith("xchg") and "(" in m.group(2))):
            found.add(int(m.group(1), 16))
    return found


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    profile, objects = sys.argv[1], sys.argv[2:]
    events = 1.0
    if objects and re.fullmatch(r"[0-9.]+", objects[-1]):
        events = float(objects.pop())
    counts, function = executions(profile)
    for obj in objects + [LIBC]:
        atomic = atomic_addresses(obj)
        per = collections.Counter()
        for (o, address), n in counts.items():
            if o == obj and address in atomic:
                per[function[(o, address)]] += n
        total = sum(per.values())
        print(f"{obj}: {total} atomic read-modify-writes ({total / events:.1f} per event)")
        for f, n in per.most_common(40):
            if n / events >= 0.05:
                print(f"  {n / events:6.2f}  {f}")


if __name__ == "__main__":
    main()
