"""Starting a sandbox: the clone of its init (init.start), and the Prepared sandbox it gives.

spawn() makes the pipes (protocol.py), clones init into its namespaces (through an entry
process where this one has threads) and, for id ranges, writes its maps.  A Prepared holds
the supervisor's ends until its run: ready() waits for init's root, send() gives the payload
its command and fds (watch.supervise_run does the rest), discard() ends whatever is left.
A Prepared is used once.
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

from . import init as init_mod, payload as payload_mod, waiter as _waiter
from ..errors import SetupError
from ..kernel import linux
from .protocol import (Command, Failed, Handoff, ReportReader, Ready, Started, receive_namespaces, say, send_run_fds,
                       write_command)
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
        self.pidfd = -1  # adopted: its init is not our child

    @classmethod
    def start(cls, shape: Spec, program: bytes | None, nft: str | None, forward_signals: bool = False) -> Prepared:
        """Start the sandbox from this process (its init, or entry process, is our child)."""
        forwarder = Forwarder(shape.tty) if forward_signals else None
        # sbx-waiter here too: a 13 KB copy per run, and init then starts it as the payload, so no
        # copy of this interpreter is forked, set up, and torn down at the command's exec (inside
        # the run cgroup's CPU figure: ~0.9 ms natively).
        waiter = _waiter.open_program() if payload_mod.waits_in_waiter(shape, program) else -1
        try:
            child, (report_r, release_w, exec_r, command_w, channel) = spawn(shape, program, nft, waiter)
        except BaseException:
            if forwarder is not None:
                forwarder.restore()
            raise
        finally:
            if waiter >= 0:
                os.close(waiter)  # the sandbox has its copy
        return cls(shape, child, ReportReader(report_r), _socket.socket(fileno=channel), release_w, exec_r,
                   command_w, forwarder)

    @classmethod
    def adopt(cls, shape: Spec, child: int, pidfd: int, fds: tuple[int, int, int, int, int]) -> Prepared:
        """A sandbox forked elsewhere (sandbox/warm/zygote.py): its supervisor-side fds and a pidfd
        of its init, which that process reaps."""
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
            self.usernet = _start_usernet(self.shape, receive_namespaces(self.channel))

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

        With wait=False our child may be left to reap(): the kernel tears the
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
        """Stop following an adopted sandbox's init (its own parent reaps it)."""
        self.discard(wait=False)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1

    def reap(self, block: bool) -> bool:
        """Whether our child (init, or the entry process) is gone (waiting for it with block=True)."""
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


def spawn(shape: Spec, program: bytes | None, nft: str | None,
          waiter: int = -1) -> tuple[int, tuple[int, int, int, int, int]]:
    """Start a sandbox: clone its init into new namespaces (init.start), from this process, or
    where this process has other threads from a forked entry process.  Returns the pid of our
    child (init, or the entry process), and our ends: report_r, release_w, exec_r, command_w
    and the channel socket's fd (all close-on-exec).  For id ranges, returns once init's user
    namespace is mapped.  `waiter`: the memfd of sbx-waiter (waiter.open_program), or -1; the
    sandbox gets a copy."""
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
    maps = mapper = None
    if ranges is not None:
        asked_r, asked_w = os.pipe()
        mapped_r, mapped_w = os.pipe()
        maps, mapper = (asked_w, mapped_r), (asked_r, mapped_w)
    # The payload tells us its pid here (the kernel translates SCM_CREDENTIALS into our
    # pid namespace) and sends its seccomp listener fd; we send it the run's fds.
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    channel_w = theirs.detach()
    keep_w = os.dup(shape.upper_sock) if shape.upper_sock >= 0 else -1  # the caller keeps its own
    handoff = Handoff(report_w, release_r, exec_w, channel_w, command_r, program, nft, maps, keep_w,
                      os.dup(waiter) if waiter >= 0 else -1)
    ends = (report_r, release_w, exec_r, command_w)
    supervisor = os.getpid()
    try:
        if linux.single_threaded():
            child = _start(shape, handoff, ranges, mapper)
        else:  # clone copies only the calling thread: a lock another one holds would never be freed
            child = os.fork()
            if child == 0:
                init_mod.enter(shape, handoff, supervisor, lambda: _start(shape, handoff, ranges, mapper),
                               mapper or ())
    except BaseException:
        for fd in (*ends, *handoff.all(), *(mapper or ())):
            os.close(fd)
        ours.close()
        raise
    for fd in (*handoff.all(), *(mapper or ())):
        os.close(fd)
    return child, (*ends, ours.detach())


def _start(shape: Spec, handoff: Handoff, ranges: IdRanges | None, mapper: tuple[int, int] | None) -> int:
    """Clone init, write its id ranges' maps when it asks (`mapper`: our ends of the pipes it asks
    on, left open), and tell the supervisor init's pid as this process sees it (Started); the pid."""
    child = init_mod.start(shape, handoff)
    if ranges is not None and mapper is not None:
        from ..kernel import idmap

        try:
            if not idmap.map_when_asked(child, ranges, *mapper, shape.debug):
                raise SetupError("the sandbox died before its user namespace could be mapped")
        except BaseException:
            os.kill(child, _signal.SIGKILL)
            os.waitpid(child, 0)
            raise
    say(handoff.report_w, Started(child))
    return child


def _await_ready(reports: ReportReader) -> int:
    """Init's pid once init is Ready.  Whoever cloned init (Started) and init (Ready) write to the
    same pipe from two processes, so Ready may come first (with id ranges, Started is said only
    once the maps are written)."""
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


def _start_usernet(spec: Spec, namespaces: tuple[int, int]) -> UserNet:
    """pasta (or slirp4netns) on the sandbox's namespaces (fds init sent; closed with the helper),
    up before the payload is released."""
    from ..net import network as net
    from ..net.helper import UserNet

    try:
        usernet = UserNet.start(namespaces, spec.usernet, spec.publish, spec.dns, spec.host_loopback, spec.debug)
        try:
            usernet.wait_ready()
        except BaseException:
            usernet.stop()
            raise
    except net.NetError as exc:
        raise SetupError(str(exc)) from None
    return usernet
