"""The payload's stdin, stdout and stderr, and what --pass-fd may hand it.

The payload must hold no host file.  In the single id mapping it is the caller's own uid, so
an fd of a caller's file is its to fchmod (into a setuid program of the caller's) and to
reopen through /proc/self/fd for writing (a judge's 0444 test data, rewritten for every later
run).  So each stream is classified by fstat and replaced where it must be:

    stdin    regular file       a pipe sbx feeds from the file's offset on (splice(2), no copy
                                through user space): cheaper per byte than a sealed memfd copy
                                (bench/stdio.py), though the payload can no longer seek or mmap it
             sealed memfd       as it is (the API's bytes): nothing can change it
             anonymous pipe     as it is: not a host file (the interactor wires runs so)
             /dev/null          an empty pipe (EOF at once)
             terminal, -t       as it is (the caller asked to share it)
             anything else      a pipe sbx feeds: a named FIFO, a terminal without -t, a
                                socket, a device
    stdout,  None               a pipe sbx drains into Result.stdout / Result.stderr
    stderr   anonymous pipe     as it is, unless --output-limit counts it
             terminal, -t       as it is, unless counted
             anything else      a pipe sbx drains into it (splice(2) where nothing counts)
    any      directory, O_PATH  refused: openat(fd, "..") walks the host's files

stdout and stderr that lead to the same place (2>&1) share one pipe, so their order is kept.

Pumping never blocks the supervisor's poll loop (watch.Watch): stdin is written to a
non-blocking pipe of our own (EPIPE, the payload gone, just stops feeding; EOF of the source
closes it, so the payload sees EOF), and a destination that can block (a pipe, terminal or
socket shared with others: its O_NONBLOCK flag is not ours to change) is written only once
poll says it has room, PIPE_BUF bytes at a time, which a pipe then takes without blocking.
"""

from __future__ import annotations

import os
import stat

from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHUNK = 65536
BIG_PIPE = 1 << 20  # stdin pipe size for large files (the unprivileged fs.pipe-max-size default)
PIPE_BUF = 4096  # what a pipe that poll calls writable takes without blocking
POLLIN, POLLOUT = 0x001, 0x004
MFD_NOEXEC_SEAL = 0x0008  # Linux 6.3: not executable, and sealed so (older kernels: EINVAL)
F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
FROZEN = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE  # a memfd with these never changes again
DEV_NULL = os.makedev(1, 3)


# -- what an fd is -------------------------------------------------------------------------------


def _anonymous_pipe(fd: int) -> bool:
    """A pipe(2) end (pipefs), not a FIFO with a name on the host."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("pipe:")
    except OSError:
        return False  # no /proc: treated as a named FIFO


def _frozen(fd: int) -> bool:
    """A memfd sealed against every change (regular files of a filesystem can never be)."""
    import fcntl

    try:
        return fcntl.fcntl(fd, F_GET_SEALS) & FROZEN == FROZEN
    except OSError:
        return False


def _o_path(fd: int) -> bool:
    import fcntl

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH)


def _terminal(fd: int, st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and os.isatty(fd)


def _foreground(fd: int) -> bool:
    """Whether reading terminal `fd` leaves us running: it is not our controlling terminal, or our
    process group is its foreground one (else the read would stop us with SIGTTIN)."""
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return True  # not our controlling terminal: no job control applies


def _refuse_unreachable(fd: int, st: os.stat_result, what: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what}: a directory is never given to the command (openat(fd, \"..\") "
                         "would reach the host's files)")
    if _o_path(fd):
        raise UsageError(f"{what}: an O_PATH descriptor is never given to the command (it names a host file)")


def pass_fd_refusal(fd: int, regular_files: bool) -> str | None:
    """Why descriptor `fd` may not be passed to the command (--pass-fd), or None.

    Sockets, anonymous pipes and sealed memfds may; a regular file only where `regular_files`
    (the payload is a subordinate uid that owns no host file, so it cannot chmod or reopen it
    for writing as the caller); never a directory, an O_PATH fd, a device or a named FIFO.
    """
    try:
        st = os.fstat(fd)
        path = _o_path(fd)
    except OSError:
        return "not an open file descriptor"
    mode = st.st_mode
    if path:
        return "an O_PATH descriptor names a host file; it is never passed"
    if stat.S_ISDIR(mode):
        return "a directory is never passed (openat(fd, \"..\") would reach the host's files)"
    if stat.S_ISSOCK(mode):
        return None
    if stat.S_ISFIFO(mode):
        return None if _anonymous_pipe(fd) else "a named FIFO is a host file the command could chmod; " \
                                                 "pass an anonymous pipe or a socket"
    if stat.S_ISREG(mode):
        if regular_files or _frozen(fd):
            return None
        return ("a regular file is a host file the command, running as you, could chmod and rewrite; "
                "pass a pipe or a socket, or let it run as a subordinate id (see 'sbx doctor')")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device is a host file the command could chmod or, for a terminal, type into; it is never passed"
    return "only sockets, pipes and files are passed (not an eventfd, pidfd or other kernel object)"


# -- stdin ---------------------------------------------------------------------------------------


def _memfd() -> int:
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        return os.memfd_create("sbx-stdin", flags | MFD_NOEXEC_SEAL)
    except OSError:
        return os.memfd_create("sbx-stdin", flags)


def _seal(fd: int) -> int:
    """Seal memfd `fd` against any change and return a fresh read-only description of it (fd closed)."""
    import fcntl

    try:
        fcntl.fcntl(fd, F_ADD_SEALS, FROZEN | F_SEAL_SEAL)
        try:
            readonly = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.lseek(fd, 0, os.SEEK_SET)
            return fd  # no /proc: the read-write one, which the seals make read-only anyway
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return readonly


def sealed_bytes(data: bytes | memoryview) -> int:
    """A read-only fd of a sealed memfd holding `data`."""
    fd = _memfd()
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return _seal(fd)


def empty_input() -> int:
    """The read end of a pipe whose write end is closed: EOF at once."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    return read_end


class Feed:
    """Feeds a pipe (the payload's stdin) from `source`, never blocking.

    A regular file is spliced from its offset on into the pipe (which is all poll watches: the
    file is always readable); anything else is read when poll says so and written as the pipe
    takes it.  Nothing is read from the source while earlier bytes still wait for room, so a
    payload that does not read its stdin holds sbx to one pipe's worth.
    """

    def __init__(self, source: int, regular: bool = False) -> None:
        self.source = source
        self.offset = os.lseek(source, 0, os.SEEK_CUR) if regular else -1
        self.read_end, self.write_end = os.pipe()
        os.set_blocking(self.write_end, False)  # our own pipe: the flag is ours to set
        self.pending = memoryview(b"")
        self.splice = True
        if regular and os.fstat(source).st_size - self.offset > BIG_PIPE:
            import fcntl

            try:  # fewer turns of the poll loop for a big file (bench/stdio.py)
                fcntl.fcntl(self.write_end, fcntl.F_SETPIPE_SZ, BIG_PIPE)
            except OSError:
                pass  # over the user's pipe-user-pages-soft or fs.pipe-max-size: the default size

    def interest(self) -> dict[int, int]:
        if self.write_end < 0:
            return {}
        if self.offset >= 0 or self.pending:
            return {self.write_end: POLLOUT}
        return {self.source: POLLIN}

    def on(self, _fd: int, _revents: int) -> None:
        try:
            if self.pending:
                self._write()
            elif self.offset >= 0:
                self._from_file()
            else:
                self._read()
        except BrokenPipeError:
            self.stop()  # the payload closed its stdin or is gone: nothing more to feed

    def _from_file(self) -> None:
        """Fill the pipe from the file's offset on (the caller's own offset stays where it is)."""
        while self.write_end >= 0 and not self.pending:
            try:
                if self.splice:
                    moved = os.splice(self.source, self.write_end, BIG_PIPE, offset_src=self.offset,
                                      flags=os.SPLICE_F_NONBLOCK)
                    if not moved:
                        self.stop()
                    self.offset += moved
                    continue
                data = os.pread(self.source, CHUNK, self.offset)
            except BlockingIOError:
                return  # the pipe is full
            except OSError as exc:
                import errno

                if exc.errno == errno.EINVAL and self.splice:
                    self.splice = False  # a file without splice support (some of /proc and /sys)
                    continue
                if exc.errno == errno.EPIPE:
                    raise
                data = b""  # a read error: the input ends there
            if not data:
                self.stop()
                return
            self.offset += len(data)
            self.pending = memoryview(data)
            self._write()

    def _read(self) -> None:
        try:
            data = os.read(self.source, CHUNK)
        except OSError:
            data = b""  # a hung-up terminal, a reset socket: its end
        if not data:
            self.stop()
            return
        self.pending = memoryview(data)
        self._write()

    def _write(self) -> None:
        while self.pending:
            try:
                self.pending = self.pending[os.write(self.write_end, self.pending):]
            except BlockingIOError:
                return

    def stop(self) -> None:
        """Close our end: the payload reads what is in the pipe, then EOF."""
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1
        self.pending = memoryview(b"")


# -- stdout and stderr ---------------------------------------------------------------------------


class Count:
    """Bytes written to stdout and stderr together, against the output limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.total = 0
        self.exceeded = False

    def take(self, data: bytes) -> bytes:
        if self.limit is not None:
            room = self.limit - self.total
            if len(data) > room:
                data, self.exceeded = data[: max(room, 0)], True
        self.total += len(data)
        return data


class Drain:
    """Copies a pipe (the payload's stdout and/or stderr) to `destination`, or keeps the bytes
    (destination None) up to `capture_limit`.

    A destination that can block (a pipe, terminal or socket) is written only when poll says it
    has room; a regular file or device takes whatever comes.  Where nothing counts the bytes they
    are spliced (no copy through user space), pipe to pipe without blocking either.
    """

    def __init__(self, destination: int | None, count: Count, capture_limit: int = 0) -> None:
        self.destination = destination
        self.count = count
        self.capture_limit = capture_limit
        self.kept = bytearray()
        self.read_end, self.write_end = os.pipe()
        # Ours never blocks: the payload may reopen /proc/self/fd/1 for reading and take what
        # poll just said was there.
        os.set_blocking(self.read_end, False)
        mode = 0 if destination is None else os.fstat(destination).st_mode
        self.pipe = stat.S_ISFIFO(mode)
        self.gated = destination is not None and not (stat.S_ISREG(mode) or stat.S_ISBLK(mode) or (
            stat.S_ISCHR(mode) and not os.isatty(destination)))
        self.splice = destination is not None and count.limit is None and (self.pipe or not self.gated)
        self.pending = memoryview(b"")
        self.blocked = False  # a splice found the destination pipe full
        self.broken = False  # the destination failed: what comes is dropped

    def interest(self) -> dict[int, int]:
        if self.destination is not None and (self.pending or self.blocked):
            return {self.destination: POLLOUT}
        return {} if self.read_end < 0 else {self.read_end: POLLIN}

    def on(self, fd: int, _revents: int) -> None:
        if fd == self.read_end and not (self.pending or self.blocked):
            self._pull()
        elif fd == self.destination:
            self.blocked = False
            if self.pending:
                self._push()
            else:
                self._pull()

    def _pull(self) -> None:
        destination = self.destination
        if self.splice and destination is not None and not self.broken:
            try:
                moved = os.splice(self.read_end, destination, CHUNK, flags=os.SPLICE_F_NONBLOCK if self.pipe else 0)
            except BlockingIOError:
                # Our pipe is empty (the payload read its own output back), or the destination
                # pipe is full: wait for the one that applies.
                self.blocked = self.pipe and not _writable(destination)
                return
            except OSError as exc:
                import errno

                if exc.errno != errno.EINVAL:  # EINVAL: no splice there (O_APPEND, some devices)
                    self._fail(exc)
                    return
                self.splice = False
            else:
                if not moved:
                    self._eof()
                self.count.total += moved
                return
        try:
            data = os.read(self.read_end, PIPE_BUF if self.gated else CHUNK)
        except BlockingIOError:
            return  # taken back by the payload
        if not data:
            self._eof()
            return
        data = self.count.take(data)
        if destination is None:
            self.kept += data[: max(self.capture_limit - len(self.kept), 0)]
        elif data and not self.broken:
            self.pending = memoryview(data)
            if not self.gated:
                self._push()

    def _push(self) -> None:
        assert self.destination is not None
        try:
            while self.pending:
                self.pending = self.pending[os.write(self.destination, self.pending):]
                if self.gated:
                    return  # one write per poll: the next could block
        except BlockingIOError:
            pass  # a destination some other process made non-blocking
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        import errno

        self.pending = memoryview(b"")
        self.broken = True
        if exc.errno in (errno.EPIPE, errno.ECONNRESET):
            # Its reader is gone: the payload's next write fails (EPIPE/SIGPIPE), as it would
            # writing there itself (`sbx run -- yes | head` ends).
            self._eof()

    def _eof(self) -> None:
        if self.read_end >= 0:
            os.close(self.read_end)
            self.read_end = -1

    def close(self) -> None:
        self._eof()
        if self.write_end >= 0:
            os.close(self.write_end)
            self.write_end = -1


class Pumps:
    """The pipes sbx feeds and drains for one run, polled by the supervisor's loop."""

    def __init__(self, limit: int | None, capture_limit: int) -> None:
        self.count = Count(limit)
        self.capture_limit = capture_limit
        self.feed: Feed | None = None
        self.drains: dict[int, Drain] = {}  # stream (1, 2) -> its drain (one for both when merged)
        self.theirs: list[int] = []  # the payload's ends and copies: closed once sent

    @property
    def total(self) -> int:
        return self.count.total

    @property
    def exceeded(self) -> bool:
        return self.count.exceeded

    def wire(self, stdin: int, stdout: int | None, stderr: int | None, tty: bool) -> tuple[int, int, int]:
        """The fds to give the payload for these streams (see the module's table); UsageError for
        one that is never given.  The payload's copies go to self.theirs."""
        return (self._stdin(stdin, tty), *self._outputs(stdout, stderr, tty))

    def _stdin(self, fd: int, tty: bool) -> int:
        st = os.fstat(fd)
        _refuse_unreachable(fd, st, "stdin")
        mode = st.st_mode
        if stat.S_ISREG(mode) and _frozen(fd):
            return fd
        if stat.S_ISFIFO(mode) and _anonymous_pipe(fd):
            return fd
        if stat.S_ISCHR(mode) and st.st_rdev == DEV_NULL:
            return self._ours(empty_input())
        if _terminal(fd, st):
            if tty:
                return fd
            if not _foreground(fd):
                return self._ours(empty_input())  # a background job: what is typed is for the shell
        self.feed = Feed(fd, regular=stat.S_ISREG(mode))
        return self._ours(self.feed.read_end)

    def _outputs(self, stdout: int | None, stderr: int | None, tty: bool) -> tuple[int, int]:
        counted = self.count.limit is not None
        given: list[int] = []
        for stream, fd in ((1, stdout), (2, stderr)):
            name = "stdout" if stream == 1 else "stderr"
            if fd is None:
                given.append(self._drain(stream, None))
                continue
            st = os.fstat(fd)
            _refuse_unreachable(fd, st, name)
            if not counted and ((stat.S_ISFIFO(st.st_mode) and _anonymous_pipe(fd)) or (tty and _terminal(fd, st))):
                given.append(fd)
            elif stream == 2 and stdout is not None and 1 in self.drains and _same(stdout, fd):
                given.append(given[0])  # 2>&1: one pipe keeps the two streams' order
            else:
                given.append(self._drain(stream, fd))
        return given[0], given[1]

    def _drain(self, stream: int, destination: int | None) -> int:
        drain = Drain(destination, self.count, self.capture_limit)
        self.drains[stream] = drain
        return self._ours(drain.write_end)

    def _ours(self, fd: int) -> int:
        self.theirs.append(fd)
        return fd

    def sent(self) -> None:
        """The payload has its copies: ours would hold a pipe open (or stdin's EOF back)."""
        for fd in self.theirs:
            os.close(fd)
        self.theirs = []
        if self.feed is not None:
            self.feed.read_end = -1
        for drain in self.drains.values():
            drain.write_end = -1

    def keep(self) -> list[int]:
        """The caller's fds still read or written while the payload runs."""
        kept = [d.destination for d in self.drains.values() if d.destination is not None]
        return kept + ([] if self.feed is None else [self.feed.source])

    def interest(self) -> dict[int, int]:
        wanted: dict[int, int] = {}
        for party in self._parties():
            for fd, events in party.interest().items():
                wanted[fd] = wanted.get(fd, 0) | events
        return wanted

    def on(self, fd: int, revents: int) -> None:
        for party in [p for p in self._parties() if fd in p.interest()]:
            party.on(fd, revents)

    def _parties(self) -> list[Feed | Drain]:
        parties: list[Feed | Drain] = list(set(self.drains.values()))
        return parties if self.feed is None else [self.feed, *parties]

    def finish(self) -> None:
        """The payload has ended: stop feeding, and copy what is left (waiting for slow destinations)."""
        import select

        if self.feed is not None:
            self.feed.stop()
        poller = select.poll()
        while True:
            wanted = self.interest()
            if not wanted:
                return
            for fd, events in wanted.items():
                poller.register(fd, events)
            for fd, revents in poller.poll():
                self.on(fd, revents)
            for fd in wanted:
                poller.unregister(fd)

    def captured(self, stream: int) -> bytes | None:
        drain = self.drains.get(stream)
        return None if drain is None or drain.destination is not None else bytes(drain.kept)

    def close(self) -> None:
        self.sent()  # (or never will be)
        if self.feed is not None:
            self.feed.stop()
        for drain in set(self.drains.values()):
            drain.close()


def _writable(fd: int) -> bool:
    import select

    poller = select.poll()
    poller.register(fd, POLLOUT)
    return bool(poller.poll(0))


def _same(a: int, b: int) -> bool:
    """Whether two fds lead to the same file (2>&1, or one file named twice)."""
    if a == b:
        return True
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino, sa.st_rdev) == (sb.st_dev, sb.st_ino, sb.st_rdev)


# -- terminals -----------------------------------------------------------------------------------


def save_terminals(fds: tuple[int, ...]) -> list[tuple[int, list[Any]]]:
    """The termios of each terminal among `fds` (once each), with a copy of an fd to restore it by."""
    import termios

    saved: list[tuple[int, list[Any]]] = []
    seen: set[int] = set()
    for fd in fds:
        try:
            st = os.fstat(fd)
            if not stat.S_ISCHR(st.st_mode) or st.st_rdev in seen:
                continue
            attrs = termios.tcgetattr(fd)
        except (OSError, termios.error):
            continue
        seen.add(st.st_rdev)
        saved.append((os.dup(fd), attrs))
    return saved


def restore_terminals(saved: list[tuple[int, list[Any]]]) -> None:
    """Put back what save_terminals() found, where it changed (a payload left it raw or without
    echo, or was killed first); not from a background job, where tcsetattr would stop us."""
    import termios

    for fd, attrs in saved:
        try:
            if termios.tcgetattr(fd) != attrs and _foreground(fd):
                termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except (OSError, termios.error):
            pass
        finally:
            os.close(fd)
