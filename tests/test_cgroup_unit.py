"""sandbox.cgroup parts that need no delegation (the real tests: tests/cgroup)."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroup import discover, fs, iodev, resources, stats, systemd
from sandbox.cgroup.diagnose import diagnose, v1_controllers
from sandbox.errors import SetupError
from sandbox.model.spec import Limits

MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
40 24 0:30 /user.slice /mnt/with\\040space ro,relatime - cgroup2 cgroup2 rw
41 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""


@pytest.mark.parametrize("mountinfo, mounts", [
    (MOUNTINFO, [("/sys/fs/cgroup", "/"), ("/mnt/with space", "/user.slice")]),
    ("", []),
    ("41 24 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", []),  # v1 only
    ("31 24 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw", [("/sys/fs/cgroup", "/")]),  # no final newline
    ("31 24 0:26 / /sys/fs/cgroup rw shared:9 master:2 - cgroup2 none rw\n", [("/sys/fs/cgroup", "/")]),
    ("garbage without a separator cgroup2\n", []),
    ("31 24 0:26 /a\\011b /x\\134y rw - cgroup2 cgroup2 rw\n", [("/x\\y", "/a\tb")]),  # tab, backslash
])
def test_cgroup2_mounts_parses_mountinfo(mountinfo: str, mounts: list[tuple[str, str]]) -> None:
    assert fs.cgroup2_mounts(mountinfo) == mounts


@pytest.mark.parametrize("field, text", [
    ("/plain", "/plain"),
    ("/with\\040space", "/with space"),
    ("/nl\\012", "/nl\n"),
    ("/short\\04", "/short\\04"),  # an incomplete escape stays as it is
    ("/not\\x41", "/not\\x41"),
    ("\\134\\134", "\\\\"),
])
def test_unescape(field: str, text: str) -> None:
    assert fs.unescape(field) == text


@pytest.mark.parametrize("proc_cgroup, path", [
    ("12:memory:/x\n0::/user.slice/user-1000.slice/session-2.scope\n", "/user.slice/user-1000.slice/session-2.scope"),
    ("0::/\n", "/"),
    ("3:cpu:/\n", None),
    ("", None),
])
def test_own_cgroup(proc_cgroup: str, path: str | None) -> None:
    assert fs.own_cgroup(proc_cgroup) == path


@pytest.mark.parametrize("proc_cgroup, v1", [
    ("12:memory:/x\n4:cpu,cpuacct:/\n1:name=systemd:/u\n0::/u\n", ["memory", "cpu,cpuacct", "name=systemd"]),
    ("0::/user.slice\n", []),
    ("2::/x\n", []),  # a v1 hierarchy with no controllers
])
def test_v1_controllers(proc_cgroup: str, v1: list[str]) -> None:
    assert v1_controllers(proc_cgroup) == v1


@pytest.mark.parametrize("text, parsed", [
    ("usage_usec 250\nuser_usec 140\nsystem_usec 110\n", {"usage_usec": 250, "user_usec": 140, "system_usec": 110}),
    ("low 0\nhigh 3\nmax 2\noom 1\noom_kill 1\n", {"low": 0, "high": 3, "max": 2, "oom": 1, "oom_kill": 1}),
    ("populated 1", {"populated": 1}),
    ("bad line\nok 4\n", {"ok": 4}),
    ("", {}),
    (None, {}),
])
def test_keyed(text: str | None, parsed: dict[str, int]) -> None:
    assert fs.keyed(text) == parsed


@pytest.mark.parametrize("text, value", [("4096\n", 4096), ("0", 0), ("max\n", None), (None, None), ("", None)])
def test_int_or_none(text: str | None, value: int | None) -> None:
    assert fs.int_or_none(text) == value


@pytest.mark.parametrize("cpus, line", [
    (1, "100000 100000"),
    (1.5, "150000 100000"),
    (0.25, "25000 100000"),
    (4, "400000 100000"),
    (0.0001, "1000 100000"),  # the kernel's minimum quota
])
def test_cpu_max(cpus: float, line: str) -> None:
    assert resources.cpu_max(cpus) == line


@pytest.mark.parametrize("dev, rbps, wbps, line", [
    ("8:0", 1048576, None, "8:0 rbps=1048576"),
    ("8:0", None, 2097152, "8:0 wbps=2097152"),
    ("259:0", 1, 2, "259:0 rbps=1 wbps=2"),
])
def test_io_max_line(dev: str, rbps: int | None, wbps: int | None, line: str) -> None:
    assert resources.io_max_line(dev, rbps, wbps) == line


@pytest.mark.parametrize("dev, mountinfo, sources", [
    ("0:55", "90 1 0:55 / /data rw - btrfs /dev/sda2 rw\n91 1 0:56 / /o rw - tmpfs tmpfs rw\n", ["/dev/sda2"]),
    ("0:56", "90 1 0:55 / /data rw - btrfs /dev/sda2 rw\n91 1 0:56 / /o rw - tmpfs tmpfs rw\n", ["tmpfs"]),
    ("0:57", "90 1 0:55 / /data rw - btrfs /dev/sda2 rw\n", []),
    ("0:55", "90 1 0:55 / /a rw - btrfs /dev/x\\040y rw\n92 1 0:55 /s /b rw - btrfs /dev/z rw\n",
     ["/dev/x y", "/dev/z"]),  # every mount of the device, in order
    ("0:55", "90 1 0:55 / /a rw - btrfs\n", [""]),  # a line cut short
])
def test_mount_sources(dev: str, mountinfo: str, sources: list[str]) -> None:
    assert iodev.mount_sources(dev, mountinfo) == sources


@pytest.mark.parametrize("limit, used, ncpus, min_delay, delay", [
    (2.0, 0.5, 2, stats.MIN_CHECK_DELAY_S, 0.75),  # nothing can happen for 1.5 s / 2 CPUs
    (2.0, 0.5, 0.5, stats.MIN_CHECK_DELAY_S, 3.0),
    (2.0, 2.0, 2, stats.MIN_CHECK_DELAY_S, 0.0),  # reached
    (2.0, 3.0, 2, stats.MIN_CHECK_DELAY_S, 0.0),  # overshot
    (2.0, 1.99999, 2, stats.MIN_CHECK_DELAY_S, 0.001),  # never a busy loop
    (1.0, 0.0, 0, stats.MIN_CHECK_DELAY_S, 1000.0),  # no CPUs: the floor, not a division by zero
])
def test_next_check_delay(limit: float, used: float, ncpus: float, min_delay: float, delay: float) -> None:
    assert stats.next_check_delay(limit, used, ncpus, min_delay) == pytest.approx(delay)


def test_next_check_delay_without_floor() -> None:
    assert stats.next_check_delay(2.0, 1.99999, 2, min_delay=0.0) < 0.001


@pytest.mark.parametrize("cpuset, size", [
    ("0", 1), ("0-3", 4), ("0-3,6", 5), ("0-3,6, 8-9", 7), ("", 0), ("0,,2", 2), ("a-b", 0), ("1-x", 0),
])
def test_cpuset_size(cpuset: str, size: int) -> None:
    assert stats.cpuset_size(cpuset) == size


def test_usable_cpus() -> None:
    n = len(os.sched_getaffinity(0))
    assert stats.usable_cpus() == n
    assert stats.usable_cpus(Limits(cpus=0.5)) == 0.5
    assert stats.usable_cpus(Limits(cpuset="0")) == 1


def test_stats_since() -> None:
    base = stats.CgroupStats(cpu_usec=100, user_usec=60, system_usec=40, oom_kills=1)
    now = stats.CgroupStats(cpu_usec=350, user_usec=200, system_usec=150, memory_peak=4096, oom_kills=2)
    d = now.since(base)
    assert (d.cpu_usec, d.user_usec, d.system_usec, d.oom_kills, d.memory_peak) == (250, 140, 110, 1, 4096)


def test_cgroup_error_is_a_setup_error() -> None:
    """Fail closed: callers treat a cgroup failure as any other setup failure (exit 125)."""
    assert issubclass(fs.CgroupError, SetupError)


def test_discover_without_delegation_here() -> None:
    """On a host without a usable delegation, discovery says None, never raises."""
    d = discover.discover(None, {})
    if d is not None:  # a real delegation (e.g. a systemd scope): then it must be sane
        assert {"memory", "pids"} <= set(d.controllers)
    checks = diagnose({})
    assert checks and all(isinstance(ok, bool) for _what, ok, _detail in checks)


def test_explicit_path_must_be_a_cgroup() -> None:
    try:
        discover.discover("/tmp", {})
    except fs.CgroupError as exc:
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
    assert systemd.user_manager_socket({"XDG_RUNTIME_DIR": str(live_manager)}) == str(live_manager / "systemd/private")
    # Nothing there, a plain file, or a socket nobody listens on (the manager is gone).
    nothing = tmp_path / "nothing"
    assert systemd.user_manager_socket({"XDG_RUNTIME_DIR": str(nothing)}) is None
    plain = _runtime_dir(tmp_path / "plain")
    (plain / "systemd" / "private").write_text("")
    assert systemd.user_manager_socket({"XDG_RUNTIME_DIR": str(plain)}) is None
    stale = _runtime_dir(tmp_path / "stale")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(stale / "systemd" / "private"))
    assert stat.S_ISSOCK(os.stat(stale / "systemd" / "private").st_mode)
    assert systemd.user_manager_socket({"XDG_RUNTIME_DIR": str(stale)}) is None


def test_scope_command_never_when_told_or_already_done(live_manager: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(live_manager), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    argv = ["/usr/bin/python3", "-m", "sandbox", "run", "--", "true"]
    assert systemd.scope_command(argv, {**env, "SBX_SCOPE": "sbx-1-2.scope"}) is None  # the re-run: no loop
    assert systemd.scope_command(argv, {**env, "SBX_NO_SCOPE": "1"}) is None
    assert systemd.scope_command(argv, {**env, "SBX_CGROUP": "/sys/fs/cgroup/x"}) is None
    assert systemd.scope_command(argv, env, explicit="/sys/fs/cgroup/x") is None


def test_scope_command_without_manager(tmp_path: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(tmp_path / "none"), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert systemd.scope_command(["sbx", "run", "true"], env) is None


def test_scope_command_with_manager(live_manager: Path) -> None:
    """With a live manager it depends on this host's own cgroup: the answer and, when there is one, its shape."""
    env = {"XDG_RUNTIME_DIR": str(live_manager), "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "X": "y"}
    argv = ["/usr/bin/python3", "-m", "sandbox", "run", "--memory", "64M", "--", "true"]
    got = systemd.scope_command(argv, env)
    own = fs.own_cgroup_dir()
    applies = (own is not None and discover.usable_own(own, env) is None and discover.unified_offers_essentials()
               and systemd.which("systemd-run", env) is not None)
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
    if discover.unified_offers_essentials():
        pytest.skip("the unified hierarchy offers memory and pids here")
    env = {"XDG_RUNTIME_DIR": str(live_manager), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert systemd.scope_command(["sbx", "run", "true"], env) is None


def test_only_the_scope_we_asked_for_counts_as_delegated(tmp_path: Path) -> None:
    """A unit cgroup without a delegate mark is systemd's, except the one named by $SBX_SCOPE."""
    scope = tmp_path / "sbx-1-2.scope"
    scope.mkdir()
    assert discover.systemd_unit_not_delegated(str(scope), {})
    assert discover.systemd_unit_not_delegated(str(scope), {"SBX_SCOPE": "sbx-9-9.scope"})
    assert not discover.systemd_unit_not_delegated(str(scope), {"SBX_SCOPE": "sbx-1-2.scope"})
    service = tmp_path / "sbx-1-2.service"
    service.mkdir()
    assert discover.systemd_unit_not_delegated(str(service), {"SBX_SCOPE": "sbx-1-2.service"})
    plain = tmp_path / "work"
    plain.mkdir()
    assert not discover.systemd_unit_not_delegated(str(plain), {})


@pytest.mark.parametrize("argv, environ, env", [
    (["/usr/bin/python3", "-m", "sandbox", "box", "run", "b", "--", "true"], {"PATH": "/bin", "XDG_RUNTIME_DIR": "/r"},
     {"PATH": "/bin", "XDG_RUNTIME_DIR": "/r", "SBX_SCOPE": "sbx-7-8.scope"}),
    (["sbx", "batch", "jobs.json"], {}, {"SBX_SCOPE": "sbx-7-8.scope", "XDG_RUNTIME_DIR": "/run/user/1000"}),
    (["sbx", "run", "--interactor", "i", "--", "p"], {"XDG_RUNTIME_DIR": ""},  # set, even empty: kept
     {"SBX_SCOPE": "sbx-7-8.scope", "XDG_RUNTIME_DIR": ""}),
])
def test_scope_argv(argv: list[str], environ: dict[str, str], env: dict[str, str]) -> None:
    """The re-run command is built from the argv and environment given, whatever the subcommand (pure)."""
    cmd, new_env = systemd.scope_argv("/usr/bin/systemd-run", "sbx-7-8.scope", argv, environ, 1000)
    assert cmd == ["/usr/bin/systemd-run", "--user", "--scope", "--quiet", "--collect", "--unit=sbx-7-8.scope",
                   "-p", "Delegate=yes", "--", *argv]
    assert new_env == env
    assert "SBX_SCOPE" not in environ  # the caller's mapping is left alone


@pytest.mark.parametrize("pid, stamp, unit", [
    (7, 8, "sbx-7-8.scope"),
    (1234, 3 * 10**9 + 5, "sbx-1234-5.scope"),  # the stamp is kept short
])
def test_unit_name(pid: int, stamp: int, unit: str) -> None:
    assert systemd.unit_name(pid, stamp) == unit


@pytest.mark.parametrize("environ, off", [
    ({}, False), ({"SBX_NO_SCOPE": ""}, False), ({"SBX_NO_SCOPE": "0"}, False),
    ({"SBX_NO_SCOPE": "1"}, True), ({"SBX_NO_SCOPE": "yes"}, True),
])
def test_no_scope(environ: dict[str, str], off: bool) -> None:
    assert systemd.no_scope(environ) is off


def test_discover_reads_only_the_environ_given() -> None:
    """SBX_CGROUP comes from the caller's environ (a Runner's), not the process's."""
    with pytest.raises(SetupError, match="/nonexistent is not a cgroup v2 directory"):
        discover.discover(None, {"SBX_CGROUP": "/nonexistent"})


CONTROL_FILES = ("memory.max", "memory.swap.max", "memory.oom.group", "pids.max", "cpu.max", "cpuset.cpus")


@pytest.mark.parametrize("controllers, limits, missing, written", [
    ((), Limits(), (), {}),
    ((), Limits(memory=64 << 20, pids=8, cpus=1.5, cpuset="0"), ("memory", "pids", "cpu", "cpuset"), {}),
    ((), Limits(io_read_bps=1 << 20), ("io",), {}),
    (("memory", "pids"), Limits(), (), {"memory.oom.group": "1"}),
    (("memory", "pids"), Limits(memory=64 << 20, pids=8, cpus=0.5), ("cpu",),
     {"memory.max": str(64 << 20), "memory.swap.max": "0", "memory.oom.group": "1", "pids.max": "8"}),
    (("cpu", "cpuset", "memory", "pids"), Limits(cpus=0.5, cpuset="0-1"), (),
     {"memory.oom.group": "1", "cpu.max": "50000 100000", "cpuset.cpus": "0-1"}),
])
def test_apply_limits(tmp_path: Path, controllers: tuple[str, ...], limits: Limits, missing: tuple[str, ...],
                      written: dict[str, str]) -> None:
    """Which control files get which value, and which asked-for controllers are missing (a directory standing in)."""
    for name in CONTROL_FILES:
        (tmp_path / name).write_text("")
    d = discover.Delegation(path=str(tmp_path.parent), how="explicit", controllers=controllers)
    assert resources.apply_limits(str(tmp_path), d, limits) == missing
    assert {name: (tmp_path / name).read_text() for name in CONTROL_FILES if (tmp_path / name).read_text()} == written


def test_apply_limits_without_a_required_file(tmp_path: Path) -> None:
    """A controller said to be enabled whose file is absent: an error, not a silent limit-less run."""
    d = discover.Delegation(path=str(tmp_path.parent), how="explicit", controllers=("pids",))
    with pytest.raises(fs.CgroupError, match="no pids.max"):
        resources.apply_limits(str(tmp_path), d, Limits(pids=8))
    (tmp_path / "memory.oom.group").write_text("")  # memory.swap.max may be absent (no swap accounting)
    (tmp_path / "memory.max").write_text("")
    d = discover.Delegation(path=str(tmp_path.parent), how="explicit", controllers=("memory",))
    assert resources.apply_limits(str(tmp_path), d, Limits(memory=1 << 20)) == ()
