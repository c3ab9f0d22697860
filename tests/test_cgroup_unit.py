"""sandbox.cgroup parts that need no delegation (the real tests: tests/cgroup)."""

from __future__ import annotations

import os

from sandbox import cgroup
from sandbox.spec import Limits

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
