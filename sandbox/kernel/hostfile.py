"""Files sbx writes or reads on the host for the caller: reports, output and input files.

They are opened as the caller, outside the sandbox and before the payload starts:
a payload with an `rw` bind on an ancestor of such a path could otherwise swap a
directory for a symlink during the run (O_NOFOLLOW guards only the last
component) or plant a FIFO that blocks sbx in open(2) forever.  So an output
path is resolved with openat2(RESOLVE_NO_SYMLINKS): a symlink in any component
is refused, and only a regular file with one name is accepted.  Results are
written through the fd afterwards, never by path again.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Union

    PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
# O_NONBLOCK: opening a FIFO for writing fails (ENXIO) instead of waiting for a reader; cleared after the checks.
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symbolic link"))


def open_output(path: PathArg, what: str = "report") -> int:
    """An fd for writing `path` (relative to the cwd), truncated, after refusing a symlink in any component
    and anything but a regular file with a single link.  Raises UsageError with one line."""
    return _output(_raw(path, what, "write"), what, openat2=True)


def _output(raw: bytes, what: str, openat2: bool) -> int:
    try:
        fd = _open(raw, _WRITE, 0o644, openat2)
    except OSError as exc:
        raise UsageError(_message(raw, what, _why(raw, exc))) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(_message(raw, what, f"{_kind(st.st_mode)}, not a regular file"))
        if st.st_nlink != 1:
            # Another name of the same inode (a hard link planted by an earlier run) would be overwritten too.
            raise UsageError(_message(raw, what, f"it has {st.st_nlink} names (hard links), all of which would change"))
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
    except UsageError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise UsageError(_message(raw, what, exc.strerror or str(exc))) from None
    return fd


def open_input(path: PathArg, what: str = "stdin") -> int:
    """An fd for reading `path`: never blocking in open (a FIFO without a writer), never through a final symlink.

    Symlinks in the directories above are followed, unlike for outputs: an input is only read, with
    the caller's own rights, nothing on the host changes, and test data behind linked directories is
    common.  The cost: a link planted in a directory the payload could write (an `rw` bind) can point
    sbx at another file the caller may read, so inputs belong outside such binds (SECURITY.md).
    """
    raw = _raw(path, what, "read")
    try:
        fd = os.open(raw, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        reason = "a symbolic link is refused" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise UsageError(_message(raw, what, reason, "read")) from None
    os.set_blocking(fd, True)
    return fd


def _raw(path: PathArg, what: str, verb: str) -> bytes:
    try:
        raw = os.fsencode(path)
    except TypeError:
        raise UsageError(f"cannot {verb} {what}: {path!r} is not a path") from None
    if b"\0" in raw:  # ctypes would cut the path there
        raise UsageError(_message(raw, what, "the path holds a NUL byte", verb))
    if not raw:
        raise UsageError(f"cannot {verb} {what}: the path is empty")
    return raw


def _message(raw: bytes, what: str, reason: str, verb: str = "write") -> str:
    return f"cannot {verb} {what} {os.fsdecode(raw)}: {reason}"


def _open(raw: bytes, flags: int, mode: int, openat2: bool = True) -> int:
    """openat2(AT_FDCWD, raw, RESOLVE_NO_SYMLINKS), or the same by a walk where the kernel lacks it."""
    if openat2:
        from . import linux

        try:
            return linux.openat2(_AT_FDCWD, os.fsdecode(raw), flags, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
                                 mode)
        except OSError as exc:
            # ENOSYS: Linux < 5.6; EPERM: the seccomp filters of older container runtimes.
            if exc.errno not in (errno.ENOSYS, errno.EPERM):
                raise
    return _walk(raw, flags, mode)


_AT_FDCWD = -100


def _walk(raw: bytes, flags: int, mode: int) -> int:
    """Component by component, each directory an O_NOFOLLOW fd: a symlink anywhere is ELOOP."""
    if raw.endswith(b"/"):  # as open(2) with O_CREAT: a name for a directory
        raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
    *dirs, last = raw.split(b"/")
    dirfd = os.open(b"/" if raw.startswith(b"/") else b".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in dirs:
            if not part:
                continue
            try:
                step = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError as exc:
                if exc.errno == errno.ENOTDIR and _is_link(part, dirfd):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP)) from None
                raise
            os.close(dirfd)
            dirfd = step
        return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dirfd)
    finally:
        os.close(dirfd)


def _is_link(name: bytes, dirfd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _why(raw: bytes, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link in the path is refused"
    if exc.errno == errno.EISDIR:
        return "a directory, not a regular file"
    if exc.errno in (errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP):
        # A FIFO without a reader, a socket or a device without a driver: name what is there.
        try:
            probe = _open(raw, os.O_PATH, 0)
        except OSError:
            pass
        else:
            try:
                return f"{_kind(os.fstat(probe).st_mode)}, not a regular file"
            finally:
                os.close(probe)
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")
