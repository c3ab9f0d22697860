"""Seccomp policies: syscall tables, rule resolution and compilation to BPF.

Only the supervisor imports this module, and only on a cache miss (or to
validate a profile): it pulls in libseccomp's Python bindings, which cost
tens of milliseconds.  `sandbox.seccomp` is the light front end.

Policies
--------
`default`: a deny-list (default action ALLOW) modelled on Docker's default
profile, and beyond it (see DENY and the argument rules below).

`strict`: an allow-list (default action = the violation action) fit for
compiled and interpreted solutions: C, C++, Python, Java, Go, `sh`.

In both, on the native architecture:

- syscall numbers above the highest one this policy has reviewed
  (`REVIEWED_MAX`) return ENOSYS, so runtimes that probe newer syscalls
  fall back (a compare on the number, put in front of libseccomp's program
  the way runc's patchbpf does);
- `clone3` returns ENOSYS (its flags live behind a pointer that seccomp
  cannot read; glibc then falls back to `clone`, whose flags are filtered);
- `io_uring_*` return ENOSYS whatever the action, because libuv and others
  probe them at start and fall back; under `strict`, `socket` returns
  EACCES (glibc's NSS probes nscd with an AF_UNIX socket; Java does it at
  start), so neither kills a solution under the `grader` profile;
- every non-native ABI (i386 via `int $0x80`, x32 via the 0x40000000 bit)
  gets the "bad arch" action: killed (action kill) or ENOSYS; that covers
  i386's `socketcall`, whose arguments sit in memory BPF cannot read;
- `socket` and `socketpair` may name only the socket families of an
  allow-list (unix, inet, inet6, and netlink with NETLINK_ROUTE only; see
  "Socket families" below); any other gets EAFNOSUPPORT whatever the action,
  as from a kernel built without it.  A fixed BPF prelude checks that in
  front of libseccomp's program.

Actions: `errno` -> EPERM for denied syscalls (ENOSYS for syscalls a strict
policy does not list), `kill` -> SECCOMP_RET_KILL_PROCESS (turned into a
user notification at load time when a supervisor listens; see
`sandbox.seccomp.load`), `log` -> allowed and logged by the kernel.

Profile entries
---------------
`allow`/`deny` entries are syscall names, optionally with argument
conditions: `socket(arg0 == AF_NETLINK, arg2 == NETLINK_AUDIT)`,
`ioctl(arg1 & 0xffffffff == 0x5412)`, `mmap(arg2 != 7)`.  Operators
`== != < <= > >=`, and `argN & MASK == VALUE`.  At most one condition per
argument (a libseccomp limit).  `argN == V` compares the low 32 bits in a
deny entry (the kernel truncates int arguments, so a 64-bit compare could
be bypassed by setting the high half) and all 64 bits in an allow entry
(never wider than written).  Values are integers (0x, 0o, 0b prefixes) or
one of the names in CONSTANTS.

How entries combine (libseccomp silently drops or rejects rules whose
conditions overlap with a different action, so sbx resolves them first and
hands libseccomp per syscall one action only):

- an unconditional `allow` removes every built-in rule for that syscall
  (`default`) or allows it outright (`strict`);
- an unconditional `deny` denies the syscall outright;
- a conditional `deny` adds a deny rule under `default`; under `strict` it
  is an error (list the allowed forms in `allow` instead);
- a conditional `allow` adds an allow rule under `strict`; under `default`
  it may only lift a built-in argument rule exactly, else it is an error;
- the socket family allow-list is lifted only by naming a family:
  `socket(arg0 == AF_VSOCK)`, `socket(arg0 == AF_NETLINK, arg2 ==
  NETLINK_SOCK_DIAG)` (per syscall: `socketpair(...)` likewise), never by an
  unconditional `allow = ["socket"]`.  Under `default` a conditional allow
  of `socket`/`socketpair` must have exactly that form; under `strict` any
  allow entry pinning arg0 (and arg2) to a value adds that family (protocol),
  and the entry's other conditions are the libseccomp rule's.
"""

from __future__ import annotations

import os
import sys

from ..model.frozen import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .filter import SeccompSpec

# --------------------------------------------------------------------------
# Architectures

AUDIT_ARCH = {
    "x86_64": 0xC000003E,
    "aarch64": 0xC00000B7,
}
X32_SYSCALL_BIT = 0x40000000

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

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080  # unshare/clone3 only: clone(2) uses the bit for CSIGNAL
CLONE_NS_FLAGS = (
    CLONE_NEWNS,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
)
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
AF_UNIX = 1
AF_INET = 2
AF_INET6 = 10
AF_NETLINK = 16
AF_PACKET = 17
NETLINK_ROUTE = 0

CONSTANTS: dict[str, int] = {
    "AF_UNIX": AF_UNIX,
    "AF_LOCAL": AF_UNIX,
    "AF_INET": AF_INET,
    "AF_INET6": AF_INET6,
    "AF_NETLINK": AF_NETLINK,
    "AF_PACKET": AF_PACKET,
    "AF_VSOCK": 40,
    "SOCK_STREAM": 1,
    "SOCK_DGRAM": 2,
    "SOCK_RAW": 3,
    "NETLINK_ROUTE": 0,
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

ENOSYS = 38
EPERM = 1
EACCES = 13

# --------------------------------------------------------------------------
# The default policy: a deny-list

# Denied outright with the violation action.  Docker's default profile
# denies these (for the unprivileged case), and the issue adds the rest.
DENY: tuple[str, ...] = (
    # keys
    "add_key", "keyctl", "request_key",
    # kernel extension and introspection
    "bpf", "perf_event_open", "lookup_dcookie", "syslog",
    "create_module", "init_module", "finit_module", "delete_module",
    "query_module", "get_kernel_syms", "kexec_load", "kexec_file_load",
    # memory tricks used by exploits
    "userfaultfd", "mbind", "move_pages", "set_mempolicy",
    "set_mempolicy_home_node", "migrate_pages",
    # mounts, old and new API
    "mount", "umount", "umount2", "pivot_root", "chroot", "fsopen",
    "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "open_tree_attr", "mount_setattr", "fanotify_init",
    # namespaces (clone is filtered by flags, clone3 gets ENOSYS)
    "unshare", "setns",
    # machine-wide state
    "swapon", "swapoff", "reboot", "acct", "settimeofday", "stime",
    "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
    "setdomainname", "quotactl", "quotactl_fd", "nfsservctl", "vhangup",
    "iopl", "ioperm", "vm86", "vm86old", "uselib", "ustat", "sysfs",
    "_sysctl",
    # other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise",
    "kcmp", "pidfd_getfd",
    # file handles bypass path checks (the "shocker" escape)
    "name_to_handle_at", "open_by_handle_at",
)

# Return this errno whatever the action: runtimes probe them and fall back.
COMPAT_ERRNO: dict[str, int] = {
    "clone3": ENOSYS,
    "io_uring_setup": ENOSYS,
    "io_uring_enter": ENOSYS,
    "io_uring_register": ENOSYS,
}

# personality(2): Docker allows these values only.  0 = PER_LINUX, 8 =
# PER_LINUX32, 0x20000 = UNAME26, 0xffffffff = query.
PERSONALITY_OK = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# --------------------------------------------------------------------------
# The strict policy: an allow-list

ALLOW_STRICT: tuple[str, ...] = (
    # files and descriptors
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv",
    "pwritev", "preadv2", "pwritev2", "open", "openat", "openat2", "creat",
    "close", "close_range", "dup", "dup2", "dup3", "fcntl", "flock", "lseek",
    "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs",
    "access", "faccessat", "faccessat2", "getdents", "getdents64", "getcwd",
    "chdir", "fchdir", "readlink", "readlinkat", "mkdir", "mkdirat",
    "rmdir", "unlink", "unlinkat", "rename", "renameat", "renameat2",
    "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
    "fchmodat2", "chown", "fchown", "lchown", "fchownat", "umask", "utime",
    "utimes", "utimensat", "futimesat", "truncate", "ftruncate",
    "fallocate", "fsync", "fdatasync", "sync_file_range", "fadvise64",
    "readahead", "copy_file_range", "sendfile", "splice", "tee", "mknod",
    "mknodat", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
    "llistxattr", "flistxattr",
    # waiting on descriptors
    "pipe", "pipe2", "poll", "ppoll", "select", "pselect6", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "epoll_pwait2", "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
    # sockets already open (stdio may be one); creating one gets EACCES
    "socketpair", "recvfrom", "sendto", "recvmsg", "sendmsg", "recvmmsg",
    "sendmmsg", "shutdown", "getsockname", "getpeername", "getsockopt",
    # memory
    "brk", "mmap", "munmap", "mprotect", "mremap", "msync", "mincore",
    "madvise", "membarrier", "memfd_create", "get_mempolicy", "mseal",
    # signals and time
    "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending",
    "rt_sigtimedwait", "rt_sigsuspend", "rt_sigqueueinfo",
    "rt_tgsigqueueinfo", "sigaltstack", "pause", "kill", "tkill", "tgkill",
    "alarm", "getitimer", "setitimer", "nanosleep", "clock_nanosleep",
    "clock_gettime", "clock_getres", "gettimeofday", "time", "times",
    "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
    "timer_delete",
    # process and thread life
    "execve", "execveat", "fork", "vfork", "exit", "exit_group", "wait4",
    "waitid", "restart_syscall", "futex", "futex_waitv", "futex_wake",
    "futex_wait", "futex_requeue", "set_robust_list", "get_robust_list",
    "set_tid_address", "rseq", "arch_prctl", "prctl", "pidfd_open",
    "pidfd_send_signal",
    # identity and limits (read, or only lowering what is already allowed)
    "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid",
    "getresuid", "getresgid", "getgroups", "getpgrp", "getpgid", "getsid",
    "setsid", "setpgid", "capget", "uname", "sysinfo", "getrusage",
    # Switching among the ids it already has (busybox and some runtimes drop "privileges" at
    # start when not uid 0): without capabilities, and with no_new_privs, nothing more.
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setfsuid", "setfsgid",
    "getrlimit", "setrlimit", "prlimit64", "getpriority", "setpriority",
    "getcpu", "getrandom", "sched_yield", "sched_getaffinity",
    "sched_setaffinity", "sched_getparam", "sched_getscheduler",
    "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_getattr",
)

# ioctl commands the strict policy allows (terminal queries, FIONREAD...).
IOCTL_STRICT = (
    0x5401, 0x5402, 0x5403, 0x5404,  # TCGETS TCSETS TCSETSW TCSETSF
    0x5409, 0x540A, 0x540B,  # TCSBRK TCXONC TCFLSH
    0x540F, 0x5410, 0x5411,  # TIOCGPGRP TIOCSPGRP TIOCOUTQ
    0x5413, 0x5414,  # TIOCGWINSZ TIOCSWINSZ
    0x541B, 0x5421, 0x5429,  # FIONREAD FIONBIO TIOCGSID
    0x5450, 0x5451, 0x5452, 0x5460,  # FIONCLEX FIOCLEX FIOASYNC FIOQSIZE
    0x802C542A, 0x402C542B, 0x402C542C, 0x402C542D,  # TCGETS2 TCSETS2...
    0x80045430, 0x40045431, 0x5441,  # TIOCGPTN TIOCSPTLCK TIOCGPTPEER
)

STRICT_COMPAT_ERRNO: dict[str, int] = dict(COMPAT_ERRNO, socket=EACCES)

# --------------------------------------------------------------------------
# Socket families: an allow-list in both policies.  SECURITY REVIEW: this
# block is the whole list; diff it.
#
# `socket` and `socketpair` may name only SOCKET_FAMILIES_OK, and netlink
# only with a NETLINK_OK protocol.  Anything else, every family a future
# kernel adds included, gets EAFNOSUPPORT whatever the action (what a kernel
# built without the family says, so programs fall back quietly).  Checked
# on the low 32 bits the kernel reads (the arguments are ints) by the fixed
# prelude in front of libseccomp's program (`prelude`).  Refusing the family
# before the kernel sees it also keeps the payload from making the kernel
# autoload a protocol module (`net-pf-N`, `net-pf-16-proto-N`), a well-worn
# road to rarely used, rarely audited code.  A type of SOCK_PACKET is
# refused for every family: the kernel turns (AF_INET, SOCK_PACKET) into
# AF_PACKET.  The network modes need nothing more: `none` has loopback
# only, `pasta` relays TCP, UDP and ICMP (inet, inet6), and `host` keeps
# the same list (vsock, bluetooth and the rest would be the host's own).
# i386's `socketcall`, whose arguments BPF cannot read, is out with the
# whole i386 ABI (the "bad arch" action).
EAFNOSUPPORT = 97
SOCK_PACKET = 10
SOCK_TYPE_MASK = 0xF

SOCKET_FAMILIES_OK: dict[int, str] = {
    AF_UNIX: "AF_UNIX",  # local IPC; abstract names are per network namespace
    AF_INET: "AF_INET",
    AF_INET6: "AF_INET6",
    AF_NETLINK: "AF_NETLINK",  # NETLINK_OK protocols only
}

# NETLINK_ROUTE only: glibc's getaddrinfo(AI_ADDRCONFIG) and if_nameindex(),
# Go's net.Interfaces() and `ip` use it; it sees the sandbox's own network
# namespace, and changes nothing without CAP_NET_ADMIN (the payload has none).
NETLINK_OK: tuple[int, ...] = (NETLINK_ROUTE,)

# Netlink protocols left out (numbers in CONSTANTS), and why:
#   SOCK_DIAG (4): `ss` uses it, and falls back to /proc/net; a past local
#     root (CVE-2013-1763), and under `--network host` a list of the host's
#     sockets with their owners.  Lift it with
#     socket(arg0 == AF_NETLINK, arg2 == NETLINK_SOCK_DIAG) if a tool needs it.
#   NETFILTER (12): nf_tables, the source of the best-known unprivileged
#     user namespace roots (CVE-2022-1015, CVE-2023-32233, CVE-2024-1086).
#   GENERIC (16): the door to dozens of subsystems (nl80211, wireguard,
#     team, taskstats, ...), each its own attack surface.
#   XFRM (6), FIB_LOOKUP (10): IPsec and routing internals (CVEs in both).
#   AUDIT (9), SELINUX (7), CONNECTOR (11), KOBJECT_UEVENT (15): the host's
#     audit log, security events, process events and device hot-plug
#     events: host state, not the sandbox's.
#   USERSOCK (2), FIREWALL (3), NFLOG (5), ISCSI (8), IP6_FW (13),
#     DNRTMSG (14), SCSITRANSPORT (18), ECRYPTFS (19), RDMA (20),
#     CRYPTO (21), SMC (22): drivers and subsystems a payload has no use for.

# Families left out, and why.  Their numbers are the same on every
# architecture; the kernel knows 0..45 (AF_MAX = 46 in 6.18).
SOCKET_FAMILIES_OUT: tuple[tuple[int, str, str], ...] = (
    (0, "AF_UNSPEC", "not a family for socket()"),
    (3, "AF_AX25", "amateur radio; use-after-free CVEs; an autoloaded module"),
    (4, "AF_IPX", "obsolete (removed in 4.18)"),
    (5, "AF_APPLETALK", "obsolete; CVEs"),
    (6, "AF_NETROM", "amateur radio; use-after-free CVEs"),
    (7, "AF_BRIDGE", "no sockets (only netlink messages use the number)"),
    (8, "AF_ATMPVC", "ATM hardware; CVEs"),
    (9, "AF_X25", "obsolete; CVEs"),
    (11, "AF_ROSE", "amateur radio; CVEs"),
    (12, "AF_DECnet", "obsolete (removed in 6.1)"),
    (13, "AF_NETBEUI", "never implemented"),
    (14, "AF_SECURITY", "never implemented"),
    (15, "AF_KEY", "PF_KEYv2 IPsec key management: a host's security associations; info-leak CVEs"),
    (17, "AF_PACKET", "raw frames: sniffing and spoofing on the sandbox's interfaces; "
                      "local roots (CVE-2016-8655, CVE-2017-7308, CVE-2020-14386)"),
    (18, "AF_ASH", "never implemented"),
    (19, "AF_ECONET", "obsolete (removed in 3.5)"),
    (20, "AF_ATMSVC", "ATM hardware"),
    (21, "AF_RDS", "reliable datagrams, an autoloaded module with local roots (CVE-2010-3904, CVE-2019-11815)"),
    (22, "AF_SNA", "never implemented"),
    (23, "AF_IRDA", "obsolete (removed in 4.17)"),
    (24, "AF_PPPOX", "PPPoE/L2TP/PPTP tunnels; use-after-free CVEs"),
    (25, "AF_WANPIPE", "never in mainline"),
    (26, "AF_LLC", "802.2 LLC; CVEs"),
    (27, "AF_IB", "InfiniBand addressing (rdma_cm), no sockets"),
    (28, "AF_MPLS", "no sockets (routing by netlink)"),
    (29, "AF_CAN", "CAN bus; race CVEs (CVE-2021-3609)"),
    (30, "AF_TIPC", "cluster IPC, an autoloaded module; remote and local CVEs (CVE-2021-43267, CVE-2022-0435)"),
    (31, "AF_BLUETOOTH", "the host's adapters (init network namespace only); BleedingTooth (CVE-2020-12351)"),
    (32, "AF_IUCV", "s390 hypervisor communication"),
    (33, "AF_RXRPC", "AFS RPC; CVEs"),
    (34, "AF_ISDN", "ISDN hardware"),
    (35, "AF_PHONET", "Nokia modems"),
    (36, "AF_IEEE802154", "low-power radio hardware"),
    (37, "AF_CAIF", "ST-Ericsson modems"),
    (38, "AF_ALG", "the kernel's crypto API: a large surface with many CVEs; user-space crypto needs none of it"),
    (39, "AF_NFC", "NFC hardware; use-after-free CVEs"),
    (40, "AF_VSOCK", "VM sockets are not isolated by network namespaces: under --network none the "
                     "payload would share the host's vsock port space (on a VM guest, the hypervisor's side)"),
    (41, "AF_KCM", "kernel connection multiplexor; CVEs"),
    (42, "AF_QIPCRTR", "Qualcomm modems"),
    (43, "AF_SMC", "shared-memory communication over RDMA; CVEs"),
    (44, "AF_XDP", "raw frames on an interface's queues"),
    (45, "AF_MCTP", "management controllers"),
)
SOCKET_CALLS = ("socket", "socketpair")

CONSTANTS.update({name: nr for nr, name, _ in SOCKET_FAMILIES_OUT})


@dataclass(frozen=True)
class FamilyFilter:
    """What one of SOCKET_CALLS may name: families, and netlink protocols
    (None: every protocol, when a profile allows AF_NETLINK outright)."""

    families: tuple[int, ...]
    netlink: tuple[int, ...] | None

# --------------------------------------------------------------------------
# Conditions and rules

# libseccomp comparison operators (enum scmp_compare)
NE, LT, LE, EQ, GE, GT, MASKED_EQ = 1, 2, 3, 4, 5, 6, 7
_OPS = {"==": EQ, "!=": NE, "<": LT, "<=": LE, ">": GT, ">=": GE}
_OP_TEXT = {v: k for k, v in _OPS.items()}
LOW32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF

# A condition: (arg, op, datum_a, datum_b), as libseccomp's scmp_arg_cmp.
Cond = tuple[int, int, int, int]
Conds = tuple[Cond, ...]


class PolicyError(ValueError):
    """A bad profile entry; the message is one line."""


def cond_text(c: Cond) -> str:
    arg, op, a, b = c
    if op == MASKED_EQ:
        return f"arg{arg} & {a:#x} == {b:#x}"
    return f"arg{arg} {_OP_TEXT[op]} {a:#x}"


def _value(text: str, where: str) -> int:
    t = text.strip()
    if t in CONSTANTS:
        return CONSTANTS[t]
    try:
        v = int(t, 0)
    except ValueError:
        raise PolicyError(f"{where}: bad value {t!r} (an integer or one of AF_*, NETLINK_*, CLONE_NEW*, TIOC*)") from None
    if not 0 <= v <= U64:
        raise PolicyError(f"{where}: value {t!r} out of range")
    return v


def parse_entry(entry: str, where: str, deny: bool) -> tuple[str, Conds]:
    """`name` or `name(cond, ...)` -> (name, conditions); names not checked."""
    if not isinstance(entry, str):
        raise PolicyError(f"{where}: entries must be strings, got {entry!r}")
    text = entry.strip()
    name, paren, rest = text.partition("(")
    name = name.strip()
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise PolicyError(f"{where}: bad entry {entry!r} (a syscall name, optionally with (argN == VALUE, ...))")
    if not paren:
        return name, ()
    if not rest.endswith(")"):
        raise PolicyError(f"{where}: {entry!r}: missing ')'")
    body = rest[:-1].strip()
    if not body:
        raise PolicyError(f"{where}: {entry!r}: empty condition list")
    conds: list[Cond] = []
    seen: set[int] = set()
    for part in body.split(","):
        c = _parse_cond(part, f"{where}: {entry!r}", deny)
        if c[0] in seen:
            raise PolicyError(f"{where}: {entry!r}: more than one condition on arg{c[0]}")
        seen.add(c[0])
        conds.append(c)
    return name, tuple(sorted(conds))


def _parse_cond(part: str, where: str, deny: bool) -> Cond:
    p = part.strip()
    for op_text in ("==", "!=", "<=", ">=", "<", ">"):
        left, sep, right = p.partition(op_text)
        if sep:
            break
    else:
        raise PolicyError(f"{where}: bad condition {p!r} (argN OP VALUE, OP one of == != < <= > >=)")
    left = left.strip()
    mask = None
    if "&" in left:
        left, _, mask_text = left.partition("&")
        left = left.strip()
        mask = _value(mask_text, where)
        if op_text != "==":
            raise PolicyError(f"{where}: a masked condition must use == ({p!r})")
    if not (left.startswith("arg") and left[3:].isascii() and left[3:].isdigit() and int(left[3:]) < 6):
        raise PolicyError(f"{where}: bad condition {p!r}: the left side must be arg0..arg5")
    arg = int(left[3:])
    value = _value(right, where)
    if mask is not None:
        return (arg, MASKED_EQ, mask, value & mask)
    if op_text == "==" and deny and value <= LOW32:
        # The kernel truncates int arguments: deny on the low 32 bits.
        return (arg, MASKED_EQ, LOW32, value)
    return (arg, _OPS[op_text], value, 0)


# A per-syscall rule set: (action, conds_list).  conds_list None means
# unconditional; otherwise the rule fires when any of the condition tuples
# matches (each tuple is ANDed).  One action per syscall, always.
RuleSet = tuple[int, "list[Conds] | None"]


# Symbolic actions, turned into libseccomp values by _action().
ALLOW = "allow"
VIOLATION = "violation"  # the spec's action (deny entries)
DEFAULT_MISS = "miss"  # strict: a syscall not listed


def _errno_action(n: int) -> str:
    return f"errno:{n}"


Resolved = tuple[str, "dict[str, tuple[str, list[Conds] | None]]", "dict[str, FamilyFilter]"]


def resolve(spec: SeccompSpec, names: dict[str, int]) -> Resolved:
    """Apply the spec's lists to the base policy.

    Returns (default action, {syscall: (action, conditions or None)},
    {socket call: FamilyFilter}), with symbolic actions.  `names` are the
    syscalls of the native architecture; entries for syscalls that do not
    exist there are dropped after checking.
    """
    rules: dict[str, tuple[str, list[Conds] | None]] = {}
    strict = spec.policy == "strict"
    if strict:
        default = DEFAULT_MISS
        for n in ALLOW_STRICT:
            rules[n] = (ALLOW, None)
        rules["clone"] = (ALLOW, [((0, MASKED_EQ, sum(CLONE_NS_FLAGS), 0),)])
        rules["ioctl"] = (ALLOW, [((1, MASKED_EQ, LOW32, c),) for c in IOCTL_STRICT])
        rules["personality"] = (ALLOW, [((0, MASKED_EQ, LOW32, v),) for v in PERSONALITY_OK])
        for n, e in STRICT_COMPAT_ERRNO.items():
            rules[n] = (_errno_action(e), None)
    else:
        default = ALLOW
        for n in DENY:
            rules[n] = (VIOLATION, None)
        rules["clone"] = (VIOLATION, [((0, MASKED_EQ, f, f),) for f in CLONE_NS_FLAGS])
        rules["ioctl"] = (VIOLATION, [((1, MASKED_EQ, LOW32, TIOCSTI),), ((1, MASKED_EQ, LOW32, TIOCLINUX),)])
        rules["personality"] = (VIOLATION, [((0, MASKED_EQ, m, d),) for m, d in personality_deny_masks()])
        for n, e in COMPAT_ERRNO.items():
            rules[n] = (_errno_action(e), None)

    allow = [parse_entry(e, "seccomp.allow", deny=False) for e in spec.allow]
    deny = [parse_entry(e, "seccomp.deny", deny=True) for e in spec.deny]
    sockets = family_filters(allow, strict)
    uncond_allow = {n for n, c in allow if not c}
    for n, c in deny:
        if not c and n in uncond_allow:
            raise PolicyError(f"seccomp: {n!r} is in both allow and deny")

    for name, conds in allow:
        where = f"seccomp.allow: {name}"
        cur = rules.get(name)
        if not conds:
            if strict:
                rules[name] = (ALLOW, None)
            else:
                rules.pop(name, None)
            continue
        if strict:
            if cur is None or cur[0] != ALLOW:
                rules[name] = (ALLOW, [conds])
            elif cur[1] is not None and conds not in cur[1]:
                cur[1].append(conds)
            continue
        # default policy: a conditional allow may only lift a built-in rule
        if cur is None:
            continue  # already allowed
        lifted = _lift(cur, conds)
        if lifted is None:
            raise PolicyError(
                f"{where}({', '.join(cond_text(c) for c in conds)}) does not match a built-in rule exactly; "
                f"allow {name!r} entirely, or use policy = \"strict\" to allow it with conditions"
            )
        if lifted[1] == []:
            rules.pop(name)
        else:
            rules[name] = lifted

    for name, conds in deny:
        cur = rules.get(name)
        if not conds:
            rules[name] = (VIOLATION, None)
            continue
        if strict:
            if cur is None or cur[0] != ALLOW:
                continue  # not allowed anyway
            raise PolicyError(
                f"seccomp.deny: {name}({', '.join(cond_text(c) for c in conds)}): under policy \"strict\" "
                f"a syscall is allowed with conditions or not at all; list the allowed forms in seccomp.allow"
            )
        if cur is None:
            rules[name] = (VIOLATION, [conds])
        elif cur[0] != VIOLATION:
            continue  # clone3, io_uring_*: already refused for every argument
        elif cur[1] is not None and conds not in cur[1]:
            cur[1].append(conds)

    return default, {n: r for n, r in rules.items() if n in names}, {n: f for n, f in sockets.items() if n in names}


def family_filters(allow: list[tuple[str, Conds]], strict: bool) -> dict[str, FamilyFilter]:
    """The socket family allow-list of each of SOCKET_CALLS, widened by the
    allow entries that name a family (see the module docstring)."""
    out: dict[str, FamilyFilter] = {}
    for call in SOCKET_CALLS:
        families = set(SOCKET_FAMILIES_OK)
        netlink: set[int] | None = set(NETLINK_OK)
        for name, conds in allow:
            if name != call or not conds:
                continue
            named = _named_family(conds, strict)
            if named is None:
                if strict:
                    continue  # allowed for the families already on the list only
                raise PolicyError(
                    f"seccomp.allow: {name}({', '.join(cond_text(c) for c in conds)}): under policy \"default\" "
                    f"{name} is allowed for a family, nothing narrower: {name}(arg0 == AF_VSOCK) or "
                    f"{name}(arg0 == AF_NETLINK, arg2 == NETLINK_SOCK_DIAG)"
                )
            family, protocol = named
            families.add(family)
            if family == AF_NETLINK:
                if protocol is None:
                    netlink = None
                elif netlink is not None:
                    netlink.add(protocol)
        out[call] = FamilyFilter(tuple(sorted(families)), None if netlink is None else tuple(sorted(netlink)))
    return out


def _named_family(conds: Conds, strict: bool) -> tuple[int, int | None] | None:
    """(family, netlink protocol or None) when `conds` pin arg0 (and for
    netlink maybe arg2) to one 32-bit value; under `default` nothing else
    may be in `conds`."""

    def pinned(arg: int) -> int | None:
        for a, op, x, y in conds:
            if a == arg and op == EQ and x <= LOW32:
                return x
            if a == arg and op == MASKED_EQ and x == LOW32:
                return y
        return None

    family = pinned(0)
    if family is None:
        return None
    protocol = pinned(2) if family == AF_NETLINK else None
    if not strict and len(conds) != 1 + (protocol is not None):
        return None
    return family, protocol


def _lift(cur: tuple[str, list[Conds] | None], conds: Conds) -> tuple[str, list[Conds]] | None:
    """Remove the built-in conditional rule equal to `conds` (an allow entry).

    An allow entry's `argN == V` (64-bit) matches a built-in rule's
    `argN & 0xffffffff == V`.
    """
    action, lst = cur
    if lst is None:
        return None
    as_masked = tuple(
        sorted((a, MASKED_EQ, LOW32, x) if op == EQ and x <= LOW32 else (a, op, x, y) for a, op, x, y in conds)
    )
    for i, c in enumerate(lst):
        if c == conds or c == as_masked:
            return action, lst[:i] + lst[i + 1 :]
    return None


def personality_deny_masks() -> list[tuple[int, int]]:
    """Masked-equality rules that match every 32-bit personality value except
    PERSONALITY_OK (0, 0x8, 0x20000, 0x20008, 0xffffffff).

    libseccomp allows one comparison per argument in a rule, so "not in a
    set" is written as a union of single masked compares.  Rule R(b, c) =
    "bit b set and bit c clear", for each bit b other than 3 and 17 with
    c = b + 1 (mod 32); plus "bit 2, 3 set and 4 clear" and "bit 16, 17 set
    and 18 clear".  Proof of cover: take v != 0xffffffff with a bit outside
    {3, 17}; from such a set bit walk upwards (cyclically) over set bits to
    the first clear bit c; its predecessor p is set: if p is outside
    {3, 17} R(p, c) matches, else p - 1 (2 or 16) was walked over, so the
    three-bit rule matches.  None matches an allowed value: those have no
    set bit outside {3, 17}, or (0xffffffff) no clear bit.  Only the low 32
    bits are compared: the kernel takes an unsigned int.
    """
    allowed_bits = (3, 17)
    out: list[tuple[int, int]] = []
    for b in range(32):
        if b in allowed_bits:
            continue
        c = (b + 1) % 32
        out.append(((1 << b) | (1 << c), 1 << b))
    for p in allowed_bits:
        m = (1 << (p - 1)) | (1 << p) | (1 << (p + 1))
        out.append((m, (1 << (p - 1)) | (1 << p)))
    return out


# --------------------------------------------------------------------------
# Compilation


def bindings() -> Any:
    """The official `seccomp` module where present, else `pyseccomp`."""
    try:
        import seccomp as mod  # type: ignore[import-not-found,unused-ignore]

        if not hasattr(mod, "SyscallFilter"):  # some other module of that name
            raise ImportError
    except ImportError:
        try:
            import pyseccomp as mod  # type: ignore[import-untyped,no-redef,unused-ignore]
        except (ImportError, RuntimeError, OSError) as e:
            raise PolicyError(
                f"seccomp: libseccomp bindings unavailable ({e}); install libseccomp2 and "
                f"pyseccomp, or set seccomp.policy = \"none\""
            ) from None
    return mod


def _action(mod: Any, sym: str, action: str) -> int:
    if sym == ALLOW:
        return int(mod.ALLOW)
    if sym.startswith("errno:"):
        return int(mod.ERRNO(int(sym[6:])))
    if action == "kill":
        return int(mod.KILL_PROCESS)
    if action == "log":
        return int(mod.LOG)
    return int(mod.ERRNO(ENOSYS if sym == DEFAULT_MISS else EPERM))


def compile_bpf(spec: SeccompSpec, machine: str) -> bytes:
    """Build the filter with libseccomp and return the raw BPF program."""
    mod = bindings()
    names = native_names(mod, machine)
    default, rules, sockets = resolve(spec, names)
    f = mod.SyscallFilter(_action(mod, default, spec.action))
    badarch = int(mod.KILL_PROCESS) if spec.action == "kill" else int(mod.ERRNO(ENOSYS))
    f.set_attr(mod.Attr.ACT_BADARCH, badarch)
    try:
        f.set_attr(mod.Attr.CTL_OPTIMIZE, 2)  # binary tree of syscall numbers
    except (OSError, AttributeError):
        pass
    default_val = _action(mod, default, spec.action)
    for name in sorted(rules):
        sym, conds_list = rules[name]
        act = _action(mod, sym, spec.action)
        if act == default_val:
            continue
        nr = names[name]
        if conds_list is None:
            f.add_rule(act, nr)
            continue
        for conds in conds_list:
            f.add_rule_exactly(act, nr, *(mod.Arg(a, op, x, y) for a, op, x, y in conds))
    fd = os.memfd_create("sbx-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(fd, "w+b", closefd=False) as fh:
            f.export_bpf(fh)
        body = os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
    arch = AUDIT_ARCH.get(machine) or int(mod.system_arch())
    reviewed_max = REVIEWED_MAX.get(machine) or _libseccomp_max(mod)
    return prelude(machine, arch, reviewed_max, {names[n]: f for n, f in sockets.items()}) + body


def native_names(mod: Any | None, machine: str) -> dict[str, int]:
    if machine == "x86_64":
        return X86_64_NAMES
    if mod is None:
        mod = bindings()
    out: dict[str, int] = {}
    for nr in range(0, 1024):
        try:
            out[mod.resolve_syscall(mod.Arch.NATIVE, nr).decode()] = nr
        except ValueError:
            pass
    return out


def _libseccomp_max(mod: Any) -> int:
    return max(native_names(mod, "?").values())


_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JA = 0x05
_JEQ_K = 0x15
_JGT_K = 0x25
_JGE_K = 0x35
_RET_K = 0x06
SECCOMP_RET_ERRNO = 0x00050000

# An instruction with symbolic jump targets (labels; None: the next one),
# or a label: a name alone.
_Insn = tuple[int, int, "str | None", "str | None"]


def _assemble(code: list[_Insn | str]) -> bytes:
    """Resolve labels (forward jumps only, as BPF has) and encode."""
    where: dict[str, int] = {}
    n = 0
    for item in code:
        if isinstance(item, str):
            where[item] = n
        else:
            n += 1
    out = []
    pc = 0
    for item in code:
        if isinstance(item, str):
            continue
        op, k, jt, jf = item
        offs = [0 if label is None else where[label] - pc - 1 for label in (jt, jf)]
        if op == _JA:
            k, offs = offs[0], [0, 0]
        if not all(0 <= o <= 255 for o in offs):
            raise PolicyError("seccomp: too many socket family entries for the filter's prelude")
        out.append(op.to_bytes(2, "little") + bytes(offs) + k.to_bytes(4, "little"))
        pc += 1
    return b"".join(out)


def _low32(arg: int) -> int:
    """Offset of argument `arg`'s low 32 bits in struct seccomp_data."""
    return 16 + 8 * arg + (4 if sys.byteorder == "big" else 0)


def prelude(machine: str, arch: int, reviewed_max: int, sockets: dict[int, FamilyFilter]) -> bytes:
    """The BPF run before libseccomp's program, on the native arch only.

    Syscall numbers above reviewed_max -> ENOSYS.  The socket calls
    (`sockets`: syscall number -> filter) -> EAFNOSUPPORT for a family (or
    netlink protocol) off their list, or a type of SOCK_PACKET.  Everything
    else falls through to libseccomp's program ("lib"), which checks the
    arch again and sends other ABIs, and x32 numbers (bit 30 set), to the
    bad-arch action.
    """
    eaf = SECCOMP_RET_ERRNO | EAFNOSUPPORT
    code: list[_Insn | str] = [
        (_LD_W_ABS, 4, None, None),  # A = arch
        (_JEQ_K, arch, None, "lib"),
        (_LD_W_ABS, 0, None, None),  # A = nr
    ]
    if machine == "x86_64":
        code.append((_JGE_K, X32_SYSCALL_BIT, "lib", None))
    code.append((_JGT_K, reviewed_max, "enosys", None))
    for nr in sorted(sockets):
        code.append((_JEQ_K, nr, f"sock{nr}", None))
    code.append((_JA, 0, "lib", None))
    for nr, f in sorted(sockets.items()):
        code += [
            f"sock{nr}",
            (_LD_W_ABS, _low32(1), None, None),  # A = type
            (_ALU_AND_K, SOCK_TYPE_MASK, None, None),
            (_JEQ_K, SOCK_PACKET, f"eaf{nr}", None),
            (_LD_W_ABS, _low32(0), None, None),  # A = family
        ]
        for family in f.families:
            netlink = family == AF_NETLINK and f.netlink is not None
            code.append((_JEQ_K, family, f"netlink{nr}" if netlink else "lib", None))
        code += [f"eaf{nr}", (_RET_K, eaf, None, None)]
        if AF_NETLINK in f.families and f.netlink is not None:
            code += [f"netlink{nr}", (_LD_W_ABS, _low32(2), None, None)]  # A = protocol
            code += [(_JEQ_K, p, "lib", None) for p in f.netlink]
            code.append((_RET_K, eaf, None, None))
    code += ["enosys", (_RET_K, SECCOMP_RET_ERRNO | ENOSYS, None, None), "lib"]
    return _assemble(code)


def known_anywhere(name: str) -> bool:
    """Whether libseccomp knows the name on some architecture."""
    try:
        mod = bindings()
    except PolicyError:
        return False
    try:
        nr = mod.resolve_syscall(mod.Arch.NATIVE, name)
    except (ValueError, OSError):
        return False
    return bool(nr != -1)  # __NR_SCMP_ERROR; other negatives are other arches'


def pfc(spec: SeccompSpec, machine: str) -> str:
    """libseccomp's pseudo-code of the filter (debugging, `sbx seccomp show`)."""
    mod = bindings()
    names = native_names(mod, machine)
    default, rules, sockets = resolve(spec, names)
    lines = [f"# default: {default}; newer than {REVIEWED_MAX.get(machine)}: ENOSYS"]
    for name, f in sorted(sockets.items()):
        netlink = "any" if f.netlink is None else ", ".join(map(str, f.netlink))
        lines.append(f"# {name}: families {', '.join(map(str, f.families))} (netlink protocols {netlink}), "
                     f"not SOCK_PACKET; others: EAFNOSUPPORT")
    for name in sorted(rules):
        sym, conds_list = rules[name]
        if conds_list is None:
            lines.append(f"{name}: {sym}")
        else:
            for conds in conds_list:
                lines.append(f"{name}({', '.join(cond_text(c) for c in conds)}): {sym}")
    return "\n".join(lines)
