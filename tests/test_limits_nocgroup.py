"""Whole-sandbox limits without cgroup v2 delegation (this hybrid host): the attacks of issue 13.

- a fork bomb under --pids-limit: RLIMIT_NPROC, which the kernel counts per user namespace
  (Linux 5.14+), bounds the payload's tree to exactly N tasks;
- memory held where RLIMIT_AS does not look (a memfd, SysV segments, many processes): the
  supervisor's census of the pid namespace sees it, MLE, and memory_peak says so;
- CPU burned by orphans adopted by init, or by children nobody reaps: counted while they run.

Each attack has its control: the same payload without the limit does what the limit stops.
The cgroup path is tested in the VM (tests/cgroup).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SINGLE, delegated_here, ranged, sbx

pytestmark = pytest.mark.skipif(delegated_here(), reason="a cgroup v2 delegation is usable here: not the degraded path")

MiB = 1 << 20

FORK_BOMB = """
import os, resource, sys, threading
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (1000, 1000))
    print("raised", flush=True)
except (ValueError, OSError):
    pass
r, w = os.pipe()
n = 0
if sys.argv[1] == "threads":
    def hold():
        os.read(r, 1)
    while n < 200:
        try:
            threading.Thread(target=hold, daemon=True).start()
        except RuntimeError:
            break
        n += 1
else:
    while n < 200:  # bounded: the control must not take the host's own process quota
        try:
            pid = os.fork()
        except OSError:
            break
        if pid == 0:
            os.read(r, 1)
            os._exit(0)
        n += 1
print(n, flush=True)
os._exit(0)
"""

HOLD = r"""
import ctypes, mmap, os, sys, time
MiB = 1 << 20
kind = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p

def sysv(size):
    shmid = libc.shmget(0, ctypes.c_size_t(size), 0o600 | 0o1000)  # IPC_PRIVATE, IPC_CREAT
    addr = libc.shmat(shmid, None, 0) if shmid >= 0 else None
    if addr in (None, ctypes.c_void_p(-1).value):
        print("sysv failed:", os.strerror(ctypes.get_errno()), flush=True)
        os._exit(3)
    return shmid, addr

def spread(hold):  # 8 processes of 25 MiB each: every one under RLIMIT_AS
    for _ in range(8):
        if os.fork() == 0:
            keep = hold(25 * MiB)
            time.sleep(30)
            os._exit(0)

if kind == "memfd":  # held by its descriptor alone, never mapped: no process's RSS shows it
    fd = os.memfd_create("hold")
    for _ in range(200):
        os.write(fd, b"x" * MiB)
elif kind == "anon":
    def anon(size):
        b = bytearray(size)
        for i in range(0, size, 4096):
            b[i] = 1
        return b
    spread(anon)
elif kind == "sysv":
    def segment(size):
        shmid, addr = sysv(size)
        ctypes.memset(addr, 1, size)
        return addr
    spread(segment)
elif kind == "sysv-detached":  # left behind with no process attached: does it stay?
    shmid, addr = sysv(4 * MiB)
    ctypes.memset(addr, 1, 4 * MiB)
    libc.shmdt(ctypes.c_void_p(addr))
    stat = ctypes.create_string_buffer(256)
    kept = libc.shmctl(shmid, 2, stat) == 0  # IPC_STAT
    if kept:
        libc.shmctl(shmid, 0, None)  # IPC_RMID: the control runs on the host
    print("kept" if kept else "gone", flush=True)
    os._exit(0)
elif kind == "posix":
    try:
        fd = os.open("/dev/shm/hold", os.O_RDWR | os.O_CREAT, 0o600)
        for _ in range(200):
            os.write(fd, b"x" * MiB)
    except OSError as exc:
        print("posix:", exc.strerror, flush=True)
        os._exit(4)
print("holding", flush=True)
time.sleep(1.0)
print("done", flush=True)
"""

# Two CPU burners, double-forked into sessions of their own: init adopts them, the payload sleeps.
ORPHANS = "for i in 1 2; do ( setsid sh -c 'while :; do :; done' & ); done; sleep 10"

# Children that burn 0.3 s each and exit, unreaped: with SIGCHLD ignored nobody's cutime gets them.
UNREAPED = """
import os, signal, time
signal.signal(signal.SIGCHLD, signal.SIG_IGN)
for _ in range(8):
    if os.fork() == 0:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        os._exit(0)
    time.sleep(0.35)
"""


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scripts")
    path.chmod(0o755)
    for name, text in (("bomb.py", FORK_BOMB), ("hold.py", HOLD), ("unreaped.py", UNREAPED)):
        (path / name).write_text(text)
        (path / name).chmod(0o644)
    return path


def run(tmp_path: Path, scripts: Path, *args: str, env: dict[str, str] | None = None,
        ) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    result = tmp_path / "result.json"
    proc = sbx("run", "--result", str(result), "-v", f"{scripts}:/s:ro", *args, env=env)
    return proc, json.loads(result.read_text())


# -- pids -----------------------------------------------------------------------------------------


MODES = {
    "default": ((), None),
    "uid-1000": (("--uid", "1000"), None),
    "uid-0": (("--uid", "0"), None),  # shares the caller's count with init
    # ... and pasta, which joins the user namespace; slirp4netns does not
    "pasta-uid-0": (("--network", "pasta", "--uid", "0"), {**os.environ, "SBX_USERNET": "pasta"}),
    "slirp4netns-uid-0": (("--network", "pasta", "--uid", "0"), {**os.environ, "SBX_USERNET": "slirp4netns"}),
    "single": ((), SINGLE),
    "single-uid-1000": (("--uid", "1000"), SINGLE),
}


def _nproc_holds(mode: str) -> bool:
    """Real root is exempt from RLIMIT_NPROC: it holds unless the payload is the caller and that is root."""
    options, env = MODES[mode]
    subordinate = ranged(env) and "0" not in options
    return subordinate or os.getuid() != 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("what", ["fork", "threads"])
def test_fork_bomb_stops_at_the_pids_limit(tmp_path: Path, scripts: Path, mode: str, what: str) -> None:
    """--pids-limit 20: exactly 20 tasks of the payload's tree (itself and 19 more), however it runs."""
    options, env = MODES[mode]
    helper = (env or {}).get("SBX_USERNET")
    if helper and not any(os.access(os.path.join(d, helper), os.X_OK) for d in os.environ.get("PATH", "").split(":")):
        pytest.skip(f"{helper} is not installed")
    proc, r = run(tmp_path, scripts, *options, "--pids-limit", "20", "--", "python3", "/s/bomb.py", what, env=env)
    assert proc.returncode == 0, proc.stderr
    if not _nproc_holds(mode):
        assert r["limits_enforced"] == {"pids": False}, r
        assert "RLIMIT_NPROC cannot stand in (the payload would be real root" in proc.stderr, proc.stderr
        return
    assert r["limits_enforced"] == {"pids": True}, r
    assert proc.stderr == "", proc.stderr
    assert proc.stdout == "19\n", proc.stdout  # and no "raised": the hard limit cannot be lifted
    # Control: without the limit the same payload reaches its own cap.
    proc, r = run(tmp_path, scripts, *options, "--", "python3", "/s/bomb.py", what, env=env)
    assert proc.stdout.splitlines()[-1] == "200", proc.stdout


def test_pids_limit_holds_under_strict(tmp_path: Path, scripts: Path) -> None:
    if not _nproc_holds("default"):
        pytest.skip("the payload is real root here: RLIMIT_NPROC does not apply")
    proc, r = run(tmp_path, scripts, "--strict", "--pids-limit", "5", "--", "python3", "/s/bomb.py", "fork")
    assert proc.returncode == 0 and proc.stdout == "4\n" and r["limits_enforced"] == {"pids": True}, proc.stderr


# -- memory ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memfd", "anon", "sysv"])
def test_memory_rlimit_as_misses_is_counted(tmp_path: Path, scripts: Path, kind: str) -> None:
    """200 MiB that RLIMIT_AS does not see (a memfd; 8 processes of 25 MiB; 8 SysV segments) under
    --memory 64M: the census sees it, MLE; without the limit the same run holds all of it."""
    proc, r = run(tmp_path, scripts, "--memory", "64M", "--wall-time", "20", "--", "python3", "/s/hold.py", kind)
    assert r["verdict"] == "MLE" and r["oom_killed"] is True and r["signal"] == 9, (r, proc.stderr)
    assert proc.returncode == 137 and "done" not in proc.stdout, proc.stdout
    assert r["memory_peak"] > 64 * MiB, r  # type: ignore[operator]
    assert r["limits_enforced"]["memory"] is False  # type: ignore[index]  # counted at intervals, not a kernel limit
    # Control: no limit, and the figure says what it held.
    proc, r = run(tmp_path, scripts, "--wall-time", "20", "--", "python3", "/s/hold.py", kind)
    assert r["verdict"] == "OK" and proc.stdout == "holding\ndone\n", (r, proc.stderr)
    assert r["memory_peak"] >= 200 * MiB, r  # type: ignore[operator]


def test_sysv_segment_nobody_attaches_is_removed(tmp_path: Path, scripts: Path) -> None:
    """A segment left with no process attached would hold memory no census can see: under a counted
    --memory the sandbox's IPC namespace destroys it with its last detach (shm_rmid_forced).
    Controls: without --memory it stays (as ipcmk users expect), and on the host too."""
    proc, _r = run(tmp_path, scripts, "--memory", "64M", "--", "python3", "/s/hold.py", "sysv-detached")
    assert proc.stdout == "gone\n", (proc.stdout, proc.stderr)
    proc, _r = run(tmp_path, scripts, "--", "python3", "/s/hold.py", "sysv-detached")
    assert proc.stdout == "kept\n", (proc.stdout, proc.stderr)
    control = subprocess.run([sys.executable, str(scripts / "hold.py"), "sysv-detached"], capture_output=True,
                             text=True, timeout=30)
    assert control.stdout == "kept\n", control


def test_posix_shm_is_bounded_by_dev_shm(tmp_path: Path, scripts: Path) -> None:
    """POSIX shared memory lives in /dev/shm, a tmpfs with its own size (64 MiB): ENOSPC."""
    proc, r = run(tmp_path, scripts, "--memory", "64M", "--", "python3", "/s/hold.py", "posix")
    assert proc.stdout == "posix: No space left on device\n" and r["verdict"] == "RE", (proc.stdout, r)


# -- CPU time -------------------------------------------------------------------------------------


def test_orphans_cpu_time_is_counted(tmp_path: Path, scripts: Path) -> None:
    """Two orphaned burners (double fork, setsid) while the payload sleeps: TLE at the limit, and
    cpu_time holds their time; control: the same run without --time burns past it."""
    proc, r = run(tmp_path, scripts, "--time", "1", "--", "sh", "-c", ORPHANS)
    assert r["verdict"] == "TLE" and r["signal"] == 9 and proc.returncode == 137, r
    assert 1.0 <= r["cpu_time"] < 1.2, r  # type: ignore[operator]
    assert r["wall_time"] < 5, r  # type: ignore[operator]
    proc, r = run(tmp_path, scripts, "--wall-time", "3", "--", "sh", "-c", ORPHANS)
    assert r["verdict"] == "WTLE" and r["cpu_time"] > 1.5, r  # type: ignore[operator]


def test_unreaped_children_cpu_time_is_counted(tmp_path: Path, scripts: Path) -> None:
    """Children nobody reaps (SIGCHLD ignored) leave no trace in any cutime: counted while they run."""
    proc, r = run(tmp_path, scripts, "--time", "1", "--", "python3", "/s/unreaped.py")
    assert r["verdict"] == "TLE" and r["signal"] == 9, r
    assert 1.0 <= r["cpu_time"] < 1.2, r  # type: ignore[operator]
    # Without the limit: 8 x 0.3 s burned, each counted up to the census's last look at it (every
    # 0.1 s, or less often on a loaded machine), where init's rusage alone shows almost none.
    proc, r = run(tmp_path, scripts, "--wall-time", "20", "--", "python3", "/s/unreaped.py")
    assert r["verdict"] == "OK" and 1.0 <= r["cpu_time"] <= 8 * 0.3 + 0.2, r  # type: ignore[operator]
