"""runtime/outcome.outcome: what the supervisor saw -> the Result (pure: a table, no sandbox)."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from sandbox.cgroup.stats import CgroupStats
from sandbox.errors import EXIT_NOTFOUND, EXIT_SBX, SetupError
from sandbox.model.frozen import replace
from sandbox.model.spec import Limits, Spec
from sandbox.runtime.census import Census
from sandbox.runtime.outcome import CPU_TIME, MEMORY, OUTPUT, WALL, outcome
from sandbox.runtime.protocol import ExecFailed, Exited, SetupFailed

SPEC = Spec(argv=("prog",))
TIMED = replace(SPEC, limits=Limits(time=1.0))
FSIZE = replace(SPEC, limits=Limits(file_size=1024))
SECCOMP_KILL = "killed by seccomp: ptrace(2) is not allowed"


def exited(code: int = 0, cpu: float = 0.0) -> Exited:
    return Exited(code << 8, cpu, 0.0, 0)


def killed(signum: int, cpu: float = 0.0) -> Exited:
    return Exited(signum, cpu, 0.0, 0)


# spec, init's report, the supervisor's cause, the exec pipe -> verdict, status, exit_code, signal, message
CASES = [
    ("ok", SPEC, exited(0), "", None, ("OK", 0, 0, None, "")),
    ("nonzero exit", SPEC, exited(3), "", None, ("RE", 3, 3, None, "")),
    ("segfault", SPEC, killed(signal.SIGSEGV), "", None, ("SG", 128 + signal.SIGSEGV, None, signal.SIGSEGV, "")),
    ("wall time", SPEC, killed(signal.SIGKILL), WALL, None, ("WTLE", 137, None, signal.SIGKILL, "")),
    ("wall time, init unreported", SPEC, None, WALL, None, ("WTLE", 137, None, signal.SIGKILL, "")),
    ("cpu time watched", TIMED, killed(signal.SIGKILL), CPU_TIME, None, ("TLE", 137, None, signal.SIGKILL, "")),
    ("output limit", SPEC, killed(signal.SIGKILL), OUTPUT, None, ("OLE", 137, None, signal.SIGKILL, "")),
    ("memory counted", SPEC, killed(signal.SIGKILL), MEMORY, None, ("MLE", 137, None, signal.SIGKILL, "")),
    ("seccomp kill reported", SPEC, killed(signal.SIGKILL), SECCOMP_KILL, None,
     ("SG", 128 + signal.SIGSYS, None, signal.SIGSYS, SECCOMP_KILL)),
    ("seccomp SIGSYS", SPEC, killed(signal.SIGSYS), "", None,
     ("SG", 128 + signal.SIGSYS, None, signal.SIGSYS, "killed by seccomp (SIGSYS)")),
    ("RLIMIT_CPU soft", TIMED, killed(signal.SIGXCPU), "", None, ("TLE", 128 + signal.SIGXCPU, None, signal.SIGXCPU, "")),
    ("RLIMIT_CPU hard", TIMED, killed(signal.SIGKILL, cpu=1.0), "", None, ("TLE", 137, None, signal.SIGKILL, "")),
    ("SIGKILL under the time limit", TIMED, killed(signal.SIGKILL, cpu=0.5), "", None,
     ("SG", 137, None, signal.SIGKILL, "")),
    ("over the time limit between checks", TIMED, exited(0, cpu=1.5), "", None, ("TLE", 0, 0, None, "")),
    ("SIGXCPU without a time limit", SPEC, killed(signal.SIGXCPU), "", None,
     ("SG", 128 + signal.SIGXCPU, None, signal.SIGXCPU, "")),
    ("RLIMIT_FSIZE", FSIZE, killed(signal.SIGXFSZ), "", None, ("OLE", 128 + signal.SIGXFSZ, None, signal.SIGXFSZ, "")),
    ("SIGXFSZ without a file size limit", SPEC, killed(signal.SIGXFSZ), "", None,
     ("SG", 128 + signal.SIGXFSZ, None, signal.SIGXFSZ, "")),
    ("command not found", SPEC, exited(EXIT_NOTFOUND), "", ExecFailed(errno.ENOENT),
     ("RE", EXIT_NOTFOUND, EXIT_NOTFOUND, None, f"cannot run 'prog': {os.strerror(errno.ENOENT)}")),
    ("payload set-up failed", SPEC, exited(EXIT_SBX), "", SetupFailed("cannot chdir"),
     ("XX", EXIT_SBX, EXIT_SBX, None, "cannot chdir")),
]


@pytest.mark.parametrize("name, spec, report, cause, exec_outcome, expected", CASES, ids=[c[0] for c in CASES])
def test_verdict(name: str, spec: Spec, report: Exited | None, cause: str,
                 exec_outcome: ExecFailed | SetupFailed | None, expected: tuple[object, ...]) -> None:
    result = outcome(spec, report, 0.5, cause, exec_outcome, None, 0, {}, None, ())
    assert (result.verdict, result.status, result.exit_code, result.signal, result.message) == expected
    assert result.oom_killed == (cause == MEMORY)


def test_init_died_unreported() -> None:
    with pytest.raises(SetupError, match="init died unexpectedly"):
        outcome(SPEC, None, 0.1, "", None, None, 0, {}, None, ())


# The figures: init's rusage, the run cgroup's (which wins), or the census's where it saw more.
FIGURES = [
    ("rusage", Exited(0, 0.25, 0.125, 2048), None, None, (0.25, 0.125, 2048 * 1024, False, None)),
    ("cgroup", Exited(0, 0.25, 0.125, 2048),
     CgroupStats(cpu_usec=600_000, user_usec=500_000, system_usec=100_000, memory_peak=1 << 20, pids_peak=3),
     None, (0.5, 0.1, 1 << 20, False, 3)),
    ("cgroup without memory.peak", Exited(0, 0.25, 0.125, 2048),
     CgroupStats(cpu_usec=0, user_usec=0, system_usec=0), None, (0.0, 0.0, 2048 * 1024, False, None)),
    ("cgroup oom", Exited(signal.SIGKILL, 0, 0, 0),
     CgroupStats(cpu_usec=0, user_usec=0, system_usec=0, oom_kills=1), None, (0.0, 0.0, 0, True, None)),
    ("census saw more", Exited(0, 0.25, 0.125, 2048), None, (1.0, 0.5, 8 << 20), (1.0, 0.5, 8 << 20, False, None)),
    ("census saw less", Exited(0, 0.25, 0.125, 2048), None, (0.1, 0.0, 1024), (0.25, 0.125, 2048 * 1024, False, None)),
]


@pytest.mark.parametrize("name, report, stats, census, expected", FIGURES, ids=[c[0] for c in FIGURES])
def test_figures(name: str, report: Exited, stats: CgroupStats | None, census: tuple[float, float, int] | None,
                 expected: tuple[object, ...]) -> None:
    counted = None
    if census is not None:
        counted = Census(-1, -1)  # no such process: only its figures are read
        counted.user, counted.system, counted.memory_peak = census
    result = outcome(SPEC, report, 0.5, "", None, stats, 7, {"memory": True}, counted, (("landlock", True),))
    assert (result.user_time, result.sys_time, result.memory_peak, result.oom_killed, result.pids_peak) == expected
    assert result.verdict == ("MLE" if expected[3] else "OK")
    assert result.cpu_time == result.user_time + result.sys_time
    assert (result.output_bytes, result.limits_enforced, result.fences, result.wall_time) == \
        (7, (("memory", True),), (("landlock", True),), 0.5)
