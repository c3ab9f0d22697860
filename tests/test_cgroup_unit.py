"""sandbox.cgroup parts that need no delegation (the real tests: tests/cgroup)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroup import manager as cgroup
from sandbox.model.spec import Limits

MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 24 0:30 /user.slice /mnt/with\\040space ro,relatime - cgroup2 cgroup2 rw
41 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""


def test_cgroup2_mounts_parses_mountinfo() -> None:
    assert cgroup.cgroup2_mounts(MOUNTINFO) == [("/sys/fs/cgroup", "/"), ("/mnt/with space", "/user.slice")]


def test_own_cgroup() -> None:
    text = "12:memory:/x\n0::/user.slice/user-1000.slice/session-2.scope\n"
    assert cgroup.own_cgroup(text) == "/user.slice/user-1000.slice/session-2.scope"
    assert cgroup.own_cgroup("3:cpu:/\n") is None


def test_cpu_max() -> None:
    assert cgroup.cpu_max(1) == "100000 100000"
    assert cgroup.cpu_max(1.5) == "150000 100000"
    assert cgroup.cpu_max(0.0001) == "1000 100000"  # the kernel's minimum quota


def test_next_check_delay() -> None:
    # 2 s budget, 0.5 s used, 2 CPUs: nothing can happen for 0.75 s.
    assert cgroup.next_check_delay(2.0, 0.5, 2) == 0.75
    assert cgroup.next_check_delay(2.0, 0.5, 0.5) == 3.0
    assert cgroup.next_check_delay(2.0, 2.0, 2) == 0.0
    assert cgroup.next_check_delay(2.0, 3.0, 2) == 0.0
    assert cgroup.next_check_delay(2.0, 1.99999, 2) == 0.001  # never a busy loop
    assert cgroup.next_check_delay(2.0, 1.99999, 2, min_delay=0.0) < 0.001


def test_usable_cpus() -> None:
    n = len(os.sched_getaffinity(0))
    assert cgroup.usable_cpus() == n
    assert cgroup.usable_cpus(Limits(cpus=0.5)) == 0.5
    assert cgroup.usable_cpus(Limits(cpuset="0")) == 1
    assert cgroup._cpuset_size("0-3,6, 8-9") == 7


def test_stats_since() -> None:
    base = cgroup.CgroupStats(cpu_usec=100, user_usec=60, system_usec=40, oom_kills=1)
    now = cgroup.CgroupStats(cpu_usec=350, user_usec=200, system_usec=150, memory_peak=4096, oom_kills=2)
    d = now.since(base)
    assert (d.cpu_usec, d.user_usec, d.system_usec, d.oom_kills, d.memory_peak) == (250, 140, 110, 1, 4096)


def test_discover_without_delegation_here() -> None:
    """On a host without a usable delegation, discovery says None, never raises."""
    d = cgroup.discover(None, {})
    if d is not None:  # a real delegation (e.g. a systemd scope): then it must be sane
        assert {"memory", "pids"} <= set(d.controllers)
    checks = cgroup.diagnose({})
    assert checks and all(isinstance(ok, bool) for _what, ok, _detail in checks)


def test_explicit_path_must_be_a_cgroup() -> None:
    try:
        cgroup.discover("/tmp", {})
    except cgroup.CgroupError as exc:
        assert "not a cgroup v2 directory" in str(exc)
    else:
        raise AssertionError("no error")


# --- discovery step 3: a transient systemd user scope (scope_command) ------------

def _runtime_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "systemd").mkdir(parents=True)
    return run


@pytest.fixture
def live_manager(tmp_path: Path) -> Iterator[Path]:
    """A fake XDG_RUNTIME_DIR whose systemd/private socket accepts connections."""
    run = _runtime_dir(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(run / "systemd" / "private"))
        sock.listen(4)
        yield run


def test_user_manager_socket(tmp_path: Path, live_manager: Path) -> None:
    assert cgroup.user_manager_socket({"XDG_RUNTIME_DIR": str(live_manager)}) == str(live_manager / "systemd/private")
    # Nothing there, a plain file, or a socket nobody listens on (the manager is gone).
    nothing = tmp_path / "nothing"
    assert cgroup.user_manager_socket({"XDG_RUNTIME_DIR": str(nothing)}) is None
    plain = _runtime_dir(tmp_path / "plain")
    (plain / "systemd" / "private").write_text("")
    assert cgroup.user_manager_socket({"XDG_RUNTIME_DIR": str(plain)}) is None
    stale = _runtime_dir(tmp_path / "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale / "systemd" / "private"))
    assert stat.S_ISSOCK(os.stat(stale / "systemd" / "private").st_mode)
    assert cgroup.user_manager_socket({"XDG_RUNTIME_DIR": str(stale)}) is None


def test_scope_command_never_when_told_or_already_done(live_manager: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(live_manager), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv = ["/usr/bin/python3", "-m", "sandbox", "run", "--", "true"]
    assert cgroup.scope_command(argv, {**env, "SBX_SCOPE": "sbx-1-2.scope"}) is None  # the re-run: no loop
    assert cgroup.scope_command(argv, {**env, "SBX_NO_SCOPE": "1"}) is None
    assert cgroup.scope_command(argv, {**env, "SBX_CGROUP": "/sys/fs/cgroup/x"}) is None
    assert cgroup.scope_command(argv, env, explicit="/sys/fs/cgroup/x") is None


def test_scope_command_without_manager(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "none"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert cgroup.scope_command(["sbx", "run", "true"], env) is None


def test_scope_command_with_manager(live_manager: Path) -> None:
    """With a live manager it depends on this host's own cgroup: the answer and, when there is one, its shape."""
    env = {"XDG_RUNTIME_DIR": str(live_manager), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "X": "y"}
    argv = ["/usr/bin/python3", "-m", "sandbox", "run", "--memory", "64M", "--", "true"]
    got = cgroup.scope_command(argv, env)
    own = cgroup.own_cgroup_dir()
    applies = (own is not None and cgroup._usable_own(own, env) is None and cgroup._unified_offers_essentials()
               and cgroup._which("systemd-run", env) is not None)
    assert (got is not None) == applies, (got, own)
    if got is None:
        return
    cmd, new_env = got
    unit = new_env["SBX_SCOPE"]
    assert unit.startswith(f"sbx-{os.getpid()}-") and unit.endswith(".scope")
    assert os.path.basename(cmd[0]) == "systemd-run"
    assert cmd[1:] == ["--user", "--scope", "--quiet", "--collect", f"--unit={unit}", "-p", "Delegate=yes", "--",
                       *argv]
    assert {k: v for k, v in new_env.items() if k != "SBX_SCOPE"} == env


def test_scope_command_on_a_hybrid_host(live_manager: Path) -> None:
    """Where cgroup v1 holds memory and pids (this CI host) a scope would not help: never."""
    if cgroup._unified_offers_essentials():
        pytest.skip("the unified hierarchy offers memory and pids here")
    env = {"XDG_RUNTIME_DIR": str(live_manager), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert cgroup.scope_command(["sbx", "run", "true"], env) is None


def test_only_the_scope_we_asked_for_counts_as_delegated(tmp_path: Path) -> None:
    """A unit cgroup without a delegate mark is systemd's, except the one named by $SBX_SCOPE."""
    scope = tmp_path / "sbx-1-2.scope"
    scope.mkdir()
    assert cgroup._systemd_unit_not_delegated(str(scope))
    assert cgroup._systemd_unit_not_delegated(str(scope), {"SBX_SCOPE": "sbx-9-9.scope"})
    assert not cgroup._systemd_unit_not_delegated(str(scope), {"SBX_SCOPE": "sbx-1-2.scope"})
    service = tmp_path / "sbx-1-2.service"
    service.mkdir()
    assert cgroup._systemd_unit_not_delegated(str(service), {"SBX_SCOPE": "sbx-1-2.service"})
    plain = tmp_path / "work"
    plain.mkdir()
    assert not cgroup._systemd_unit_not_delegated(str(plain))
