"""Start-up import budget of `sbx run -- /bin/true`: which modules the run path imports and
what they cost (python -X importtime), against the bare interpreter's own start-up imports.

    python bench/imports.py [--runs 30] [--list]

Prints the module counts (all, and sbx's own), the median summed import time of each, and
the ratio.  A benchmark, not a test: it asserts nothing.  The architecture issue's rule is
that the run path's budget must not grow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

RUN = ("import gc, os, sys; gc.disable(); sys.argv = ['sbx', 'run', '--', '/bin/true']; "
       "from sandbox.cli.main import main; code = main(); "
       "os.write(2, ('supervisor-modules: ' + ' '.join(sorted(sys.modules)) + '\\n').encode()); os._exit(code)")
RUN_OLD = RUN.replace("sandbox.cli.main", "sandbox.cli")  # before the restructure


SUPERVISOR: list[str] = []  # the modules the sbx process itself holds at the end (not its children's)


def importtime(code: str) -> list[tuple[str, int]]:
    """(module, self microseconds) for each import the code made, its forked children's included
    (they inherit -X importtime: the sandbox's entry process imports what init needs)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, check=False)
    out = []
    for line in done.stderr.splitlines():
        if line.startswith("supervisor-modules: "):
            SUPERVISOR[:] = line.split()[1:]
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        fields = line[len("import time:"):].split("|")
        out.append((fields[2].strip(), int(fields[0])))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--list", action="store_true", help="print the run path's modules")
    args = parser.parse_args()
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, here)
    code = RUN if os.path.isdir(os.path.join(here, "sandbox", "cli")) else RUN_OLD
    bare, run = [], []
    for _ in range(args.runs):
        bare.append(importtime("pass"))
        run.append(importtime(code))
    modules = [name for name, _ in run[-1]]
    ours = [name for name in modules if name.split(".")[0] == "sandbox"]
    bare_us = statistics.median(sum(us for _, us in r) for r in bare)
    run_us = statistics.median(sum(us for _, us in r) for r in run)
    ours_us = statistics.median(sum(us for name, us in r if name.split(".")[0] == "sandbox") for r in run)
    print(f"bare interpreter: {len(bare[-1])} modules, {bare_us / 1000:.2f} ms")
    print(f"sbx run -- /bin/true: {len(modules)} modules ({len(ours)} of sbx), {run_us / 1000:.2f} ms "
          f"({ours_us / 1000:.2f} ms in sbx's own); ratio to bare {run_us / bare_us:.2f}x")
    if SUPERVISOR:
        mine = [name for name in SUPERVISOR if name.split(".")[0] == "sandbox"]
        print(f"  of which the supervisor process itself holds {len(mine)} sbx modules; the rest are imported "
              "by the sandbox's entry process")
    if args.list:
        for name in ours:
            print("  " + name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
