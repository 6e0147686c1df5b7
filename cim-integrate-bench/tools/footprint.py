#!/usr/bin/env python3
"""The hot code footprint of one thread, per function, from a callgrind profile.

A message's path through the service runs mostly once per message, not in loops, so what it
costs depends on how much code it runs as much as on how many instructions: code that does not
fit the level-1 instruction cache (32 KiB per core on the benchmark machine, 8-way: 512 lines of
64 bytes; `lscpu` prints both cores' caches added up) is fetched again for every message. This
script counts the distinct 64-byte lines of code whose instructions ran at least `min` times (with
`min` the number of messages: the lines every message runs), per function, so that a change to
the footprint is measured as repeatably as the instructions are.

    valgrind --tool=callgrind --dump-instr=yes --separate-threads=yes --callgrind-out-file=cg.out \\
        ./cim-integrate-bench --only dispatch --quick --dispatch-rounds 1 \\
        --dispatch-rows mem1 --dispatch-side ours
    python3 cim-integrate-bench/tools/footprint.py cg.out-03 40000

Arguments: the callgrind file of one thread (`--separate-threads=yes` writes `cg.out-01` for the
`block_on` thread, where the benchmark publishes, and one per worker; the draining worker's is
the largest), the number of executions that makes an instruction hot (default 1), and how many
functions to list (default 30). Per function: its hot lines, its hot instructions, and the span
of lines from its first hot instruction to its last (hot code spread among cold code spans more
lines than it fills).
"""
import collections
import sys

from callgrind import executions


def hot_code(path, at_least):
    """function -> set of (object, address) of its instructions executed at least `at_least`
    times (addresses are per object: the binary's and libc's may be equal)."""
    counts, function = executions(path)
    hot = collections.defaultdict(set)
    for place, n in counts.items():
        if n >= at_least:
            hot[function[place]].add(place)
    return hot


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    path = sys.argv[1]
    at_least = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    hot = hot_code(path, at_least)
    lines = {f: {(obj, a >> 6) for obj, a in places} for f, places in hot.items()}
    every_line = set().union(*lines.values()) if lines else set()
    instructions = sum(len(p) for p in hot.values())
    print(f"hot: {len(every_line)} lines ({len(every_line) * 64} bytes), {instructions} instructions")
    print(f"{'lines':>6} {'instr':>6} {'span':>6}  function")
    for f in sorted(lines, key=lambda f: -len(lines[f]))[:top]:
        first, last = min(a for _, a in hot[f]), max(a for _, a in hot[f])
        span = (last >> 6) - (first >> 6) + 1
        print(f"{len(lines[f]):6d} {len(hot[f]):6d} {span:6d}  {(f or '?')[:120]}")


if __name__ == "__main__":
    main()
