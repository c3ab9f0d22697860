"""The syscalls the seccomp policies must stop, each called the way an escape
or a kernel exploit would start: `syscalls.py NAME [TARGET_PID]`.

"ESCAPED" means the call reached the kernel's implementation: it succeeded,
or failed with an errno other than EPERM/EACCES/ENOSYS (the arguments are
chosen so that, where the kernel lets the caller in, it answers something
else: a descriptor, EINVAL, ENOENT, EBADF, EFAULT...).  Nothing here changes
the host when it succeeds: keys go to a keyring that dies with the process,
the tmpfs mount is undone at once (and the control runs do it in a
throw-away mount namespace),
settimeofday and clock_settime get an invalid time, reboot a bad magic,
module and kexec calls empty or invalid images, swapon/acct a missing path.

TARGET_PID is the process to reach for ptrace & co: pid 1 (the sandbox's
init) by default; the control runs pass a child of their own.
"""

from __future__ import annotations

import os
import signal
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import AT_FDCWD, addr, argv, buf, libc, outcome, reached, result, sysc  # noqa: E402

CLONE_NEWUSER = 0x10000000
NONE = b"/nonexistent-sbx-attack"


def first_mapping(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return int(f.readline().split("-")[0], 16)
    except (OSError, ValueError):
        return 0x400000


def _clone_child(r: int, e: int) -> tuple[int, int]:
    if r == 0:
        libc._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    return r, e


def run(name: str, target: int) -> tuple[int, int]:
    if name == "keyctl":  # KEYCTL_GET_KEYRING_ID of the session keyring, creating it
        return sysc("keyctl", 0, -3, 1)
    if name == "add_key":  # a "user" key in the process keyring
        return sysc("add_key", b"user", b"sbx-attack", buf(b"x"), 1, -2)
    if name == "request_key":  # ENOKEY: the keyring was searched
        return sysc("request_key", b"user", b"sbx-attack-none", 0, 0)
    if name == "bpf":  # BPF_MAP_CREATE: an array of 1 x u32
        attr = buf(struct.pack("IIII", 2, 4, 4, 1), 72)
        return sysc("bpf", 0, attr, 72)
    if name == "perf_event_open":  # software task clock of ourselves, user space only
        a = bytearray(128)
        struct.pack_into("IIQ", a, 0, 1, 128, 1)
        struct.pack_into("Q", a, 40, 1 << 5 | 1 << 6)
        return sysc("perf_event_open", buf(bytes(a), 128), 0, -1, -1, 0)
    if name == "userfaultfd":  # UFFD_USER_MODE_ONLY: allowed to anyone by the kernel
        return sysc("userfaultfd", os.O_CLOEXEC | 1)
    if name == "io_uring_setup":
        return sysc("io_uring_setup", 4, buf(b"", 120))
    if name == "io_uring_enter":  # EBADF
        return sysc("io_uring_enter", -1, 0, 0, 0, 0, 0)
    if name == "kexec_load":  # an unknown architecture: EINVAL once past the privilege check
        return sysc("kexec_load", 0, 0, 0, 0x00FF0000)
    if name == "kexec_file_load":  # unknown flags: EINVAL
        return sysc("kexec_file_load", -1, -1, 0, 0, 0xFFFF0000)
    if name == "init_module":  # an empty image: ENOEXEC
        return sysc("init_module", buf(b"", 64), 0, b"")
    if name == "finit_module":
        return sysc("finit_module", -1, b"", 0)
    if name == "delete_module":  # O_NONBLOCK, no such module: ENOENT
        return sysc("delete_module", b"sbx_attack_none", os.O_NONBLOCK)
    if name == "mount":  # a tmpfs on a fresh directory, unmounted again at once
        import tempfile

        where = tempfile.mkdtemp(prefix="sbx-attack-")
        try:
            r, e = sysc("mount", b"none", where.encode(), b"tmpfs", 0, 0)
            if r == 0:
                sysc("umount2", where.encode(), 2)  # MNT_DETACH
            return r, e
        finally:
            os.rmdir(where)
    if name == "fsopen":
        return sysc("fsopen", b"tmpfs", 0)
    if name == "fsconfig":  # EBADF
        return sysc("fsconfig", -1, 6, 0, 0, 0)  # FSCONFIG_CMD_CREATE
    if name == "fsmount":  # EBADF once past may_mount()
        return sysc("fsmount", -1, 0, 0)
    if name == "fspick":
        return sysc("fspick", AT_FDCWD, NONE, 0)
    if name == "move_mount":
        return sysc("move_mount", AT_FDCWD, NONE, AT_FDCWD, b"/tmp", 0)
    if name == "open_tree":  # a detached copy of the mount tree at /
        return sysc("open_tree", AT_FDCWD, b"/", 1 | 0x8000)  # OPEN_TREE_CLONE | AT_RECURSIVE
    if name == "open_tree_attr":
        return sysc("open_tree_attr", AT_FDCWD, b"/", 1 | 0x8000, 0, 0)
    if name == "mount_setattr":
        attr = buf(struct.pack("QQQQ", 0x2, 0, 0, 0), 32)  # MOUNT_ATTR_NOSUID
        return sysc("mount_setattr", AT_FDCWD, NONE, 0, attr, 32)
    if name == "umount2":
        return sysc("umount2", NONE, 0)
    if name == "pivot_root":
        return sysc("pivot_root", NONE, NONE)
    if name == "chroot":
        return sysc("chroot", NONE)
    if name == "swapon":
        return sysc("swapon", NONE, 0)
    if name == "swapoff":
        return sysc("swapoff", NONE)
    if name == "reboot":  # bad magic: EINVAL once past the privilege check
        return sysc("reboot", 0, 0, 0, 0)
    if name == "acct":
        return sysc("acct", NONE)
    if name == "settimeofday":  # tv_usec out of range: EINVAL, the clock is never set
        return sysc("settimeofday", buf(struct.pack("qq", 0, -1), 16), 0)
    if name == "clock_settime":  # CLOCK_REALTIME, tv_nsec out of range: EINVAL
        return sysc("clock_settime", 0, buf(struct.pack("qq", 0, -1), 16))
    if name == "clock_adjtime":  # CLOCK_REALTIME, modes 0: read only
        return sysc("clock_adjtime", 0, buf(b"", 208))
    if name == "adjtimex":  # modes 0: read only
        return sysc("adjtimex", buf(b"", 208))
    if name == "syslog":  # SYSLOG_ACTION_SIZE_BUFFER
        return sysc("syslog", 10, 0, 0)
    if name == "ptrace":  # PTRACE_SEIZE the target
        return sysc("ptrace", 0x4206, target, 0, 0)
    if name == "process_vm_readv":  # 8 bytes of the target's first mapping
        local = buf(b"", 8)
        liov = buf(struct.pack("QQ", addr(local), 8), 16)
        riov = buf(struct.pack("QQ", first_mapping(target), 8), 16)
        return sysc("process_vm_readv", target, liov, 1, riov, 1, 0)
    if name == "process_vm_writev":  # to address 8 of the target: EFAULT once allowed, nothing written
        local = buf(b"x", 1)
        liov = buf(struct.pack("QQ", addr(local), 1), 16)
        riov = buf(struct.pack("QQ", 8, 1), 16)
        return sysc("process_vm_writev", target, liov, 1, riov, 1, 0)
    if name == "kcmp":  # KCMP_VM
        return sysc("kcmp", os.getpid(), target, 1, 0, 0)
    if name == "pidfd_getfd":  # steal the target's fd 0
        pidfd, e = sysc("pidfd_open", target, 0)
        if pidfd < 0:
            return pidfd, e
        return sysc("pidfd_getfd", pidfd, 0, 0)
    if name == "process_madvise":  # MADV_COLD on nothing, in ourselves
        pidfd, e = sysc("pidfd_open", os.getpid(), 0)
        if pidfd < 0:
            return pidfd, e
        return sysc("process_madvise", pidfd, 0, 0, 20, 0)
    if name == "personality":  # ADDR_NO_RANDOMIZE: turn ASLR off
        return sysc("personality", 0x0040000)
    if name == "unshare":  # a nested user namespace
        return sysc("unshare", CLONE_NEWUSER)
    if name == "setns":  # EBADF once allowed
        return sysc("setns", -1, 0)
    if name == "clone":  # clone(CLONE_NEWUSER)
        return _clone_child(*sysc("clone", CLONE_NEWUSER | signal.SIGCHLD, 0, 0, 0, 0))
    if name == "clone3":
        args = buf(struct.pack("8Q", CLONE_NEWUSER, 0, 0, 0, signal.SIGCHLD, 0, 0, 0), 64)
        return _clone_child(*sysc("clone3", args, 64))
    if name == "name_to_handle_at":
        handle = buf(struct.pack("Ii", 128, 0), 8 + 128)
        mount_id = buf(b"", 4)
        return sysc("name_to_handle_at", AT_FDCWD, b"/", handle, mount_id, 0)
    if name == "open_by_handle_at":  # "shocker": inode 2, the root of the filesystem under /
        mount_fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        handle = buf(struct.pack("IiII", 8, 1, 2, 0), 16)  # FILEID_INO32_GEN
        return sysc("open_by_handle_at", mount_fd, handle, os.O_RDONLY | os.O_DIRECTORY)
    if name == "ioctl_tiocsti":  # on stdin; the pty attack (tiocsti.py) gives it a terminal
        return sysc("ioctl", 0, 0x5412, b"x")
    if name == "ioctl_tioclinux":  # TIOCL_GETKMSGREDIRECT on stdout: ENOTTY unless a console
        return sysc("ioctl", 1, 0x541C, buf(b"\x0c", 1))
    if name.startswith("netlink_"):  # socket(AF_NETLINK, SOCK_RAW, proto)
        proto = {"sock_diag": 4, "uevent": 15, "netfilter": 12, "xfrm": 6, "generic": 16, "audit": 9}[name[8:]]
        return sysc("socket", 16, 3 | os.O_CLOEXEC, proto)
    raise SystemExit(f"unknown attack {name}")


def main() -> None:
    name = sys.argv[1]
    target = int(argv(2, "1"))
    r, e = run(name, target)
    result(name, reached(r, e), outcome(r, e))


if __name__ == "__main__":
    main()
