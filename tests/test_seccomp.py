"""Seccomp: policy validation, the BPF cache, and real filters on real syscalls.

Every attack runs three ways in a forked child: without a filter (the
control: what the kernel does for this user), under action "errno" (the
expected errno) and under action "kill" (SIGSYS, which only the filter can
cause, so the test fails if the filter does not catch the call even where
the kernel refuses it anyway).
"""

from __future__ import annotations

import ctypes
import errno
import os
import pty
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandbox.seccomp import SeccompError, SeccompSpec
from sandbox.seccomp import cache as C
from sandbox.seccomp import lists as L
from sandbox.seccomp import notify as N
from sandbox.seccomp import table as T
from sandbox.seccomp.compile import listing, validate
from sandbox.seccomp.load import load
from sandbox.seccomp.resolve import personality_deny_masks
from sandbox.model.frozen import replace

ATTACKS = Path(__file__).parent / "attacks"
libc = ctypes.CDLL(None, use_errno=True)
SIGSYS = signal.SIGSYS

DEFAULT = SeccompSpec()
DEFAULT_KILL = SeccompSpec(action="kill")
STRICT = SeccompSpec(policy="strict", action="errno")
STRICT_KILL = SeccompSpec(policy="strict", action="kill")
GRADER = STRICT_KILL

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers are x86_64's")

NR = T.X86_64_NAMES


def sysc(name_or_nr: str | int, *args: int) -> tuple[int, int]:
    """Raw syscall; (return value, errno)."""
    nr = NR[name_or_nr] if isinstance(name_or_nr, str) else name_or_nr
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) for a in args))
    return r, ctypes.get_errno()


_programs: dict[SeccompSpec, bytes] = {}


def prog_for(spec: SeccompSpec) -> bytes:
    if spec not in _programs:
        p = C.program(spec, cache=False)
        assert p is not None
        _programs[spec] = p
    return _programs[spec]


class Outcome:
    def __init__(self, out: str, status: int) -> None:
        self.out = out
        self.signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        self.code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1

    def __repr__(self) -> str:
        return f"Outcome(out={self.out!r}, signal={self.signal}, code={self.code})"


def in_child(
    fn: Callable[[], object],
    spec: SeccompSpec | None = None,
    pre: Callable[[], None] | None = None,
    timeout: float = 30,
) -> Outcome:
    """Fork; in the child run pre(), load the filter for spec, run fn() and
    send repr(result) back through a pipe."""
    prog = prog_for(spec) if spec is not None else None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            if pre is not None:
                pre()
            if prog is not None:
                load(prog)
            os.write(w, repr(fn()).encode())
        except BaseException as e:  # noqa: BLE001 - report anything
            try:
                os.write(w, f"EXC {type(e).__name__}: {e}".encode())
            except BaseException:
                pass
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    out = _read_all(r, timeout, pid)
    _, status = os.waitpid(pid, 0)
    return Outcome(out, status)


def _read_all(fd: int, timeout: float, pid: int) -> str:
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("child timed out")
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def exec_under(argv: list[str], spec: SeccompSpec | None, stdin: bytes = b"", timeout: float = 60) -> Outcome:
    """Run argv with the filter loaded just before execve (the payload's
    last step), stdout+stderr captured."""
    prog = prog_for(spec) if spec is not None else None
    r, w = os.pipe()
    ir, iw = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(ir, 0)
            os.dup2(w, 1)
            os.dup2(w, 2)
            os.closerange(3, 256)
            os.setsid()
            if prog is not None:
                load(prog)
            os.execvpe(argv[0], argv, dict(os.environ, LC_ALL="C"))
        except BaseException as e:
            os.write(2, f"EXC {e}".encode())
        finally:
            os._exit(127)
    os.close(w)
    os.close(ir)
    os.write(iw, stdin)
    os.close(iw)
    out = _read_all(r, timeout, pid)
    _, status = os.waitpid(pid, 0)
    return Outcome(out, status)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The C programs of tests/attacks, compiled once."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("attacks")
    out = {}
    for src in ("int80.c", "x32.c", "hello.c"):
        exe = d / src[:-2]
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(ATTACKS / src)], check=True)
        out[src[:-2]] = exe
    yield out


# --------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "spec, message",
    [
        (SeccompSpec(allow=("opne",)), "seccomp.allow: unknown syscall 'opne' (did you mean 'open'?)"),
        (SeccompSpec(deny=("keyctll",)), "seccomp.deny: unknown syscall 'keyctll' (did you mean 'keyctl'?)"),
        (SeccompSpec(deny=("xyzzy",)), "seccomp.deny: unknown syscall 'xyzzy'"),
        (SeccompSpec(policy="tight"), "seccomp.policy: unknown policy 'tight' (one of default, strict, none)"),
        (SeccompSpec(action="trap"), "seccomp.action: unknown action 'trap' (one of errno, kill, log)"),
        (SeccompSpec(policy="none", deny=("ptrace",)), "no effect with policy"),
        (SeccompSpec(allow=("ptrace",), deny=("ptrace",)), "'ptrace' is in both allow and deny"),
        (SeccompSpec(deny=("ioctl(arg1 = 5)",)), "bad condition"),
        (SeccompSpec(deny=("ioctl(arg9 == 5)",)), "arg0..arg5"),
        (SeccompSpec(deny=("ioctl(arg1 == 5, arg1 == 6)",)), "more than one condition on arg1"),
        (SeccompSpec(deny=("ioctl(arg1 == FOO)",)), "bad value 'FOO'"),
        (SeccompSpec(deny=("ioctl(arg1 & 0xff > 5)",)), "masked condition must use =="),
        (SeccompSpec(deny=("ioctl(arg1 == 5",)), "missing ')'"),
        (SeccompSpec(deny=("rm -rf",)), "bad entry"),
        (SeccompSpec(policy="strict", deny=("ioctl(arg1 == 5)",)), "allowed with conditions or not at all"),
        (SeccompSpec(allow=("ioctl(arg1 == 0x5412, arg2 == 0)",)), "does not match a built-in rule exactly"),
        (SeccompSpec(allow=("socket(arg0 == AF_INET, arg1 == SOCK_RAW)",)), "allowed for a family, nothing narrower"),
        (SeccompSpec(allow=("socketpair(arg1 == 1)",)), "allowed for a family, nothing narrower"),
        (SeccompSpec(allow=("socket(arg0 == 0x100000028)",)), "allowed for a family, nothing narrower"),
    ],
)
def test_validate_errors(spec: SeccompSpec, message: str) -> None:
    with pytest.raises(SeccompError) as e:
        validate(spec)
    assert message in str(e.value)
    assert "\n" not in str(e.value)
    with pytest.raises(SeccompError):
        C.program(spec, cache=False)


@pytest.mark.parametrize(
    "spec",
    [
        SeccompSpec(),
        SeccompSpec(policy="strict", action="kill"),
        SeccompSpec(policy="none"),
        SeccompSpec(deny=("vm86", "socketcall")),  # other arches' syscalls: accepted, skipped
        SeccompSpec(allow=("ptrace", "socket(arg0 == AF_NETLINK, arg2 == NETLINK_AUDIT)")),
        SeccompSpec(deny=("mmap(arg2 & PROT_EXEC == PROT_EXEC)", "clone3(arg1 == 0)")),
        SeccompSpec(policy="strict", allow=("socket(arg0 == AF_UNIX)", "mlock"), deny=("fork",)),
        SeccompSpec(allow=("socket(arg0 == AF_VSOCK)", "socketpair(arg0 & 0xffffffff == AF_TIPC)", "socket(arg0 == 2)")),
        SeccompSpec(policy="strict", allow=("socket(arg0 == AF_INET, arg1 == SOCK_STREAM)", "socket(arg1 == 2)")),
    ],
)
def test_validate_ok(spec: SeccompSpec) -> None:
    validate(spec)


def test_none_has_no_program() -> None:
    assert C.program(SeccompSpec(policy="none")) is None


def test_personality_masks_cover_exactly() -> None:
    masks = personality_deny_masks()

    def denied(v: int) -> bool:
        return any(v & m == d for m, d in masks)

    for ok in L.PERSONALITY_OK:
        assert not denied(ok), hex(ok)
    import random

    rnd = random.Random(5)
    samples = [1 << b for b in range(32)] + [(1 << b) | 8 for b in range(32)] + [0xFFFFFFFF ^ (1 << b) for b in range(32)]
    samples += [rnd.getrandbits(32) for _ in range(20000)] + [0x0040000, 0x0400000, 0x0100000, 0x6, 0x20009]
    for v in samples:
        assert denied(v) == (v not in L.PERSONALITY_OK), hex(v)


# --------------------------------------------------------------------------
# The cache


@pytest.fixture
def cache_home(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def cached(spec: SeccompSpec, home: Path) -> bytes | None:
    """program() with the cache where an environ of XDG_CACHE_HOME=home says."""
    return C.program(spec, environ={"XDG_CACHE_HOME": str(home)})


def test_cache_written_and_reused(cache_home: Path) -> None:
    p1 = cached(DEFAULT, cache_home)
    files = list((cache_home / "sbx" / "seccomp").iterdir())
    assert [f.suffix for f in files] == [".bpf"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((cache_home / "sbx" / "seccomp").stat().st_mode) == 0o700
    assert cached(DEFAULT, cache_home) == p1 == C.program(DEFAULT, cache=False)
    cached(STRICT_KILL, cache_home)
    assert len(list((cache_home / "sbx" / "seccomp").iterdir())) == 2


def test_cache_hit_imports_no_libseccomp(cache_home: Path) -> None:
    cached(GRADER, cache_home)
    code = (
        "import sys; from sandbox.seccomp import SeccompSpec; from sandbox.seccomp.cache import program;"
        f"p = program(SeccompSpec(policy='strict', action='kill'), environ={{'XDG_CACHE_HOME': {str(cache_home)!r}}});"
        "bad = [m for m in ('pyseccomp', 'seccomp', 'hashlib', 'dataclasses', 're') if m in sys.modules];"
        "ours = sorted(m for m in sys.modules if m.startswith('sandbox.seccomp'));"
        "print(len(p), bad, ours)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True, text=True, check=True
    ).stdout
    assert out.split(" ", 1)[1].strip() == "[] ['sandbox.seccomp', 'sandbox.seccomp.cache', 'sandbox.seccomp.load']", out


def test_cache_ignores_corrupt_file(cache_home: Path) -> None:
    p1 = cached(DEFAULT, cache_home)
    (f,) = (cache_home / "sbx" / "seccomp").iterdir()
    f.write_bytes(f.read_bytes()[:-8] + b"\x06\x00\x00\x00\x00\x00\xff\x7f")  # ret ALLOW at the end
    assert cached(DEFAULT, cache_home) == p1
    assert f.read_bytes()[C._HEADER :] == p1  # rewritten


def test_cache_never_follows_planted_symlinks(cache_home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache_home.mkdir()
    (cache_home / "sbx").symlink_to(elsewhere)
    prog = cached(DEFAULT, cache_home)
    assert prog == C.program(DEFAULT, cache=False)
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    # a symlink in place of the cache file: not read, replaced by a file
    (cache_home / "sbx").unlink()
    cached(DEFAULT, cache_home)
    (f,) = (cache_home / "sbx" / "seccomp").iterdir()
    evil = tmp_path / "evil.bpf"
    evil.write_bytes(f.read_bytes())
    f.unlink()
    f.symlink_to(evil)
    assert C._cache_read(str(f.parent), f.name[:-4]) is None
    cached(DEFAULT, cache_home)
    assert not f.is_symlink() and f.is_file()


def test_cache_rejects_group_writable_dir(cache_home: Path) -> None:
    cached(DEFAULT, cache_home)
    d = cache_home / "sbx" / "seccomp"
    d.chmod(0o777)
    assert C._open_cache_dir(str(d), create=False) is None
    assert cached(DEFAULT, cache_home) is not None  # compiled in memory


def test_cache_unusable_dir_compiles_in_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert cached(DEFAULT, blocker) == C.program(DEFAULT, cache=False)
    assert C.program(DEFAULT, environ={"XDG_CACHE_HOME": "relative/path"}) is not None


@pytest.mark.parametrize(
    "environ, where",
    [
        ({"XDG_CACHE_HOME": "/x", "HOME": "/h"}, "/x/sbx/seccomp"),
        ({"XDG_CACHE_HOME": "relative", "HOME": "/h/"}, "/h/.cache/sbx/seccomp"),
        ({"XDG_CACHE_HOME": "", "HOME": "/h"}, "/h/.cache/sbx/seccomp"),
        ({"HOME": "/h"}, "/h/.cache/sbx/seccomp"),
        ({"XDG_CACHE_HOME": "relative", "HOME": "relative"}, None),
        ({}, None),
    ],
)
def test_cache_dir(environ: dict[str, str], where: str | None) -> None:
    assert C.cache_dir(environ) == where


def test_cache_dir_comes_from_the_callers_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API's environ decides where the cache is, whatever the process's own says."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "process"))
    C.program(DEFAULT, environ={"HOME": str(tmp_path / "home")})
    assert not (tmp_path / "process").exists()
    assert [f.suffix for f in (tmp_path / "home" / ".cache" / "sbx" / "seccomp").iterdir()] == [".bpf"]
    C.program(DEFAULT, environ={})  # no cache at all: compiled in memory, nothing written
    assert not (tmp_path / "process").exists()


def test_cache_key_covers_spec() -> None:
    keys = {
        C.cache_key(s, "x86_64")
        for s in (DEFAULT, DEFAULT_KILL, STRICT, STRICT_KILL, SeccompSpec(deny=("getpid",)), SeccompSpec(allow=("ptrace",)))
    }
    assert len(keys) == 6


# --------------------------------------------------------------------------
# Loading


def test_load_rejects_malformed() -> None:
    for bad in (b"", b"1234567", b"\0" * 8 * 4097):
        o = in_child(lambda bad=bad: load(bad))  # type: ignore[misc]
        assert o.out.startswith("EXC OSError"), o


def test_load_sets_no_new_privs() -> None:
    o = in_child(lambda: libc.prctl(39, 0, 0, 0, 0), DEFAULT)  # PR_GET_NO_NEW_PRIVS
    assert o.out == "1"


def test_filter_is_inherited_and_stacks() -> None:
    def fn() -> object:
        load(prog_for(DEFAULT))  # a second filter on top
        pid = os.fork()
        if pid == 0:
            os._exit(0 if sysc("keyctl", 0, 2**64 - 3)[1] == errno.EPERM else 1)
        return os.waitpid(pid, 0)[1]

    assert in_child(fn, DEFAULT).out == "0"


# --------------------------------------------------------------------------
# Attacks: (control, errno, kill)


def three_ways(fn: Callable[[], object], spec: SeccompSpec = DEFAULT, pre: Callable[[], None] | None = None) -> tuple[Outcome, Outcome, Outcome]:
    kill_spec = replace(spec, action="kill")
    return in_child(fn, None, pre), in_child(fn, spec, pre), in_child(fn, kill_spec, pre)


def assert_blocked(fn: Callable[[], object], expect_errno: int = errno.EPERM, spec: SeccompSpec = DEFAULT,
                   pre: Callable[[], None] | None = None) -> Outcome:
    control, filtered, killed = three_ways(fn, spec, pre)
    assert control.code == 0 and control.signal == 0, control
    assert filtered.code == 0 and eval(filtered.out) == (-1, expect_errno), filtered
    assert killed.signal == SIGSYS, killed
    return control


def test_keyctl() -> None:
    # KEYCTL_GET_KEYRING_ID of the session keyring: works for any user
    control = assert_blocked(lambda: sysc("keyctl", 0, 2**64 - 3, 1))
    assert eval(control.out)[0] > 0, control


def test_add_key_request_key() -> None:
    assert_blocked(lambda: sysc("add_key", 0, 0, 0, 0, 0))
    assert_blocked(lambda: sysc("request_key", 0, 0, 0, 0))


def test_io_uring_setup() -> None:
    def fn() -> object:
        params = ctypes.create_string_buffer(120)
        return sysc("io_uring_setup", 4, ctypes.addressof(params))

    control, filtered, killed = three_ways(fn)
    if Path("/proc/sys/kernel/io_uring_disabled").read_text().strip() == "0":
        assert eval(control.out)[0] >= 0, control
    # ENOSYS whatever the action: libuv & co probe it and fall back
    assert eval(filtered.out) == (-1, errno.ENOSYS) == eval(killed.out), (filtered, killed)
    assert eval(in_child(fn, GRADER).out) == (-1, errno.ENOSYS)


def test_bpf() -> None:
    def fn() -> object:
        # BPF_MAP_CREATE, an array map of 1 x u32
        attr = ctypes.create_string_buffer(struct.pack("IIII", 2, 4, 4, 1), 72)
        return sysc("bpf", 0, ctypes.addressof(attr), 72)

    control = assert_blocked(fn)
    if os.geteuid() == 0:
        assert eval(control.out)[0] >= 0, control


def test_perf_event_open() -> None:
    def fn() -> object:
        # PERF_TYPE_SOFTWARE / PERF_COUNT_SW_TASK_CLOCK on ourselves, user only
        attr = bytearray(128)
        struct.pack_into("IIQ", attr, 0, 1, 128, 1)
        struct.pack_into("Q", attr, 40, 1 << 5 | 1 << 6)  # exclude_kernel, exclude_hv
        buf = ctypes.create_string_buffer(bytes(attr), 128)
        return sysc("perf_event_open", ctypes.addressof(buf), 0, 2**64 - 1, 2**64 - 1, 0)

    control = assert_blocked(fn)
    assert eval(control.out)[0] >= 0 or os.geteuid() != 0, control


def test_userfaultfd() -> None:
    # UFFD_USER_MODE_ONLY works unprivileged
    control = assert_blocked(lambda: sysc("userfaultfd", os.O_CLOEXEC | 1))
    assert eval(control.out)[0] >= 0, control


def test_unshare_newuser() -> None:
    control = assert_blocked(lambda: sysc("unshare", T.CLONE_NEWUSER))
    assert eval(control.out) == (0, 0), control


def test_setns() -> None:
    def fn() -> object:
        fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
        return sysc("setns", fd, 0)

    assert_blocked(fn)


def _raw_clone(flags: int) -> object:
    r, e = sysc("clone", flags | signal.SIGCHLD, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
        return (0, 0)
    return (r, e)


@pytest.mark.parametrize("flag", ["CLONE_NEWUSER", "CLONE_NEWNS", "CLONE_NEWPID", "CLONE_NEWNET", "CLONE_NEWCGROUP"])
def test_clone_with_namespace_flags(flag: str) -> None:
    flags = T.CONSTANTS[flag] | (T.CLONE_NEWUSER if flag != "CLONE_NEWUSER" else 0)
    control = assert_blocked(lambda: _raw_clone(flags))
    assert eval(control.out) == (0, 0), control
    # and the high half of the register does not help (the kernel uses the low 32 bits)
    assert eval(in_child(lambda: _raw_clone(flags | 1 << 40), DEFAULT).out) == (-1, errno.EPERM)


def test_plain_clone_and_fork_allowed() -> None:
    for spec in (DEFAULT, GRADER):
        assert eval(in_child(lambda: _raw_clone(0), spec).out) == (0, 0)
        assert in_child(_fork_and_wait, spec).out == "True"


def _fork_and_wait() -> bool:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    return os.waitpid(pid, 0)[1] == 0


def test_clone3_enosys() -> None:
    def fn() -> object:
        # struct clone_args: flags=CLONE_NEWUSER, exit_signal=SIGCHLD
        args = ctypes.create_string_buffer(struct.pack("QQQQQQQQQQQ", T.CLONE_NEWUSER, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, 0), 88)
        r, e = sysc("clone3", ctypes.addressof(args), 88)
        if r == 0:
            os._exit(0)
        if r > 0:
            os.waitpid(r, 0)
            return (0, 0)
        return (r, e)

    control, filtered, killed = three_ways(fn)
    assert eval(control.out) == (0, 0), control
    assert eval(filtered.out) == eval(killed.out) == (-1, errno.ENOSYS)
    assert eval(in_child(fn, GRADER).out) == (-1, errno.ENOSYS)


def test_ptrace() -> None:
    control = assert_blocked(lambda: sysc("ptrace", 0, 0, 0, 0))  # PTRACE_TRACEME
    assert eval(control.out) == (0, 0), control


def test_process_vm_readv() -> None:
    def fn() -> object:
        src = ctypes.create_string_buffer(b"secret", 6)
        dst = ctypes.create_string_buffer(6)
        local = struct.pack("QQ", ctypes.addressof(dst), 6)
        remote = struct.pack("QQ", ctypes.addressof(src), 6)
        lb = ctypes.create_string_buffer(local, 16)
        rb = ctypes.create_string_buffer(remote, 16)
        return sysc("process_vm_readv", os.getpid(), ctypes.addressof(lb), 1, ctypes.addressof(rb), 1, 0)

    control = assert_blocked(fn)
    assert eval(control.out) == (6, 0), control
    assert_blocked(lambda: sysc("process_vm_writev", os.getpid(), 0, 0, 0, 0, 0))


def _tty_pre() -> None:
    # a pty of our own as the controlling terminal
    master, slave = pty.openpty()
    os.setsid()
    fcntl_ioctl(slave, 0x540E, 0)  # TIOCSCTTY
    os.dup2(slave, 10)
    os.dup2(master, 11)


def fcntl_ioctl(fd: int, req: int, arg: int) -> None:
    r, e = sysc("ioctl", fd, req, arg)
    if r < 0:
        raise OSError(e, os.strerror(e))


def _tiocsti(cmd: int) -> object:
    c = ctypes.create_string_buffer(b"x", 1)
    return sysc("ioctl", 10, cmd, ctypes.addressof(c))


@pytest.mark.parametrize("cmd", [0x5412, 0x5412 | 0xFFFFFFFF00000000, 0x5412 | 1 << 32])
def test_tiocsti(cmd: int) -> None:
    control = assert_blocked(lambda: _tiocsti(cmd), pre=_tty_pre)
    if Path("/proc/sys/dev/tty/legacy_tiocsti").read_text().strip() == "1" or os.geteuid() == 0:
        # the kernel would push the byte into the terminal's input
        assert eval(control.out) == (0, 0), control


def test_tioclinux() -> None:
    def fn() -> object:
        sub = ctypes.create_string_buffer(b"\x0c", 1)  # TIOCL_GETKMSGREDIRECT
        return sysc("ioctl", 10, 0x541C, ctypes.addressof(sub))

    control, filtered, killed = three_ways(fn, pre=_tty_pre)
    # on a pty the kernel refuses it (no virtual console here); the filter comes first
    assert eval(filtered.out) == (-1, errno.EPERM), filtered
    assert killed.signal == SIGSYS, killed
    assert eval(control.out)[1] != errno.EPERM, control


def test_other_ioctls_allowed() -> None:
    def fn() -> object:
        ws = ctypes.create_string_buffer(8)
        return sysc("ioctl", 10, 0x5413, ctypes.addressof(ws))  # TIOCGWINSZ

    for spec in (DEFAULT, GRADER):
        assert eval(in_child(fn, spec, pre=_tty_pre).out) == (0, 0)


# --------------------------------------------------------------------------
# Socket families: an allow-list in every policy (the prelude before libseccomp's program)

# Not SOCK_CLOEXEC or SOCK_NONBLOCK: the kernel's first check in socket() and socketpair(), before it
# looks at the family, so without a filter every family gets EINVAL.  A filter that answers
# EAFNOSUPPORT for such a call is seen at work even where the kernel lacks the family.
BAD_FLAG = 0x100
EVERY_SPEC = (DEFAULT, DEFAULT_KILL, STRICT, GRADER, SeccompSpec(action="log"))
REFUSED = [nr for nr, _, _ in L.SOCKET_FAMILIES_OUT]


def test_family_tables_cover_every_family() -> None:
    """Every family the reviewed kernel knows is either allowed or reviewed out, and none twice."""
    listed = list(L.SOCKET_FAMILIES_OK) + REFUSED
    assert sorted(listed) == list(range(46))
    import socket

    for nr, name in [(nr, name) for nr, name, _ in L.SOCKET_FAMILIES_OUT] + list(L.SOCKET_FAMILIES_OK.items()):
        assert T.CONSTANTS[name] == nr
        assert getattr(socket, name, nr) == nr, name  # the numbers agree with Python's, where it has them


def both_calls(family: int, type_: int = 2, proto: int = 0) -> object:
    return (sysc("socket", family, type_ | BAD_FLAG, proto), sysc("socketpair", family, 1 | BAD_FLAG, proto, 0))


@pytest.mark.parametrize("family", REFUSED + [46, 47, 63, 255, 0x7FFFFFFF, 0xFFFFFFFF, 40 | 1 << 32, 38 | 0xFF << 40])
def test_family_refused(family: int) -> None:
    control = in_child(lambda: both_calls(family))
    assert eval(control.out) == ((-1, errno.EINVAL), (-1, errno.EINVAL)), control
    for spec in EVERY_SPEC:  # errno whatever the action: programs fall back as on a kernel without it
        o = in_child(lambda: both_calls(family), spec)
        assert eval(o.out) == ((-1, errno.EAFNOSUPPORT), (-1, errno.EAFNOSUPPORT)), (spec, o)


@pytest.mark.parametrize("family, type_, proto", [(40, 1, 0), (16, 2, 15), (16, 3, 4)])
def test_family_refused_for_real(family: int, type_: int, proto: int) -> None:
    """vsock and the uevent and sock_diag netlink sockets open here without a filter."""
    control = in_child(lambda: sysc("socket", family, type_, proto))
    assert eval(control.out)[0] >= 0, control
    for spec in EVERY_SPEC:
        assert eval(in_child(lambda: sysc("socket", family, type_, proto), spec).out) == (-1, errno.EAFNOSUPPORT)


@pytest.mark.parametrize("proto", [p for p in range(1, 32)] + [32, 0xFFFFFFFF, 4 | 1 << 32])
def test_netlink_protocol_refused(proto: int) -> None:
    assert eval(in_child(lambda: both_calls(T.AF_NETLINK, 3, proto)).out) == ((-1, errno.EINVAL),) * 2
    for spec in (DEFAULT, GRADER):
        o = in_child(lambda: both_calls(T.AF_NETLINK, 3, proto), spec)
        assert eval(o.out) == ((-1, errno.EAFNOSUPPORT),) * 2, (spec, o)


def test_sock_packet_alias_refused() -> None:
    """The kernel turns socket(AF_INET, SOCK_PACKET) into AF_PACKET: the type is refused for every family."""
    eth_p_all = 0x0300
    control = in_child(lambda: sysc("socket", T.AF_INET, T.SOCK_PACKET, eth_p_all))
    # root has CAP_NET_RAW, and gets a packet socket; anyone else gets EPERM from the packet family
    assert eval(control.out)[0] >= 0 if os.geteuid() == 0 else eval(control.out) == (-1, errno.EPERM), control
    for family in (T.AF_INET, T.AF_INET6, T.AF_UNIX, T.AF_NETLINK):
        flagged = lambda: sysc("socket", family, T.SOCK_PACKET | 0x80000 | BAD_FLAG, eth_p_all)  # noqa: E731
        assert eval(in_child(flagged).out) == (-1, errno.EINVAL)
        for spec in (DEFAULT, GRADER):
            assert eval(in_child(flagged, spec).out) == (-1, errno.EAFNOSUPPORT), (family, spec)


def test_allowed_families_reach_the_kernel() -> None:
    for family in L.SOCKET_FAMILIES_OK:
        for spec in (DEFAULT, DEFAULT_KILL):
            assert eval(in_child(lambda: both_calls(family), spec).out) == ((-1, errno.EINVAL),) * 2, family
        o = in_child(lambda: both_calls(family), GRADER)  # strict: no new sockets; socketpair is allowed
        assert eval(o.out) == ((-1, errno.EACCES), (-1, errno.EINVAL)), (family, o)
    real = lambda: [sysc("socket", f, t, p)[0] >= 0 for f, t, p in ((1, 1, 0), (2, 2, 0), (10, 2, 0), (16, 3, 0))]  # noqa: E731
    assert eval(in_child(real, DEFAULT_KILL).out) == [True] * 4
    pair = ctypes.create_string_buffer(8)
    assert eval(in_child(lambda: sysc("socketpair", 1, 1, 0, ctypes.addressof(pair)), GRADER).out) == (0, 0)


def test_socket_netlink_route_and_inet_allowed() -> None:
    assert eval(in_child(lambda: sysc("socket", T.AF_NETLINK, 3, 0), DEFAULT_KILL).out)[0] >= 0
    assert eval(in_child(lambda: sysc("socket", T.AF_INET, 2, 0), DEFAULT_KILL).out)[0] >= 0
    allowed = SeccompSpec(action="kill", allow=("socket(arg0 == AF_NETLINK, arg2 == NETLINK_SOCK_DIAG)",))
    assert eval(in_child(lambda: sysc("socket", T.AF_NETLINK, 3, 4), allowed).out)[0] >= 0
    assert eval(in_child(lambda: sysc("socket", T.AF_NETLINK, 3, 9), allowed).out) == (-1, errno.EAFNOSUPPORT)
    # socketpair keeps its own list
    assert eval(in_child(lambda: both_calls(T.AF_NETLINK, 3, 4), allowed).out) == ((-1, errno.EINVAL), (-1, errno.EAFNOSUPPORT))


def test_profile_names_a_family() -> None:
    vsock = lambda: sysc("socket", 40, 1, 0)[0] >= 0  # noqa: E731
    assert in_child(vsock).out == "True"
    for spec in (
        SeccompSpec(action="kill", allow=("socket(arg0 == AF_VSOCK)",)),
        SeccompSpec(policy="strict", action="kill", allow=("socket(arg0 == AF_VSOCK)",)),
        SeccompSpec(policy="strict", action="kill", allow=("socket(arg0 == AF_VSOCK, arg1 == 1)",)),
    ):
        assert in_child(vsock, spec).out == "True", spec
        assert eval(in_child(lambda: both_calls(38), spec).out) == ((-1, errno.EAFNOSUPPORT),) * 2, spec
    # allowing socket outright lifts no family; a family is lifted only where it is named
    for spec in (
        SeccompSpec(allow=("socket",)),
        SeccompSpec(policy="strict", allow=("socket",)),
        SeccompSpec(allow=("socketpair(arg0 == AF_VSOCK)",)),
        SeccompSpec(policy="strict", allow=("socket(arg0 == 0x100000028)",)),
    ):
        assert eval(in_child(lambda: sysc("socket", 40, 1, 0), spec).out) == (-1, errno.EAFNOSUPPORT), spec
    # the strict rule still decides the rest: SOCK_DGRAM is not the allowed form
    strict = SeccompSpec(policy="strict", allow=("socket(arg0 == AF_VSOCK, arg1 == 1)",))
    assert eval(in_child(lambda: sysc("socket", 40, 2, 0), strict).out) == (-1, errno.ENOSYS)


SOCKETCALL_C = r"""
/* i386's socketcall(SYS_SOCKET, {AF_VSOCK, SOCK_STREAM, 0}) through int $0x80 from a 64-bit
   process: the arguments sit in memory (below 4 GiB for the 32-bit ABI), out of BPF's reach. */
#include <stdio.h>
#include <sys/mman.h>
int main(void) {
    unsigned int *args = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    long r;
    args[0] = 40; args[1] = 1; args[2] = 0;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(102L), "b"(1L), "c"((long)args) : "memory");
    printf("%ld\n", r);
    return 0;
}
"""


def test_i386_socketcall_refused(tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the i386 socketcall probe")
    (tmp_path / "socketcall.c").write_text(SOCKETCALL_C)
    exe = str(tmp_path / "socketcall")
    subprocess.run(["gcc", "-O2", "-o", exe, str(tmp_path / "socketcall.c")], check=True)
    control = exec_under([exe], None)
    assert control.code == 0 and int(control.out) >= 0, control  # vsock through the 32-bit door
    assert int(exec_under([exe], DEFAULT).out) == -errno.ENOSYS
    for spec in (DEFAULT_KILL, GRADER):
        assert exec_under([exe], spec).signal == SIGSYS


def test_strict_socket_eacces() -> None:
    for spec in (STRICT, GRADER):
        assert eval(in_child(lambda: sysc("socket", T.AF_UNIX, 1, 0), spec).out) == (-1, errno.EACCES)


@pytest.mark.parametrize("persona", [0x6, 0x0040000, 0x0400000, 0x0040000 | 1 << 32, 0x20009])
def test_personality_denied(persona: int) -> None:
    def fn() -> object:
        old = sysc("personality", 0xFFFFFFFF)
        r = sysc("personality", persona)
        return r if r[0] < 0 else (0, 0)

    control = assert_blocked(fn)
    assert eval(control.out) == (0, 0)
    assert in_child(fn, GRADER).signal == SIGSYS


@pytest.mark.parametrize("persona", [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF])
def test_personality_defaults_allowed(persona: int) -> None:
    for spec in (DEFAULT_KILL, GRADER):
        o = in_child(lambda: sysc("personality", persona)[0] >= 0, spec)
        assert o.out == "True", o


def _ns_pre() -> None:
    # do the dangerous sweep inside fresh namespaces, so a broken filter
    # could not touch the host; stay uid 0 there (as root would be)
    uid, gid = os.getuid(), os.getgid()
    r, e = sysc("unshare", T.CLONE_NEWUSER | T.CLONE_NEWNS | T.CLONE_NEWUTS | T.CLONE_NEWIPC | T.CLONE_NEWNET)
    assert r == 0, os.strerror(e)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    os.setsid()


def test_mount_in_userns() -> None:
    def fn() -> object:
        root = ctypes.create_string_buffer(b"/")
        sysc("mount", 0, ctypes.addressof(root), 0, 1 << 18 | 1 << 14, 0)  # MS_PRIVATE|MS_REC
        tgt = ctypes.create_string_buffer(b"/tmp")
        fs = ctypes.create_string_buffer(b"tmpfs")
        return sysc("mount", ctypes.addressof(fs), ctypes.addressof(tgt), ctypes.addressof(fs), 0, 0)

    control = assert_blocked(fn, pre=_ns_pre)
    assert eval(control.out) == (0, 0), control  # root in a user namespace may mount tmpfs


def test_fsopen_in_userns() -> None:
    fs = ctypes.create_string_buffer(b"tmpfs")
    control = assert_blocked(lambda: sysc("fsopen", ctypes.addressof(fs), 0), pre=_ns_pre)
    assert eval(control.out)[0] >= 0, control


DANGEROUS_ARGS_OK = {"vhangup", "sethostname", "setdomainname", "reboot", "acct", "syslog", "swapoff", "umount2"}


@pytest.mark.parametrize("spec", [DEFAULT, GRADER], ids=["default", "grader"])
def test_every_denied_syscall(spec: SeccompSpec) -> None:
    names = sorted(n for n in L.DENY if n in NR)
    expect_kill = spec.action == "kill"

    def fn() -> object:
        bad = {}
        for n in names:
            r = sysc(n, 0, 0, 0, 0, 0, 0)
            if r != (-1, errno.EPERM):
                bad[n] = r
        return bad

    if expect_kill:
        for n in names:
            o = in_child(lambda n=n: sysc(n, 0, 0, 0, 0, 0, 0), spec, pre=_ns_pre)  # type: ignore[misc]
            assert o.signal == SIGSYS, (n, o)
    else:
        o = in_child(fn, spec, pre=_ns_pre)
        assert o.out == "{}", o


def test_newer_syscalls_enosys() -> None:
    for spec in (DEFAULT, DEFAULT_KILL, STRICT, GRADER):
        o = in_child(lambda: [sysc(nr) for nr in (470, 471, 500, 1000, 0x3FFFFFFF)], spec)
        assert eval(o.out) == [(-1, errno.ENOSYS)] * 5, (spec, o)
    # the newest reviewed ones are decided by the policy, not by the number
    assert eval(in_child(lambda: sysc("open_tree_attr", 0, 0, 0, 0, 0), DEFAULT).out) == (-1, errno.EPERM)
    assert eval(in_child(lambda: sysc("mseal", 0, 0, 0), DEFAULT).out) == (0, 0)


def test_user_deny_and_allow() -> None:
    spec = SeccompSpec(deny=("getppid", "dup(arg0 == 5)"), allow=("ptrace",))
    o = in_child(lambda: (sysc("getppid"), sysc("dup", 5), sysc("dup", 1)[1], sysc("ptrace", 0)), spec)
    assert eval(o.out) == ((-1, errno.EPERM), (-1, errno.EPERM), 0, (0, 0)), o
    # the high half does not bypass a deny condition
    assert eval(in_child(lambda: sysc("dup", 5 | 1 << 32), spec).out) == (-1, errno.EPERM)
    strict = SeccompSpec(policy="strict", allow=("mlock", "socket(arg0 == AF_UNIX)"), deny=("getppid",))
    o = in_child(lambda: (sysc("getppid"), sysc("mlock", 0, 0), sysc("socket", 1, 1, 0)[0] >= 0, sysc("socket", 2, 1, 0)), strict)
    assert eval(o.out) == ((-1, errno.EPERM), (0, 0), True, (-1, errno.ENOSYS)), o


def test_log_action_allows() -> None:
    o = in_child(lambda: sysc("keyctl", 0, 2**64 - 3, 1)[0] > 0, SeccompSpec(action="log"))
    assert o.out == "True", o


# --------------------------------------------------------------------------
# Foreign ABIs


def test_i386_int80(built: dict[str, Path]) -> None:
    exe = str(built["int80"])
    control = exec_under([exe], None)
    assert control.code == 0 and int(control.out) > 0, control  # IA32 emulation: the kernel runs it
    errno_run = exec_under([exe], DEFAULT)
    assert int(errno_run.out) == -errno.ENOSYS, errno_run
    for spec in (DEFAULT_KILL, GRADER):
        assert exec_under([exe], spec).signal == SIGSYS


def test_x32(built: dict[str, Path]) -> None:
    exe = str(built["x32"])
    control = exec_under([exe], None)
    assert control.code == 0, control
    if int(control.out) > 0:  # CONFIG_X86_X32_ABI: the kernel runs it
        assert int(exec_under([exe], DEFAULT).out) == -errno.ENOSYS
    # the kill shows the filter caught it (the kernel alone gives ENOSYS)
    for spec in (DEFAULT_KILL, GRADER):
        assert exec_under([exe], spec).signal == SIGSYS


# --------------------------------------------------------------------------
# Ordinary programs still work


def _workloads(built: dict[str, Path], tmp: Path) -> list[tuple[str, list[str], str]]:
    w: list[tuple[str, list[str], str]] = [
        ("c", [str(built["hello"])], "hello from c"),
        ("sh", ["sh", "-c", "echo hello from sh | cat; ls / > /dev/null; x=$(echo sub); echo $x"], "hello from sh\nsub"),
        ("python3", ["/usr/bin/python3", "-c", "import json, subprocess, threading, os; t = threading.Thread(target=print, args=('hello from python',)); t.start(); t.join(); subprocess.run(['true'], check=True)"], "hello from python"),
        ("venv-python", [sys.executable, "-c", "import sys, os, tempfile; print('hello from', 'venv')"], "hello from venv"),
    ]
    if shutil.which("g++"):
        exe = tmp / "hellocc"
        subprocess.run(["g++", "-O2", "-pthread", "-o", str(exe), str(ATTACKS / "hello.cc")], check=True)
        w.append(("c++", [str(exe)], f"hello from c++ {1 << 20}"))
    if shutil.which("javac") and shutil.which("java"):
        subprocess.run(["javac", "-d", str(tmp), str(ATTACKS / "Hello.java")], check=True)
        w.append(("java", ["java", "-Xshare:auto", "-cp", str(tmp), "Hello"], "hello from java"))
    if shutil.which("go"):
        exe = tmp / "hellogo"
        env = dict(os.environ, GOCACHE=str(tmp / "gocache"), GOPATH=str(tmp / "gopath"), CGO_ENABLED="0")
        subprocess.run(["go", "build", "-o", str(exe), str(ATTACKS / "hello.go")], check=True, env=env, cwd=tmp)
        w.append(("go", [str(exe)], "hello from go"))
    return w


@pytest.mark.parametrize("spec", [DEFAULT, DEFAULT_KILL, STRICT, GRADER], ids=["default", "default-kill", "strict", "grader"])
def test_programs_run(spec: SeccompSpec, built: dict[str, Path], tmp_path: Path) -> None:
    for name, argv, expect in _workloads(built, tmp_path):
        o = exec_under(argv, spec)
        assert o.signal == 0 and o.code == 0, (name, o)
        assert o.out.strip().startswith(expect), (name, o)


# --------------------------------------------------------------------------
# Kill reporting through a user-notification listener


def _listener_child(spec: SeccompSpec, action: Callable[[], object]) -> tuple[int, int, int, int]:
    """Fork a payload that loads with a listener, tells us the fd number and
    waits; returns (pid, our listener fd, result pipe, go pipe)."""
    prog = prog_for(spec)
    r, w = os.pipe()
    gr, gw = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.close(gw)
            fd = load(prog, listener=True)
            os.write(w, f"{fd}\n".encode())
            os.read(gr, 1)  # the supervisor has taken the fd
            os.close(fd)
            os.write(w, repr(action()).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(gr)
    line = b""
    while not line.endswith(b"\n"):
        line += os.read(r, 1)
    child_fd = int(line)
    assert child_fd >= 0
    listener = N.take_listener(pid, child_fd)
    os.write(gw, b"g")
    os.close(gw)
    return pid, listener, r, child_fd


def test_kill_reports_the_syscall() -> None:
    pid, listener, r, _ = _listener_child(GRADER, lambda: sysc("keyctl", 0, 0))
    try:
        assert select.select([listener], [], [], 10)[0], "no notification"
        note = N.receive(listener)
        assert note is not None
        npid, arch, nr = note
        assert nr == NR["keyctl"] and arch == T.AUDIT_ARCH["x86_64"]
        assert N.describe(arch, nr) == "seccomp: forbidden syscall keyctl (250)"
        os.kill(pid, signal.SIGKILL)  # what the supervisor does (cgroup.kill)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(listener)
    assert os.WTERMSIG(status) == signal.SIGKILL
    assert os.read(r, 100) == b""  # the syscall never returned
    os.close(r)


def test_allowed_syscalls_unaffected_by_listener() -> None:
    pid, listener, r, _ = _listener_child(GRADER, lambda: (sysc("getppid")[0] > 0, sysc("socket", 1, 1, 0)))
    out = _read_all(r, 10, pid)
    os.waitpid(pid, 0)
    os.close(listener)
    assert eval(out) == (True, (-1, errno.EACCES))


def test_listener_fd_closed_on_exec(built: dict[str, Path]) -> None:
    def fn() -> object:
        fd = load(prog_for(GRADER), listener=True)
        return (fd >= 0, os.get_inheritable(fd))

    assert in_child(fn).out == "(True, False)"


def test_listener_reports_i386(built: dict[str, Path]) -> None:
    prog = prog_for(GRADER)
    r, w = os.pipe()
    gr, gw = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            fd = load(prog, listener=True)
            os.write(w, f"{fd}\n".encode())
            os.read(gr, 1)
            os.execv(str(built["int80"]), [str(built["int80"])])
        finally:
            os._exit(127)
    os.close(w)
    os.close(gr)
    fd = int(os.read(r, 20))
    listener = N.take_listener(pid, fd)
    os.write(gw, b"g")
    try:
        assert select.select([listener], [], [], 10)[0]
        note = N.receive(listener)
        assert note is not None
        assert N.describe(note[1], note[2]) == "seccomp: i386 ABI syscall getpid (20) blocked"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(listener)
        os.close(r)
        os.close(gw)


def test_without_listener_kill_is_sigsys() -> None:
    assert in_child(lambda: sysc("keyctl", 0, 0), GRADER).signal == SIGSYS


def test_syscall_names() -> None:
    assert N.syscall_name(0) == "read"
    assert N.syscall_name(435) == "clone3"
    assert N.syscall_name(469) == "file_setattr"
    assert N.syscall_name(5000) == "syscall 5000"
    assert N.syscall_name(20, 0x40000003) == "getpid"
    assert N.describe(0xC000003E, 0x40000000 | 39) == "seccomp: x32 ABI syscall 39 blocked"


def test_import_is_light() -> None:
    """What every run imports: the package, the cache's front end and the loader."""
    code = ("import sys; import sandbox.seccomp.cache, sandbox.seccomp.load; print(sorted(m for m in "
            "('ctypes', 'pyseccomp', 'hashlib', 'dataclasses', 're', 'sandbox.seccomp.table', 'sandbox.seccomp.compile') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------
# The reviewed lists


def test_lists_are_data_only() -> None:
    """lists.py is what a security reviewer diffs: assignments of data, no code, no imports."""
    import ast

    tree = ast.parse((Path(L.__file__)).read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.module in ("__future__", "typing"), ast.dump(node)
        elif isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)  # the docstring
        else:
            assert isinstance(node, (ast.Assign, ast.AnnAssign)), ast.dump(node)[:80]
    code = "import sys; import sandbox.seccomp.lists; print(sorted(m for m in sys.modules if m.startswith('sandbox.seccomp.')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['sandbox.seccomp.lists']"


@pytest.mark.parametrize(
    "table",
    [L.CLONE_FLAGS_DENIED, L.IOCTL_DENIED, L.SOCKET_FAMILIES_OK, L.NETLINK_OK, {nr: name for nr, name, _ in L.SOCKET_FAMILIES_OUT}],
)
def test_lists_numbers_match_their_names(table: dict[int, str]) -> None:
    for nr, name in table.items():
        assert T.CONSTANTS[name] == nr, name


def test_lists_errnos_and_names_exist() -> None:
    for name in [*L.COMPAT_ERRNO.values(), *L.STRICT_COMPAT_ERRNO.values()]:
        assert isinstance(getattr(errno, name), int), name
    for name in [*L.ALLOW_STRICT, *L.COMPAT_ERRNO, *L.STRICT_COMPAT_ERRNO, *L.SOCKET_CALLS]:
        assert name in T.X86_64_NAMES, name
    families = {nr for nr, _, _ in L.SOCKET_FAMILIES_OUT}
    assert not families & set(L.SOCKET_FAMILIES_OK)
    assert families | set(L.SOCKET_FAMILIES_OK) == set(T.SOCKET_FAMILIES.values())  # every family reviewed


@pytest.mark.parametrize(
    "spec, line",
    [
        (DEFAULT, "ptrace: violation"),
        (DEFAULT, "clone(arg0 & 0x10000000 == 0x10000000): violation"),
        (DEFAULT, "clone3: errno:38"),
        (STRICT, "read: allow"),
        (STRICT, "socket: errno:13"),
        (SeccompSpec(allow=("ptrace",)), "# default: allow; newer than 469: ENOSYS"),
    ],
)
def test_listing(spec: SeccompSpec, line: str) -> None:
    assert line in listing(spec, "x86_64").splitlines()


# -- when the payload loads its filter (runtime/payload.py) ---------------------------------------

DUP_PROBE = """
import errno, os
try:
    os.dup2(1, 7)
    print("dup2 ok")
except OSError as exc:
    print("dup2", errno.errorcode[exc.errno])
"""


@pytest.mark.parametrize("deny, expect", [
    ((), "dup2 ok"),  # the default policy: the filter goes in before the command wait
    (("dup2", "dup3"), "dup2 EPERM"),  # sbx places the run's fds with dup2: the filter comes last
    (("fcntl(arg1 == 1030)",), "dup2 ok"),  # F_DUPFD_CLOEXEC, which sbx uses too
])
def test_a_filter_denying_what_sbx_does_after_the_command_is_loaded_last(
        tmp_path: Path, deny: tuple[str, ...], expect: str) -> None:
    from conftest import sbx

    profile = tmp_path / "deny.toml"
    profile.write_text('extends = "default"\n\n[seccomp]\ndeny = [' + ", ".join(f'"{d}"' for d in deny) + "]\n")
    proc = sbx("run", "--profile", str(profile), "--", "python3", "-c", DUP_PROBE)
    assert (proc.returncode, proc.stdout.strip()) == (0, expect), proc.stderr
