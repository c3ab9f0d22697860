"""Thin ctypes wrappers over the Linux calls Python 3.11's `os` lacks.

Every wrapper raises OSError(errno, "call(arg): strerror") on failure.  The
new mount API (fsopen/fsmount/open_tree/move_mount/mount_setattr) and
openat2 are used so that every mount lands on a file descriptor resolved
inside the new root: a path string is never re-resolved after we checked it.
Syscall numbers from 424 on are shared by all architectures.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# The same handles for the other ctypes users (landlock.py, proctitle.py): libc resolved once.
libc, syscall = _libc, _syscall

# clone/unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2)
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

# new mount API
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
OPEN_TREE_CLONE = 0x1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_RECURSIVE = 0x8000

# openat2 resolve flags
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# noroot, no_setuid_fixup, keep_caps off, no_cap_ambient_raise: each with its lock bit
SECURE_ALL_LOCKED = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80

_NR = {
    "x86_64": {"pivot_root": 155, "capset": 126},
    "aarch64": {"pivot_root": 41, "capset": 91},
}.get(os.uname().machine, {"pivot_root": 155, "capset": 126})
NR_OPEN_TREE = 428
NR_MOVE_MOUNT = 429
NR_FSOPEN = 430
NR_FSCONFIG = 431
NR_FSMOUNT = 432
NR_OPENAT2 = 437
NR_MOUNT_SETATTR = 442


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str) -> bytes:
    return os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def write_file(path: str, text: str) -> None:
    """One write(2), as /proc and cgroup interface files expect."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def map_ids(inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    """Map one id each in the user namespace just unshared: the only map an unprivileged process may write
    for itself, and only with setgroups denied first."""
    write_file("/proc/self/setgroups", "deny")
    write_file("/proc/self/uid_map", f"{inside_uid} {outside_uid} 1\n")
    write_file("/proc/self/gid_map", f"{inside_gid} {outside_gid} 1\n")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            None if source is None else _b(source),
            _b(target),
            None if fstype is None else _b(fstype),
            ctypes.c_ulong(flags),
            None if data is None else _b(data),
        ),
        f"mount {target}",
    )


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(
        _libc.prctl(option, ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)),
        f"prctl({option})",
    )


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets (v3 capability ABI)."""
    header = _CapHeader(0x20080522, 0)
    data = (_CapData * 2)()
    _check(_syscall(_NR["capset"], ctypes.byref(header), ctypes.byref(data)), "capset")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return _check(
        _syscall(NR_OPENAT2, dirfd, _b(path), ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
        f"open {path}",
    )


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _check(_syscall(NR_OPEN_TREE, dirfd, _b(path), ctypes.c_uint(flags | os.O_CLOEXEC)), f"open_tree {path}")


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(fd: int, attr_set: int, recursive: bool = True) -> None:
    attr = _MountAttr(attr_set, 0, 0, 0)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(
        _syscall(NR_MOUNT_SETATTR, fd, b"", ctypes.c_uint(flags), ctypes.byref(attr), ctypes.c_size_t(32)),
        "mount_setattr",
    )


def move_mount(mount_fd: int, target_fd: int) -> None:
    flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
    _check(_syscall(NR_MOVE_MOUNT, mount_fd, b"", target_fd, b"", ctypes.c_uint(flags)), "move_mount")


def fsopen(fstype: str) -> int:
    return _check(_syscall(NR_FSOPEN, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC)), f"fsopen {fstype}")


def fsconfig(fd: int, key: str | None, value: str | None = None) -> None:
    """Set a string option, a flag (value None), or create the superblock (key None)."""
    if key is None:
        result = _syscall(NR_FSCONFIG, fd, ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None, 0)
        what = "create"
    elif value is None:
        result = _syscall(NR_FSCONFIG, fd, ctypes.c_uint(FSCONFIG_SET_FLAG), _b(key), None, 0)
        what = key
    else:
        result = _syscall(NR_FSCONFIG, fd, ctypes.c_uint(FSCONFIG_SET_STRING), _b(key), _b(value), 0)
        what = f"{key}={value}"
    _check(result, f"fsconfig {what}")


def fsmount(fd: int, attrs: int) -> int:
    return _check(_syscall(NR_FSMOUNT, fd, ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs)), "fsmount")


def set_name(name: str) -> None:
    """The process's name in ps/top and /proc/PID/comm (15 bytes at most)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, buf, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0))


def close_fds_but(keep: list[int] | tuple[int, ...]) -> None:
    """Close every fd from 3 up but those in `keep` (a forked child shedding what it inherited)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)
