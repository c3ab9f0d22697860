"""sandbox.cgroup against a real delegated cgroup v2 subtree (see conftest.py).

Each test makes a run cgroup under the delegation, starts real processes in
it (held on a pipe until `RunCgroup.add` has placed them, as the supervisor
does), and checks limits and figures.  Python starts ~50x slower in the test
VM, so the payloads are mostly sh, and each test is short.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from sandbox.cgroup.diagnose import diagnose
from sandbox.cgroup.discover import LEAF, Delegation, discover
from sandbox.cgroup.fs import CgroupError, own_cgroup_dir
from sandbox.cgroup.runcg import RunCgroup
from sandbox.cgroup.stats import next_check_delay, usable_cpus
from sandbox.model.spec import MiB, Limits

MakeRun = Callable[..., RunCgroup]  # the make_run fixture: a run cgroup with these limits, removed after the test

PY = [sys.executable, "-I", "-S", "-c"]
BUSY = "while :; do :; done"


@pytest.fixture(scope="module")
def deleg() -> Delegation:
    d = discover(None, os.environ)
    assert d is not None, (
        "no delegated cgroup v2 subtree: run these tests in the VM stage "
        "(tests/vm/run_stage.py) or under a Delegate=yes scope; "
        f"diagnose: {diagnose(os.environ)}"
    )
    for ctrl in ("cpu", "memory", "pids"):
        assert ctrl in d.controllers, d
    return d


@pytest.fixture
def make_run(deleg: Delegation, request: pytest.FixtureRequest) -> Iterator[MakeRun]:
    made: list[RunCgroup] = []

    def make(limits: Limits = Limits(), name: str | None = None) -> RunCgroup:
        run = RunCgroup.create(deleg, limits, name or f"test-{request.node.name[:40]}-{len(made)}")
        made.append(run)
        return run

    yield make
    for run in made:
        run.remove()


def start(run: RunCgroup, *argv: str, **kw: object) -> subprocess.Popen[bytes]:
    """Start argv held on a pipe, move it into `run`, then release it."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        ["sh", "-c", 'read _; exec "$@" </dev/null', "sh", *argv], stdin=r, **kw  # type: ignore[call-overload]
    )
    os.close(r)
    try:
        run.add(proc.pid)
        proc.cpu_before_add = cpu_seconds(proc.pid)
    finally:
        os.close(w)
    return proc  # type: ignore[no-any-return]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc/PID/stat (clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(pred: Callable[[], object], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_discovery(deleg: Delegation) -> None:
    # The processes that were in the delegated cgroup are now in its leaf.
    assert deleg.how in ("own", "explicit")
    own = own_cgroup_dir()
    assert own == os.path.join(deleg.path, LEAF)
    with open(os.path.join(deleg.path, "cgroup.procs")) as f:
        assert f.read().split() == []
    subtree = open(os.path.join(deleg.path, "cgroup.subtree_control")).read().split()
    assert set(deleg.controllers) <= set(subtree)
    # A second sbx finds the same delegation; an explicit path is taken as is.
    again = discover(None, {})
    assert again is not None and again.path == deleg.path and again.how == "own"
    explicit = discover(None, {"SBX_CGROUP": deleg.path})
    assert explicit is not None and explicit.how == "explicit" and explicit.controllers == deleg.controllers
    assert all(ok for what, ok, _ in diagnose({}) if what != "controller io" and "cpuset" not in what)


def test_explicit_errors(deleg: Delegation) -> None:
    with pytest.raises(CgroupError, match="not a cgroup v2 directory"):
        discover("/tmp", {})
    with pytest.raises(CgroupError, match="not delegated"):
        discover(os.path.dirname(deleg.path), {})  # the root cgroup: root's


def test_limits_written(make_run: MakeRun) -> None:
    limits = Limits(memory=64 * MiB, pids=32, cpus=1.5)
    run = make_run(limits)

    def read(name: str) -> str:
        with open(os.path.join(run.path, name)) as f:
            return f.read().strip()

    assert read("memory.max") == str(64 * MiB)
    assert read("memory.oom.group") == "1"
    assert read("pids.max") == "32"
    assert read("cpu.max") == "150000 100000"
    if os.path.exists(os.path.join(run.path, "memory.swap.max")):
        assert read("memory.swap.max") == "0"
    assert run.unenforced == ()
    fd = run.fd()
    assert os.path.samestat(os.fstat(fd), os.stat(run.path))


def test_memory_limit_kills_and_counts(make_run: MakeRun) -> None:
    run = make_run(Limits(memory=48 * MiB))
    base = run.stats()
    proc = start(run, *PY, "x = b'1' * (200 << 20); print(len(x))", stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out
    st = run.stats().since(base)
    assert st.oom_kills >= 1
    assert st.memory_peak is not None and 8 * MiB < st.memory_peak <= 48 * MiB


def test_memory_peak_without_oom(make_run: MakeRun) -> None:
    run = make_run(Limits(memory=256 * MiB))
    proc = start(run, *PY, "x = b'1' * (40 << 20)")
    assert proc.wait(timeout=60) == 0
    st = run.stats()
    assert st.oom_kills == 0
    assert st.memory_peak is not None and 40 * MiB <= st.memory_peak < 200 * MiB


def test_pids_limit(make_run: MakeRun) -> None:
    run = make_run(Limits(pids=8))
    # A small fork bomb: 30 sleepers wanted, pids.max refuses most of them.
    proc = start(run, "sh", "-c", "for i in $(seq 30); do sleep 30 & done 2>/dev/null; sleep 30",
                 stderr=subprocess.DEVNULL)
    assert wait_for(lambda: run.stats().pids_max_hits > 0)
    st = run.stats()
    assert st.pids_current is not None and st.pids_current <= 8
    assert len(run.pids()) <= 8
    run.kill()
    proc.wait(timeout=10)  # dash may have given up already ("Cannot fork"): its sleepers stay
    assert run.pids() == [] and not run.populated()


def test_cpu_max_quota(make_run: MakeRun) -> None:
    run = make_run(Limits(cpus=0.5))
    base = run.stats()
    t0 = time.monotonic()
    proc = start(run, "sh", "-c", f"{BUSY} & {BUSY}")  # two busy processes, half a CPU
    time.sleep(3.0)
    st = run.stats().since(base)
    wall = time.monotonic() - t0
    run.kill()
    proc.wait(timeout=10)
    share = st.cpu_usec / 1e6 / wall
    assert 0.3 < share < 0.6, (share, st)
    assert st.throttled_usec > 0


def test_cpu_stat_matches_rusage(make_run: MakeRun) -> None:
    run = make_run()
    base = run.stats()
    proc = start(run, *PY, "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass")
    _pid, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    st = run.stats().since(base)
    rusage_usec = (ru.ru_utime + ru.ru_stime) * 1e6
    assert rusage_usec >= 1.0e6
    # rusage also counts the time spent before the process was moved in (fork,
    # exec of sh: long under emulation); /proc/PID/stat had that in ticks.
    in_cgroup_usec = rusage_usec - proc.cpu_before_add * 1e6  # type: ignore[attr-defined]
    tick_usec = 1e6 / os.sysconf("SC_CLK_TCK")
    assert abs(st.cpu_usec - in_cgroup_usec) <= 0.03 * in_cgroup_usec + 2 * tick_usec, (st, rusage_usec, in_cgroup_usec)
    assert abs(st.user_usec + st.system_usec - st.cpu_usec) <= 0.05 * st.cpu_usec + 20_000


def test_cpu_time_watch_overshoot(make_run: MakeRun) -> None:
    """Checking at next_check_delay() stops a run within ms of its CPU limit."""
    run = make_run()
    limit = 1.0
    base = run.stats().cpu_usec
    proc = start(run, "sh", "-c", f"{BUSY} & {BUSY}")
    ncpus = usable_cpus()
    checks = 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        used = (run.stats().cpu_usec - base) / 1e6
        delay = next_check_delay(limit, used, ncpus)
        if delay == 0:
            run.kill()
            break
        checks += 1
        time.sleep(delay)
    else:
        run.kill()
        pytest.fail("the CPU limit was never reached")
    proc.wait(timeout=10)
    over = (run.stats().cpu_usec - base) / 1e6 - limit
    assert 0 <= over < 0.1, (over, checks)
    assert checks < 40


def test_kill_kills_the_tree(make_run: MakeRun) -> None:
    run = make_run()
    # Sleepers in new sessions and nested children: not reachable by a process-group kill.
    script = "setsid sleep 60 & (sleep 60 & setsid sh -c 'sleep 60 & sleep 60') & sleep 60"
    proc = start(run, "sh", "-c", script)
    assert wait_for(lambda: len(run.pids()) >= 6)
    run.kill()
    assert run.pids() == []
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_kill_without_cgroup_kill(make_run: MakeRun) -> None:
    """The pre-5.14 path: freeze, then SIGKILL until empty."""
    run = make_run()
    proc = start(run, "sh", "-c", f"sleep 60 & setsid sleep 60 & {BUSY}")
    assert wait_for(lambda: len(run.pids()) >= 3)
    run._kill_by_signal(time.monotonic() + 10)
    assert run.wait_empty(10)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_nested_cgroups_and_remove(deleg: Delegation, make_run: MakeRun) -> None:
    run = make_run()
    # The payload may make cgroups of its own below the run's.
    inner = os.path.join(run.path, "inner", "deeper")
    os.makedirs(inner)
    proc = start(run, "sleep", "60")
    with open(os.path.join(inner, "cgroup.procs"), "w") as f:
        f.write(str(proc.pid))
    assert run.pids() == [proc.pid]
    run.remove()  # kills what is left, removes leaf-first
    assert not os.path.exists(run.path)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    run.remove()  # twice is harmless


def test_remove_leaves_nothing(deleg: Delegation) -> None:
    before = set(os.listdir(deleg.path))
    run = RunCgroup.create(deleg, Limits(memory=32 * MiB, pids=4, cpus=1), "test-leftover")
    proc = start(run, "true")
    assert proc.wait(timeout=20) == 0
    run.remove()
    assert set(os.listdir(deleg.path)) == before
    # A stale empty cgroup of the same name is taken over.
    os.mkdir(os.path.join(deleg.path, "test-stale"))
    RunCgroup.create(deleg, Limits(), "test-stale").remove()
    assert set(os.listdir(deleg.path)) == before


def test_io_limit(make_run: MakeRun) -> None:
    run = make_run(Limits(io_read_bps=10 * MiB, io_write_bps=5 * MiB))
    io_max = open(os.path.join(run.path, "io.max")).read()
    # Either enforced on at least one disk, or reported as not enforced.
    assert ("rbps=10485760" in io_max and "wbps=5242880" in io_max) or run.unenforced == ("io",), (io_max, run.unenforced)
