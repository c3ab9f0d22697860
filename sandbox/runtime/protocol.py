"""The pipes between the supervisor and the processes it starts, and every message on them.

Both ends of each pipe use this module: what is written and how it is read sit together.

    pipe         from -> to                     messages
    report       entry, init -> supervisor      Started, Ready, Failed, Exited (lines); Stamp (SBX_STAMPS)
    command      supervisor -> payload          Command (length-prefixed), EOF: discarded unused
    channel      supervisor -> payload          the run's fds (RUN_FDS, by SCM_RIGHTS)
                 payload -> supervisor          PAYLOAD_READY: its pid (SCM_CREDENTIALS), seccomp listener
    release      supervisor -> payload          RELEASE; EOF: the supervisor is gone
    exec         payload -> supervisor          ExecFailed or SetupFailed; EOF alone: exec'd (close-on-exec)
    keep         init -> the layer's saver      KEPT_LAYER, the kept layer's directory fd (image/commit.Kept)
    id maps      entry <-> supervisor           kernel/idmap.py (announce_unshared, map_when_asked), shared
                                                with the other forks that map id ranges (kernel/ is below runtime/)

`Handoff` is the bundle of child ends the supervisor forks the sandbox with.
"""

from __future__ import annotations

import _socket  # built in here, but in lib-dynload on some builds: both ends need it, before the pivot
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal

    from .stamps import Stamps

    Stamp = tuple[str, int]
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

from ..model.frozen import dataclass

# Signals the supervisor sends init: these it forwards to the payload; SHM_RMID_FORCED when the
# supervisor counts a run's memory (no cgroup): from then on a SysV segment ends with its last
# attacher (shm_rmid_forced), so every segment is in some process's memory, where the census sees
# it; otherwise one left unattached would be counted by nothing.
FORWARDED = (_signal.SIGTERM, _signal.SIGHUP, _signal.SIGINT, _signal.SIGQUIT, _signal.SIGUSR1, _signal.SIGUSR2)
SHM_RMID_FORCED = _signal.SIGRTMIN + 1
RELEASE = b"G"  # the supervisor's go byte on the release pipe
RUN_FDS = b"C"  # the supervisor's channel message carrying stdin, stdout, stderr and --pass-fd fds
PAYLOAD_READY = b"P"  # the payload's channel message: ready to exec, its listener fd attached
KEPT_LAYER = b"K"  # init's message on keep_w: the kept writable layer's directory fd attached
NAMESPACES = b"N"  # init's channel message for --network pasta: its user and network namespace fds
MAX_FDS = 3 + 64  # stdio and --pass-fd descriptors in one channel message
EXEC_MESSAGE_MAX = 4000  # what the exec pipe carries at most (one write, below PIPE_BUF)


@dataclass(frozen=True)
class Handoff:
    """The child ends of one sandbox's pipes, and the compiled seccomp filter.

    report_w: Report lines to the supervisor.
    release_r: the payload waits here for RELEASE; EOF means the supervisor is gone.
    exec_w: close-on-exec; the payload writes why exec failed, if it did (ExecFailed, SetupFailed).
    channel_w: a unix datagram socket shared with the supervisor.  The supervisor's message
        carries the run's fds (stdin, stdout, stderr, then --pass-fd ones); the payload's
        tells its pid (by SCM_CREDENTIALS) and carries its seccomp listener fd.
    command_r: the run's Command, length-prefixed; EOF before it means the sandbox was
        prepared and then discarded.
    seccomp: the BPF program to load last before execve (None: no filter).
    nft: egress rules for the sandbox's network namespace, host names already resolved.
    maps: (write end, read end) for id ranges: init announces its user namespace and waits
        until whoever cloned it has written the maps (idmap.announce_unshared); or None, when
        it maps its one id itself.
    keep_w: Spec.upper_sock's copy (or -1): init sends the kept writable layer's directory
        fd over it once the root is built, then closes it.
    waiter: a copy of the sealed memfd holding sbx-waiter (waiter.py), or -1: the payload
        execs it to wait for its command.

    Everything that differs from one run to the next comes through command_r and
    channel_w, so a sandbox can be built before its run is known (warm runs).
    """

    report_w: int
    release_r: int
    exec_w: int
    channel_w: int
    command_r: int
    seccomp: bytes | None = None
    nft: str | None = None
    maps: tuple[int, int] | None = None
    keep_w: int = -1
    waiter: int = -1

    def payload_only(self) -> tuple[int, ...]:
        """Fds that init must close once the payload has its copies."""
        return (self.release_r, self.exec_w, self.channel_w, self.command_r,
                *((self.waiter,) if self.waiter >= 0 else ()))

    def all(self) -> tuple[int, ...]:
        return (self.report_w, *self.payload_only(), *(self.maps or ()), *((self.keep_w,) if self.keep_w >= 0 else ()))


# -- the report pipe: one line per message, from two processes (entry and init) -------------------


@dataclass(frozen=True)
class Started:
    """Init's pid as the supervisor sees it (from whoever cloned init)."""

    pid: int

    def encode(self) -> bytes:
        return f"P {self.pid}\n".encode()


@dataclass(frozen=True)
class Ready:
    """Init has built the root; the payload waits for its command and release."""

    def encode(self) -> bytes:
        return b"R\n"


@dataclass(frozen=True)
class Failed:
    """Setting up the sandbox failed (entry or init), and why."""

    message: str

    def encode(self) -> bytes:
        return ("E " + self.message.replace("\n", " ") + "\n").encode(errors="replace")


@dataclass(frozen=True)
class Exited:
    """The payload's wait status, and the rusage of everything init reaped (its children):
    CPU times, peak RSS, voluntary and forced context switches (isolate's csw-* meta keys)."""

    wstatus: int
    utime: float
    stime: float
    maxrss_kib: int
    nvcsw: int = 0
    nivcsw: int = 0

    def encode(self) -> bytes:
        return (f"X {self.wstatus} {self.utime:.6f} {self.stime:.6f} {self.maxrss_kib} {self.nvcsw} "
                f"{self.nivcsw}\n").encode()


# Stamp lines, "S STEP NS": a step of the sandbox's set-up and when (CLOCK_MONOTONIC ns), sent only
# when Spec.stamps (runtime/stamps.py); they decode to (step, ns), which the reader hands to its
# `stamps`, never to its caller.  No class for them: creating one would cost every `sbx run`.


def say_stamp(fd: int, step: str) -> None:
    import time  # built in: no file to find, even after the pivot

    os.write(fd, f"S {step} {time.monotonic_ns()}\n".encode())


Report = Started | Ready | Failed | Exited
_EXITED = b"X "


def decode_report(line: bytes) -> Report | Stamp | None:
    """One line without its newline; None for a line no sender writes."""
    kind, _, rest = line.decode(errors="replace").partition(" ")
    try:
        if kind == "S":
            step, ns = rest.split()
            return step, int(ns)
        if kind == "P":
            return Started(int(rest))
        if kind == "R":
            return Ready()
        if kind == "E":
            return Failed(rest)
        if kind == "X":
            wstatus, utime, stime, maxrss, nvcsw, nivcsw = rest.split()
            return Exited(int(wstatus), float(utime), float(stime), int(maxrss), int(nvcsw), int(nivcsw))
    except ValueError:
        pass
    return None


def say(fd: int, report: Report) -> None:
    os.write(fd, report.encode())


class ReportReader:
    """The supervisor's end of the report pipe, read straight from the fd (no io buffering layers)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.stamps: Stamps | None = None  # where Stamp lines go (else they are dropped)

    def pop(self) -> Report | None:
        """The next whole report already read, or None."""
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            report = decode_report(line)
            if isinstance(report, tuple):
                if self.stamps is not None:
                    self.stamps.at(*report)
            elif report is not None:
                return report
        return None

    def fill(self) -> bool:
        """Read what is there; False at EOF."""
        chunk = os.read(self.fd, 4096)
        self.buffer += chunk
        return bool(chunk)

    def next(self) -> Report | None:
        """The next report, blocking; None at EOF."""
        while True:
            report = self.pop()
            if report is not None or not self.fill():
                return report

    def exit_pending(self) -> bool:
        """Whether what was read so far begins with the payload's Exited."""
        return self.buffer.startswith(_EXITED)


# -- the command pipe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One run's per-run part: what to exec, and the rlimits to set first.

    `pass_fds`: the numbers the --pass-fd descriptors get, in the order they
    follow stdin, stdout and stderr in the channel message.
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    rlimits: tuple[tuple[int, int, int], ...]  # (resource, soft, hard)
    pass_fds: tuple[int, ...] = ()
    redirects: tuple[tuple[int, str], ...] = ()  # Spec.redirects: opened by the payload itself

    def encode(self) -> bytes:
        """Length-prefixed, in a layout C reads too (waiter.c): little-endian u32 counts and
        values, rlimits as u32 resource and u64 soft and hard, strings as a u32 length, the
        bytes, a NUL.  The environment names each variable once (the last value), as the
        dict the payload execs with does."""
        import struct  # preloaded by init (init.preload)

        env = dict(self.env)
        parts = [*_strings(self.argv), *_strings([f"{k}={v}" for k, v in env.items()]),
                 struct.pack("<I", len(self.rlimits))]
        parts += [struct.pack("<IQQ", which, soft & _U64, hard & _U64) for which, soft, hard in self.rlimits]
        parts.append(struct.pack(f"<I{len(self.pass_fds)}I", len(self.pass_fds), *self.pass_fds))
        parts.append(struct.pack("<I", len(self.redirects)))
        for target, path in self.redirects:
            parts += [struct.pack("<I", target), _string(path)]
        body = b"".join(parts)
        return len(body).to_bytes(8, "little") + body

    @classmethod
    def decode(cls, body: bytes) -> Command:
        """ValueError for a body encode() would not write."""
        import struct

        at = 0

        def number() -> int:
            nonlocal at
            (value,) = struct.unpack_from("<I", body, at)
            at += 4
            return int(value)

        def string() -> str:
            nonlocal at
            size = number()
            end = at + size
            if end >= len(body) or body[end] != 0:
                raise ValueError("a malformed command")
            text = os.fsdecode(body[at:end])
            at = end + 1
            return text

        try:
            argv = tuple(string() for _ in range(number()))
            env = tuple(tuple(string().partition("=")[::2]) for _ in range(number()))
            rlimits = []
            for _ in range(number()):
                which, soft, hard = struct.unpack_from("<IQQ", body, at)
                at += 20
                rlimits.append((which, _rlim(soft), _rlim(hard)))
            pass_fds = tuple(number() for _ in range(number()))
            redirects = tuple((number(), string()) for _ in range(number()))
        except struct.error:
            raise ValueError("a malformed command") from None
        if at != len(body):
            raise ValueError("a malformed command")
        return cls(argv, env, tuple(rlimits), pass_fds, redirects)  # type: ignore[arg-type]


_U64 = (1 << 64) - 1  # RLIM_INFINITY is -1 to Python, all ones to the kernel

SETUP_NESTED_USERNS, SETUP_SET_IDS, SETUP_DUMPABLE = 1, 2, 4


@dataclass(frozen=True)
class Setup:
    """The payload's set-up, for an sbx-waiter that init starts directly (payload.spawn_waiter):
    what payload.main would do before the command wait.  `flags`: SETUP_NESTED_USERNS (map
    uid/gid to our root in a child user namespace), SETUP_SET_IDS (setresuid/gid to them),
    SETUP_DUMPABLE; `program`: the seccomp filter to load (b"": none)."""

    flags: int
    uid: int
    gid: int
    last_cap: int
    workdir: str
    program: bytes = b""

    def encode(self) -> bytes:
        """Command.encode's layout: u32 flags, uid, gid, last_cap, the workdir string, then the
        program as a u32 length and its bytes."""
        import struct

        body = b"".join((struct.pack("<IIII", self.flags, self.uid, self.gid, self.last_cap), _string(self.workdir),
                         struct.pack("<I", len(self.program)), self.program))
        return len(body).to_bytes(8, "little") + body


def _rlim(value: int) -> int:
    return -1 if value == _U64 else value


def _string(text: str) -> bytes:
    data = os.fsencode(text)
    return len(data).to_bytes(4, "little") + data + b"\0"


def _strings(texts: tuple[str, ...] | list[str]) -> list[bytes]:
    return [len(texts).to_bytes(4, "little"), *map(_string, texts)]


def _read_exact(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_command(fd: int) -> Command | None:
    """The run's command from the supervisor; None at EOF (a prepared sandbox discarded unused)."""
    header = _read_exact(fd, 8)
    body = None if header is None else _read_exact(fd, int.from_bytes(header, "little"))
    return None if body is None else Command.decode(body)


def write_command(fd: int, command: Command) -> None:
    view = memoryview(command.encode())
    while view:
        view = view[os.write(fd, view):]


# -- the channel: a unix datagram socketpair, fds and credentials --------------------------------


Ancillary = list[tuple[int, int, bytes]]


def fds_message(fds: tuple[int, ...] | list[int]) -> Ancillary:
    """sendmsg's ancillary data passing `fds` (SCM_RIGHTS)."""
    return [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, "little") for fd in fds))]


def fds_of(ancillary: Ancillary) -> list[int]:
    """The fds recvmsg's ancillary data brought (ours now, to keep or close)."""
    fds: list[int] = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data) - len(data) % 4, 4)]
    return fds


def _receive_waiting(sock: _socket.socket, tag: bytes, count: int, space: int) -> list[int] | None:
    """The message `tag` waiting on `sock` with exactly `count` fds (`space`: room for its
    ancillary data): the fds; None when no message waits.  ValueError for any other message
    (its fds closed)."""
    try:
        data, ancillary, flags, _ = sock.recvmsg(1, space, _socket.MSG_DONTWAIT)
    except BlockingIOError:
        return None
    fds = fds_of(ancillary)
    if data != tag or len(fds) != count or flags & _socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ValueError(f"not the {tag!r} message with {count} fds")
    return fds


def send_run_fds(sock: _socket.socket, fds: tuple[int, ...]) -> None:
    """The supervisor's one message: stdin, stdout, stderr, then the --pass-fd descriptors."""
    sock.sendmsg([RUN_FDS], fds_message(fds))


def receive_run_fds(sock_fd: int) -> list[int]:
    """The payload's end of send_run_fds."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM, 0, sock_fd)  # no probing syscalls
    try:
        _, ancillary, _, _ = sock.recvmsg(1, _socket.CMSG_SPACE(4 * MAX_FDS))
    finally:
        sock.detach()
    return fds_of(ancillary)


def send_payload_ready(sock_fd: int, listener: int) -> None:
    """The payload's one message; the kernel adds its credentials (the supervisor set SO_PASSCRED),
    and `listener` (its seccomp listener fd, or -1) rides along."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM, 0, sock_fd)
    try:
        sock.sendmsg([PAYLOAD_READY], [] if listener < 0 else fds_message([listener]))
    finally:
        sock.detach()


def receive_payload_ready(sock: _socket.socket) -> tuple[int, int]:
    """The payload's pid as the supervisor sees it (-1: no credentials came) and its listener fd (or -1)."""
    _, ancillary, _, _ = sock.recvmsg(1, _socket.CMSG_SPACE(12) + _socket.CMSG_SPACE(4))
    pid = listener = -1
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS and len(data) >= 12:
            pid = int.from_bytes(data[:4], "little")
        elif level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(data) >= 4:
            listener = int.from_bytes(data[:4], "little")
    return pid, listener


def send_namespaces(sock_fd: int) -> None:
    """Init's message for --network pasta, sent before the payload exists: its user and network
    namespaces, which the helpers join.  Init is not dumpable, so its /proc/PID/ns/* cannot be
    opened from outside."""
    fds = [os.open(f"/proc/self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in ("user", "net")]
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM, 0, sock_fd)
    try:
        sock.sendmsg([NAMESPACES], fds_message(fds))
    finally:
        sock.detach()
        for fd in fds:
            os.close(fd)


def receive_namespaces(sock: _socket.socket) -> tuple[int, int]:
    """The supervisor's end of send_namespaces, once init is Ready: (user, network) namespace fds.
    SetupError when init sent no such message."""
    try:
        # The kernel adds init's credentials (SO_PASSCRED): room for them too
        fds = _receive_waiting(sock, NAMESPACES, 2, _socket.CMSG_SPACE(12) + _socket.CMSG_SPACE(8))
    except ValueError:
        fds = None
    if fds is None:
        from ..errors import SetupError

        raise SetupError("the sandbox did not send its namespaces for its network helper")
    return fds[0], fds[1]


def send_kept_layer(sock_fd: int, kept: int) -> None:
    """Init's one message on Handoff.keep_w (then closed): the kept writable layer's directory
    on the --disk tmpfs, whose fd keeps that tmpfs alive after the sandbox is gone."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM, 0, sock_fd)
    try:
        sock.sendmsg([KEPT_LAYER], fds_message([kept]))
    finally:
        sock.close()


def receive_kept_layer(sock: _socket.socket) -> int:
    """The saver's end of send_kept_layer, after the run: the directory fd, or -1 when none was
    sent (the layer is the host directory Spec.upper).  ValueError for any other message."""
    fds = _receive_waiting(sock, KEPT_LAYER, 1, _socket.CMSG_SPACE(4))
    return -1 if fds is None else fds[0]


# -- the exec pipe: close-on-exec, so EOF with nothing written means the exec happened ----------


@dataclass(frozen=True)
class ExecFailed:
    """execve itself failed: the command's errno (not found, not executable...)."""

    errno: int

    def encode(self) -> bytes:
        return f"X {self.errno}".encode()


@dataclass(frozen=True)
class SetupFailed:
    """The payload failed before it could exec (the last of the set-up happens after the release)."""

    message: str

    def encode(self) -> bytes:
        return f"E {self.message}".encode(errors="replace")[:EXEC_MESSAGE_MAX]


ExecOutcome = ExecFailed | SetupFailed


def decode_exec(data: bytes) -> ExecOutcome | None:
    """What the exec pipe held at EOF: None once the payload has exec'd."""
    if not data:
        return None
    kind, _, detail = data.decode(errors="replace").partition(" ")
    if kind == "X" and detail.isdigit():
        return ExecFailed(int(detail))
    if kind == "F":  # sbx-waiter's "F ERRNO WHAT" (it has no strerror): what os.strerror says of it
        err, _, what = detail.partition(" ")
        if err.isdigit():
            return SetupFailed(f"{what}: {os.strerror(int(err))}")
    return SetupFailed(detail)
