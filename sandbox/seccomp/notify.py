"""Reporting a violation: the listener of a filter loaded with listener=True (load.py).

The payload sends its listener fd to the supervisor over their socket
(runtime/protocol.py) before execve; `take_listener` is the way without a
socket (pidfd_getfd).  On a notification (`receive`) the supervisor knows
the syscall, records `describe(...)` as the result's message and kills the
run; the blocked syscall never executes.  Imported only on a violation.
"""

from __future__ import annotations

import errno
import os

from ..kernel.linux import ULong, get_errno, syscall
from .table import AUDIT_ARCH_NAMES, X32_SYSCALL_BIT

_SYS_PIDFD_OPEN = 434  # the same on every architecture
_SYS_PIDFD_GETFD = 438
_SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)
# struct seccomp_notif {u64 id; u32 pid; u32 flags; struct seccomp_data {int nr; u32 arch; ...}}
_NOTIF_SIZE = 80
_NOTIF_PID = slice(8, 12)
_NOTIF_NR = slice(16, 20)
_NOTIF_ARCH = slice(20, 24)


def _syscall(*args: int) -> int:
    r = int(syscall(*(ULong(a) for a in args)))
    if r < 0:
        e = get_errno()
        raise OSError(e, os.strerror(e))
    return r


def take_listener(pid: int, fd: int) -> int:
    """Duplicate the payload's listener fd `fd` into this process.

    Needs ptrace access to `pid` (same user, payload still dumpable; the
    payload's parent or an ancestor).  The payload must wait until this is
    done before execve, since its own copy is closed on exec.
    """
    pidfd = _syscall(_SYS_PIDFD_OPEN, pid, 0)
    try:
        new = _syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
    os.set_inheritable(new, False)
    return new


def receive(listener: int) -> tuple[int, int, int] | None:
    """Read one notification: (pid, audit arch, syscall nr).

    Blocks: poll the fd for POLLIN first (POLLHUP: no task left).  None if
    the notifying task died before it was read.
    """
    import fcntl

    buf = bytearray(_NOTIF_SIZE)  # zeroed, as the kernel wants
    try:
        fcntl.ioctl(listener, _SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    pid = int.from_bytes(buf[_NOTIF_PID], "little")
    nr = int.from_bytes(buf[_NOTIF_NR], "little", signed=True)
    arch = int.from_bytes(buf[_NOTIF_ARCH], "little")
    return pid, arch, nr


def syscall_name(nr: int, arch: int | None = None) -> str:
    """The name of syscall `nr` on `arch` (an AUDIT_ARCH value; default
    native), or "syscall N" when unknown."""
    machine = os.uname().machine
    name = AUDIT_ARCH_NAMES.get(arch, "?") if arch is not None else machine
    if name == "x86_64" and not nr & X32_SYSCALL_BIT:
        from .table import X86_64_NAMES

        for n, i in X86_64_NAMES.items():
            if i == nr:
                return n
        return f"syscall {nr}"
    try:
        from .compile import bindings

        mod = bindings()
        a = mod.Arch.NATIVE if arch is None else arch
        return str(mod.resolve_syscall(a, nr & ~X32_SYSCALL_BIT).decode())
    except Exception:
        return f"syscall {nr}"


def describe(arch: int, nr: int) -> str:
    """The result's `message` for a violation seen by the listener."""
    native = {v: k for k, v in AUDIT_ARCH_NAMES.items()}.get(os.uname().machine)
    if arch == native and nr & X32_SYSCALL_BIT and os.uname().machine == "x86_64":
        return f"seccomp: x32 ABI syscall {nr & ~X32_SYSCALL_BIT} blocked"
    if arch != native:
        abi = AUDIT_ARCH_NAMES.get(arch, f"arch {arch:#x}")
        return f"seccomp: {abi} ABI syscall {syscall_name(nr, arch)} ({nr}) blocked"
    return f"seccomp: forbidden syscall {syscall_name(nr)} ({nr})"
