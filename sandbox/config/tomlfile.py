"""Reading one profile file: opened through an fd whose owner and mode are checked, parsed as TOML.

Every file a profile names (and the trust list, trust.py) is read with
`open_owned`: nobody but you or root may be able to change a profile you use
(SECURITY.md, 'Profiles').  Failures are one-line ProfileErrors naming the file.
The parser is the standard library's tomllib, or on Python 3.10 its original,
tomli (a dependency there only), imported when a file is parsed.
"""

from __future__ import annotations

import os
import stat
import sys

from ..model.units import format_size
from .search import SECURITY, ProfileError

MAX_FILE = 1 << 20


def read(path: str, display: str) -> dict[str, object]:
    """The TOML document at `path` (absolute); messages name it `display`."""
    try:
        fd = open_owned(path)
    except OSError as error:
        raise ProfileError(f"{display}: cannot read: {error.strerror}") from None
    except NotRegular:
        raise ProfileError(f"{display}: not a regular file") from None
    except Refused as refused:
        raise ProfileError(f"profile {path}: refused: {refused.args[0]} ({SECURITY})") from None
    try:
        chunks = []
        size = 0
        while size <= MAX_FILE and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise ProfileError(f"{display}: cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE:
        raise ProfileError(f"{display}: larger than {format_size(MAX_FILE)}: not a profile")
    return _parse(display, b"".join(chunks))


class NotRegular(Exception):
    """A directory, FIFO or device where a file was expected."""


class Refused(Exception):
    """A file someone other than the caller or root could have changed; args[0] says how."""


def open_owned(path: str) -> int:
    """`path` (absolute) opened read-only, once it is a regular file that only you or root
    can change: the file and the directory it is named in (and, through a symlink, the
    directory it is in) are owned by you or root and writable by nobody else.

    Checked on the opened fds (fstat), so what is checked is what is read.  A sticky
    directory (/tmp) passes: others cannot replace a file of yours there.  Raises
    OSError, NotRegular or Refused.
    """
    head, tail = os.path.split(path)
    dir_fd = os.open(head, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_writers(os.fstat(dir_fd), f"its directory {head}", head)
        # O_NONBLOCK: a FIFO named as a profile must fail, not hang.
        fd = os.open(tail, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular
        _check_writers(st, "it", path)
        real = os.path.dirname(os.path.realpath(path))
        if real != os.path.realpath(head):  # a symlink: where it points counts too
            target_fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _check_writers(os.fstat(target_fd), f"the directory it links into, {real},", real)
            finally:
                os.close(target_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_writers(st: os.stat_result, what: str, path: str) -> None:
    if st.st_uid not in (os.geteuid(), 0):
        raise Refused(f"{what} is owned by {_user(st.st_uid)}, not by you or root: they could change it")
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return  # sticky: nobody else can rename or remove what the owner put there
    mode = f"mode {stat.S_IMODE(st.st_mode):04o}"
    if st.st_mode & stat.S_IWOTH:
        raise Refused(f"{what} is writable by others ({mode}); chmod o-w {path}")
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid, st.st_uid):
        raise Refused(f"{what} is writable by group {_group(st.st_gid)} ({mode}); chmod g-w {path}")


def _user(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _private_group(gid: int, owner: int) -> bool:
    """The owner's own group, whose only member is the owner (Debian's and Ubuntu's
    user groups, where umask 002 makes every new file group-writable)."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(owner)
    except KeyError:
        return False
    if any(member != user.pw_name for member in group.gr_mem):
        return False
    if any(p.pw_gid == gid and p.pw_uid != owner for p in pwd.getpwall()):
        return False
    return user.pw_gid == gid or user.pw_name in group.gr_mem


def _parse(display: str, data: bytes) -> dict[str, object]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise ProfileError(f"{display}:{line}:{column}: invalid TOML: not UTF-8 text") from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # the same parser, before it joined the standard library
        import tomli as tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(_toml_error(display, text, str(error))) from None
    except ValueError as error:  # int() of a 5000-digit integer
        raise ProfileError(f"{display}: invalid TOML: {error}") from None
    except RecursionError:
        raise ProfileError(f"{display}: invalid TOML: nested too deeply") from None


def _toml_error(display: str, text: str, message: str) -> str:
    """tomllib (and tomli) says "Invalid value (at line 3, column 10)"; we say "f.toml:3:10: ..."."""
    what, sep, where = message.rpartition(" (at ")
    if not sep:
        what, where = message, ""
    what = what[:1].lower() + what[1:]
    if where.startswith("line ") and ", column " in where:
        line, _, column = where[5:].rstrip(")").partition(", column ")
        return f"{display}:{line}:{column}: invalid TOML: {what}"
    if where.startswith("end of document"):
        lines = text.split("\n")
        return f"{display}:{len(lines)}:{len(lines[-1]) + 1}: invalid TOML: {what}"
    return f"{display}: invalid TOML: {what}"
