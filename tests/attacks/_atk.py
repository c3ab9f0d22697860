"""Helpers shared by the Python attack programs of tests/attacks/.

Each attack program tries one escape and prints exactly one line

    RESULT <name> blocked <errno or detail>
    RESULT <name> ESCAPED <detail>

and exits 0.  "ESCAPED" means the attack worked: the control runs outside
the sandbox must print it (the mechanism works where the kernel allows it),
the runs inside sbx must not.  The programs use only the standard library
and ctypes, so that /usr/bin/python3 runs them in the sandbox, where none of
the repository is visible; tests/test_attacks.py checks the syscall numbers
below against sandbox.seccomp.table.
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

# x86_64 syscall numbers
NR = {
    "ioctl": 16, "socket": 41, "clone": 56, "kill": 62, "syslog": 103, "ptrace": 101,
    "personality": 135, "pivot_root": 155, "adjtimex": 159, "setrlimit": 160, "chroot": 161, "acct": 163,
    "settimeofday": 164, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168,
    "reboot": 169, "init_module": 175, "delete_module": 176, "clock_settime": 227,
    "kexec_load": 246, "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272,
    "perf_event_open": 298, "prlimit64": 302, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "process_madvise": 440,
    "mount_setattr": 442, "open_tree_attr": 467,
}
MASK64 = (1 << 64) - 1
AT_FDCWD = -100
# Refusals: what a filter or a missing privilege answers.  Any other outcome
# means the call reached the kernel's implementation of the syscall.
REFUSALS = (errno.EPERM, errno.EACCES, errno.ENOSYS, errno.EAFNOSUPPORT)  # the last: a socket family off the list

_keep: list[object] = []  # buffers whose addresses were passed to the kernel


def arg(a: object) -> ctypes.c_ulong:
    if isinstance(a, (bytes, bytearray)):
        buf = ctypes.create_string_buffer(bytes(a), len(a) + 1)
        _keep.append(buf)
        return ctypes.c_ulong(ctypes.addressof(buf))
    if isinstance(a, ctypes.Array):
        return ctypes.c_ulong(ctypes.addressof(a))
    assert isinstance(a, int), a
    return ctypes.c_ulong(a & MASK64)


def sysc(name: str, *args: object) -> tuple[int, int]:
    """A raw syscall: (return value, errno)."""
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(NR[name]), *(arg(a) for a in args))
    return int(r), ctypes.get_errno() if r < 0 else 0


def buf(data: bytes, size: int | None = None) -> ctypes.Array:  # type: ignore[type-arg]
    b = ctypes.create_string_buffer(data, size if size is not None else max(len(data), 1))
    _keep.append(b)
    return b


def addr(b: ctypes.Array) -> int:  # type: ignore[type-arg]
    return ctypes.addressof(b)


def ename(e: int) -> str:
    return errno.errorcode.get(e, str(e))


def outcome(r: int, e: int) -> str:
    return f"returned {r}" if r >= 0 else ename(e)


def reached(r: int, e: int) -> bool:
    return r >= 0 or e not in REFUSALS


def result(name: str, escaped: bool, detail: str) -> None:
    detail = " ".join(str(detail).split()) or "-"
    print(f"RESULT {name} {'ESCAPED' if escaped else 'blocked'} {detail}", flush=True)


def escaped(name: str, detail: str) -> None:
    result(name, True, detail)


def blocked(name: str, detail: str) -> None:
    result(name, False, detail)


def argv(i: int, default: str) -> str:
    return sys.argv[i] if len(sys.argv) > i else default


def try_open(path: str, flags: int = os.O_RDONLY) -> tuple[int | None, str]:
    try:
        return os.open(path, flags | os.O_CLOEXEC), "ok"
    except OSError as exc:
        return None, ename(exc.errno or 0)
