"""Starting a sandbox: the fork into entry (init.enter), and the Prepared sandbox it gives.

spawn() makes the pipes (protocol.py), forks the entry process and, for id ranges, writes
its maps.  A Prepared holds the supervisor's ends until its run: ready() waits for init's
root, send() gives the payload its command and fds (watch.supervise_run does the rest),
discard() ends whatever is left.  A Prepared is used once.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal

    from ..kernel.idmap import IdRanges
    from ..net.helper import UserNet
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

import _socket
import os

from . import init as init_mod
from ..errors import SetupError
from .protocol import Command, Failed, Handoff, ReportReader, Ready, Started, send_run_fds, write_command
from ..model.spec import Spec
from .watch import Forwarder


class Prepared:
    """A sandbox started from a shape: namespaces, root and a payload waiting for its command."""

    def __init__(self, shape: Spec, child: int, reports: ReportReader, channel: _socket.socket, release_w: int,
                 exec_r: int, command_w: int, forwarder: Forwarder | None) -> None:
        self.shape = shape
        self.child = child
        self.reports = reports
        self.channel = channel
        self.release_w = release_w
        self.exec_r = exec_r
        self.command_w = command_w
        self.forwarder = forwarder
        self.init_pid = 0
        self.usernet: UserNet | None = None
        self.reaped = False
        # What the host paths it bound named as it was built (pool.identity_of); None: unchecked.
        self.identity: tuple[tuple[int, int, int] | None, ...] | None = None
        self.pidfd = -1  # adopted: the entry process is not our child

    @classmethod
    def start(cls, shape: Spec, program: bytes | None, nft: str | None, forward_signals: bool = False) -> Prepared:
        """Fork the sandbox from this process (its entry process is our child)."""
        forwarder = Forwarder(shape.tty) if forward_signals else None
        try:
            child, (report_r, release_w, exec_r, command_w, channel) = spawn(shape, program, nft)
        except BaseException:
            if forwarder is not None:
                forwarder.restore()
            raise
        return cls(shape, child, ReportReader(report_r), _socket.socket(fileno=channel), release_w, exec_r,
                   command_w, forwarder)

    @classmethod
    def adopt(cls, shape: Spec, child: int, pidfd: int, fds: tuple[int, int, int, int, int]) -> Prepared:
        """A sandbox forked elsewhere (sandbox/warm/zygote.py): its supervisor-side fds and a pidfd
        of its entry process, which that process reaps."""
        report_r, release_w, exec_r, command_w, channel = fds
        prepared = cls(shape, child, ReportReader(report_r), _socket.socket(fileno=channel), release_w, exec_r,
                       command_w, None)
        prepared.pidfd = pidfd
        return prepared

    def ready(self) -> None:
        """Wait until init has built the root (and user-mode networking is up)."""
        if self.init_pid:
            return
        self.init_pid = _await_ready(self.reports)
        if self.forwarder is not None:
            self.forwarder.start(self.init_pid)
        if self.shape.network == "pasta":
            self.usernet = _start_usernet(self.shape, self.child)

    def usable(self) -> bool:
        """Still waiting for a command: init has said nothing since it was ready."""
        import select

        poller = select.poll()
        poller.register(self.reports.fd, select.POLLIN)
        return not poller.poll(0)

    def send(self, command: Command, fds: tuple[int, ...]) -> None:
        """The run's command, then its fds (stdin, stdout, stderr, --pass-fd ones)."""
        try:
            write_command(self.command_w, command)
            send_run_fds(self.channel, fds)
        except (BrokenPipeError, ConnectionRefusedError):
            pass  # the payload is gone; init reports how

    def kill(self) -> None:
        if self.reaped:
            return
        try:
            if self.pidfd >= 0:
                _signal.pidfd_send_signal(self.pidfd, _signal.SIGKILL)
            else:
                os.kill(self.child, _signal.SIGKILL)
        except ProcessLookupError:
            pass

    def discard(self, wait: bool = True) -> None:
        """End the sandbox (a no-op once its run has ended) and release what it holds.

        With wait=False the entry process may be left to reap(): the kernel tears the
        namespaces down as it exits, which need not delay the result.
        """
        if self.usernet is not None:
            self.usernet.stop()
            self.usernet = None
        if self.command_w >= 0 or self.release_w >= 0:
            self.kill()  # never used, or stopped midway
        for fd in (self.command_w, self.release_w, self.reports.fd, self.exec_r):
            if fd >= 0:
                os.close(fd)
        self.command_w = self.release_w = self.exec_r = self.reports.fd = -1
        self.channel.close()
        if self.forwarder is not None:
            self.forwarder.restore()
            self.forwarder = None
        if wait:
            self.reap(block=True)

    def forget(self) -> None:
        """Stop following an adopted sandbox's entry process (its own parent reaps it)."""
        self.discard(wait=False)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def reap(self, block: bool) -> bool:
        """Whether the entry process is gone (waiting for it with block=True)."""
        if self.reaped:
            return True
        if self.pidfd >= 0:
            import select

            # Readable once the process has exited; its parent reaps it.
            if select.select([self.pidfd], [], [], None if block else 0)[0]:
                os.close(self.pidfd)
                self.pidfd = -1
                self.reaped = True
            return self.reaped
        try:
            pid, _ = os.waitpid(self.child, 0 if block else os.WNOHANG)
        except ChildProcessError:
            pid = self.child
        self.reaped = pid == self.child
        return self.reaped


def spawn(shape: Spec, program: bytes | None, nft: str | None) -> tuple[int, tuple[int, int, int, int, int]]:
    """Fork a sandbox's entry process; its pid, and our ends: report_r, release_w, exec_r,
    command_w and the channel socket's fd (all close-on-exec).  For id ranges, returns once
    the entry process's user namespace is mapped."""
    ranges = None
    if shape.id_ranges:
        from ..kernel import idmap

        ranges = idmap.for_run()
        if ranges is None:
            raise SetupError("this run maps id ranges (its payload's own ids, or an image whose files keep "
                             "their owners), which needs subordinate ids (/etc/subuid and /etc/subgid) and "
                             "newuidmap/newgidmap (Debian package uidmap)")
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    exec_r, exec_w = os.pipe()
    command_r, command_w = os.pipe()
    maps = None
    if ranges is not None:
        asked_r, asked_w = os.pipe()
        mapped_r, mapped_w = os.pipe()
        maps = (asked_w, mapped_r)
    # The payload tells us its pid here (the kernel translates SCM_CREDENTIALS into our
    # pid namespace) and sends its seccomp listener fd; we send it the run's fds.
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    channel_w = theirs.detach()
    keep_w = os.dup(shape.upper_sock) if shape.upper_sock >= 0 else -1  # the caller keeps its own
    handoff = Handoff(report_w, release_r, exec_w, channel_w, command_r, program, nft, maps, keep_w)
    ends = (report_r, release_w, exec_r, command_w)
    supervisor = os.getpid()
    try:
        child = os.fork()
    except BaseException:
        for fd in (*ends, *handoff.all(), *(() if maps is None else (asked_r, mapped_w))):
            os.close(fd)
        ours.close()
        raise
    if child == 0:
        if maps is not None:
            os.close(asked_r)
            os.close(mapped_w)
        init_mod.enter(shape, handoff, supervisor)
    for fd in handoff.all():
        os.close(fd)
    if ranges is not None:
        try:
            _map_ranges(child, ranges, asked_r, mapped_w, shape.debug)
        except BaseException:
            os.kill(child, _signal.SIGKILL)
            os.waitpid(child, 0)
            for fd in ends:
                os.close(fd)
            ours.close()
            raise
    return child, (*ends, ours.detach())


def _map_ranges(child: int, ranges: IdRanges, asked_r: int, mapped_w: int, debug: bool) -> None:
    from ..kernel import idmap

    try:
        if not idmap.map_when_asked(child, ranges, asked_r, mapped_w, debug):
            raise SetupError("the sandbox died before its user namespace could be mapped")
    finally:
        os.close(asked_r)
        os.close(mapped_w)


def _await_ready(reports: ReportReader) -> int:
    """Init's pid once init is Ready.  The entry process (Started) and init (Ready) write to the
    same pipe from two processes, so Ready may come first when the entry process is slow to run."""
    init_pid = 0
    root_ready = False
    while not (init_pid and root_ready):
        report = reports.next()
        if report is None:
            raise SetupError("the sandbox died while being set up")
        if isinstance(report, Started):
            init_pid = report.pid
        elif isinstance(report, Failed):
            raise SetupError(report.message)
        elif isinstance(report, Ready):
            root_ready = True
    return init_pid


def _start_usernet(spec: Spec, target: int) -> UserNet:
    """pasta (or slirp4netns) on the entry process's namespaces, up before the payload is released."""
    from ..net import network as net
    from ..net.helper import UserNet

    try:
        usernet = UserNet.start(target, spec.usernet, spec.publish, spec.dns, spec.host_loopback, spec.debug)
        try:
            usernet.wait_ready()
        except BaseException:
            usernet.stop()
            raise
    except net.NetError as exc:
        raise SetupError(str(exc)) from None
    return usernet
