"""The supervisor: the sbx process outside the sandbox.

It starts the sandbox, releases the payload once the root is built, enforces
wall time, forwards signals to init, and turns init's report into a Result.
It holds no state on the host: the sandbox's files live in tmpfs mounts of
its own mount namespace, which vanish with its last process.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up
import os
import time

from . import init as init_mod
from .errors import EXIT_SBX, SbxError, SetupError
from .payload import RELEASE
from .result import Result
from .spec import Spec


class _Lines:
    """Lines from a pipe, read without the io module's buffering layers."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def next(self, deadline: float | None = None) -> str | None:
        while b"\n" not in self.buffer:
            if deadline is not None and not _wait_readable(self.fd, deadline):
                raise TimeoutError
            chunk = os.read(self.fd, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")


def _wait_readable(fd: int, deadline: float) -> bool:
    import select

    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        if poller.poll(remaining * 1000 + 1):
            return True


def _open_stdio(spec: Spec) -> tuple[int, int, int]:
    """The payload's fds 0-2; files are opened here, outside, never following a final symlink."""
    fds = [0, 1, 2]
    for index, path, flags in ((0, spec.stdin, os.O_RDONLY),
                               (1, spec.stdout, os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                               (2, spec.stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        if path is None:
            continue
        try:
            fds[index] = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, 0o644)
        except OSError as exc:
            for fd in fds[:index]:
                if fd > 2:
                    os.close(fd)
            raise SbxError(f"cannot open {path}: {exc.strerror}") from None
    return fds[0], fds[1], fds[2]


def run(spec: Spec) -> Result:
    """Run one sandbox to completion.  Raises SbxError when it cannot be set up."""
    stdio = _open_stdio(spec)
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    exec_r, exec_w = os.pipe()
    supervisor = os.getpid()
    init_pid = 0
    pending: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if init_pid:
            try:
                os.kill(init_pid, signum)
            except OSError:
                pass
        else:
            pending.append(signum)

    previous = {s: _signal.signal(s, forward) for s in init_mod.FORWARDED
                if not (spec.tty and s in (_signal.SIGINT, _signal.SIGQUIT))}
    child = os.fork()
    if child == 0:
        os.close(report_r)
        os.close(release_w)
        os.close(exec_r)
        init_mod.enter(spec, report_w, release_r, exec_w, stdio, supervisor)
    for fd in (report_w, release_r, exec_w, *{f for f in stdio if f > 2}):
        os.close(fd)
    lines = _Lines(report_r)
    try:
        init_pid = _await_ready(lines)
        for signum in pending:
            forward(signum, None)
        start = time.monotonic()
        os.write(release_w, RELEASE)
        os.close(release_w)
        release_w = -1
        exec_error = _await_exec(exec_r)
        deadline = None if spec.limits.wall_time is None else start + spec.limits.wall_time
        try:
            report = lines.next(deadline)
            timed_out = False
        except TimeoutError:
            os.kill(init_pid, _signal.SIGKILL)
            report, timed_out = None, True
        wall = time.monotonic() - start
    except BaseException:
        os.kill(child, _signal.SIGKILL)
        raise
    finally:
        if release_w >= 0:
            os.close(release_w)
        os.close(report_r)
        os.close(exec_r)
        os.waitpid(child, 0)
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
    return _result(spec, report, wall, timed_out, exec_error)


def _await_ready(lines: _Lines) -> int:
    init_pid = 0
    while True:
        line = lines.next()
        if line is None:
            raise SetupError("the sandbox died while being set up")
        kind, _, rest = line.partition(" ")
        if kind == "P":
            init_pid = int(rest)
        elif kind == "E":
            raise SetupError(rest)
        elif kind == "R" and init_pid:
            return init_pid


def _await_exec(exec_r: int) -> str | None:
    """None once the payload has exec'd (its end of the pipe closed on exec), else why it could not."""
    data = os.read(exec_r, 4096)
    return data.decode(errors="replace") if data else None


def _result(spec: Spec, report: str | None, wall: float, timed_out: bool, exec_error: str | None) -> Result:
    from .result import verdict_for

    status = signal = 0
    exit_code: int | None = None
    user = system = 0.0
    maxrss = 0
    if report is not None and report.startswith("X "):
        fields = report.split()
        wstatus = int(fields[1])
        user, system, maxrss = float(fields[2]), float(fields[3]), int(fields[4]) * 1024
        if os.WIFSIGNALED(wstatus):
            signal = os.WTERMSIG(wstatus)
            status = 128 + signal
        else:
            exit_code = status = os.WEXITSTATUS(wstatus)
    elif timed_out:
        signal = _signal.SIGKILL
        status = 128 + signal
    else:
        raise SetupError("the sandbox's init died unexpectedly")
    message = ""
    if exec_error is not None:
        kind, _, detail = exec_error.partition(" ")
        if kind == "X":
            message = f"cannot run {spec.argv[0]!r}: {os.strerror(int(detail))}"
        else:
            message = detail
            status = exit_code = EXIT_SBX
    failed = exec_error is not None and status == EXIT_SBX
    verdict = verdict_for(spec, exit_code, signal, timed_out, failed, user + system)
    return Result(verdict=verdict, status=status, exit_code=exit_code, signal=signal or None,
                  wall_time=wall, cpu_time=user + system, user_time=user, sys_time=system,
                  memory_peak=maxrss, message=message)
