"""Kernel numbers: the x86_64 syscall table and the constants a profile's conditions may name.

Facts about the kernel's ABI, no policy (that is lists.py).  With the x86_64
table the policy needs no libseccomp to validate names or to name a
violation; elsewhere libseccomp's own tables are used (compile.py).
"""

from __future__ import annotations

# The CLONE_NEW* flags a condition may name (CONSTANTS below) are the kernel wrappers' own.
from ..kernel.linux import (CLONE_NEWCGROUP, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWTIME,
                            CLONE_NEWUSER, CLONE_NEWUTS)

# --------------------------------------------------------------------------
# Architectures

AUDIT_ARCH = {  # the architectures this table and the prelude know natively
    "x86_64": 0xC000003E,
    "aarch64": 0xC00000B7,
}
AUDIT_ARCH_NAMES = {  # AUDIT_ARCH_* values a notification may carry
    0xC000003E: "x86_64",
    0x40000003: "i386",
    0xC00000B7: "aarch64",
    0x40000028: "arm",
}
X32_SYSCALL_BIT = 0x40000000

# --------------------------------------------------------------------------
# x86_64 syscall table, numbers 0..469 (Linux 6.18): libseccomp 2.5.4's names
# plus 335 and 457..469, which it does not know; "-*N" is N holes.  With it
# the policy needs no libseccomp to validate names or to name a violation.
_X86_64_TEXT = """
read write open close stat fstat lstat poll lseek mmap mprotect munmap brk
rt_sigaction rt_sigprocmask rt_sigreturn ioctl pread64 pwrite64 readv
writev access pipe select sched_yield mremap msync mincore madvise shmget
shmat shmctl dup dup2 pause nanosleep getitimer alarm setitimer getpid
sendfile socket connect accept sendto recvfrom sendmsg recvmsg shutdown
bind listen getsockname getpeername socketpair setsockopt getsockopt clone
fork vfork execve exit wait4 kill uname semget semop semctl shmdt msgget
msgsnd msgrcv msgctl fcntl flock fsync fdatasync truncate ftruncate
getdents getcwd chdir fchdir rename mkdir rmdir creat link unlink symlink
readlink chmod fchmod chown fchown lchown umask gettimeofday getrlimit
getrusage sysinfo times ptrace getuid syslog getgid setuid setgid geteuid
getegid setpgid getppid getpgrp setsid setreuid setregid getgroups
setgroups setresuid getresuid setresgid getresgid getpgid setfsuid setfsgid
getsid capget capset rt_sigpending rt_sigtimedwait rt_sigqueueinfo
rt_sigsuspend sigaltstack utime mknod uselib personality ustat statfs
fstatfs sysfs getpriority setpriority sched_setparam sched_getparam
sched_setscheduler sched_getscheduler sched_get_priority_max
sched_get_priority_min sched_rr_get_interval mlock munlock mlockall
munlockall vhangup modify_ldt pivot_root _sysctl prctl arch_prctl adjtimex
setrlimit chroot sync acct settimeofday mount umount2 swapon swapoff reboot
sethostname setdomainname iopl ioperm create_module init_module
delete_module get_kernel_syms query_module quotactl nfsservctl getpmsg
putpmsg afs_syscall tuxcall security gettid readahead setxattr lsetxattr
fsetxattr getxattr lgetxattr fgetxattr listxattr llistxattr flistxattr
removexattr lremovexattr fremovexattr tkill time futex sched_setaffinity
sched_getaffinity set_thread_area io_setup io_destroy io_getevents
io_submit io_cancel get_thread_area lookup_dcookie epoll_create
epoll_ctl_old epoll_wait_old remap_file_pages getdents64 set_tid_address
restart_syscall semtimedop fadvise64 timer_create timer_settime
timer_gettime timer_getoverrun timer_delete clock_settime clock_gettime
clock_getres clock_nanosleep exit_group epoll_wait epoll_ctl tgkill utimes
vserver mbind set_mempolicy get_mempolicy mq_open mq_unlink mq_timedsend
mq_timedreceive mq_notify mq_getsetattr kexec_load waitid add_key
request_key keyctl ioprio_set ioprio_get inotify_init inotify_add_watch
inotify_rm_watch migrate_pages openat mkdirat mknodat fchownat futimesat
newfstatat unlinkat renameat linkat symlinkat readlinkat fchmodat faccessat
pselect6 ppoll unshare set_robust_list get_robust_list splice tee
sync_file_range vmsplice move_pages utimensat epoll_pwait signalfd
timerfd_create eventfd fallocate timerfd_settime timerfd_gettime accept4
signalfd4 eventfd2 epoll_create1 dup3 pipe2 inotify_init1 preadv pwritev
rt_tgsigqueueinfo perf_event_open recvmmsg fanotify_init fanotify_mark
prlimit64 name_to_handle_at open_by_handle_at clock_adjtime syncfs sendmmsg
setns getcpu process_vm_readv process_vm_writev kcmp finit_module
sched_setattr sched_getattr renameat2 seccomp getrandom memfd_create
kexec_file_load bpf execveat userfaultfd membarrier mlock2 copy_file_range
preadv2 pwritev2 pkey_mprotect pkey_alloc pkey_free statx io_pgetevents
rseq uretprobe -*88 pidfd_send_signal io_uring_setup io_uring_enter
io_uring_register open_tree move_mount fsopen fsconfig fsmount fspick
pidfd_open clone3 close_range openat2 pidfd_getfd faccessat2
process_madvise epoll_pwait2 mount_setattr quotactl_fd
landlock_create_ruleset landlock_add_rule landlock_restrict_self
memfd_secret process_mrelease futex_waitv set_mempolicy_home_node cachestat
fchmodat2 map_shadow_stack futex_wake futex_wait futex_requeue statmount
listmount lsm_get_self_attr lsm_set_self_attr lsm_list_modules mseal
setxattrat getxattrat listxattrat removexattrat open_tree_attr file_getattr
file_setattr
"""
_X86_64_TABLE: list[str] = [
    t for tok in _X86_64_TEXT.split() for t in (["-"] * int(tok[2:]) if tok.startswith("-*") else [tok])
]

X86_64_NAMES: dict[str, int] = {n: i for i, n in enumerate(_X86_64_TABLE) if n != "-"}

# The highest syscall number each policy has been reviewed against: Linux
# 6.18 on x86_64.  Numbers above it return ENOSYS.  On other architectures
# it is the highest number libseccomp knows there.
REVIEWED_MAX = {"x86_64": len(_X86_64_TABLE) - 1}

# --------------------------------------------------------------------------
# Constants usable in profile conditions

TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# Socket families by number, as in include/linux/socket.h (AF_MAX = 46 in 6.18);
# the same on every architecture.
_FAMILIES_TEXT = """
AF_UNSPEC AF_UNIX AF_INET AF_AX25 AF_IPX AF_APPLETALK AF_NETROM AF_BRIDGE
AF_ATMPVC AF_X25 AF_INET6 AF_ROSE AF_DECnet AF_NETBEUI AF_SECURITY AF_KEY
AF_NETLINK AF_PACKET AF_ASH AF_ECONET AF_ATMSVC AF_RDS AF_SNA AF_IRDA
AF_PPPOX AF_WANPIPE AF_LLC AF_IB AF_MPLS AF_CAN AF_TIPC AF_BLUETOOTH AF_IUCV
AF_RXRPC AF_ISDN AF_PHONET AF_IEEE802154 AF_CAIF AF_ALG AF_NFC AF_VSOCK
AF_KCM AF_QIPCRTR AF_SMC AF_XDP AF_MCTP
"""
SOCKET_FAMILIES: dict[str, int] = {name: nr for nr, name in enumerate(_FAMILIES_TEXT.split())}
AF_UNIX = SOCKET_FAMILIES["AF_UNIX"]
AF_INET = SOCKET_FAMILIES["AF_INET"]
AF_INET6 = SOCKET_FAMILIES["AF_INET6"]
AF_NETLINK = SOCKET_FAMILIES["AF_NETLINK"]
AF_PACKET = SOCKET_FAMILIES["AF_PACKET"]
SOCK_PACKET = 10  # a socket type the kernel turns into AF_PACKET for AF_INET
SOCK_TYPE_MASK = 0xF  # the type's bits of socket()'s second argument, below the flags
NETLINK_ROUTE = 0

CONSTANTS: dict[str, int] = {
    **SOCKET_FAMILIES,
    "AF_LOCAL": AF_UNIX,
    "SOCK_STREAM": 1,
    "SOCK_DGRAM": 2,
    "SOCK_RAW": 3,
    "NETLINK_ROUTE": NETLINK_ROUTE,
    "NETLINK_USERSOCK": 2,
    "NETLINK_FIREWALL": 3,
    "NETLINK_SOCK_DIAG": 4,
    "NETLINK_NFLOG": 5,
    "NETLINK_XFRM": 6,
    "NETLINK_SELINUX": 7,
    "NETLINK_ISCSI": 8,
    "NETLINK_AUDIT": 9,
    "NETLINK_FIB_LOOKUP": 10,
    "NETLINK_CONNECTOR": 11,
    "NETLINK_NETFILTER": 12,
    "NETLINK_IP6_FW": 13,
    "NETLINK_DNRTMSG": 14,
    "NETLINK_KOBJECT_UEVENT": 15,
    "NETLINK_GENERIC": 16,
    "NETLINK_SCSITRANSPORT": 18,
    "NETLINK_ECRYPTFS": 19,
    "NETLINK_RDMA": 20,
    "NETLINK_CRYPTO": 21,
    "NETLINK_SMC": 22,
    "CLONE_NEWNS": CLONE_NEWNS,
    "CLONE_NEWCGROUP": CLONE_NEWCGROUP,
    "CLONE_NEWUTS": CLONE_NEWUTS,
    "CLONE_NEWIPC": CLONE_NEWIPC,
    "CLONE_NEWUSER": CLONE_NEWUSER,
    "CLONE_NEWPID": CLONE_NEWPID,
    "CLONE_NEWNET": CLONE_NEWNET,
    "CLONE_NEWTIME": CLONE_NEWTIME,
    "TIOCSTI": TIOCSTI,
    "TIOCLINUX": TIOCLINUX,
    "TCGETS": 0x5401,
    "FIONREAD": 0x541B,
    "PROT_READ": 1,
    "PROT_WRITE": 2,
    "PROT_EXEC": 4,
}
