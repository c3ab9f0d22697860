"""Landlock (Linux 5.13+): the kernel's unprivileged access control, mechanics only.

The policy (which paths, which rights) is the payload's (payload.py, `rules`
below computes it from a LandlockSpec); this module probes the ABI, builds a
ruleset with the rights the running kernel knows (newer ones masked off, as
the kernel's own example does), adds rules and restricts the calling thread.

ABI versions: 1 (5.13) files; 2 (5.19) REFER; 3 (6.2) TRUNCATE; 4 (6.7) TCP
bind/connect; 5 (6.10) IOCTL_DEV; 6 (6.12) scopes: abstract unix sockets and
signals.  Syscall numbers from 424 on are shared by all architectures.
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass
from ..kernel.linux import UInt, ULong, get_errno, pack, syscall

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..model.spec import LandlockSpec

NR_CREATE_RULESET = 444
NR_ADD_RULE = 445
NR_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

# Rights that make sense on a regular file (the kernel refuses directory rights there).
FS_FILE = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
FS_READ = FS_READ_FILE | FS_READ_DIR
# Everything that changes a tree; device nodes are never made (nodev mounts, no capabilities anyway).
FS_WRITE = (FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG | FS_MAKE_SOCK
            | FS_MAKE_FIFO | FS_MAKE_SYM | FS_REFER | FS_TRUNCATE)
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FS_ALL_KNOWN = (1 << 16) - 1  # what this module knows: ABI 5 and later
NET_ALL = NET_BIND_TCP | NET_CONNECT_TCP
SCOPE_ALL = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL

# The payload's own character devices (rootfs.DEVICES); pts and shm are directories of /dev.
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


@dataclass(frozen=True)
class Rules:
    """A ruleset's content: handled rights, path rules (sandbox path, rights), TCP port rules."""

    fs: int
    net: int = 0
    scoped: int = 0
    paths: tuple[tuple[str, int], ...] = ()
    ports: tuple[tuple[int, int], ...] = ()


def _check(result: int, what: str) -> int:
    if result < 0:
        err = get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (too old, or disabled at boot)."""
    result = syscall(NR_CREATE_RULESET, None, ULong(0), UInt(CREATE_RULESET_VERSION))
    return max(0, int(result))


def for_abi(rules: Rules, version: int) -> Rules:
    """`rules` with what `version` does not know masked off (handled rights and in every rule)."""
    fs = rules.fs & _FS_BY_ABI.get(version, FS_ALL_KNOWN)
    net = rules.net if version >= 4 else 0
    scoped = rules.scoped if version >= 6 else 0
    paths = tuple((path, access & fs) for path, access in rules.paths if access & fs)
    ports = tuple((port, access & net) for port, access in rules.ports if access & net)
    return Rules(fs=fs, net=net, scoped=scoped, paths=paths, ports=ports)


def create_ruleset(fs: int, net: int = 0, scoped: int = 0) -> int:
    """A ruleset fd handling these rights (all must be known to the kernel: see for_abi)."""
    # struct landlock_ruleset_attr {u64 handled_access_fs, handled_access_net, scoped}: the full
    # struct even on older kernels, which accept a larger size whose extra bytes are zero.
    attr = pack((fs, 8), (net, 8), (scoped, 8))
    return _check(syscall(NR_CREATE_RULESET, attr, ULong(len(attr)), UInt(0)), "landlock_create_ruleset")


def add_path(ruleset: int, fd: int, access: int) -> None:
    """Allow `access` beneath the file or directory `fd` (an O_PATH fd will do)."""
    attr = pack((access, 8), (fd, 4))  # struct landlock_path_beneath_attr, packed: 12 bytes
    _check(syscall(NR_ADD_RULE, ruleset, RULE_PATH_BENEATH, attr, UInt(0)), "landlock_add_rule")


def add_port(ruleset: int, port: int, access: int) -> None:
    """Allow TCP bind and/or connect on `port` (ABI 4)."""
    attr = pack((access, 8), (port, 8))  # struct landlock_net_port_attr
    _check(syscall(NR_ADD_RULE, ruleset, RULE_NET_PORT, attr, UInt(0)), f"landlock_add_rule port {port}")


def restrict_self(ruleset: int) -> None:
    """Enforce the ruleset on this thread and its future children (needs no_new_privs)."""
    _check(syscall(NR_RESTRICT_SELF, ruleset, UInt(0)), "landlock_restrict_self")


def apply(rules: Rules, version: int) -> None:
    """Build and enforce `rules` as far as ABI `version` knows them (see build)."""
    ruleset = build(rules, version)
    try:
        restrict_self(ruleset)
    finally:
        os.close(ruleset)


def build(rules: Rules, version: int) -> int:
    """A ruleset fd (close-on-exec) holding `rules` as far as ABI `version` knows them.  Paths are
    opened O_PATH from the current root; a final symlink or a missing path gets no rule (less
    access, never more)."""
    rules = for_abi(rules, version)
    ruleset = create_ruleset(rules.fs, rules.net, rules.scoped)
    try:
        for path, access in rules.paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            try:
                kind = _kind(fd)
                if kind != "dir":
                    access &= FS_FILE if kind == "file" else 0  # a symlink: no rule (less access)
                if access:
                    add_path(ruleset, fd, access)
            finally:
                os.close(fd)
        for port, access in rules.ports:
            add_port(ruleset, port, access)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def _kind(fd: int) -> str:
    import stat

    mode = os.fstat(fd).st_mode
    return "dir" if stat.S_ISDIR(mode) else "link" if stat.S_ISLNK(mode) else "file"


# -- what a run gets: the supervisor's view (limits.py, watch.py) and the payload's rules ----------

def effective_abi(spec: LandlockSpec) -> int:
    """The ABI a run uses: 0 when disabled, unavailable, or capped to 0 (SBX_LANDLOCK=0)."""
    if not spec.enabled:
        return 0
    version = abi()
    return version if spec.abi_cap is None else min(version, spec.abi_cap)


def fences(spec: LandlockSpec) -> tuple[tuple[str, bool], ...]:
    """For the result: whether the Landlock fence holds (the payload fails the run if it cannot)."""
    return (("landlock", effective_abi(spec) >= 1),)


def notes(spec: LandlockSpec) -> list[str]:
    """What a run asked of Landlock and will not get, one line each (warnings; --strict refuses)."""
    if not spec.enabled:
        return []
    version = effective_abi(spec)
    if version < 1:
        why = "SBX_LANDLOCK=0" if abi() >= 1 else "it needs Linux 5.13+ with Landlock enabled at boot"
        return [f"Landlock is not in use ({why}): the sandbox runs without its second fence on files, TCP "
                "ports and host sockets (see 'sbx doctor')"]
    if (spec.tcp_bind is not None or spec.tcp_connect is not None) and version < 4:
        return [f"landlock.tcp_bind/tcp_connect are not enforced: they need Landlock ABI 4 (Linux 6.7), this "
                f"kernel has ABI {version}"]
    return []


def scoped(spec: LandlockSpec) -> bool:
    """Whether the run's abstract unix sockets and signals are scoped to the sandbox (ABI 6)."""
    return effective_abi(spec) >= 6
