#!/usr/bin/env python3
"""Accuracy and cost of sbx's limits and figures, on whichever path this host gives.

    python bench/limits.py [--runs 20] [--time 1.0]

With a delegated cgroup v2 subtree (the test VM: tests/vm/run_stage.py -- PY
bench/limits.py) it measures the cgroup path, and the degraded path too by
running sbx from a `*.scope` cgroup that systemd did not mark delegated (sbx
then finds no delegation).  Without one (this hybrid host) it measures the
degraded path only.  Figures:

1. CPU-limit overshoot: `--time T` on a busy loop, cpu_time - T, median and
   max over --runs runs.
2. CPU-time accuracy: a loop that spins for ~1 s of its own CPU time and
   prints its own getrusage; sbx's cpu_time against that figure (calibrated
   first outside sbx, against the kernel's wait4 rusage), and against the
   loop's CPU from its main() on.  Between the two lies what the process used
   before main: sbx's set-up in the payload before exec, which the degraded
   path counts and the cgroup path does not (the run cgroup starts at the
   payload's ready message), then the command's exec and dynamic loading,
   which both count.  Where sbx-waiter is built, the payload's set-up ends
   with its exec, which tears down the payload's copy of sbx's interpreter
   before the ready message; without it that teardown is part of the
   command's exec.  On this host's degraded path all of it is ~4 ms; on the
   VM's emulated CPU ~30 ms of set-up and ~45-70 ms of exec and loading.
3. Peak-memory accuracy: a program touching exactly 100 MiB; memory_peak
   (cgroup: memory.peak; degraded: ru_maxrss) - 100 MiB.
4. Per-run overhead: `sbx run -- true` wall time, cgroup vs degraded path.

The payload is tests/cgroup/probe.c, compiled here with gcc.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox.cgroup.discover import LEAF, Delegation, discover  # noqa: E402
from sandbox.cgroup.runcg import RunCgroup, remove_stale, run_name  # noqa: E402

MiB = 1 << 20


class Bench:
    def __init__(self, work: Path, delegation: str | None) -> None:
        self.work = work
        self.probe = "/probe/probe"
        self.delegation = delegation
        self.degraded_scope: str | None = None
        self.env = dict(os.environ, PYTHONPATH=str(REPO))
        self.count = 0

    def prefix(self, degraded: bool) -> tuple[str, ...]:
        """Start sbx in a cgroup: the delegation's leaf (cgroup path) or an undelegated scope (degraded)."""
        if self.delegation is None:
            return ()
        target = self.degraded_scope if degraded else os.path.join(self.delegation, LEAF)
        return ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(target))

    def run(self, *args: str, degraded: bool = False) -> tuple[dict[str, object], str, float]:
        """One `sbx run`: (result, stdout, wall seconds of the whole sbx process)."""
        self.count += 1
        result_file = self.work / f"r{self.count}.json"
        argv = [*self.prefix(degraded), sys.executable, "-m", "sandbox", "run", "--result", str(result_file),
                "-v", f"{self.work}/bin:/probe:ro", *args]
        t0 = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env, timeout=300)
        wall = time.perf_counter() - t0
        try:
            result = json.loads(result_file.read_text())
        except (OSError, ValueError):
            raise SystemExit(f"bench: no result from {argv}: exit {proc.returncode}, {proc.stderr}") from None
        result_file.unlink()
        return result, proc.stdout, wall


def fnum(value: object) -> float:
    assert isinstance(value, (int, float)), value
    return float(value)


def ms(x: float) -> str:
    return f"{x * 1000:8.2f} ms"


def overshoot(b: Bench, runs: int, limit: float, degraded: bool) -> None:
    overs = []
    verdicts = set()
    for _ in range(runs):
        r, _out, _wall = b.run("--time", str(limit), "--", b.probe, "busy", degraded=degraded)
        verdicts.add(str(r["verdict"]))
        overs.append(fnum(r["cpu_time"]) - limit)
    print(f"  CPU-limit overshoot (--time {limit}, busy loop, {runs} runs): median {ms(statistics.median(overs))}, "
          f"max {ms(max(overs))}, min {ms(min(overs))}; verdicts {sorted(verdicts)}")


def spin_rusage(out: str) -> tuple[float, float]:
    """probe spin's figures: its whole getrusage, and that less what it had used when main began."""
    _, user, system, start_user, start_system = out.split()
    own = float(user) + float(system)
    return own, own - float(start_user) - float(start_system)


def cpu_accuracy(b: Bench, runs: int, degraded: bool) -> None:
    whole: list[tuple[float, float]] = []
    from_main: list[tuple[float, float]] = []
    for _ in range(runs):
        r, out, _wall = b.run("--", b.probe, "spin", "1.0", degraded=degraded)
        own, loop = spin_rusage(out)
        whole.append((fnum(r["cpu_time"]) - own, own))
        from_main.append((fnum(r["cpu_time"]) - loop, loop))
    for what, diffs in (("the payload's own getrusage", whole), ("the loop's CPU from main() on", from_main)):
        rel = [d / own for d, own in diffs]
        print(f"  CPU time vs {what} (~1 s loop, {runs} runs): "
              f"median {ms(statistics.median(d for d, _ in diffs))} ({statistics.median(rel) * 100:+.2f}%), "
              f"max |diff| {ms(max(abs(d) for d, _ in diffs))} ({max(abs(x) for x in rel) * 100:.2f}%)")


def memory_accuracy(b: Bench, runs: int, degraded: bool) -> None:
    diffs = []
    for _ in range(runs):
        r, out, _wall = b.run("--memory", "512M", "--", b.probe, "hog", "100", degraded=degraded)
        assert out.startswith("touched"), (r, out)
        diffs.append(fnum(r["memory_peak"]) - 100 * MiB)
    source = "ru_maxrss" if degraded or b.delegation is None else "memory.peak"
    print(f"  peak memory - 100 MiB touched ({source}, {runs} runs): median "
          f"{statistics.median(diffs) / MiB:+.2f} MiB, max {max(diffs) / MiB:+.2f} MiB, min {min(diffs) / MiB:+.2f} MiB")


def overhead(b: Bench, runs: int) -> None:
    """`sbx run -- true`, alternating paths so drift hits both alike."""
    paths = [False, True] if b.delegation is not None else [True]
    walls: dict[bool, list[float]] = {p: [] for p in paths}
    for _ in range(runs):
        for degraded in paths:
            _r, _out, wall = b.run("--memory", "64M", "--", "true", degraded=degraded)
            walls[degraded].append(wall)
    for degraded in paths:
        w = walls[degraded]
        print(f"  sbx run -- true, {'degraded' if degraded else 'cgroup  '} path ({runs} runs): "
              f"median {ms(statistics.median(w))}, min {ms(min(w))}")
    if len(paths) == 2:
        print(f"  cgroup path costs {ms(statistics.median(walls[False]) - statistics.median(walls[True]))} "
              "more per run (median)")


def cgroup_ops(d: Delegation, runs: int) -> None:
    """The cgroup path's own steps, in process: what sbx adds per run with a delegation."""
    from sandbox.model.spec import Limits

    spent = []
    for i in range(runs):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(r, 1)
            os._exit(0)
        t0 = time.perf_counter()
        remove_stale(d)
        run = RunCgroup.create(d, Limits(memory=64 * MiB, pids=64), run_name(os.getpid(), i))
        run.add(pid)
        run.stats()
        t1 = time.perf_counter()
        os.write(w, b"x")
        os.waitpid(pid, 0)
        t2 = time.perf_counter()
        run.stats()
        run.remove()
        spent.append(t1 - t0 + time.perf_counter() - t2)
        os.close(r)
        os.close(w)
    print(f"  cgroup steps alone (remove_stale, create with memory+pids, add, 2x stats, remove; {runs} runs): "
          f"median {ms(statistics.median(spent))}, min {ms(min(spent))}")


def calibrate(b: Bench) -> None:
    """The loop outside sbx: its own getrusage against the kernel's wait4 figure."""
    proc = subprocess.Popen([str(b.work / "bin" / "probe"), "spin", "1.0"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _pid, _status, ru = os.wait4(proc.pid, 0)
    own, _loop = spin_rusage(out)
    kernel = ru.ru_utime + ru.ru_stime
    print(f"  calibration outside sbx: the loop's own getrusage {own:.6f} s, wait4 rusage {kernel:.6f} s "
          f"(diff {ms(kernel - own)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs for the overshoot figure (default 20)")
    parser.add_argument("--small-runs", type=int, default=5, help="runs for the other figures (default 5)")
    parser.add_argument("--time", type=float, default=1.0, help="CPU limit for the overshoot figure (default 1.0)")
    args = parser.parse_args()

    d = discover(None, os.environ)
    base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-", dir=base))
    work.chmod(0o755)
    (work / "bin").mkdir()
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(work / "bin" / "probe"),
                    str(REPO / "tests" / "cgroup" / "probe.c")], check=True)
    b = Bench(work, None if d is None else d.path)
    try:
        if d is not None:
            b.degraded_scope = os.path.join(d.path, "sbx-bench-degraded.scope")  # no user.delegate: not ours
            os.mkdir(b.degraded_scope)
        print(f"sbx limits bench: kernel {os.uname().release}, {os.cpu_count()} cpus, "
              f"{'delegation ' + d.path + ' (' + ' '.join(d.controllers) + ')' if d else 'no cgroup v2 delegation'}")
        calibrate(b)
        for degraded in ([False, True] if d is not None else [True]):
            print(f"{'degraded' if degraded else 'cgroup'} path:")
            overshoot(b, args.runs, args.time, degraded)
            cpu_accuracy(b, args.small_runs, degraded)
            memory_accuracy(b, args.small_runs, degraded)
        print("overhead:")
        overhead(b, max(args.small_runs, 10))
        if d is not None:
            cgroup_ops(d, args.runs)
    finally:
        if b.degraded_scope is not None:
            os.rmdir(b.degraded_scope)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
