"""Installing a compiled filter in the payload: its last step before execve.

Plain `seccomp(2)` (or `prctl(PR_SET_SECCOMP)` where that syscall is
missing) through kernel/linux.py's libc functions, resolved when init imported
it: the payload's `load()` costs little more than the kernel's work.  No libseccomp.

Action "kill" and reporting the syscall: the compiled program kills with
SECCOMP_RET_KILL_PROCESS.  `load(prog, listener=True)` rewrites those
returns to SECCOMP_RET_USER_NOTIF and installs the filter with a listener
fd, which the supervisor takes (notify.py): the blocked syscall never
executes, and the supervisor can name it.  Without a listener (an old
kernel, or an outer filter already has one) `load` falls back to the plain
kill, and the supervisor can only say "killed by seccomp".
"""

from __future__ import annotations

import errno
import os

from ..kernel.linux import CharP, address, get_errno, prctl_call, syscall

BPF_MAXINSNS = 4096  # the kernel's limit on one filter
INSN_SIZE = 8  # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k

# seccomp(2) numbers; elsewhere prctl(PR_SET_SECCOMP) is used.
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "s390x": 348}
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_NO_LISTENER = (errno.EINVAL, errno.EBUSY, errno.ENOSYS)  # an old kernel, or an outer filter has one

_RET_KILL_PROCESS = 0x80000000
_RET_USER_NOTIF = 0x7FC00000
_BPF_RET_K = 0x06
# "ret #k" instructions as little-endian u64 (code, jt 0, jf 0, k)
_INSN_RET_KILL = _BPF_RET_K | (_RET_KILL_PROCESS << 32)
_INSN_RET_NOTIF = _BPF_RET_K | (_RET_USER_NOTIF << 32)

def _swap_ret(prog: bytes, old: int, new: int) -> bytes:
    """Replace every `ret #old` instruction with `ret #new`."""
    if old.to_bytes(INSN_SIZE, "little") not in prog:
        return prog
    buf = bytearray(prog)
    insns = memoryview(buf).cast("Q")
    for i in range(len(insns)):
        if insns[i] == old:
            insns[i] = new
    insns.release()
    return bytes(buf)


def load(prog: bytes, *, listener: bool = False) -> int:
    """Install `prog` on the calling thread (sets no_new_privs first).

    The payload calls this last, just before execve; the filter applies to
    it and everything it starts.  Raises OSError on failure: the caller must
    fail closed (not exec).

    With listener=True and a program that kills (action "kill"), the kill
    returns become user notifications and the listener fd is returned
    (close-on-exec): hand it to the supervisor before execve (see
    `notify.take_listener`), or a violation would only get ENOSYS.  If the
    kernel refuses a listener, the plain kill filter is loaded and -1 returned.
    """
    n = len(prog) // INSN_SIZE
    if not 0 < n <= BPF_MAXINSNS or len(prog) % INSN_SIZE:
        raise OSError(errno.EINVAL, "seccomp: malformed BPF program")
    if prctl_call(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise_errno()
    nr = _SYS_SECCOMP.get(os.uname().machine)
    if listener and nr is not None:
        notif = _swap_ret(prog, _INSN_RET_KILL, _INSN_RET_NOTIF)
        if notif is not prog:
            # sock_fprog {u16 len; pad; sock_filter *filter}; bytes passed as
            # char* are not copied: both stay alive for the call
            code = CharP(notif)
            fprog = CharP(n.to_bytes(8, "little") + address(code).to_bytes(8, "little"))
            fd = int(syscall(nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_NEW_LISTENER, fprog))
            if fd >= 0:
                os.set_inheritable(fd, False)
                return fd
            e = get_errno()
            if e not in _NO_LISTENER:
                raise OSError(e, os.strerror(e))
    code = CharP(prog)
    fprog = CharP(n.to_bytes(8, "little") + address(code).to_bytes(8, "little"))
    if nr is not None:
        if syscall(nr, _SECCOMP_SET_MODE_FILTER, 0, fprog) == 0:
            return -1
        if get_errno() != errno.ENOSYS:  # a kernel before 3.17 has prctl only
            _raise_errno()
    if prctl_call(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        _raise_errno()
    return -1


def _raise_errno() -> None:
    e = get_errno()
    raise OSError(e, os.strerror(e))
