"""`sbx run` end to end with a delegated cgroup v2 subtree (see conftest.py).

Every test runs the real CLI and reads its --result JSON: each verdict, the
limits the run cgroup enforces (memory, tmpfs pages, pids, cpu.max, io.max,
CPU time of the whole tree), output and wall limits, and that no run cgroup
is left behind, killed runs included.  The payloads are small C programs
(tests/cgroup/probe.c, compiled once per session): Python starts ~35x slower
in the test VM and would blur the figures.  Each test is one or two runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroup.diagnose import diagnose
from sandbox.cgroup.discover import LEAF, discover
from sandbox.cgroup.iodev import devices_behind

REPO = Path(__file__).resolve().parents[2]
PROBE_C = Path(__file__).resolve().parent / "probe.c"
MiB = 1 << 20
# Slack for figures measured under emulation (the VM runs without KVM).
TLE_OVERSHOOT = 0.1


@pytest.fixture(scope="module")
def deleg() -> str:
    d = discover(None, os.environ)
    assert d is not None, f"no delegated cgroup v2 subtree; diagnose: {diagnose(os.environ)}"
    for ctrl in ("cpu", "memory", "pids"):
        assert ctrl in d.controllers, d
    return d.path


def _scratch_dir() -> str:
    """Disk-backed scratch (the VM's /var/tmp is a loop-mounted ext4), else the default."""
    base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
    return tempfile.mkdtemp(prefix="sbx-limits-", dir=base)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    path = Path(_scratch_dir())
    path.chmod(0o755)
    (path / "bin").mkdir()
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(path / "bin" / "probe"), str(PROBE_C)], check=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_cgroups(path: str) -> list[str]:
    """Run cgroups (sbx-*) anywhere below `path`."""
    found = []
    for top, dirs, _files in os.walk(path):
        found += [os.path.join(top, d) for d in dirs if d.startswith("sbx-") and d != LEAF]
    return found


@pytest.fixture(autouse=True)
def no_cgroup_left(deleg: str) -> Iterator[None]:
    yield
    assert run_cgroups(deleg) == []


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[bytes], result: dict[str, object], meta: dict[str, str]):
        self.proc = proc
        self.result = result
        self.meta = meta
        self.stderr = proc.stderr.decode(errors="replace")

    def __getitem__(self, key: str) -> object:
        return self.result[key]

    def num(self, key: str) -> float:
        value = self.result[key]
        assert isinstance(value, (int, float)), (key, self.result)
        return float(value)

    def __repr__(self) -> str:
        return f"exit {self.proc.returncode}, {self.result}, stderr {self.stderr!r}"


def sbx(work: Path, *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = (),
        timeout: float = 180) -> Run:
    """`sbx run --result R --meta M -v WORK/bin:/probe:ro ARGS...`; the probe is /probe/probe inside."""
    fd, result_file = tempfile.mkstemp(dir=work, suffix=".json")
    os.close(fd)
    meta_file = result_file[:-5] + ".meta"
    full_env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO))
    argv = [*prefix, sys.executable, "-m", "sandbox", "run", "--result", result_file, "--meta", meta_file,
            "-v", f"{work}/bin:/probe:ro", *args]
    proc = subprocess.run(argv, capture_output=True, timeout=timeout, env=full_env)
    with open(result_file) as f:
        text = f.read()
    assert text, f"no result written: exit {proc.returncode}, stderr {proc.stderr!r}"
    meta = {}
    with open(meta_file) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition(":")
            meta[key] = value
    return Run(proc, json.loads(text), meta)


PROBE = "/probe/probe"


def test_ok_figures_and_cpu_sum(work: Path) -> None:
    """OK: two children spinning 0.3 s each; cpu_time is the sum, user+sys add up, figures present."""
    r = sbx(work, "--memory", "256M", "--", PROBE, "forkbusy", "2", "0.3")
    assert r.proc.returncode == 0 and r["verdict"] == "OK", r
    assert r["exit_code"] == 0 and r["signal"] is None and r["oom_killed"] is False
    assert 0.6 <= r.num("cpu_time") < 0.6 + 0.25, r
    assert abs(r.num("user_time") + r.num("sys_time") - r.num("cpu_time")) < 0.01, r
    assert r.num("pids_peak") >= 3, r  # the parent and its two children
    assert 0 < r.num("memory_peak") < 32 * MiB, r
    assert r["limits_enforced"] == {"memory": True}, r
    assert "warning" not in r.stderr, r
    assert r.meta["exitcode"] == "0" and "status" not in r.meta and float(r.meta["time"]) >= 0.6, r.meta


def test_re_and_sg(work: Path) -> None:
    r = sbx(work, "--", "sh", "-c", "exit 3")
    assert (r.proc.returncode, r["verdict"], r["exit_code"], r["signal"]) == (3, "RE", 3, None), r
    assert r.meta["status"] == "RE" and r.meta["exitcode"] == "3", r.meta
    r = sbx(work, "--", "sh", "-c", "kill -SEGV $$")
    assert (r.proc.returncode, r["verdict"], r["exit_code"], r["signal"]) == (128 + 11, "SG", None, 11), r
    assert r.meta["status"] == "SG" and r.meta["exitsig"] == "11", r.meta


def test_xx_on_setup_failure(work: Path) -> None:
    """A sandbox that cannot be built: exit 125, one error line, and still a result (XX)."""
    r = sbx(work, "--memory", "64M", "-v", "/dev/null:/usr/bin", "--", "true")
    assert r.proc.returncode == 125 and r["verdict"] == "XX", r
    assert r.stderr.startswith("sbx: error: ") and r.stderr.count("\n") == 1, r
    assert r.meta["status"] == "XX", r.meta


def test_tle_single_process_overshoot(work: Path) -> None:
    r = sbx(work, "--time", "0.5", "--", PROBE, "busy")
    assert r["verdict"] == "TLE" and r["signal"] == 9 and r.proc.returncode == 137, r
    assert 0 <= r.num("cpu_time") - 0.5 < TLE_OVERSHOOT, r
    assert r["limits_enforced"] == {"time": True}, r
    assert r.meta["status"] == "TO" and r.meta["killed"] == "1", r.meta


def test_tle_sums_all_processes(work: Path) -> None:
    """Two busy children: the limit is on their sum, reached in about half the wall time."""
    r = sbx(work, "--time", "1", "--", PROBE, "forkbusy", "2")
    assert r["verdict"] == "TLE", r
    cpu = r.num("cpu_time")
    assert 0 <= cpu - 1.0 < TLE_OVERSHOOT, r
    assert r.num("wall_time") < 0.9 * cpu, r  # no single process could have used this much


def test_wtle_sleep(work: Path) -> None:
    r = sbx(work, "--wall-time", "1", "--time", "5", "--", "sleep", "30")
    assert r["verdict"] == "WTLE" and r["signal"] == 9, r
    assert 1.0 <= r.num("wall_time") < 1.5, r
    # sleep itself burns nothing; its exec and dynamic loading cost up to ~0.6 s of emulated CPU on a
    # loaded host.  Well under the 1 s of wall time: the figure is CPU time, not elapsed time.
    assert r.num("cpu_time") < 0.9, r
    assert r.meta["status"] == "TO", r.meta


def test_mle_memory_hog(work: Path) -> None:
    r = sbx(work, "--memory", "64M", "--", PROBE, "hog", "200")
    assert r["verdict"] == "MLE" and r["oom_killed"] is True and r["signal"] == 9, r
    assert 32 * MiB < r.num("memory_peak") <= 64 * MiB + 2 * MiB, r
    assert "touched" not in r.proc.stdout.decode(), r
    assert r.meta["cg-oom-killed"] == "1" and r.meta["status"] == "SG", r.meta


def test_tmpfs_fill_counts_against_memory(work: Path) -> None:
    """Pages of the sandbox's /tmp (tmpfs) are charged to the run: filling it is an MLE."""
    r = sbx(work, "--memory", "32M", "--", "dd", "if=/dev/zero", "of=/tmp/fill", "bs=1M", "count=48")
    assert r["verdict"] == "MLE" and r["oom_killed"] is True, r
    assert r.num("memory_peak") <= 32 * MiB + 2 * MiB, r


def test_fork_bomb_contained(work: Path) -> None:
    r = sbx(work, "--pids-limit", "16", "--wall-time", "2", "--", PROBE, "forkbomb")
    assert r["verdict"] == "WTLE", r
    assert 8 <= r.num("pids_peak") <= 16, r
    assert r["limits_enforced"] == {"pids": True, "wall_time": True}, r


def test_cpus_quota_two_threads(work: Path) -> None:
    r = sbx(work, "--cpus", "0.5", "--wall-time", "3", "--", PROBE, "threads", "2")
    assert r["verdict"] == "WTLE", r
    share = r.num("cpu_time") / r.num("wall_time")
    assert 0.35 < share < 0.6, (share, r)
    assert r["limits_enforced"] == {"cpus": True, "wall_time": True}, r


def test_io_write_throttled(work: Path) -> None:
    """--io-write-bps on a rw bind of a disk-backed directory: io.max on the disk behind it."""
    io_dir = work / "io"
    io_dir.mkdir()
    io_dir.chmod(0o777)  # the payload is a subordinate id under id ranges: "other" must write
    st_dev = os.stat(io_dir).st_dev
    devices = devices_behind([str(io_dir)])
    if not devices:
        pytest.skip(f"{io_dir} is not on a block device (st_dev {os.major(st_dev)}:{os.minor(st_dev)})")
    mib = 3
    write = ("-v", f"{io_dir}:/io:rw", "--", PROBE, "dwrite", "/io/f", str(mib))
    free = sbx(work, *write)
    r = sbx(work, "--io-write-bps", "1M", *write)
    assert free["verdict"] == "OK" and r["verdict"] == "OK", (free, r)
    assert r["limits_enforced"] == {"io_write_bps": True}, r
    unthrottled = float(free.proc.stdout.decode().split()[1])
    elapsed = float(r.proc.stdout.decode().split()[1])
    # 3 MiB at 1 MiB/s: about 3 s (blk-throttle lets a first slice through at once).
    assert elapsed >= mib - 1.2 and elapsed > 3 * unthrottled, (elapsed, unthrottled, devices, r)
    assert os.path.getsize(io_dir / "f") == mib * MiB


def test_killed_supervisor(work: Path, deleg: str) -> None:
    """SIGTERM: forwarded, the run ends (SG 15) and cleans up.  SIGKILL: the sandbox dies
    with sbx (PDEATHSIG, pid namespace) and the next sbx removes the empty run cgroup."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    argv = [sys.executable, "-m", "sandbox", "run", "--", "sleep", "60"]

    def started() -> tuple[subprocess.Popen[bytes], str]:
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = run_cgroups(deleg)
            if found and os.path.exists(found[0]) and populated(found[0]):
                return proc, found[0]
            time.sleep(0.05)
        proc.kill()
        pytest.fail("no populated run cgroup appeared")

    proc, path = started()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not os.path.exists(path)

    proc, path = started()
    proc.kill()
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while populated(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not populated(path), "the sandbox outlived its SIGKILLed supervisor"
    assert run_cgroups(deleg) == [path]
    r = sbx(work, "--", "true")
    assert r["verdict"] == "OK", r
    assert not os.path.exists(path)


def populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except FileNotFoundError:
        return False


def test_output_flood(work: Path) -> None:
    r = sbx(work, "--output-limit", "64K", "--", PROBE, "flood")
    assert r["verdict"] == "OLE" and r["signal"] == 9, r
    assert r["output_bytes"] == 64 * 1024, r
    assert len(r.proc.stdout) == 64 * 1024, len(r.proc.stdout)
    assert r.meta["output-bytes"] == str(64 * 1024) and r.meta["killed"] == "1", r.meta


def test_explicit_cgroup_strict(work: Path, deleg: str) -> None:
    """--cgroup PATH and $SBX_CGROUP: every cgroup limit enforced, so --strict runs."""
    limits = ("--strict", "--memory", "64M", "--pids-limit", "10", "--cpus", "1", "--time", "5")
    r = sbx(work, "--cgroup", deleg, *limits, "--", "true")
    assert r["verdict"] == "OK", r
    assert r["limits_enforced"] == {"memory": True, "pids": True, "cpus": True, "time": True}, r
    assert r.stderr == "", r
    r = sbx(work, *limits, "--", "true", env=dict(os.environ, SBX_CGROUP=deleg))
    assert r["verdict"] == "OK" and all(dict(r["limits_enforced"]).values()), r  # type: ignore[call-overload]
    assert r.stderr == "", r


def test_systemd_style_scope_discovery(work: Path, deleg: str) -> None:
    """sbx started in a *.scope cgroup: used only when systemd marked it delegated (user.delegate).

    SBX_NO_SCOPE=1: with a user manager about (SBX_VM_USER_MANAGER=1) sbx would
    otherwise re-run itself in a transient scope (test_scope.py).
    """
    scope = os.path.join(deleg, "test-sbx.scope")
    os.mkdir(scope)
    enter = ("sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', scope)
    try:
        r = sbx(work, "--memory", "64M", "--", "true", prefix=enter, env=dict(os.environ, SBX_NO_SCOPE="1"))
        assert r["verdict"] == "OK" and r["limits_enforced"] == {"memory": False}, r
        assert "--memory is enforced per process only" in r.stderr, r
        os.setxattr(scope, "user.delegate", b"1")
        r = sbx(work, "--memory", "64M", "--", "true", prefix=enter)
        assert r["verdict"] == "OK" and r["limits_enforced"] == {"memory": True}, r
        assert r.stderr == "", r
        # sbx moved itself into the scope's leaf to enable the controllers there.
        assert os.path.isdir(os.path.join(scope, LEAF)), os.listdir(scope)
        assert run_cgroups(scope) == []
    finally:
        for path in (os.path.join(scope, LEAF), scope):
            if os.path.isdir(path):
                os.rmdir(path)
