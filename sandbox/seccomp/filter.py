"""Seccomp for the payload: a policy compiled once to BPF, cached, loaded last.

The supervisor calls `program(spec)`: on the first run of a given policy it
builds the filter with libseccomp (`sandbox.seccomp_policy`, which imports
the bindings: tens of milliseconds) and caches the raw BPF under
`$XDG_CACHE_HOME/sbx/seccomp/`; later runs only read that file.  The payload
calls `load(prog)` as its last step before execve: plain ctypes `seccomp(2)`
(or `prctl(PR_SET_SECCOMP)`), no libseccomp.

Action "kill" and reporting the syscall: the compiled program kills with
SECCOMP_RET_KILL_PROCESS.  `load(prog, listener=True)` rewrites those
returns to SECCOMP_RET_USER_NOTIF and installs the filter with a listener
fd; the supervisor takes that fd (`take_listener`), and on a notification
(`receive`) knows the syscall, records `describe(...)` as the message and
kills the run; the blocked syscall never executes.  Without a listener (an
old kernel, or an outer filter already has one) `load` falls back to the
plain kill, and the supervisor can only say "killed by seccomp".
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes

# Bump when a policy changes meaning; the cache key also covers the source
# files' size and mtime, the architecture and libseccomp's version.
VERSION = 2

POLICIES = ("default", "strict", "none")
ACTIONS = ("errno", "kill", "log")

_MAGIC = b"SBXBPF1\0"
_BPF_MAXINSNS = 4096

# seccomp(2) numbers; elsewhere prctl(PR_SET_SECCOMP) is used.
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "riscv64": 277, "ppc64le": 358, "s390x": 348}
_SYS_PIDFD_OPEN = 434  # the same on every architecture
_SYS_PIDFD_GETFD = 438
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_SECCOMP_SET_MODE_FILTER = 1
_SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
_SECCOMP_IOCTL_NOTIF_RECV = 0xC0502100  # _IOWR('!', 0, struct seccomp_notif)

_RET_KILL_PROCESS = 0x80000000
_RET_USER_NOTIF = 0x7FC00000
# "ret #k" instructions as little-endian u64 (code 0x06, jt 0, jf 0, k)
_INSN_RET_KILL = 0x06 | (_RET_KILL_PROCESS << 32)
_INSN_RET_NOTIF = 0x06 | (_RET_USER_NOTIF << 32)

AUDIT_ARCH_NAMES = {
    0xC000003E: "x86_64",
    0x40000003: "i386",
    0xC00000B7: "aarch64",
    0x40000028: "arm",
}


class SeccompError(Exception):
    """A bad [seccomp] table or a filter that cannot be built; one line."""


@dataclass(frozen=True)
class SeccompSpec:
    """The [seccomp] table of a profile.

    policy: "default" (Docker-like deny-list), "strict" (allow-list), "none".
    allow/deny: syscall names, optionally with argument conditions, e.g.
    "socket(arg0 == AF_NETLINK, arg2 == NETLINK_AUDIT)"; see seccomp_policy.
    action: what a denied syscall gets: "errno" (EPERM; ENOSYS for one a
    strict policy does not list), "kill" (the process is killed, and the
    syscall reported), "log" (allowed, logged by the kernel).
    """

    policy: str = "default"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    action: str = "errno"


# --------------------------------------------------------------------------
# Validation and compilation (supervisor)


def validate(spec: SeccompSpec) -> None:
    """Raise SeccompError for an unknown policy, action or syscall name, a bad
    condition, or a combination of entries the filter cannot express."""
    if spec.policy not in POLICIES:
        raise SeccompError(f"seccomp.policy: unknown policy {spec.policy!r} (one of {', '.join(POLICIES)})")
    if spec.action not in ACTIONS:
        raise SeccompError(f"seccomp.action: unknown action {spec.action!r} (one of {', '.join(ACTIONS)})")
    for field in ("allow", "deny"):
        value = getattr(spec, field)
        if not isinstance(value, tuple):
            raise SeccompError(f"seccomp.{field}: must be a list of syscall names")
    if spec.policy == "none":
        if spec.allow or spec.deny:
            raise SeccompError('seccomp: allow/deny lists have no effect with policy = "none"')
        return
    from . import policy as P

    machine = os.uname().machine
    try:
        names = P.native_names(None, machine)
        for field, deny in (("allow", False), ("deny", True)):
            for entry in getattr(spec, field):
                name, _ = P.parse_entry(entry, f"seccomp.{field}", deny)
                if name not in names and not P.known_anywhere(name):
                    raise SeccompError(f"seccomp.{field}: unknown syscall {name!r}{_hint(name, names)}")
        P.resolve(spec, names)
    except P.PolicyError as e:
        raise SeccompError(str(e)) from None


def _hint(name: str, names: dict[str, int]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def program(spec: SeccompSpec, *, cache: bool = True) -> bytes | None:
    """The compiled BPF program for `spec` (None for policy "none").

    Runs in the supervisor.  Served from the cache when possible; on a miss
    the spec is validated, compiled with libseccomp and stored (best
    effort: an unusable cache directory just means compiling in memory).
    """
    if spec.policy == "none":
        validate(spec)
        return None
    machine = os.uname().machine
    key = cache_key(spec, machine) if cache else ""
    if cache:
        prog = _cache_read(key)
        if prog is not None:
            return prog
    validate(spec)
    from . import policy as P

    try:
        prog = P.compile_bpf(spec, machine)
    except P.PolicyError as e:
        raise SeccompError(str(e)) from None
    except OSError as e:
        raise SeccompError(f"seccomp: libseccomp could not build the filter: {e.strerror or e}") from None
    if not 0 < len(prog) // 8 <= _BPF_MAXINSNS:
        raise SeccompError(f"seccomp: the filter has {len(prog) // 8} instructions (the kernel takes {_BPF_MAXINSNS})")
    if cache:
        _cache_write(key, prog)
    return prog


def libseccomp_version() -> str:
    """libseccomp's version via dlopen (no bindings import), or "none"."""
    import ctypes

    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "none"
    fn = lib.seccomp_version
    fn.restype = ctypes.POINTER(ctypes.c_uint * 3)
    v = fn().contents
    return f"{v[0]}.{v[1]}.{v[2]}"


def cache_key(spec: SeccompSpec, machine: str) -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for f in sorted(name for name in os.listdir(here) if name.endswith(".py")):  # the whole package
        try:
            st = os.stat(os.path.join(here, f))
            stamps.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((0, 0))
    material = repr(
        (VERSION, spec.policy, spec.allow, spec.deny, spec.action, machine, libseccomp_version(), stamps)
    ).encode()
    try:
        from _blake2 import blake2b  # built in: hashlib would cost 8 ms
    except ImportError:  # pragma: no cover
        from hashlib import blake2b
    return blake2b(material, digest_size=16).hexdigest()


# --------------------------------------------------------------------------
# The on-disk cache.  Never follows a symlink below the base directory,
# accepts only directories and files owned by us and not writable by others.


def cache_dir() -> str | None:
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not base.startswith("/"):  # relative paths are to be ignored (XDG)
        home = os.environ.get("HOME", "")
        if not home.startswith("/"):
            return None
        base = home.rstrip("/") + "/.cache"
    return base + "/sbx/seccomp"


def _open_cache_dir(create: bool) -> int | None:
    path = cache_dir()
    if path is None:
        return None
    base = path[: -len("/sbx/seccomp")]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        if create:
            os.makedirs(base, 0o700, exist_ok=True)
        fd = os.open(base, flags)  # the user's own setting: may be a symlink
    except OSError:
        return None
    try:
        for part in ("sbx", "seccomp"):
            try:
                nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
        nfd, fd = fd, -1
        return nfd
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _cache_read(key: str) -> bytes | None:
    d = _open_cache_dir(create=False)
    if d is None:
        return None
    try:
        fd = os.open(f"{key}.bpf", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=d)
    except OSError:
        return None
    finally:
        os.close(d)
    try:
        st = os.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000 or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            return None
        data = os.read(fd, 12 + 8 * _BPF_MAXINSNS + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _unpack(data)


def _pack(prog: bytes) -> bytes:
    from binascii import crc32

    return _MAGIC + crc32(prog).to_bytes(4, "little") + prog


def _unpack(data: bytes) -> bytes | None:
    from binascii import crc32

    if data[:8] != _MAGIC:
        return None
    prog = data[12:]
    if not prog or len(prog) % 8 or len(prog) > 8 * _BPF_MAXINSNS:
        return None
    if crc32(prog) != int.from_bytes(data[8:12], "little"):
        return None
    return prog


def _cache_write(key: str, prog: bytes) -> bool:
    d = _open_cache_dir(create=True)
    if d is None:
        return False
    tmp = f".{key}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=d
        )
        try:
            os.write(fd, _pack(prog))
        finally:
            os.close(fd)
        os.rename(tmp, f"{key}.bpf", src_dir_fd=d, dst_dir_fd=d)
        return True
    except OSError:
        try:
            os.unlink(tmp, dir_fd=d)
        except OSError:
            pass
        return False
    finally:
        os.close(d)


# --------------------------------------------------------------------------
# Loading (payload, last step before execve): ctypes only.

_libc: ctypes.CDLL | None = None


def _get_libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def prepare() -> None:
    """Resolve what `load` needs (ctypes, libc's prctl and syscall).

    Call it in the process that forks the payload: the payload's `load`
    then costs little more than the kernel's work (about 0.25 ms here,
    against 0.6-1.2 ms when the child resolves them itself after fork).
    """
    import ctypes

    libc = _get_libc()
    libc.prctl, libc.syscall, ctypes.c_char_p, ctypes.c_size_t  # noqa: B018 - cached by ctypes


def _call(fn_name: str, *args: int) -> int:
    import ctypes

    fn = getattr(_get_libc(), fn_name)
    r = int(fn(*(ctypes.c_ulong(a) for a in args)))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def _swap_ret(prog: bytes, old: int, new: int) -> bytes:
    """Replace every `ret #old` instruction with `ret #new`."""
    if old.to_bytes(8, "little") not in prog:
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
    `take_listener`), or a violation would only get ENOSYS.  If the kernel
    refuses a listener, the plain kill filter is loaded and -1 returned.
    """
    n = len(prog) // 8
    if not 0 < n <= _BPF_MAXINSNS or len(prog) % 8:
        raise OSError(22, "seccomp: malformed BPF program")
    import ctypes

    libc = _get_libc()
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _raise_errno()
    nr = _SYS_SECCOMP.get(os.uname().machine)
    if listener and nr is not None:
        notif = _swap_ret(prog, _INSN_RET_KILL, _INSN_RET_NOTIF)
        if notif is not prog:
            # sock_fprog {u16 len; pad; sock_filter *filter}; bytes passed as
            # char* are not copied: both stay alive for the call
            code = ctypes.c_char_p(notif)
            fprog = ctypes.c_char_p(n.to_bytes(8, "little") + _address(code).to_bytes(8, "little"))
            fd = int(libc.syscall(nr, _SECCOMP_SET_MODE_FILTER, _SECCOMP_FILTER_FLAG_NEW_LISTENER, fprog))
            if fd >= 0:
                os.set_inheritable(fd, False)
                return fd
            e = ctypes.get_errno()
            if e not in (22, 16, 38):  # EINVAL, EBUSY, ENOSYS: no listener here
                raise OSError(e, os.strerror(e))
    code = ctypes.c_char_p(prog)
    fprog = ctypes.c_char_p(n.to_bytes(8, "little") + _address(code).to_bytes(8, "little"))
    if nr is not None:
        if libc.syscall(nr, _SECCOMP_SET_MODE_FILTER, 0, fprog) == 0:
            return -1
        if ctypes.get_errno() != 38:  # ENOSYS: a kernel before 3.17
            _raise_errno()
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog, 0, 0) != 0:
        _raise_errno()
    return -1


def _address(p: ctypes.c_char_p) -> int:
    import ctypes

    return int(ctypes.c_size_t.from_address(ctypes.addressof(p)).value)


def _raise_errno() -> None:
    import ctypes

    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))


# --------------------------------------------------------------------------
# Reporting violations (supervisor or init)


def take_listener(pid: int, fd: int) -> int:
    """Duplicate the payload's listener fd `fd` into this process.

    Needs ptrace access to `pid` (same user, payload still dumpable; the
    payload's parent or an ancestor).  The payload must wait until this is
    done before execve, since its own copy is closed on exec.
    """
    pidfd = _call("syscall", _SYS_PIDFD_OPEN, pid, 0)
    try:
        new = _call("syscall", _SYS_PIDFD_GETFD, pidfd, fd, 0)
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

    buf = bytearray(80)  # struct seccomp_notif, zeroed as the kernel wants
    try:
        fcntl.ioctl(listener, _SECCOMP_IOCTL_NOTIF_RECV, buf, True)
    except OSError as e:
        if e.errno == 2:  # ENOENT
            return None
        raise
    pid = int.from_bytes(buf[8:12], "little")
    nr = int.from_bytes(buf[16:20], "little", signed=True)
    arch = int.from_bytes(buf[20:24], "little")
    return pid, arch, nr


def syscall_name(nr: int, arch: int | None = None) -> str:
    """The name of syscall `nr` on `arch` (an AUDIT_ARCH value; default
    native), or "syscall N" when unknown."""
    machine = os.uname().machine
    name = AUDIT_ARCH_NAMES.get(arch, "?") if arch is not None else machine
    if name == "x86_64" and not nr & 0x40000000:
        from .policy import X86_64_NAMES

        for n, i in X86_64_NAMES.items():
            if i == nr:
                return n
        return f"syscall {nr}"
    try:
        from .policy import bindings

        mod = bindings()
        a = mod.Arch.NATIVE if arch is None else arch
        return str(mod.resolve_syscall(a, nr & ~0x40000000).decode())
    except Exception:
        return f"syscall {nr}"


def describe(arch: int, nr: int) -> str:
    """The result's `message` for a violation seen by the listener."""
    native = {v: k for k, v in AUDIT_ARCH_NAMES.items()}.get(os.uname().machine)
    if arch == native and nr & 0x40000000 and os.uname().machine == "x86_64":
        return f"seccomp: x32 ABI syscall {nr & ~0x40000000} blocked"
    if arch != native:
        abi = AUDIT_ARCH_NAMES.get(arch, f"arch {arch:#x}")
        return f"seccomp: {abi} ABI syscall {syscall_name(nr, arch)} ({nr}) blocked"
    return f"seccomp: forbidden syscall {syscall_name(nr)} ({nr})"
