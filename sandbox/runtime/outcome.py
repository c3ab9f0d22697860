"""A run's Result from what the supervisor learnt: pure, so a table can test it (tests/test_outcome.py).

Inputs: init's last report (the payload's wait status and rusage), why the supervisor ended
the run if it did (`cause`), what the exec pipe said, the run cgroup's figures or the
census's, and which limits held.  The verdict itself is model/result.verdict_for.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal

    from ..cgroup.stats import CgroupStats
    from .census import Census
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

import os

from ..errors import EXIT_SBX, SetupError
from ..model.result import Result, verdict_for
from ..model.spec import Spec
from .protocol import ExecFailed, ExecOutcome, Exited

SIGNALLED = 128  # a shell's status for a run killed by signal N: 128 + N

# The supervisor's causes for ending a run that are not a seccomp message.
WALL, CPU_TIME, MEMORY, OUTPUT = "wall", "time", "memory", "output"


def outcome(spec: Spec, exited: Exited | None, wall: float, cause: str, exec_outcome: ExecOutcome | None,
            stats: CgroupStats | None, output_bytes: int, enforced: dict[str, bool],
            counted: Census | None, fences: tuple[tuple[str, bool], ...]) -> Result:
    """Init's report and the cgroup's figures (or the census's, without a cgroup) -> verdict and figures.

    `cause`: "" when init reported on its own; WALL, CPU_TIME, MEMORY (counted without a
    cgroup) or OUTPUT when the supervisor killed the run; else a seccomp message (the
    syscall never ran: reported as its SIGSYS kill).  SetupError when init died unreported.
    """
    status = signal = 0
    exit_code: int | None = None
    user = system = 0.0
    maxrss = nvcsw = nivcsw = 0
    message = ""
    if exited is not None:
        wstatus = exited.wstatus
        user, system, maxrss = exited.utime, exited.stime, exited.maxrss_kib * 1024
        nvcsw, nivcsw = exited.nvcsw, exited.nivcsw
        if os.WIFSIGNALED(wstatus):
            signal = os.WTERMSIG(wstatus)
        else:
            exit_code = status = os.WEXITSTATUS(wstatus)
    elif not cause:
        raise SetupError("the sandbox's init died unexpectedly")
    killed = bool(cause)  # the supervisor ended the run
    oom = cause == MEMORY  # the census saw more than --memory: killed as memory.max would
    if oom:
        cause = ""
        signal, exit_code = _signal.SIGKILL, None
    if cause:
        signal, exit_code = _signal.SIGKILL, None
        if cause not in (WALL, CPU_TIME, OUTPUT):
            signal, message = _signal.SIGSYS, cause  # the syscall never ran: report it as its SIGSYS kill
    if signal:
        status = SIGNALLED + signal
        if signal == _signal.SIGSYS and not message:
            message = "killed by seccomp (SIGSYS)"
    if isinstance(exec_outcome, ExecFailed):
        message = f"cannot run {spec.argv[0]!r}: {os.strerror(exec_outcome.errno)}"
    elif exec_outcome is not None:
        message = exec_outcome.message
        status = exit_code = EXIT_SBX
    pids_peak = None
    memory_peak = maxrss
    if counted is not None:
        # Init's rusage misses what nobody reaped; the census misses the ends between its scans.
        if counted.cpu > user + system:
            user, system = counted.user, counted.system
        memory_peak = max(memory_peak, counted.memory_peak)
    if stats is not None:
        user, system = stats.user_usec / 1e6, stats.system_usec / 1e6
        oom = stats.oom_kills > 0
        pids_peak = stats.pids_peak
        if stats.memory_peak is not None:
            memory_peak = stats.memory_peak
    failed = exec_outcome is not None and status == EXIT_SBX
    verdict = verdict_for(spec, exit_code, signal, cause, failed, user + system, oom)
    return Result(verdict=verdict, status=status, exit_code=exit_code, signal=signal or None,
                  wall_time=wall, cpu_time=user + system, user_time=user, sys_time=system,
                  memory_peak=memory_peak, oom_killed=oom, pids_peak=pids_peak, output_bytes=output_bytes,
                  limits_enforced=tuple(enforced.items()), message=message, fences=fences, max_rss=maxrss,
                  csw_voluntary=nvcsw, csw_forced=nivcsw, killed=killed,
                  cgroup=stats is not None and stats.memory_peak is not None)
