"""sbx-isolate's cost per judge step: `--init` + `--run -- /bin/true` + `--cleanup`, and `--run` alone.

Measured against bubblewrap running /bin/true with the same view (bench/perrun.py's
bwrap_argv), in the same run, alternating so drift hits all alike; isolate itself needs root
and a cgroup set-up, so its figure is the reference's (judges.md §1.11, DESIGN.md "Start-up
budget": 7.3 ms for the three steps, 3.3 ms for --run, as root on these 2-core machines),
quoted beside ours rather than measured.  Prints medians and ratios.

    python bench/isolate.py [--runs 100] [--isolate PATH]

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from perrun import bwrap_argv  # noqa: E402

ISOLATE_THREE_MS = 7.3  # isolate --init + --run + --cleanup, as root (the reference's figure)
ISOLATE_RUN_MS = 3.3    # isolate --run alone


def isolate_command(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    beside = os.path.join(os.path.dirname(sys.executable), "sbx-isolate")
    if os.access(beside, os.X_OK):
        return [beside]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [sys.executable, os.path.join(repo, "bin", "sbx-isolate")]


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--isolate", help="the sbx-isolate command (default: beside this Python, else the checkout's)")
    args = parser.parse_args()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("bubblewrap is not installed (Debian package 'bubblewrap')", file=sys.stderr)
        return 1
    tool = isolate_command(args.isolate)
    root = tempfile.mkdtemp(prefix="sbx-isolate-bench-")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "SBX_ISOLATE_ROOT": root, "PYTHONPATH": repo}
    init, cleanup = [*tool, "-b", "1", "--init"], [*tool, "-b", "1", "--cleanup"]
    steps = {"--init": init, "--run": [*tool, "-b", "1", "-s", "--run", "--", "/bin/true"], "--cleanup": cleanup}
    run_alone = [*tool, "-b", "0", "-s", "--run", "--", "/bin/true"]
    bwrap_true = bwrap_argv(bwrap)
    times: dict[str, list[float]] = {"three steps": [], "--run alone": [], "bwrap": [], **{k: [] for k in steps}}
    try:
        run([*tool, "-b", "0", "--init"], env)
        run(run_alone, env)  # warm the page cache
        run(bwrap_true, env)
        for _ in range(args.runs):
            total = 0.0
            for name, argv in steps.items():
                spent = run(argv, env)
                times[name].append(spent)
                total += spent
            times["three steps"].append(total)
            times["--run alone"].append(run(run_alone, env))
            times["bwrap"].append(run(bwrap_true, env))
        run([*tool, "-b", "0", "--cleanup"], env)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    median = {name: statistics.median(samples) * 1000 for name, samples in times.items()}
    print(f"sbx-isolate, median of {args.runs} alternating rounds, uid {os.getuid()}")
    for name, value in median.items():
        print(f"  {name:14} {value:7.2f} ms")
    print(f"  --init+--run+--cleanup / bwrap  {median['three steps'] / median['bwrap']:6.2f}x; "
          f"/ isolate's {ISOLATE_THREE_MS} ms (reference, not measured here) "
          f"{median['three steps'] / ISOLATE_THREE_MS:6.2f}x")
    print(f"  --run alone / bwrap             {median['--run alone'] / median['bwrap']:6.2f}x; "
          f"/ isolate's {ISOLATE_RUN_MS} ms (reference) {median['--run alone'] / ISOLATE_RUN_MS:6.2f}x")
    print(f"  command: {' '.join(tool)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
