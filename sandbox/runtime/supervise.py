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

    from .census import Census
    from ..cgroup.manager import CgroupStats, Delegation, RunCgroup
    from ..kernel.idmap import IdRanges
    from ..net.network import UserNet
    from typing import Any

    from .stdio import Pumps
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

import os
import time

from . import init as init_mod
from . import landlock
from . import limits as limits_mod
from ..errors import EXIT_SBX, SbxError, SetupError, UsageError
from .handoff import RELEASE, Command, Handoff
from ..model.result import Result
from ..model.spec import Spec

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


class Streams:
    """A run's stdin, stdout and stderr as fds sbx owns; None for stdout/stderr means capture.

    These are the caller's: the payload gets them only where they are no host file (see stdio.py),
    else pipes sbx feeds or drains.  The fds are closed with close(); fds 0-2 of sbx itself are
    never closed.
    """

    def __init__(self, stdin: int = 0, stdout: int | None = 1, stderr: int | None = 2,
                 capture_limit: int = 16 << 20) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.capture_limit = capture_limit

    def close(self, keep: list[int] | tuple[int, ...] = ()) -> None:
        """Close our fds but those in `keep` (still to be written to); close() again for them."""
        if self.stdin > 2 and self.stdin not in keep:
            os.close(self.stdin)
            self.stdin = 0
        if self.stdout is not None and self.stdout > 2 and self.stdout not in keep:
            os.close(self.stdout)
            self.stdout = 1
        if self.stderr is not None and self.stderr > 2 and self.stderr not in keep:
            os.close(self.stderr)
            self.stderr = 2


def open_streams(spec: Spec) -> Streams:
    """The spec's --stdin/--stdout/--stderr files, opened here, outside, before the sandbox is built:
    outputs with no symlink in any component and only as regular files, nothing blocking (see hostfile)."""
    from ..kernel.hostfile import open_input, open_output

    fds = [0, 1, 2]
    for index, path, flag in ((0, spec.stdin, "--stdin"), (1, spec.stdout, "--stdout"), (2, spec.stderr, "--stderr")):
        if path is None:
            continue
        try:
            fds[index] = open_input(path, flag) if index == 0 else open_output(path, flag)
        except SbxError:
            for fd in fds[:index]:
                if fd > 2:
                    os.close(fd)
            raise
    return Streams(fds[0], fds[1], fds[2])


def _warn(line: str) -> None:
    import sys

    sys.stderr.write(f"sbx: warning: {line}\n")


def run(spec: Spec, warn: Callable[[str], None] = _warn) -> Result:
    """Run one sandbox to completion, from the command line (signals forwarded to it).

    Raises SbxError for bad input and for a run cgroup that cannot be made; a
    sandbox that cannot be built (or whose init dies) is an XX result instead,
    so --result and --meta still say what happened.

    `warn` gets each protection or limit that is weaker than asked (an error
    instead under --strict), before anything runs.
    """
    program = seccomp_program(spec)
    delegation = delegation_for(spec.cgroup)
    if delegation is not None:
        from ..cgroup.manager import remove_stale

        remove_stale(delegation)  # of supervisors that were SIGKILLed
    streams = open_streams(spec)
    try:
        return execute(spec, streams, program, delegation, warn, forward_signals=True)
    finally:
        streams.close()


def execute(spec: Spec, streams: Streams, program: bytes | None, delegation: Delegation | None,
            warn: Callable[[str], None], prepared: Prepared | None = None, forward_signals: bool = False,
            cpu: int | None = None, wait: bool = True) -> Result:
    """One run: its cgroup, its limits plan, and a sandbox (`prepared` in advance, or started now).

    `prepared` must have been started with shape_of(spec); it is used up either way.  `cpu`:
    pin the payload to this CPU.  wait=False: the sandbox's entry process may be left for
    prepared.reap() (the kernel tears the namespaces down as it exits).
    """
    cgroup = None
    if delegation is not None:
        from ..cgroup.manager import CgroupError, RunCgroup, devices_behind, run_name

        devices: tuple[str, ...] = ()
        if spec.limits.io_read_bps is not None or spec.limits.io_write_bps is not None:
            devices = devices_behind(m.source for m in spec.mounts if m.source is not None)
        try:
            cgroup = RunCgroup.create(delegation, spec.limits, run_name(os.getpid(), time.monotonic_ns()), devices)
        except CgroupError as exc:
            if prepared is not None:
                prepared.discard()
            raise SetupError(str(exc)) from None
    terminals = _save_terminals(spec, streams)
    try:
        enforced, warnings = limits_mod.plan(spec, delegation, () if cgroup is None else cgroup.unenforced)
        for line in warnings:
            warn(line)
        unenforced = () if cgroup is None else cgroup.unenforced
        inner = sandbox_spec(spec, enforced, None if limits_mod.by_cgroup("pids", delegation, unenforced)
                             else limits_mod.nproc_limit(spec))
        try:
            if prepared is None:
                prepared = Prepared.start(shape_of(inner), program, egress_rules(spec),
                                          forward_signals=forward_signals)
            return prepared.run(spec, inner, streams, cgroup, enforced, cpu)
        except SetupError as exc:
            # The sandbox could not be built or died: a result all the same (XX), so a
            # judge reading --result/--meta sees a sandbox failure, not a missing file.
            return Result(verdict="XX", status=EXIT_SBX, message=str(exc), limits_enforced=tuple(enforced.items()),
                          fences=landlock.fences(spec.landlock))
    finally:
        if prepared is not None:
            prepared.discard(wait)
        if cgroup is not None:
            from ..cgroup.manager import CgroupError

            try:
                cgroup.remove()
            except CgroupError as exc:
                warn(f"run cgroup left behind: {exc}")
        if terminals:
            from .stdio import restore_terminals

            restore_terminals(terminals)


def _save_terminals(spec: Spec, streams: Streams) -> list[tuple[int, list[Any]]]:
    """With -t the payload shares the caller's terminal: its settings, to put back however the run ends
    (a payload killed in raw mode without echo).  Without -t no terminal reaches it (stdio.py)."""
    if not spec.tty:
        return []
    from .stdio import save_terminals

    return save_terminals((0, 1, 2, streams.stdin, *(fd for fd in (streams.stdout, streams.stderr) if fd is not None)))


def sandbox_spec(spec: Spec, enforced: dict[str, bool], nproc: int | None = None) -> Spec:
    """The spec init and the payload get: their rlimits, where the run cgroup does better.

    `nproc`: the RLIMIT_NPROC standing in for the pids controller (limits.nproc_limit), or
    None; the inner spec's `pids` is that rlimit's value, not a task count.

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
    if spec.limits.pids is not None:
        changes["pids"] = nproc
    if spec.limits.memory is not None and enforced.get("memory"):
        changes["memory"] = None
    if spec.limits.time is not None and enforced.get("time"):
        changes["time"] = spec.limits.time + 1.0
    if not changes:
        return spec
    from ..model.frozen import replace

    return replace(spec, limits=replace(spec.limits, **changes))  # type: ignore[arg-type]


def shape_of(spec: Spec) -> Spec:
    """What a sandbox is built from, without the per-run parts (command, limits, files to write).

    Two runs with equal shapes can use sandboxes prepared the same way.
    """
    from ..model.frozen import replace
    from ..model.spec import Limits

    return replace(spec, argv=(), env=(), limits=Limits(), image_lock=-1, pass_fds=(),
                   stdin=None, stdout=None, stderr=None, result=None, meta=None)


def rlimits_of(spec: Spec) -> tuple[tuple[int, int, int], ...]:
    """The payload's rlimits (after sandbox_spec), as (resource, soft, hard)."""
    import resource

    limits = spec.limits
    out = []
    if limits.time is not None:
        seconds = max(1, int(limits.time + 0.999))
        out.append((resource.RLIMIT_CPU, seconds, seconds + 1))
    for which, value in ((resource.RLIMIT_FSIZE, limits.file_size), (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_STACK, limits.stack), (resource.RLIMIT_AS, limits.memory),
                         (resource.RLIMIT_NPROC, limits.pids)):
        if value is not None:
            out.append((which, value, value))
    return tuple(out)


def delegation_for(explicit: str | None) -> Delegation | None:
    """The delegated cgroup runs go under (an explicit path, else discovered), or None."""
    from ..cgroup.manager import CgroupError, discover

    try:
        return discover(explicit, os.environ)
    except CgroupError as exc:
        raise SetupError(str(exc)) from None


class _Forwarder:
    """Forwards the supervisor's signals to init (held until init's pid is known)."""

    def __init__(self, tty: bool) -> None:
        self.target = 0
        self.pending: list[int] = []
        self.previous = {s: _signal.signal(s, self.forward) for s in init_mod.FORWARDED
                         if not (tty and s in (_signal.SIGINT, _signal.SIGQUIT))}

    def forward(self, signum: int, _frame: object) -> None:
        if self.target:
            try:
                os.kill(self.target, signum)
            except OSError:
                pass
        else:
            self.pending.append(signum)

    def start(self, target: int) -> None:
        self.target = target

    def flush(self) -> None:
        for signum in self.pending:
            self.forward(signum, None)
        self.pending.clear()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            _signal.signal(signum, handler)
        self.previous = {}


class Prepared:
    """A sandbox started from a shape: namespaces, root and a payload waiting for its command.

    start() forks; ready() waits for init's root; run() sends the command and
    supervises it; discard() ends whatever is left.  A Prepared is used once.
    """

    def __init__(self, shape: Spec, child: int, reports: _Reports, channel: object, release_w: int, exec_r: int,
                 command_w: int, forwarder: _Forwarder | None) -> None:
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
        forwarder = _Forwarder(shape.tty) if forward_signals else None
        try:
            child, (report_r, release_w, exec_r, command_w, channel) = spawn(shape, program, nft)
        except BaseException:
            if forwarder is not None:
                forwarder.restore()
            raise
        import _socket

        ours = _socket.socket(fileno=channel)
        return cls(shape, child, _Reports(report_r), ours, release_w, exec_r, command_w, forwarder)

    @classmethod
    def adopt(cls, shape: Spec, child: int, pidfd: int, fds: tuple[int, int, int, int, int]) -> Prepared:
        """A sandbox forked elsewhere (sandbox/warm/zygote.py): its supervisor-side fds and a pidfd
        of its entry process, which that process reaps."""
        import _socket

        report_r, release_w, exec_r, command_w, channel = fds
        prepared = cls(shape, child, _Reports(report_r), _socket.socket(fileno=channel), release_w, exec_r,
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
        import _socket

        data = command.encode()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.command_w, view):]
            sock = self.channel
            assert isinstance(sock, _socket.socket)
            sock.sendmsg([b"C"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(
                fd.to_bytes(4, "little") for fd in fds))])
        except (BrokenPipeError, ConnectionRefusedError):
            pass  # the payload is gone; init reports how

    def run(self, spec: Spec, inner: Spec, streams: Streams, cgroup: RunCgroup | None,
            enforced: dict[str, bool], cpu: int | None = None) -> Result:
        """Send the command and supervise the run; `inner` is sandbox_spec(spec, enforced)."""
        from . import stdio

        _check_pass_fds(spec, self.shape)
        pumps = stdio.Pumps(spec.limits.output, streams.capture_limit)
        listener = -1
        try:
            given = pumps.wire(streams.stdin, streams.stdout, streams.stderr, spec.tty)
            command = Command(spec.argv, spec.env, rlimits_of(inner), spec.pass_fds)
            self.send(command, (*given, *spec.pass_fds))
            # The payload has its copies: ours would hold a pipe open (an interactor's, say).
            pumps.sent()
            streams.close(keep=pumps.keep())
            os.close(self.command_w)
            self.command_w = -1
            self.ready()
            ready = _await_payload(self.channel, self.reports)
            payload = None if ready is None else ready[0]
            if ready is not None and ready[1] >= 0:
                listener = ready[1]
            baseline = None
            if payload is not None and cpu is not None:
                try:
                    os.sched_setaffinity(payload, {cpu})
                except OSError:
                    pass  # only for steadier timings
            if payload is not None and cgroup is not None:
                from ..cgroup.manager import CgroupError

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
                report, cause, stats, wall = self.reports.next(), "", None, 0.0
                counted = None
                exec_error = _await_exec(self.exec_r)  # why it died, when it could tell
            else:
                if self.forwarder is not None:
                    self.forwarder.flush()
                if cgroup is None and spec.limits.memory is not None:
                    _force_shm_removal(self.init_pid)  # before the release: SysV memory the census sees
                start = time.monotonic()
                try:
                    os.write(self.release_w, RELEASE)
                except BrokenPipeError:
                    pass  # a forwarded signal ended the payload first; init reports how it died
                os.close(self.release_w)
                self.release_w = -1
                exec_error = _await_exec(self.exec_r)
                watch = _Watch(spec, cgroup, baseline, start, listener, pumps, self.init_pid, payload)
                report, cause = watch.wait(self.reports)
                counted = watch.counted()
                if cause:
                    if counted is not None:
                        counted.kill()  # the whole sandbox now, as cgroup.kill would
                    _kill_payload(cgroup, payload)
                    report = self.reports.next()
                wall = time.monotonic() - start
                pumps.finish()
                stats = None if cgroup is None or baseline is None else cgroup.stats().since(baseline)
        except BaseException:
            self.kill()
            raise
        finally:
            pumps.close()
            if listener >= 0:
                os.close(listener)
        result = _result(spec, report, wall, cause, exec_error, stats, pumps.total, enforced, counted)
        if streams.stdout is None or streams.stderr is None:
            from ..model.frozen import replace

            result = replace(result, stdout=pumps.captured(1), stderr=pumps.captured(2))
        return result

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
        sock = self.channel
        close = getattr(sock, "close", None)
        if close is not None:
            close()
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
    import _socket

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
            _map_ranges(child, ranges, asked_r, mapped_w)
        except BaseException:
            os.kill(child, _signal.SIGKILL)
            os.waitpid(child, 0)
            for fd in ends:
                os.close(fd)
            ours.close()
            raise
    return child, (*ends, ours.detach())


def _map_ranges(child: int, ranges: IdRanges, asked_r: int, mapped_w: int) -> None:
    from ..kernel import idmap

    try:
        if os.read(asked_r, 1) != b"U":
            raise SetupError("the sandbox died before its user namespace could be mapped")
        idmap.write_maps(child, ranges)
        os.write(mapped_w, b"G")
    finally:
        os.close(asked_r)
        os.close(mapped_w)


def egress_rules(spec: Spec) -> str | None:
    if spec.network != "pasta" or not (spec.egress_allow or spec.egress_deny):
        return None
    from ..net import network as net

    try:
        return net.nft_script(net.resolve_rules(spec.egress_allow), net.resolve_rules(spec.egress_deny), spec.dns)
    except net.NetError as exc:
        raise SbxError(str(exc)) from None


def _start_usernet(spec: Spec, target: int) -> UserNet:
    """pasta (or slirp4netns) on the entry process's namespaces, up before the payload is released."""
    from ..net import network as net

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


def _check_pass_fds(spec: Spec, shape: Spec) -> None:
    """--pass-fd descriptors, checked as they are sent: a regular file only where the payload is a
    subordinate id that owns no host file (id ranges, and not --uid 0 / --gid 0, which are you)."""
    if not spec.pass_fds:
        return
    from .stdio import pass_fd_refusal

    regular = shape.id_ranges and spec.id_ranges and spec.uid != 0 and spec.gid != 0
    for fd in spec.pass_fds:
        why = pass_fd_refusal(fd, regular)
        if why is not None:
            raise UsageError(f"--pass-fd {fd}: {why}")


def _kill_payload(cgroup: RunCgroup | None, payload: int) -> None:
    """End the payload's whole tree; init then kills the rest and reports."""
    if cgroup is not None:
        from ..cgroup.manager import CgroupError

        try:
            cgroup.kill()
            return
        except CgroupError:
            pass  # remove() tries again; meanwhile end the payload itself
    try:
        os.kill(payload, _signal.SIGKILL)
    except ProcessLookupError:
        pass


def _force_shm_removal(init_pid: int) -> None:
    """Ask init to set shm_rmid_forced in the sandbox's IPC namespace (init.SHM_RMID_FORCED)."""
    try:
        os.kill(init_pid, init_mod.SHM_RMID_FORCED)
    except OSError:
        pass  # gone: init reports how


def seccomp_program(spec: Spec) -> bytes | None:
    from ..seccomp.filter import SeccompError, program

    try:
        return program(spec.seccomp)
    except SeccompError as exc:
        raise SbxError(str(exc)) from None


def _await_ready(reports: _Reports) -> int:
    """Init's pid once init has said R.  The entry process (P) and init (R) write to the same
    pipe from two processes, so R may come first when the entry process is slow to run."""
    init_pid = 0
    root_ready = False
    while not (init_pid and root_ready):
        line = reports.next()
        if line is None:
            raise SetupError("the sandbox died while being set up")
        kind, _, rest = line.partition(" ")
        if kind == "P":
            init_pid = int(rest)
        elif kind == "E":
            raise SetupError(rest)
        elif kind == "R":
            root_ready = True
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

    Causes: "wall", "time" (CPU time), "memory" (counted without a cgroup),
    "output", or a seccomp message; "" when init reported on its own.  CPU time
    is the run cgroup's; without one, the census of every process in the
    sandbox's pid namespace (census.py), orphans adopted by init included,
    taken when the limit could first be reached and at least every
    CENSUS_CPU_EVERY (also without limits, for the figures); with a memory
    limit, every CENSUS_MEMORY_EVERY.
    RLIMIT_CPU alone would only stop one process at the next whole second.
    """

    CENSUS_MEMORY_EVERY = 0.015
    CENSUS_CPU_EVERY = 0.1  # bounds what a child reaped by nobody (SIGCHLD ignored) can use unseen

    def __init__(self, spec: Spec, cgroup: RunCgroup | None, baseline: CgroupStats | None, start: float,
                 listener: int, pumps: Pumps, init_pid: int, payload: int) -> None:
        self.spec = spec
        self.cgroup = cgroup
        self.baseline_usec = 0 if baseline is None else baseline.cpu_usec
        self.deadline = None if spec.limits.wall_time is None else start + spec.limits.wall_time
        self.listener = listener
        self.pumps = pumps
        self.cpu_limit = spec.limits.time
        self.memory_limit = spec.limits.memory if cgroup is None else None
        self.ncpus = 1.0
        self.census: Census | None = None
        self.next_census = 0.0
        if self.cpu_limit is not None:
            from ..cgroup.manager import usable_cpus

            # --cpus and --cpuset hold only with a cgroup: without one the run may use every CPU
            self.ncpus = usable_cpus(spec.limits if cgroup is not None else None)
        self.init_pid, self.payload = init_pid, payload
        self.counting = cgroup is None
        if self.counting:
            # Without limits only for the figures, and not at all in a run shorter than the first look.
            self.next_census = start + self._census_delay()

    def counted(self) -> Census | None:
        return self.census

    def cpu_used(self) -> float:
        if self.census is not None:
            return self.census.cpu
        if self.cgroup is None:
            return 0.0
        try:
            with open(self.cgroup.path + "/cpu.stat", "rb") as f:
                first = f.readline()  # "usage_usec N"
        except OSError:
            return 0.0
        return (int(first.split()[1]) - self.baseline_usec) / 1e6

    def _take_census(self) -> None:
        began = time.monotonic()
        census = self.census
        if census is None:
            from .census import Census

            census = self.census = Census(self.init_pid, self.payload)
        census.scan()
        now = time.monotonic()
        # A large sandbox makes a slow census: look less often rather than spend over 5% of a CPU
        # (the first scan reads every process on the host once: not a measure of the next).
        floor = 0.0 if census.scans <= 1 else min(20 * (now - began), 0.5)
        self.next_census = now + max(self._census_delay(), floor)

    def _census_delay(self) -> float:
        delays = [self.CENSUS_CPU_EVERY]
        if self.memory_limit is not None:
            delays.append(self.CENSUS_MEMORY_EVERY)
        if self.cpu_limit is not None:
            from ..cgroup.manager import next_check_delay

            delays.append(next_check_delay(self.cpu_limit, self.cpu_used(), self.ncpus))
        return min(delays)

    def next_timeout(self) -> float | None:
        """Milliseconds until something must be checked, None for never."""
        now = time.monotonic()
        waits = []
        if self.deadline is not None:
            waits.append(self.deadline - now)
        if self.counting:
            waits.append(self.next_census - now)
        elif self.cpu_limit is not None:
            from ..cgroup.manager import next_check_delay

            waits.append(next_check_delay(self.cpu_limit, self.cpu_used(), self.ncpus))
        if not waits:
            return None
        return max(0.0, min(waits)) * 1000

    def expired(self) -> str:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "wall"
        if self.counting and time.monotonic() >= self.next_census:
            self._take_census()
            if self.memory_limit is not None and self.census is not None and self.census.memory > self.memory_limit:
                return "memory"
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
        if self.listener >= 0:
            poller.register(self.listener, select.POLLIN)
        pumped: dict[int, int] = {}  # what the pumps want polled now (it changes as they go)
        while True:
            wanted = self.pumps.interest()
            if wanted != pumped:
                for fd in pumped.keys() - wanted.keys():
                    poller.unregister(fd)
                for fd, mask in wanted.items():
                    if pumped.get(fd) != mask:
                        poller.register(fd, mask)  # registers, or modifies
                pumped = wanted
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
                elif fd == reports.fd:
                    if not reports.fill():
                        return reports.pop(), ""
                elif fd in pumped:
                    self.pumps.on(fd, event)
                    if self.pumps.exceeded:
                        return None, "output"
            line = reports.pop()
            if line is not None:
                return line, ""

    def _seccomp(self, event: int) -> str:
        import select

        if not event & select.POLLIN:
            return ""
        from ..seccomp import filter as seccomp

        note = seccomp.receive(self.listener)
        return "" if note is None else seccomp.describe(note[1], note[2])


def _result(spec: Spec, report: str | None, wall: float, cause: str, exec_error: str | None,
            stats: CgroupStats | None, output_bytes: int, enforced: dict[str, bool],
            counted: Census | None = None) -> Result:
    """Init's report and the cgroup's figures (or the census's, without a cgroup) -> verdict and figures."""
    from ..model.result import verdict_for

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
    oom = cause == "memory"  # the census saw more than --memory: killed as memory.max would
    if oom:
        cause = ""
        signal, exit_code = _signal.SIGKILL, None
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
    failed = exec_error is not None and status == EXIT_SBX
    verdict = verdict_for(spec, exit_code, signal, cause, failed, user + system, oom)
    return Result(verdict=verdict, status=status, exit_code=exit_code, signal=signal or None,
                  wall_time=wall, cpu_time=user + system, user_time=user, sys_time=system,
                  memory_peak=memory_peak, oom_killed=oom, pids_peak=pids_peak, output_bytes=output_bytes,
                  limits_enforced=tuple(enforced.items()), message=message, fences=landlock.fences(spec.landlock))
