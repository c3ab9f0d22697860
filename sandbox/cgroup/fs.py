"""The cgroup v2 filesystem as sbx reads it: small files, the cgroup2 mounts, our own cgroup.

Every other module of the package builds on these readers and raises
`CgroupError`.  Only `os` (and sbx's errors) at module level: this is on the start-up path.
"""

from __future__ import annotations

import os

from ..errors import SetupError

READ_CHUNK = 65536
MOUNTINFO = "/proc/self/mountinfo"
PROC_CGROUP = "/proc/self/cgroup"
UNIFIED_PREFIX = "0::"  # the cgroup v2 line of /proc/PID/cgroup
DIR_MODE = 0o755  # of the cgroups sbx makes: others may read the figures
_OCTAL_ESCAPE_LEN = 4  # mountinfo writes space, tab, newline and backslash as \ooo


class CgroupError(SetupError):
    """A cgroup operation failed; the message says what and, where known, why.

    A SetupError: the sandbox cannot be built as asked (fail closed, exit 125).
    """


def read_text(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, READ_CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def read_or(path: str, default: str | None = None) -> str | None:
    try:
        return read_text(path)
    except OSError:
        return default


def keyed(text: str | None) -> dict[str, int]:
    """Parse flat keyed files: cpu.stat, memory.events, pids.events, ..."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def int_or_none(text: str | None) -> int | None:
    """A single-number file ("4096\\n"); None when absent or "max"."""
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def procs(path: str) -> list[int]:
    """The processes directly in cgroup `path` (not its children)."""
    text = read_or(os.path.join(path, "cgroup.procs"), "") or ""
    return [int(p) for p in text.split()]


def errmsg(exc: OSError) -> str:
    return exc.strerror or str(exc)


def controllers(path: str, name: str = "cgroup.controllers") -> tuple[str, ...]:
    """The controllers a cgroup is offered (or, name="cgroup.subtree_control", passes down)."""
    return tuple((read_or(os.path.join(path, name), "") or "").split())


def writable(path: str) -> bool:
    """Whether we may create children in `path` and move processes there (what delegation means)."""
    return all(
        os.access(p, os.W_OK)
        for p in (path, os.path.join(path, "cgroup.procs"), os.path.join(path, "cgroup.subtree_control"))
    )


def is_root(path: str) -> bool:
    """The root of a hierarchy has no cgroup.type (nor cgroup.events)."""
    return not os.path.exists(os.path.join(path, "cgroup.type"))


# --- mounts and our own cgroup ------------------------------------------------------------


def cgroup2_mounts(mountinfo: str | None = None) -> list[tuple[str, str]]:
    """(mount point, root inside the hierarchy) of every cgroup2 mount (default: ours, /proc/self/mountinfo)."""
    if mountinfo is None:
        mountinfo = read_or(MOUNTINFO, "") or ""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep or right.split(" ", 1)[0] != "cgroup2":
            continue
        fields = left.split(" ")
        if len(fields) >= 5:  # id parent maj:min root mountpoint ...
            mounts.append((unescape(fields[4]), unescape(fields[3])))
    return mounts


def unescape(field: str) -> str:
    """A mountinfo field with its \\ooo octal escapes decoded."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1 : i + _OCTAL_ESCAPE_LEN]
        if field[i] == "\\" and len(code) == _OCTAL_ESCAPE_LEN - 1 and code.isdigit():
            out.append(chr(int(code, 8)))
            i += _OCTAL_ESCAPE_LEN
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def own_cgroup(proc_cgroup: str | None = None) -> str | None:
    """Our path in the unified hierarchy ("0::/path"), or None (v1 only)."""
    if proc_cgroup is None:
        proc_cgroup = read_or(PROC_CGROUP, "") or ""
    for line in proc_cgroup.splitlines():
        if line.startswith(UNIFIED_PREFIX):
            return line[len(UNIFIED_PREFIX) :]
    return None


def own_cgroup_dir() -> str | None:
    """The directory of our own cgroup, if a cgroup2 mount shows it."""
    path = own_cgroup()
    if path is None or path.startswith("/.."):
        return None  # outside our cgroup namespace's view
    for mountpoint, root in cgroup2_mounts():
        if root == "/":
            rel = path
        elif path == root or path.startswith(root.rstrip("/") + "/"):
            rel = path[len(root.rstrip("/")) :]
        else:
            continue
        full = mountpoint.rstrip("/") + rel if rel != "/" else mountpoint
        if os.path.exists(os.path.join(full, "cgroup.procs")):
            return full
    return None


def is_cgroup2_dir(path: str) -> bool:
    """Whether `path` is a cgroup directory on a cgroup2 mount (not v1, not elsewhere)."""
    if not os.path.exists(os.path.join(path, "cgroup.controllers")):
        return False
    real = os.path.realpath(path)
    for mountpoint, _root in cgroup2_mounts():
        mp = os.path.realpath(mountpoint)
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            return True
    return False
