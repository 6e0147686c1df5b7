#!/usr/bin/env python3
"""Runs test binaries side by side, a few at a time, and reports as `cargo test` does.

Usage: side_by_side.py JOBS BUILD_JSON

BUILD_JSON is the output of `cargo test --no-run --message-format=json-render-diagnostics`:
every test executable in it is run from its package's directory (as `cargo test` runs it),
JOBS at a time, the slowest known first. Each binary's output is printed whole when it ends,
under cargo's own `Running` line, so logs read (and are counted) as cargo's. Exits 1 if any
binary failed, naming each with the command that reruns it.

Why: the NATS test binaries spend most of their time waiting for leader elections, kills
and timeouts (a three-node cluster test uses under a quarter of a core); one after another,
as `cargo test` runs them, they took about ten minutes of CI.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

# Slowest first (seconds on a 2-vCPU machine): the longest start at once, the short ones fill
# in around them.
SLOWEST = [
    "cluster_nats",  # 105: one three-node cluster at a time, nodes killed and restarted
    "nats_supercluster",  # 90
    "examples_cluster_nats",  # 80
    "nats_leafnode",  # 65
    "nats_conformance",  # 45
    "nats_prefixed",  # 45
    "nats_faults",  # 22
]


def binaries(build_json):
    """(name, package directory, executable) of every test target in the build output."""
    found = []
    with open(build_json, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            msg = json.loads(line)
            if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
                continue
            if not msg.get("profile", {}).get("test"):
                continue
            target = msg["target"]
            name = target["name"] if "test" in target["kind"] else "unittests"
            found.append((name, os.path.dirname(msg["manifest_path"]), msg["executable"]))
    rank = {n: i for i, n in enumerate(SLOWEST)}
    found.sort(key=lambda b: rank.get(b[0], len(SLOWEST)))
    return found


def main():
    jobs, build_json = int(sys.argv[1]), sys.argv[2]
    queue = binaries(build_json)
    if not queue:
        sys.exit("side_by_side: no test executables in " + build_json)
    print(f"{len(queue)} test binaries, {jobs} at a time", flush=True)
    started = time.monotonic()
    running, failed = [], []
    while queue or running:
        while queue and len(running) < jobs:
            name, cwd, exe = queue.pop(0)
            out = tempfile.TemporaryFile()
            env = dict(os.environ, CARGO_MANIFEST_DIR=cwd)
            proc = subprocess.Popen([exe], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
            running.append((name, cwd, exe, proc, out, time.monotonic()))
        time.sleep(0.2)
        for entry in list(running):
            name, cwd, exe, proc, out, began = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            out.seek(0)
            took = time.monotonic() - began
            rel = os.path.relpath(exe)
            print(f"     Running {name} ({rel}) [{took:.0f} s, ended at {time.monotonic() - started:.0f} s]")
            sys.stdout.write(out.read().decode("utf-8", "replace"))
            sys.stdout.flush()
            if proc.returncode != 0:
                failed.append(f"(cd {cwd} && {exe})  # exit {proc.returncode}")
    print(f"all test binaries in {time.monotonic() - started:.0f} s")
    if failed:
        print("failed; to rerun:\n  " + "\n  ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
