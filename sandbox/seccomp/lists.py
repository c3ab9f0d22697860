"""The reviewed seccomp policy lists.  SECURITY REVIEW: this file is the whole of
what each policy allows and denies, and why; diff it alone.

Data only (the tests check that it imports nothing): syscalls by name,
kernel constants by number with their names beside them (tests check each
against table.py), errnos by name.  resolve.py turns these lists into rules.

Policies
--------
`default`: a deny-list (default action ALLOW) modelled on Docker's default
profile, and beyond it: DENY, COMPAT_ERRNO, and the argument rules for
clone (CLONE_FLAGS_DENIED), ioctl (IOCTL_DENIED) and personality
(PERSONALITY_OK).

`strict`: an allow-list (default action = the violation action) fit for
compiled and interpreted solutions: C, C++, Python, Java, Go, `sh`:
ALLOW_STRICT, clone without CLONE_FLAGS_DENIED, ioctl with IOCTL_STRICT,
personality with PERSONALITY_OK, and STRICT_COMPAT_ERRNO.

In both, on the native architecture:

- syscall numbers above the highest one this policy has reviewed (the end
  of table.py's x86_64 table, `REVIEWED_MAX`) return ENOSYS, so runtimes
  that probe newer syscalls fall back (a compare on the number, put in
  front of libseccomp's program the way runc's patchbpf does: bpf.py);
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
  allow-list (SOCKET_FAMILIES_OK, below); any other gets EAFNOSUPPORT
  whatever the action, as from a kernel built without it.

Actions: `errno` -> EPERM for denied syscalls (ENOSYS for syscalls a strict
policy does not list), `kill` -> SECCOMP_RET_KILL_PROCESS (turned into a
user notification at load time when a supervisor listens; see load.py),
`log` -> allowed and logged by the kernel.
"""

from __future__ import annotations

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


# clone(2) may set none of these flags: making namespaces is the sandbox's
# job, and each new one is kernel attack surface (user namespaces above all).
# Denied under `default`, not allowed under `strict`.  Not CLONE_NEWTIME:
# clone(2) uses that bit for CSIGNAL (unshare is denied, clone3 gets ENOSYS).
CLONE_FLAGS_DENIED: dict[int, str] = {
    0x00020000: "CLONE_NEWNS",
    0x02000000: "CLONE_NEWCGROUP",
    0x04000000: "CLONE_NEWUTS",
    0x08000000: "CLONE_NEWIPC",
    0x10000000: "CLONE_NEWUSER",
    0x20000000: "CLONE_NEWPID",
    0x40000000: "CLONE_NEWNET",
}

# ioctl(2) commands denied under `default`: TIOCSTI pushes input into a
# terminal (a sandboxed program typing commands into the user's shell), and
# TIOCLINUX can paste a virtual console's selection the same way.
IOCTL_DENIED: dict[int, str] = {
    0x5412: "TIOCSTI",
    0x541C: "TIOCLINUX",
}

# Return this errno whatever the action: runtimes probe them and fall back.
COMPAT_ERRNO: dict[str, str] = {
    "clone3": "ENOSYS",
    "io_uring_setup": "ENOSYS",
    "io_uring_enter": "ENOSYS",
    "io_uring_register": "ENOSYS",
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

STRICT_COMPAT_ERRNO: dict[str, str] = dict(COMPAT_ERRNO, socket="EACCES")

# --------------------------------------------------------------------------
# Socket families: an allow-list in both policies.  SECURITY REVIEW: this
# block is the whole list; diff it.
#
# `socket` and `socketpair` may name only SOCKET_FAMILIES_OK, and netlink
# only with a NETLINK_OK protocol.  Anything else, every family a future
# kernel adds included, gets EAFNOSUPPORT whatever the action (what a kernel
# built without the family says, so programs fall back quietly).  Checked
# on the low 32 bits the kernel reads (the arguments are ints) by the fixed
# prelude in front of libseccomp's program (bpf.py).  Refusing the family
# before the kernel sees it also keeps the payload from making the kernel
# autoload a protocol module (`net-pf-N`, `net-pf-16-proto-N`), a well-worn
# road to rarely used, rarely audited code.  A type of SOCK_PACKET is
# refused for every family: the kernel turns (AF_INET, SOCK_PACKET) into
# AF_PACKET.  The network modes need nothing more: `none` has loopback
# only, `pasta` relays TCP, UDP and ICMP (inet, inet6), and `host` keeps
# the same list (vsock, bluetooth and the rest would be the host's own).
# i386's `socketcall`, whose arguments BPF cannot read, is out with the
# whole i386 ABI (the "bad arch" action).

SOCKET_FAMILIES_OK: dict[int, str] = {
    1: "AF_UNIX",  # local IPC; abstract names are per network namespace
    2: "AF_INET",
    10: "AF_INET6",
    16: "AF_NETLINK",  # NETLINK_OK protocols only
}

# NETLINK_ROUTE only: glibc's getaddrinfo(AI_ADDRCONFIG) and if_nameindex(),
# Go's net.Interfaces() and `ip` use it; it sees the sandbox's own network
# namespace, and changes nothing without CAP_NET_ADMIN (the payload has none).
NETLINK_OK: dict[int, str] = {
    0: "NETLINK_ROUTE",
}

# Netlink protocols left out (numbers in table.CONSTANTS), and why:
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
