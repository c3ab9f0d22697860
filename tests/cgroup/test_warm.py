"""Warm runs (sandbox.Runner, `sbx batch`) with a delegated cgroup v2 subtree (see conftest.py).

A warm Runner builds sandboxes ahead of their runs, but each run must still
get a fresh run cgroup, created when the run starts and removed when it
ends, so its figures and limits are its own: a big run before a small one
must not show in the small one's figures, and a killed run must not leave
its cgroup (or its OOM count) to the next.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Runner

from .test_run_limits import PROBE, deleg, run_cgroups, work  # noqa: F401  (deleg and work: fixtures)

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


@pytest.fixture
def runner(work: Path, deleg: str) -> Iterator[Runner]:
    with Runner(options=["-v", f"{work}/bin:/probe:ro"]) as r:
        yield r
    assert run_cgroups(deleg) == []


def test_each_warm_run_has_its_own_cgroup_and_figures(runner: Runner, deleg: str) -> None:
    big = runner.run([PROBE, "hog", "96"], limits={"memory": "256M"})
    assert big.verdict == "OK" and big.memory_peak >= 96 * MiB, big
    assert dict(big.limits_enforced) == {"memory": True}, big
    assert run_cgroups(deleg) == []  # removed as the run ended, not when the Runner closes
    small = runner.run(["/bin/true"], limits={"memory": "256M"})
    assert small.verdict == "OK" and 0 < small.memory_peak < 16 * MiB, small
    busy = runner.run([PROBE, "forkbusy", "2", "0.3"])
    assert busy.verdict == "OK" and busy.cpu_time >= 0.6 and (busy.pids_peak or 0) >= 3, busy
    after = runner.run(["/bin/true"])
    assert after.cpu_time < 0.3 and (after.pids_peak or 0) <= 2, after


def test_mle_and_tle_do_not_carry_over(runner: Runner) -> None:
    mle = runner.run([PROBE, "hog", "200"], limits={"memory": "64M"})
    assert mle.verdict == "MLE" and mle.oom_killed, mle
    ok = runner.run([PROBE, "hog", "16"], limits={"memory": "64M"})
    assert ok.verdict == "OK" and not ok.oom_killed, ok
    tle = runner.run([PROBE, "busy"], limits={"time": 0.5})
    assert tle.verdict == "TLE" and 0.5 <= tle.cpu_time < 0.6, tle
    ok = runner.run([PROBE, "spin", "0.1"], limits={"time": 0.5})
    assert ok.verdict == "OK" and ok.cpu_time < 0.5, ok


def test_threads_share_a_runner(runner: Runner) -> None:
    """Two threads, each its own runs and cgroups: figures stay apart."""
    from concurrent.futures import ThreadPoolExecutor

    def one(seconds: float) -> float:
        result = runner.run([PROBE, "spin", str(seconds)], limits={"memory": "64M"})
        assert result.verdict == "OK", result
        return result.cpu_time

    with ThreadPoolExecutor(2) as pool:
        short, long = pool.map(one, [0.1, 0.4])
    assert 0.1 <= short < 0.3 and 0.4 <= long < 0.6, (short, long)


def test_batch_enforces_limits_on_every_line(work: Path, deleg: str, tmp_path: Path) -> None:
    lines = [
        {"argv": [PROBE, "hog", "200"], "limits": {"memory": "64M"}, "options": ["-v", f"{work}/bin:/probe:ro"]},
        {"argv": [PROBE, "spin", "0.2"], "limits": {"memory": "64M"}, "options": ["-v", f"{work}/bin:/probe:ro"]},
        {"argv": [PROBE, "busy"], "limits": {"time": 0.3}, "options": ["-v", f"{work}/bin:/probe:ro"]},
    ]
    source = tmp_path / "jobs.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = subprocess.run([sys.executable, "-m", "sandbox", "batch", "-j", "2", str(source)], capture_output=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert [r["line"] for r in results] == [1, 2, 3]
    assert [r["verdict"] for r in results] == ["MLE", "OK", "TLE"], results
    assert results[0]["limits_enforced"] == {"memory": True}, results[0]
    assert run_cgroups(deleg) == []
