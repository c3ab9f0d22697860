"""Thin wrappers over the Linux calls Python 3.10's `os` lacks, and the way sbx calls libc.

Every wrapper raises OSError(errno, "call(arg): strerror") on failure.  The
new mount API (fsopen/fsmount/open_tree/move_mount/mount_setattr) and
openat2 are used so that every mount lands on a file descriptor resolved
inside the new root: a path string is never re-resolved after we checked it.
Syscall numbers from 424 on are shared by all architectures.

libc is called through ctypes' C core, `_ctypes`, not `ctypes`: `import ctypes` runs
ctypes/__init__.py (some forty types and helpers, with `types` and `struct`), ~1.3 ms of every
start-up, a third of bubblewrap's whole run.  sbx passes integers, byte strings and addresses
and reads errno, which takes the five types below; structures go to the kernel as packed bytes
(`pack`), which it only reads.
"""

from __future__ import annotations

import _ctypes
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    LibcFunction = Callable[..., int]


class Int(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "i"


class UInt(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "I"


class Long(_ctypes._SimpleCData):  # type: ignore[type-arg]
    _type_ = "l"


class ULong(_ctypes._SimpleCData):  # type: ignore[type-arg]
    """unsigned long: also size_t, and an address."""

    _type_ = "L"


class CharP(_ctypes._SimpleCData):  # type: ignore[type-arg]
    """char *: holds its bytes alive while the pointer is in use (see address)."""

    _type_ = "z"


class _IntFunction(_ctypes.CFuncPtr):
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = Int


class _LongFunction(_ctypes.CFuncPtr):  # functions returning long or a pointer
    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = Long


class _PyFunction(_ctypes.CFuncPtr):
    """Called with the GIL held (FUNCFLAG_PYTHONAPI): the interpreter's own C API, and clone3,
    which must copy a process whose GIL this thread holds, as fork() does in os.fork."""

    _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_PYTHONAPI | _ctypes.FUNCFLAG_USE_ERRNO
    _restype_ = Long


class Library:
    """A shared library, dlopen()ed: `name` None is the program itself, with its libc.
    OSError when it cannot be loaded."""

    def __init__(self, name: str | None) -> None:
        self._handle = _ctypes.dlopen(name, _ctypes.RTLD_LOCAL)  # type: ignore[arg-type]

    def function(self, name: str, returns_long: bool = False) -> LibcFunction:
        """Its function `name` (C int result, else long or a pointer), keeping errno for
        get_errno().  Plain int arguments go as C int; wider ones as ULong(...), byte strings
        as pointers, None as NULL."""
        kind = _LongFunction if returns_long else _IntFunction
        return kind((name, self))  # type: ignore[arg-type]  # any object with a _handle will do

    def python_function(self, name: str) -> LibcFunction:
        """Its function `name`, called with the GIL held (long result)."""
        return _PyFunction((name, self))  # type: ignore[arg-type]


_program = Library(None)
function = _program.function  # libc's functions
# clone(): the interpreter's fork hooks, and syscall() called with the GIL held
_before_fork, _after_fork_parent, _after_fork_child, _syscall_holding_gil = (
    _program.python_function(name)
    for name in ("PyOS_BeforeFork", "PyOS_AfterFork_Parent", "PyOS_AfterFork_Child", "syscall"))


get_errno: Callable[[], int] = _ctypes.get_errno


def address(pointer: CharP) -> int:
    """The address a CharP holds: of its bytes, alive as long as the CharP is."""
    return int(ULong.from_address(_ctypes.addressof(pointer)).value)


def pack(*fields: tuple[int, int]) -> bytes:
    """A C structure as bytes from (value, size) pairs in order (no padding: give it as fields)."""
    return b"".join(value.to_bytes(size, sys.byteorder, signed=value < 0) for value, size in fields)


syscall = function("syscall", returns_long=True)
prctl_call = function("prctl")
_unshare = function("unshare")
_mount = function("mount")
_umount2 = function("umount2")
_sethostname = function("sethostname")

# clone/unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080  # unshare/clone3 only: clone(2) uses the bit for CSIGNAL

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
        err = get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(path: str) -> bytes:
    return os.fsencode(path)


NR_CLONE3 = 435
SIGCHLD = 17


def clone(flags: int) -> int:
    """fork(), but into the new namespaces `flags` asks for, as os.fork would: 0 in the child,
    its pid in the parent.  With CLONE_NEWPID the child is pid 1 of its namespace at once, so
    no intermediate process needs to unshare and fork.

    clone3 without a stack is fork's copy of this process; around it, the interpreter's own
    fork hooks (import lock, thread states, os.register_at_fork callbacks), as os.fork calls
    them.  What libc's fork() adds (its atfork handlers, resetting its locks) matters only to
    a process with other threads: callers must have none (single_threaded).
    """
    # struct clone_args, its first version: flags, pidfd, child_tid, parent_tid, exit_signal,
    # stack, stack_size, tls (each a u64)
    args = CharP(pack((flags, 8), (0, 8), (0, 8), (0, 8), (SIGCHLD, 8), (0, 8), (0, 8), (0, 8)))
    _before_fork()
    pid = _syscall_holding_gil(Long(NR_CLONE3), ULong(address(args)), ULong(64))
    if pid == 0:
        _after_fork_child()
        return 0
    err = get_errno()
    _after_fork_parent()
    if pid < 0:
        raise OSError(err, f"clone3: {os.strerror(err)}")
    return int(pid)


def single_threaded() -> bool:
    """Whether this process has one thread (clone may be used); False when that cannot be told."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def unshare(flags: int) -> None:
    _check(_unshare(flags), "unshare")


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
        _mount(
            None if source is None else _b(source),
            _b(target),
            None if fstype is None else _b(fstype),
            ULong(flags),
            None if data is None else _b(data),
        ),
        f"mount {target}",
    )


def umount2(target: str, flags: int) -> None:
    _check(_umount2(_b(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(syscall(_NR["pivot_root"], _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(
        prctl_call(option, ULong(arg2), ULong(arg3), ULong(0), ULong(0)),
        f"prctl({option})",
    )


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_sethostname(raw, len(raw)), "sethostname")


_CAPABILITY_VERSION_3 = 0x20080522


def clear_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets (v3 capability ABI)."""
    # struct __user_cap_header_struct {u32 version; int pid}: the kernel writes it back only
    # for a version it does not know, so read-only bytes will do.
    header = pack((_CAPABILITY_VERSION_3, 4), (0, 4))
    data = bytes(2 * 3 * 4)  # two struct __user_cap_data_struct {u32 effective, permitted, inheritable}
    _check(syscall(_NR["capset"], header, data), "capset")


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    how = pack((flags | os.O_CLOEXEC, 8), (mode, 8), (resolve, 8))  # struct open_how
    return _check(syscall(NR_OPENAT2, dirfd, _b(path), how, ULong(len(how))), f"open {path}")


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _check(syscall(NR_OPEN_TREE, dirfd, _b(path), UInt(flags | os.O_CLOEXEC)), f"open_tree {path}")


def mount_setattr(fd: int, attr_set: int, recursive: bool = True) -> None:
    attr = pack((attr_set, 8), (0, 8), (0, 8), (0, 8))  # struct mount_attr: set, clr, propagation, userns_fd
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(syscall(NR_MOUNT_SETATTR, fd, b"", UInt(flags), attr, ULong(len(attr))), "mount_setattr")


def move_mount(mount_fd: int, target_fd: int) -> None:
    flags = MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH
    _check(syscall(NR_MOVE_MOUNT, mount_fd, b"", target_fd, b"", UInt(flags)), "move_mount")


def fsopen(fstype: str) -> int:
    return _check(syscall(NR_FSOPEN, _b(fstype), UInt(FSOPEN_CLOEXEC)), f"fsopen {fstype}")


def fsconfig(fd: int, key: str | None, value: str | None = None) -> None:
    """Set a string option, a flag (value None), or create the superblock (key None)."""
    if key is None:
        result = syscall(NR_FSCONFIG, fd, UInt(FSCONFIG_CMD_CREATE), None, None, 0)
        what = "create"
    elif value is None:
        result = syscall(NR_FSCONFIG, fd, UInt(FSCONFIG_SET_FLAG), _b(key), None, 0)
        what = key
    else:
        result = syscall(NR_FSCONFIG, fd, UInt(FSCONFIG_SET_STRING), _b(key), _b(value), 0)
        what = f"{key}={value}"
    _check(result, f"fsconfig {what}")


def fsmount(fd: int, attrs: int) -> int:
    return _check(syscall(NR_FSMOUNT, fd, UInt(FSMOUNT_CLOEXEC), UInt(attrs)), "fsmount")


def set_name(name: str) -> None:
    """The process's name in ps/top and /proc/PID/comm (15 bytes at most)."""
    prctl_call(PR_SET_NAME, name.encode()[:15], ULong(0), ULong(0), ULong(0))  # bytes end in NUL


def close_fds_but(keep: list[int] | tuple[int, ...]) -> None:
    """Close every fd from 3 up but those in `keep` (a forked child shedding what it inherited)."""
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


# -- the process title ----------------------------------------------------------------------------
# scrub_title: hide the caller's command line and environment from /proc/PID/cmdline and
# /proc/PID/environ.
#
# Init (and an entry process, where one is used) is a copy of the `sbx` process (or of
# the zygote), so the memory those two files read, the argv and environment
# strings the kernel put at the top of the stack at execve, is the caller's:
# `-e` values, host paths, an interactor's arguments (a secret of the
# problem).  /proc/1/cmdline is readable by anyone in the pid namespace, dumpable
# or not.  `scrub_title` zeroes both areas in place and writes a short name where
# argv[0] was; a fork made after it inherits the scrubbed copy.
#
# prctl(PR_SET_MM_ARG_START...) could point the kernel elsewhere, but needs
# CAP_SYS_RESOURCE in the initial user namespace.  Nothing reads those areas
# later: CPython copied argv and the environment at start-up (sys.argv,
# sys.orig_argv, Py_GetArgcArgv, os.environ are heap copies), and the C
# library's `environ`, which pointed into the area, is emptied with
# clearenv() (what a child exec'd with the inherited environment, such as
# nft, then gets); its `program_invocation_name` is argv[0], now the name.


def _title_areas() -> tuple[int, int, int, int]:
    """arg_start, arg_end, env_start, env_end: /proc/self/stat fields 48-51 (Linux 3.5+)."""
    fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        stat = os.read(fd, 4096)
    finally:
        os.close(fd)
    fields = stat[stat.rindex(b")") + 2:].split()  # after comm, which may hold spaces: field 3 on
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    return arg_start, arg_end, env_start, env_end


def scrub_title(name: str) -> None:
    """Zero this process's argv and environment strings; /proc/PID/cmdline then reads `name`.

    Raises OSError if /proc/self/stat cannot be read or lacks the fields:
    the caller fails closed.
    """
    arg_start, arg_end, env_start, env_end = _title_areas()
    if not (0 < arg_start <= arg_end and 0 < env_start <= env_end):
        raise OSError(0, "cannot hide the command line: /proc/self/stat has no argument area")
    function("clearenv")()
    memset, memmove = function("memset", returns_long=True), function("memmove", returns_long=True)
    memset(ULong(env_start), 0, ULong(env_end - env_start))
    size = arg_end - arg_start
    memset(ULong(arg_start), 0, ULong(size))
    title = name.encode()[: max(size - 2, 0)]
    memmove(ULong(arg_start), title, ULong(len(title)))
    if size >= len(title) + 2:
        # A non-NUL last byte is the kernel's sign of a rewritten title (setproctitle): it then
        # reads up to the first NUL, so cmdline is the name alone, not the name and the padding.
        memset(ULong(arg_end - 1), 0x20, ULong(1))
