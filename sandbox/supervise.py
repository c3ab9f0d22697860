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
from .handoff import RELEASE, Handoff
from .result import Result
from .spec import Spec


class _Reports:
    """Init's report lines, read straight from the pipe (no io buffering layers)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def pop(self) -> str | None:
        if b"\n" not in self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")

    def fill(self) -> bool:
        """Read what is there; False at EOF."""
        chunk = os.read(self.fd, 4096)
        self.buffer += chunk
        return bool(chunk)

    def next(self) -> str | None:
        """The next line, blocking; None at EOF."""
        while True:
            line = self.pop()
            if line is not None or not self.fill():
                return line


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
    program = _seccomp_program(spec)
    stdio = _open_stdio(spec)
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    exec_r, exec_w = os.pipe()
    listener_r = listener_w = -1
    if program is not None and spec.seccomp.action == "kill":
        import _socket

        pair = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        listener_r, listener_w = pair[0].detach(), pair[1].detach()
    handoff = Handoff(report_w, release_r, exec_w, stdio, listener_w, program)
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
        for fd in (report_r, release_w, exec_r, listener_r):
            if fd >= 0:
                os.close(fd)
        init_mod.enter(spec, handoff, supervisor)
    for fd in (report_w, *set(handoff.payload_only())):
        os.close(fd)
    reports = _Reports(report_r)
    listener = -1
    try:
        init_pid = _await_ready(reports)
        for signum in pending:
            forward(signum, None)
        start = time.monotonic()
        os.write(release_w, RELEASE)
        os.close(release_w)
        release_w = -1
        exec_error = _await_exec(exec_r)
        if listener_r >= 0 and exec_error is None:
            listener = _receive_listener(listener_r)
        deadline = None if spec.limits.wall_time is None else start + spec.limits.wall_time
        report, cause = _await_end(reports, deadline, listener)
        if report is None:
            os.kill(init_pid, _signal.SIGKILL)
        wall = time.monotonic() - start
    except BaseException:
        os.kill(child, _signal.SIGKILL)
        raise
    finally:
        for fd in (release_w, report_r, exec_r, listener_r, listener):
            if fd >= 0:
                os.close(fd)
        os.waitpid(child, 0)
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
    return _result(spec, report, wall, cause, exec_error)


def _seccomp_program(spec: Spec) -> bytes | None:
    from .seccomp import SeccompError, program

    try:
        return program(spec.seccomp)
    except SeccompError as exc:
        raise SbxError(str(exc)) from None


def _receive_listener(sock_fd: int) -> int:
    """The payload's seccomp listener fd, sent before its exec (-1 when the kernel gave none)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM, 0, sock_fd)
    try:
        sock.setblocking(False)
        try:
            _, ancillary, _, _ = sock.recvmsg(1, _socket.CMSG_SPACE(4))
        except BlockingIOError:
            return -1
    finally:
        sock.detach()
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4:
            return int.from_bytes(data[:4], "little")
    return -1


def _await_end(reports: _Reports, deadline: float | None, listener: int) -> tuple[str | None, str]:
    """Init's final report, or None and why there is none: "wall", a seccomp message, or "" (init died)."""
    line = reports.pop()
    if line is not None:
        return line, ""
    if deadline is None and listener < 0:
        return reports.next(), ""
    import select

    poller = select.poll()
    poller.register(reports.fd, select.POLLIN)
    if listener >= 0:
        poller.register(listener, select.POLLIN)
    while True:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000 + 1
        events = poller.poll(timeout)
        if not events and deadline is not None and time.monotonic() >= deadline:
            return None, "wall"
        for fd, event in events:
            if fd == listener:
                if event & select.POLLIN:
                    from . import seccomp

                    note = seccomp.receive(listener)
                    if note is not None:
                        return None, seccomp.describe(note[1], note[2])
                else:
                    poller.unregister(listener)  # no filtered task left
            elif not reports.fill():
                return reports.pop(), ""
        line = reports.pop()
        if line is not None:
            return line, ""


def _await_ready(reports: _Reports) -> int:
    init_pid = 0
    while True:
        line = reports.next()
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


def _result(spec: Spec, report: str | None, wall: float, cause: str, exec_error: str | None) -> Result:
    """cause: "" (init reported), "wall" (wall time ran out), or the seccomp violation it was killed for."""
    from .result import verdict_for

    status = signal = 0
    exit_code: int | None = None
    user = system = 0.0
    maxrss = 0
    message = ""
    if report is not None and report.startswith("X "):
        fields = report.split()
        wstatus = int(fields[1])
        user, system, maxrss = float(fields[2]), float(fields[3]), int(fields[4]) * 1024
        if os.WIFSIGNALED(wstatus):
            signal = os.WTERMSIG(wstatus)
        else:
            exit_code = status = os.WEXITSTATUS(wstatus)
    elif cause == "wall":
        signal = _signal.SIGKILL
    elif cause:
        signal, message = _signal.SIGSYS, cause  # the syscall never ran; report it as its SIGSYS kill
    else:
        raise SetupError("the sandbox's init died unexpectedly")
    if signal:
        status = 128 + signal
        if signal == _signal.SIGSYS and not message:
            message = "killed by seccomp (SIGSYS)"
    if exec_error is not None:
        kind, _, detail = exec_error.partition(" ")
        if kind == "X":
            message = f"cannot run {spec.argv[0]!r}: {os.strerror(int(detail))}"
        else:
            message = detail
            status = exit_code = EXIT_SBX
    failed = exec_error is not None and status == EXIT_SBX
    verdict = verdict_for(spec, exit_code, signal, cause == "wall", failed, user + system)
    return Result(verdict=verdict, status=status, exit_code=exit_code, signal=signal or None,
                  wall_time=wall, cpu_time=user + system, user_time=user, sys_time=system,
                  memory_peak=maxrss, message=message)
