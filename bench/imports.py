"""Start-up import budget of `sbx run -- /bin/true`: which modules the run path imports and
what they cost (python -X importtime), against the bare interpreter's own start-up imports.

    python bench/imports.py [--runs 30] [--list] [--instructions]

Prints the module counts (all, and sbx's own), the median summed import time of each, and
the ratio.  --instructions adds the CPU instructions of importing the same modules in the same
order (valgrind's callgrind, PYTHONHASHSEED=0): one figure that a loaded machine does not
move, for comparing two trees.  A benchmark, not a test: it asserts nothing.  The
architecture issue's rule is that the run path's budget must not grow.
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


def instructions(modules: list[str], here: str) -> int:
    """Instructions callgrind counts for importing `modules` in order, less the bare interpreter's."""
    def count(names: list[str]) -> int:
        code = f"import gc, importlib; gc.disable()\nfor m in {names!r}: importlib.import_module(m)"
        done = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                               "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=True,
                              env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": here})
        return int(done.stderr.split("Collected : ")[1].split()[0])

    return count(modules) - count([])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--list", action="store_true", help="print the run path's modules")
    parser.add_argument("--instructions", action="store_true", help="also count instructions (needs valgrind)")
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
    if args.instructions:
        # From the first of sbx's own: what the interpreter's start-up imported is not the run path's.
        start = next(i for i, name in enumerate(modules) if name.split(".")[0] == "sandbox")
        print(f"  importing those {len(modules) - start} modules: "
              f"{instructions(modules[start:], here) / 1e6:.2f} M instructions (callgrind)")
    if args.list:
        for name in ours:
            print("  " + name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
