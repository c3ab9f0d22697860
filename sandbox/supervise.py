"""The supervisor: the sbx process outside the sandbox.

It starts the sandbox, puts the payload in its run cgroup and releases it
once the root is built, enforces CPU time, wall time and output size, forwards
signals to init, and turns what it measured into a Result.  It holds no
state on the host but the run cgroup, which it removes: the sandbox's files
live in tmpfs mounts of its own mount namespace, which vanish with it.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable

    from .cgroup import CgroupStats, Delegation, RunCgroup
    from .net import UserNet
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

import os
import time

from . import init as init_mod
from . import limits as limits_mod
from .errors import EXIT_SBX, SbxError, SetupError
from .handoff import RELEASE, Handoff
from .result import Result
from .spec import Spec

CHUNK = 65536


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


class _Output:
    """Copies the payload's stdout and stderr to their destinations, counting bytes against a limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0
        self.exceeded = False
        self.pipes: dict[int, int] = {}  # read end -> destination

    def pipe(self, destination: int) -> int:
        """A pipe whose read end we drain into `destination`; returns the payload's write end."""
        read_end, write_end = os.pipe()
        self.pipes[read_end] = destination
        return write_end

    def pump(self, fd: int) -> bool:
        """Copy what is readable; False at EOF (the pipe is then closed)."""
        data = os.read(fd, CHUNK)
        if not data:
            os.close(fd)
            del self.pipes[fd]
            return False
        if self.limit is not None:
            room = self.limit - self.total
            if len(data) > room:
                data, self.exceeded = data[: max(room, 0)], True
        self.total += len(data)
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.pipes[fd], view):]
            except BrokenPipeError:
                break  # our reader went away; keep counting, stop copying
        return True

    def drain(self) -> None:
        for fd in list(self.pipes):
            while self.pump(fd):
                pass

    def close(self) -> None:
        for fd in self.pipes:
            os.close(fd)
        self.pipes.clear()


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


def _warn(line: str) -> None:
    import sys

    sys.stderr.write(f"sbx: warning: {line}\n")


def run(spec: Spec, warn: Callable[[str], None] = _warn) -> Result:
    """Run one sandbox to completion.

    Raises SbxError for bad input and for a run cgroup that cannot be made; a
    sandbox that cannot be built (or whose init dies) is an XX result instead,
    so --result and --meta still say what happened.

    `warn` gets each protection or limit that is weaker than asked (an error
    instead under --strict), before anything runs.
    """
    program = _seccomp_program(spec)
    delegation = _delegation(spec)
    cgroup = None
    if delegation is not None:
        from .cgroup import CgroupError, RunCgroup, devices_behind, remove_stale, run_name

        remove_stale(delegation)  # of supervisors that were SIGKILLed
        devices: tuple[str, ...] = ()
        if spec.limits.io_read_bps is not None or spec.limits.io_write_bps is not None:
            devices = devices_behind(m.source for m in spec.mounts if m.source is not None)
        try:
            cgroup = RunCgroup.create(delegation, spec.limits, run_name(os.getpid(), time.monotonic_ns()), devices)
        except CgroupError as exc:
            raise SetupError(str(exc)) from None
    try:
        enforced, warnings = limits_mod.plan(spec, delegation, () if cgroup is None else cgroup.unenforced)
        for line in warnings:
            warn(line)
        try:
            return _run(spec, _sandbox_spec(spec, enforced), program, cgroup, enforced)
        except SetupError as exc:
            # The sandbox could not be built or died: a result all the same (XX), so a
            # judge reading --result/--meta sees a sandbox failure, not a missing file.
            return Result(verdict="XX", status=EXIT_SBX, message=str(exc), limits_enforced=tuple(enforced.items()))
    finally:
        if cgroup is not None:
            from .cgroup import CgroupError

            try:
                cgroup.remove()
            except CgroupError as exc:
                warn(f"run cgroup left behind: {exc}")


def _sandbox_spec(spec: Spec, enforced: dict[str, bool]) -> Spec:
    """The spec init and the payload get: their rlimits, where the run cgroup does better.

    No RLIMIT_AS where memory.max holds the whole tree: RLIMIT_AS counts
    address space, not memory, so a run that maps more than it touches (Go,
    Java, ASan, a big malloc arena) would fail with ENOMEM, and an over-limit
    allocation would be an RE instead of the cgroup's MLE.

    RLIMIT_CPU only as a backstop a second past the limit where the supervisor
    watches the cgroup's CPU time: the payload's own clock also counts its set-up
    before release, which the run's figure leaves out, so at the limit itself
    the rlimit would fire first and turn a precise TLE into an early SIGXCPU.
    """
    changes: dict[str, object] = {}
    if spec.limits.memory is not None and enforced.get("memory"):
        changes["memory"] = None
    if spec.limits.time is not None and enforced.get("time"):
        changes["time"] = spec.limits.time + 1.0
    if not changes:
        return spec
    from .frozen import replace

    return replace(spec, limits=replace(spec.limits, **changes))  # type: ignore[arg-type]


def _delegation(spec: Spec) -> Delegation | None:
    from .cgroup import CgroupError, discover

    try:
        return discover(spec.cgroup, os.environ)
    except CgroupError as exc:
        raise SetupError(str(exc)) from None


def _run(spec: Spec, sandbox_spec: Spec, program: bytes | None, cgroup: RunCgroup | None,
         enforced: dict[str, bool]) -> Result:
    """One run; `sandbox_spec` is what init and the payload get (see _sandbox_spec)."""
    import _socket

    stdio = _open_stdio(spec)
    output = _Output(spec.limits.output)
    if spec.limits.output is not None:
        stdio = (stdio[0], output.pipe(stdio[1]), output.pipe(stdio[2]))
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    exec_r, exec_w = os.pipe()
    # The payload tells us its pid here (the kernel translates SCM_CREDENTIALS into our
    # pid namespace) and sends its seccomp listener fd.
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    channel_w = theirs.detach()
    handoff = Handoff(report_w, release_r, exec_w, stdio, channel_w, program, _egress_rules(spec))
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
        ours.close()
        for fd in (report_r, release_w, exec_r, *output.pipes):
            os.close(fd)
        init_mod.enter(sandbox_spec, handoff, supervisor)
    for fd in (report_w, *set(handoff.payload_only())):
        os.close(fd)
    reports = _Reports(report_r)
    listener = -1
    usernet = None
    try:
        init_pid = _await_ready(reports)
        if spec.network == "pasta":
            usernet = _start_usernet(spec, child)
        ready = _await_payload(ours, reports)
        payload = None if ready is None else ready[0]
        if ready is not None and ready[1] >= 0:
            listener = ready[1]
        baseline = None
        if payload is not None and cgroup is not None:
            from .cgroup import CgroupError

            try:
                cgroup.add(payload)
                baseline = cgroup.stats()
            except CgroupError as exc:
                if _alive(payload):
                    raise SetupError(str(exc)) from None
                payload = None  # a forwarded signal ended it first
        if payload is None:
            # The payload died before its release (a forwarded SIGTERM, say): no figures, but
            # the run ends as the payload did (init reports how), not as a failure of sbx.
            report, cause, stats, wall = reports.next(), "", None, 0.0
            exec_error = _await_exec(exec_r)  # why it died, when it could tell
        else:
            for signum in pending:
                forward(signum, None)
            start = time.monotonic()
            try:
                os.write(release_w, RELEASE)
            except BrokenPipeError:
                pass  # a forwarded signal ended the payload first; init reports how it died
            os.close(release_w)
            release_w = -1
            exec_error = _await_exec(exec_r)
            watch = _Watch(spec, cgroup, baseline, start, listener, output, payload)
            report, cause = watch.wait(reports)
            if cause:
                _kill_payload(cgroup, payload)
                report = reports.next()
            wall = time.monotonic() - start
            output.drain()
            stats = None if cgroup is None or baseline is None else cgroup.stats().since(baseline)
    except BaseException:
        os.kill(child, _signal.SIGKILL)
        raise
    finally:
        if usernet is not None:
            usernet.stop()
        ours.close()
        output.close()
        for fd in (release_w, report_r, exec_r, listener):
            if fd >= 0:
                os.close(fd)
        os.waitpid(child, 0)
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
    return _result(spec, report, wall, cause, exec_error, stats, output.total, enforced)


def _egress_rules(spec: Spec) -> str | None:
    if spec.network != "pasta" or not (spec.egress_allow or spec.egress_deny):
        return None
    from . import net

    try:
        return net.nft_script(net.resolve_rules(spec.egress_allow), net.resolve_rules(spec.egress_deny), spec.dns)
    except net.NetError as exc:
        raise SbxError(str(exc)) from None


def _start_usernet(spec: Spec, target: int) -> UserNet:
    """pasta (or slirp4netns) on the entry process's namespaces, up before the payload is released."""
    from . import net

    try:
        usernet = net.UserNet.start(target, spec.publish, spec.dns, spec.host_loopback)
        try:
            usernet.wait_ready()
        except BaseException:
            usernet.stop()
            raise
    except net.NetError as exc:
        raise SetupError(str(exc)) from None
    return usernet


def _kill_payload(cgroup: RunCgroup | None, payload: int) -> None:
    """End the payload's whole tree; init then kills the rest and reports."""
    if cgroup is not None:
        from .cgroup import CgroupError

        try:
            cgroup.kill()
            return
        except CgroupError:
            pass  # remove() tries again; meanwhile end the payload itself
    try:
        os.kill(payload, _signal.SIGKILL)
    except ProcessLookupError:
        pass


def _seccomp_program(spec: Spec) -> bytes | None:
    from .seccomp import SeccompError, program

    try:
        return program(spec.seccomp)
    except SeccompError as exc:
        raise SbxError(str(exc)) from None


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _await_payload(sock: object, reports: _Reports) -> tuple[int, int] | None:
    """The payload's pid as we see it (its message's credentials) and its seccomp listener fd (or -1).

    The payload sends them once it is ready to exec.  None when init reported the payload's end
    instead: it died first (a forwarded signal, or a failure it wrote to the exec pipe).
    """
    import _socket
    import select

    assert isinstance(sock, _socket.socket)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(reports.fd, select.POLLIN)
    while True:
        for fd, _event in poller.poll():
            if fd == reports.fd:
                if not reports.fill():
                    raise SetupError("the payload died before it could be released")
                if reports.buffer.startswith(b"X "):
                    return None
                if reports.buffer:
                    raise SetupError("the payload died before it could be released")
                continue
            _, ancillary, _, _ = sock.recvmsg(1, _socket.CMSG_SPACE(12) + _socket.CMSG_SPACE(4))
            pid = listener = -1
            for level, kind, data in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS and len(data) >= 12:
                    pid = int.from_bytes(data[:4], "little")
                elif level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4:
                    listener = int.from_bytes(data[:4], "little")
            if pid <= 0:
                if listener >= 0:
                    os.close(listener)
                raise SetupError("the payload's message carried no credentials")
            return pid, listener


def _await_exec(exec_r: int) -> str | None:
    """None once the payload has exec'd (its end of the pipe closed on exec), else why it could not."""
    data = os.read(exec_r, 4096)
    return data.decode(errors="replace") if data else None


class _Watch:
    """Waits for init's final report while enforcing the limits only the supervisor can.

    Causes: "wall", "time" (CPU time), "output", or a seccomp message; ""
    when init reported on its own.  CPU time is the run cgroup's; without
    one, the payload process's own and that of the children it has reaped
    (/proc/PID/stat, in clock ticks): RLIMIT_CPU alone would only stop it at
    the next whole second.
    """

    def __init__(self, spec: Spec, cgroup: RunCgroup | None, baseline: CgroupStats | None, start: float,
                 listener: int, output: _Output, payload: int) -> None:
        self.spec = spec
        self.cgroup = cgroup
        self.baseline_usec = 0 if baseline is None else baseline.cpu_usec
        self.deadline = None if spec.limits.wall_time is None else start + spec.limits.wall_time
        self.listener = listener
        self.output = output
        self.cpu_limit = spec.limits.time
        self.stat_path = f"/proc/{payload}/stat"
        self.ncpus = 1.0
        self.tick = 0.01
        if self.cpu_limit is not None:
            from .cgroup import usable_cpus

            self.ncpus = usable_cpus(spec.limits)
            if cgroup is None:
                self.tick = 1.0 / os.sysconf("SC_CLK_TCK")

    def cpu_used(self) -> float:
        if self.cgroup is None:
            return self._process_cpu()
        try:
            with open(self.cgroup.path + "/cpu.stat", "rb") as f:
                first = f.readline()  # "usage_usec N"
        except OSError:
            return 0.0
        return (int(first.split()[1]) - self.baseline_usec) / 1e6

    def _process_cpu(self) -> float:
        try:
            with open(self.stat_path, "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
        except OSError:
            return 0.0  # gone: init reports it
        # utime stime cutime cstime
        return sum(int(x) for x in fields[11:15]) * self.tick

    def next_timeout(self) -> float | None:
        """Milliseconds until something must be checked, None for never."""
        now = time.monotonic()
        waits = []
        if self.deadline is not None:
            waits.append(self.deadline - now)
        if self.cpu_limit is not None:
            from .cgroup import next_check_delay

            waits.append(next_check_delay(self.cpu_limit, self.cpu_used(), self.ncpus))
        if not waits:
            return None
        return max(0.0, min(waits)) * 1000

    def expired(self) -> str:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "wall"
        if self.cpu_limit is not None and self.cpu_used() >= self.cpu_limit:
            return "time"
        return ""

    def wait(self, reports: _Reports) -> tuple[str | None, str]:
        line = reports.pop()
        if line is not None:
            return line, ""
        import select

        poller = select.poll()
        poller.register(reports.fd, select.POLLIN)
        for fd in self.output.pipes:
            poller.register(fd, select.POLLIN)
        if self.listener >= 0:
            poller.register(self.listener, select.POLLIN)
        while True:
            timeout = self.next_timeout()
            events = poller.poll(None if timeout is None else timeout + 0.5)
            cause = self.expired()
            if cause:
                return None, cause
            for fd, event in events:
                if fd == self.listener:
                    cause = self._seccomp(event)
                    if cause:
                        return None, cause
                    if not event & select.POLLIN:
                        poller.unregister(fd)  # no filtered task left
                elif fd in self.output.pipes:
                    if not self.output.pump(fd):
                        poller.unregister(fd)
                    elif self.output.exceeded:
                        return None, "output"
                elif not reports.fill():
                    return reports.pop(), ""
            line = reports.pop()
            if line is not None:
                return line, ""

    def _seccomp(self, event: int) -> str:
        import select

        if not event & select.POLLIN:
            return ""
        from . import seccomp

        note = seccomp.receive(self.listener)
        return "" if note is None else seccomp.describe(note[1], note[2])


def _result(spec: Spec, report: str | None, wall: float, cause: str, exec_error: str | None,
            stats: CgroupStats | None, output_bytes: int, enforced: dict[str, bool]) -> Result:
    """Init's report and the cgroup's figures -> verdict and figures."""
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
    elif not cause:
        raise SetupError("the sandbox's init died unexpectedly")
    if cause:
        signal, exit_code = _signal.SIGKILL, None
        if cause not in ("wall", "time", "output"):
            signal, message = _signal.SIGSYS, cause  # the syscall never ran: report it as its SIGSYS kill
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
    oom = False
    pids_peak = None
    memory_peak = maxrss
    if stats is not None:
        user, system = stats.user_usec / 1e6, stats.system_usec / 1e6
        oom = stats.oom_kills > 0
        pids_peak = stats.pids_peak
        if stats.memory_peak is not None:
            memory_peak = stats.memory_peak
    failed = exec_error is not None and status == EXIT_SBX
    verdict = verdict_for(spec, exit_code, signal, cause, failed, user + system, oom)
    return Result(verdict=verdict, status=status, exit_code=exit_code, signal=signal or None,
                  wall_time=wall, cpu_time=user + system, user_time=user, sys_time=system,
                  memory_peak=memory_peak, oom_killed=oom, pids_peak=pids_peak, output_bytes=output_bytes,
                  limits_enforced=tuple(enforced.items()), message=message)
