"""runtime/limits.plan: which limits hold, and what is said when one cannot (a table, no sandbox).

Landlock is off in every spec here, so the kernel's Landlock ABI adds no note.
"""

from __future__ import annotations

import pytest

from sandbox.cgroup.discover import Delegation
from sandbox.errors import UsageError
from sandbox.model.frozen import replace
from sandbox.model.spec import LandlockSpec, Limits, Mount, Spec
from sandbox.runtime import limits

PATH = "/sys/fs/cgroup/sbx"
FULL = Delegation(PATH, "explicit", ("cpu", "cpuset", "io", "memory", "pids"))
PARTIAL = Delegation(PATH, "explicit", ("cpu", "pids"))
BASE = Spec(argv=("true",), landlock=LandlockSpec(enabled=False))
NO_DELEGATION = "it needs cgroup v2 delegation (see 'sbx doctor')"


def spec(strict: bool = False, **limit: object) -> Spec:
    return replace(BASE, limits=Limits(strict=strict, **limit))  # type: ignore[arg-type]


# spec, delegation, controllers the run cgroup lacked -> enforced, warnings
CASES = [
    ("nothing asked", spec(), FULL, (), {}, []),
    ("memory delegated", spec(memory=1 << 20), FULL, (), {"memory": True}, []),
    ("memory without delegation", spec(memory=1 << 20), None, (), {"memory": False},
     ["--memory is enforced per process only (RLIMIT_AS) by the kernel; over the whole sandbox the supervisor "
      f"counts its memory at intervals: {NO_DELEGATION}"]),
    ("memory not delegated", spec(memory=1 << 20), PARTIAL, (), {"memory": False},
     [f"--memory is enforced per process only (RLIMIT_AS) by the kernel: the memory controller is not "
      f"delegated to {PATH}"]),
    ("memory not enabled in the run cgroup", spec(memory=1 << 20), FULL, ("memory",), {"memory": False},
     [f"--memory is enforced per process only (RLIMIT_AS) by the kernel: the memory controller is not "
      f"delegated to {PATH}"]),
    ("cpu time delegated", spec(time=1.0), FULL, (), {"time": True}, []),
    ("cpu time without delegation", spec(time=1.0), None, (), {"time": False},
     ["--time is enforced per process only (RLIMIT_CPU) by the kernel; over the whole sandbox the supervisor "
      f"counts its CPU time at intervals: {NO_DELEGATION}"]),
    ("cpus without delegation", spec(cpus=0.5), None, (), {"cpus": False}, [f"--cpus is not enforced: {NO_DELEGATION}"]),
    ("cpuset not delegated", spec(cpuset="0"), PARTIAL, (), {"cpuset": False},
     [f"--cpuset is not enforced: the cpuset controller is not delegated to {PATH}"]),
    ("io not delegated", spec(io_read_bps=1 << 20, io_write_bps=1 << 20), PARTIAL, (),
     {"io_read_bps": False, "io_write_bps": False},
     [f"--io-read-bps is not enforced: the io controller is not delegated to {PATH}",
      f"--io-write-bps is not enforced: the io controller is not delegated to {PATH}"]),
    ("pids delegated", spec(pids=10), FULL, (), {"pids": True}, []),
    ("the supervisor's own and rlimits", spec(wall_time=1.0, output=1, file_size=1, open_files=8, stack=1 << 20,
                                              address_space=1 << 20),
     None, (), {"wall_time": True, "output": True, "file_size": True, "open_files": True, "stack": True,
                "address_space": True}, []),
    ("address space beside delegated memory", spec(memory=1 << 20, address_space=1 << 30), FULL, (),
     {"memory": True, "address_space": True}, []),
    ("everything delegated", spec(memory=1, cpus=1.0, cpuset="0", pids=1, time=1.0, io_read_bps=1, io_write_bps=1),
     FULL, (), {"memory": True, "pids": True, "cpus": True, "cpuset": True, "io_read_bps": True,
                "io_write_bps": True, "time": True}, []),
]


@pytest.mark.parametrize("name, run, delegation, unenforced, enforced, warnings", CASES, ids=[c[0] for c in CASES])
def test_plan(name: str, run: Spec, delegation: Delegation | None, unenforced: tuple[str, ...],
              enforced: dict[str, bool], warnings: list[str]) -> None:
    assert limits.plan(run, delegation, unenforced) == (enforced, warnings)
    strict = replace(run, limits=replace(run.limits, strict=True))
    if warnings:
        with pytest.raises(UsageError) as info:
            limits.plan(strict, delegation, unenforced)
        assert str(info.value) == warnings[0] + "; refusing to run under --strict"
    else:
        assert limits.plan(strict, delegation, unenforced) == (enforced, warnings)


def test_pids_without_controller_is_nproc() -> None:
    """A subordinate payload id is alone in its RLIMIT_NPROC count: --pids-limit holds (Linux 5.14+)."""
    run = replace(spec(pids=10), uid=1000, gid=1000, id_ranges=True)
    held = limits.nproc_limit(run) is not None
    enforced, warnings = limits.plan(run, None, ())
    assert enforced == {"pids": held}
    assert (warnings == []) == held


# limits, what holds memory -> the payload's RLIMIT_AS (None: none), and the inner spec's
# memory and address_space (sandbox_spec)
AS_CASES = [
    ("nothing", {}, {}, None, (None, None)),
    ("memory, no cgroup", {"memory": 64 << 20}, {"memory": False}, 64 << 20, (64 << 20, None)),
    ("memory held by the cgroup", {"memory": 64 << 20}, {"memory": True}, None, (None, None)),
    ("address space, no cgroup", {"address_space": 64 << 20}, {"address_space": True}, 64 << 20, (None, 64 << 20)),
    ("address space, memory held", {"memory": 1 << 30, "address_space": 64 << 20},
     {"memory": True, "address_space": True}, 64 << 20, (None, 64 << 20)),
    ("address space above held memory", {"memory": 64 << 20, "address_space": 1 << 30},
     {"memory": True, "address_space": True}, 1 << 30, (None, 1 << 30)),
    ("both, no cgroup, memory smaller", {"memory": 64 << 20, "address_space": 1 << 30},
     {"memory": False, "address_space": True}, 64 << 20, (64 << 20, 1 << 30)),
    ("both, no cgroup, address space smaller", {"memory": 1 << 30, "address_space": 64 << 20},
     {"memory": False, "address_space": True}, 64 << 20, (1 << 30, 64 << 20)),
]


@pytest.mark.parametrize("name, asked, enforced, rlimit, inner", AS_CASES, ids=[c[0] for c in AS_CASES])
def test_rlimit_as(name: str, asked: dict[str, int], enforced: dict[str, bool], rlimit: int | None,
                   inner: tuple[int | None, int | None]) -> None:
    """--address-space is RLIMIT_AS whatever holds memory; --memory is too only where no cgroup
    holds it; both: the smaller."""
    import resource

    inner_spec = limits.sandbox_spec(spec(False, **asked), enforced)
    assert (inner_spec.limits.memory, inner_spec.limits.address_space) == inner
    got = {which: (soft, hard) for which, soft, hard in limits.rlimits_of(inner_spec)}
    assert got.get(resource.RLIMIT_AS) == (None if rlimit is None else (rlimit, rlimit))


RW = (Mount("/data", "rw", "/srv/data"),)
RW_WARNING = ("-v /srv/data:/data:rw: without subordinate ids the payload is you on the host, and may chmod, "
              "replace or plant anything there (see 'sbx doctor' to add a range)")
UID0_WARNING = ("--uid 0 with an rw bind: the payload is root inside, which is you on the host, and may chmod, "
                "replace or plant anything there")
HOST_WARNING = ("--network host: the sandbox shares the host's network namespace; services on the host's "
                "loopback and abstract unix sockets are reachable")

# Not limits, but said by the same plan: which of them --strict refuses.
PROTECTIONS = [
    ("rw bind, one id", replace(BASE, mounts=RW), [RW_WARNING], True),
    ("rw bind, id ranges, uid 0", replace(BASE, mounts=RW, id_ranges=True), [UID0_WARNING], False),
    ("rw bind, id ranges, uid 1000", replace(BASE, mounts=RW, id_ranges=True, uid=1000), [], False),
    ("host network", replace(BASE, network="host"), [HOST_WARNING], False),
]


@pytest.mark.parametrize("name, run, warnings, refused", PROTECTIONS, ids=[c[0] for c in PROTECTIONS])
def test_protections(name: str, run: Spec, warnings: list[str], refused: bool) -> None:
    assert limits.plan(run, FULL, ()) == ({}, warnings)
    strict = replace(run, limits=Limits(strict=True))
    if refused:
        with pytest.raises(UsageError, match="refusing to run under --strict"):
            limits.plan(strict, FULL, ())
    else:
        assert limits.plan(strict, FULL, ()) == ({}, warnings)
