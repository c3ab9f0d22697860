"""The containment battery: escapes tried from inside sbx (issue 5).

Every attack in tests/attacks/ prints one line, `RESULT <name> blocked
<detail>` or `RESULT <name> ESCAPED <detail>`.  Each test runs its attack

1. as a control outside the sandbox: on the host as a plain process, or in
   a throw-away `unshare -U -r ...` where only a user namespace gives the
   kernel's permission.  The control must print ESCAPED, so a test whose
   attack is broken (and would be "blocked" anywhere) fails.  Where the
   host kernel itself refuses the mechanism (no privilege for it when
   rootless, or the feature is compiled out), the test asserts exactly that
   refusal and says why;
2. under `sbx run --profile default` and `--profile grader` (grader binds
   the working directory at /box: every run starts in a fresh directory),
   asserting containment: `blocked`, or under grader (seccomp action kill)
   verdict SG with the syscall named in the result.

Seccomp answers EPERM where the kernel, for an unprivileged process, often
answers EPERM too.  So for every syscall of the policy the battery also runs
a `default` profile with action kill: the run must end with SG and the
syscall's name, which only the filter can cause (test_kill_names_the_syscall).

The attack programs run from copies bound read-only at /atk (the C ones are
compiled into the same directory).  Run as root and as an unprivileged user.
"""

from __future__ import annotations

import errno
import fcntl
import gzip
import hashlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import (REPO, SBX, SINGLE, abstract_greeter, greeting_server, make_ctty, ranged, sbx_environ,
                      wait_for)

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # sandbox.seccomp.table, whatever the working directory

ATTACKS = Path(__file__).parent / "attacks"
PY = "/usr/bin/python3"  # the same interpreter inside (the host image's /usr) and outside
ROOT = os.geteuid() == 0
USERNS = ["unshare", "-U", "-r", "-m", "-p", "-f", "--mount-proc"]
PROFILES = ("default", "grader")

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="the attacks use x86_64 syscall numbers")


# --------------------------------------------------------------------------
# Running attacks


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, object]

    @property
    def line(self) -> tuple[str, str, str] | None:
        """(name, status, detail) of the RESULT line, None when there is none."""
        for line in reversed(self.stdout.splitlines()):
            m = re.fullmatch(r"RESULT (\S+) (blocked|ESCAPED) (.*)", line.strip())
            if m:
                return m.group(1), m.group(2), m.group(3)
        return None

    @property
    def status(self) -> str | None:
        return None if self.line is None else self.line[1]

    @property
    def detail(self) -> str:
        return "" if self.line is None else self.line[2]

    @property
    def verdict(self) -> object:
        return self.result.get("verdict")

    @property
    def message(self) -> str:
        return str(self.result.get("message") or "")

    def __repr__(self) -> str:
        return (f"Run(rc={self.returncode}, stdout={self.stdout[-600:]!r}, stderr={self.stderr[-600:]!r}, "
                f"verdict={self.verdict!r}, message={self.message!r})")


@dataclass(frozen=True)
class Env:
    bin: Path  # the attacks and the compiled C programs, bound at /atk
    home: Path  # scratch space of the session
    kill_profile: Path  # `default` with seccomp action kill


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    home = tmp_path_factory.mktemp("attacks")
    bin_dir = home / "atk"
    bin_dir.mkdir()
    for src in ATTACKS.glob("*.py"):
        shutil.copy(src, bin_dir / src.name)
    for c in ("abi.c", "ptrace_peek.c"):
        subprocess.run(["gcc", "-O2", "-o", str(bin_dir / c[:-2]), str(ATTACKS / c)], check=True)
    os.chmod(home, 0o755)
    os.chmod(bin_dir, 0o755)
    profile = home / "default-kill.toml"
    profile.write_text('extends = "default"\n\n[seccomp]\naction = "kill"\n')
    return Env(bin_dir, home, profile)


def control(argv: list[str], *, timeout: float = 30, **kwargs: object) -> Run:
    """An attack outside the sandbox."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
    return Run(p.returncode, p.stdout, p.stderr, {})


_counter = iter(range(1 << 30))


def in_sbx(env: Env, profile: str, argv: list[str], *extra: str, timeout: float = 30, **kwargs: object) -> Run:
    """An attack under `sbx run`, from a fresh working directory."""
    n = next(_counter)
    cwd = env.home / f"cwd{n}"
    cwd.mkdir()
    result = env.home / f"result{n}.json"
    name = str(env.kill_profile) if profile == "default-kill" else profile
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("capture_output", True)
    p = subprocess.run(
        [*SBX, "run", "--profile", name, "-v", f"{env.bin}:/atk:ro", "--result", str(result), *extra, "--", *argv],
        text=True, timeout=timeout, cwd=cwd, env=sbx_environ(), **kwargs,  # type: ignore[call-overload]
    )
    text = result.read_text() if result.exists() else ""
    # Empty when sbx failed before the run (the file is opened first): say how, not a JSON error.
    assert text or p.returncode == 125 or not result.exists(), (p.returncode, p.stdout, p.stderr)
    return Run(p.returncode, p.stdout, p.stderr, json.loads(text) if text else {})


def atk(name: str, *args: object) -> list[str]:
    """argv of a Python attack inside the sandbox."""
    return [PY, f"/atk/{name}", *(str(a) for a in args)]


def host_atk(env: Env, name: str, *args: object) -> list[str]:
    return [PY, str(env.bin / name), *(str(a) for a in args)]


def assert_escaped(run: Run) -> None:
    """The control: the mechanism works here."""
    assert run.status == "ESCAPED", run


def assert_contained(run: Run, profile: str) -> None:
    """Blocked; or, where seccomp kills, the run ended by SIGSYS with the syscall named."""
    assert "Traceback" not in run.stderr, run
    if run.status == "blocked":
        assert run.verdict == "OK", run
        return
    assert run.status is None and profile != "default", run
    assert run.verdict == "SG" and run.message.startswith("seccomp:"), run


def kconfig(option: str) -> bool | None:
    """Whether the running kernel was built with OPTION (None: unknown)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    except OSError:
        return None
    return re.search(rf"^{option}=[ym]$", text, re.M) is not None


def sysctl(name: str, default: int = 0) -> int:
    try:
        return int(Path("/proc/sys", name.replace(".", "/")).read_text().split()[0])
    except (OSError, ValueError):
        return default


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A process of our own for the controls to reach."""
    p = subprocess.Popen(["sleep", "60"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def control_under_parent(argv: list[str]) -> Run:
    """A control run of argv as the parent of its target (`$!`), which even Yama's ptrace_scope 1
    allows.  The target is ended afterwards: an attack that ptrace-attached and exited leaves it
    group-stopped, orphaned to the host's init, for good."""
    with tempfile.NamedTemporaryFile("r") as pid_file:
        try:
            return control(["sh", "-c", 'sleep 10 </dev/null >/dev/null 2>&1 & echo $! > "$0"; exec "$@" $!',
                            pid_file.name, *argv])
        finally:
            text = pid_file.read().strip()
            if text.isdigit():
                try:
                    with open(f"/proc/{text}/cmdline", "rb") as f:
                        ours = f.read().startswith(b"sleep\0")
                    if ours:
                        os.kill(int(text), signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    pass  # it ended by itself


# --------------------------------------------------------------------------
# The seccomp table: syscalls both policies must stop (tests/attacks/syscalls.py)

# name -> (syscall named in the kill report, where the control runs, why the host kernel may refuse it)
#   where: "host"; "userns" (root in a fresh user namespace, with mount and pid namespaces); "child"
#   (on the host, against a child of the attack's own)
#   why: a capability of the initial user namespace (CAP_*: without it the control gets EPERM), a
#   kernel option (CONFIG_*: without it ENOSYS), or a sysctl that opens it to unprivileged users
SYSCALLS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "keyctl": ("keyctl", "host", ()),
    "add_key": ("add_key", "host", ()),
    "request_key": ("request_key", "host", ()),
    "bpf": ("bpf", "host", ("CAP_BPF", "unprivileged_bpf")),
    "perf_event_open": ("perf_event_open", "host", ("CAP_PERFMON", "perf_event_paranoid")),
    "userfaultfd": ("userfaultfd", "host", ()),
    "io_uring_setup": ("io_uring_setup", "host", ("io_uring",)),
    "io_uring_enter": ("io_uring_enter", "host", ()),
    "kexec_load": ("kexec_load", "host", ("CAP_SYS_BOOT", "CONFIG_KEXEC")),
    "kexec_file_load": ("kexec_file_load", "host", ("CAP_SYS_BOOT", "CONFIG_KEXEC_FILE")),
    "init_module": ("init_module", "host", ("CAP_SYS_MODULE", "CONFIG_MODULES")),
    "finit_module": ("finit_module", "host", ("CAP_SYS_MODULE", "CONFIG_MODULES")),
    "delete_module": ("delete_module", "host", ("CAP_SYS_MODULE", "CONFIG_MODULES")),
    "mount": ("mount", "userns", ()),
    "fsopen": ("fsopen", "userns", ()),
    "fsconfig": ("fsconfig", "host", ()),
    "fsmount": ("fsmount", "userns", ()),
    "fspick": ("fspick", "userns", ()),
    "move_mount": ("move_mount", "userns", ()),
    "open_tree": ("open_tree", "userns", ()),
    "open_tree_attr": ("open_tree_attr", "userns", ()),
    "mount_setattr": ("mount_setattr", "userns", ()),
    "umount2": ("umount2", "host", ()),
    "pivot_root": ("pivot_root", "userns", ()),
    "chroot": ("chroot", "host", ()),
    "swapon": ("swapon", "host", ("CAP_SYS_ADMIN", "CONFIG_SWAP")),
    "swapoff": ("swapoff", "host", ("CAP_SYS_ADMIN", "CONFIG_SWAP")),
    "reboot": ("reboot", "userns", ()),
    "acct": ("acct", "host", ("CAP_SYS_PACCT", "CONFIG_BSD_PROCESS_ACCT")),
    "settimeofday": ("settimeofday", "host", ()),
    "clock_settime": ("clock_settime", "host", ()),
    "clock_adjtime": ("clock_adjtime", "host", ()),
    "adjtimex": ("adjtimex", "host", ()),
    "syslog": ("syslog", "host", ("CAP_SYSLOG", "dmesg_restrict")),
    "ptrace": ("ptrace", "child", ()),
    "process_vm_readv": ("process_vm_readv", "child", ()),
    "process_vm_writev": ("process_vm_writev", "child", ()),
    "kcmp": ("kcmp", "child", ("CONFIG_KCMP",)),
    "pidfd_getfd": ("pidfd_getfd", "child", ()),
    "process_madvise": ("process_madvise", "host", ()),
    "personality": ("personality", "host", ()),
    "unshare": ("unshare", "host", ()),
    "setns": ("setns", "host", ()),
    "clone": ("clone", "host", ()),
    "clone3": ("clone3", "host", ()),
    "name_to_handle_at": ("name_to_handle_at", "host", ()),
    "open_by_handle_at": ("open_by_handle_at", "host", ("CAP_DAC_READ_SEARCH",)),
    "ioctl_tiocsti": ("ioctl", "host", ()),
    "ioctl_tioclinux": ("ioctl", "host", ()),
    "netlink_sock_diag": ("socket", "host", ()),
    "netlink_uevent": ("socket", "host", ()),
    "netlink_netfilter": ("socket", "host", ()),
    "netlink_xfrm": ("socket", "host", ()),
    "netlink_generic": ("socket", "host", ()),
    "netlink_audit": ("socket", "host", ()),
}
# The policies answer these with an errno whatever the action (runtimes probe them).
ENOSYS_ALWAYS = {"io_uring_setup", "io_uring_enter", "clone3"}
# A socket family (netlink protocol) off the allow-list: EAFNOSUPPORT whatever the policy and action.
EAFNOSUPPORT_ALWAYS = {n for n in SYSCALLS if n.startswith("netlink_")}
CAPS = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_MODULE": 16, "CAP_SYS_PACCT": 20, "CAP_SYS_ADMIN": 21,
        "CAP_SYS_BOOT": 22, "CAP_SYS_RESOURCE": 24, "CAP_MKNOD": 27, "CAP_SYSLOG": 34, "CAP_PERFMON": 38,
        "CAP_BPF": 39}


def has_cap(name: str) -> bool:
    """Whether this process holds capability NAME (in the initial user namespace: tests run there)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAPS[name] & 1)
    return False


def kernel_refusal(name: str) -> str | None:
    """The errno the host kernel itself gives the control, or None when it lets it through."""
    reasons = SYSCALLS[name][2]
    for reason in reasons:
        if reason.startswith("CONFIG_") and kconfig(reason) is False:
            return "ENOSYS"  # compiled out
    if "io_uring" in reasons:
        disabled = sysctl("kernel.io_uring_disabled")
        return "EPERM" if disabled == 2 or (disabled == 1 and not ROOT) else None
    caps = [r for r in reasons if r.startswith("CAP_")]
    if not caps or has_cap(caps[0]):
        return None
    if "unprivileged_bpf" in reasons:
        return None if sysctl("kernel.unprivileged_bpf_disabled") == 0 else "EPERM"
    if "perf_event_paranoid" in reasons:  # >2 is Debian's "no perf for users"
        return None if sysctl("kernel.perf_event_paranoid") <= 2 else "EACCES"
    if "dmesg_restrict" in reasons:
        return None if sysctl("kernel.dmesg_restrict") == 0 else "EPERM"
    return "EPERM"


def syscall_control(env: Env, name: str) -> Run:
    where = SYSCALLS[name][1]
    argv = host_atk(env, "syscalls.py", name)
    if where == "userns":
        return control(USERNS + argv)
    if where == "child":
        return control_under_parent(argv)
    return control(argv)


@pytest.mark.parametrize("name", sorted(SYSCALLS))
def test_seccomp_escape(env: Env, name: str) -> None:
    ctl = syscall_control(env, name)
    refusal = kernel_refusal(name)
    if refusal is None:
        assert_escaped(ctl)
    else:
        # The host kernel refuses the control itself (see kernel_refusal): assert exactly that.
        assert ctl.status == "blocked" and ctl.detail == refusal, ctl
    default = in_sbx(env, "default", atk("syscalls.py", name))
    assert_contained(default, "default")
    expected = "ENOSYS" if name in ENOSYS_ALWAYS else "EAFNOSUPPORT" if name in EAFNOSUPPORT_ALWAYS else "EPERM"
    assert default.detail == expected, default
    assert_contained(in_sbx(env, "grader", atk("syscalls.py", name)), "grader")


# Only the filter can end a run with SG and the syscall's name, so this proves that each syscall is
# caught by the policy itself, including those the kernel would refuse the payload anyway.
# Regression (found by this battery): the supervisor once read the payload's listener fd with an
# ancillary buffer of CMSG_SPACE(4) on a socket with SO_PASSCRED: SCM_CREDENTIALS came first, the
# SCM_RIGHTS fd was truncated away (MSG_CTRUNC), and every forbidden syscall got ENOSYS from the
# kernel (a notification with no listener) instead of a kill: verdict OK instead of SG.
@pytest.mark.parametrize("profile", ["grader", "default-kill"])
@pytest.mark.parametrize("name", sorted(set(SYSCALLS) - ENOSYS_ALWAYS))
def test_kill_names_the_syscall(env: Env, profile: str, name: str) -> None:
    run = in_sbx(env, profile, atk("syscalls.py", name))
    if name in EAFNOSUPPORT_ALWAYS:
        assert run.status == "blocked" and run.detail == "EAFNOSUPPORT", run
        return
    syscall = SYSCALLS[name][0]
    assert run.verdict == "SG" and run.result.get("signal") == signal.SIGSYS, run
    assert re.fullmatch(rf"seccomp: forbidden syscall {syscall} \(\d+\)", run.message), run
    assert run.status is None, run  # killed before it could report


def test_syscall_numbers_match_the_policy() -> None:
    sys.path.insert(0, str(ATTACKS))
    try:
        import _atk  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(ATTACKS))
    from sandbox.seccomp.table import X86_64_NAMES

    assert {n: X86_64_NAMES[n] for n in _atk.NR} == _atk.NR


# --------------------------------------------------------------------------
# Foreign ABIs (C)


@pytest.mark.parametrize("abi", ["i386", "x32"])
def test_foreign_abi(env: Env, abi: str) -> None:
    ctl = control([str(env.bin / "abi"), abi])
    option = "CONFIG_IA32_EMULATION" if abi == "i386" else "CONFIG_X86_X32_ABI"
    if kconfig(option) is False:
        # the kernel has no such ABI: it answers ENOSYS itself (the kill runs below still show the filter)
        assert ctl.status == "blocked" and ctl.detail == "ENOSYS", ctl
    else:
        assert_escaped(ctl)
    default = in_sbx(env, "default", ["/atk/abi", abi])
    assert default.status == "blocked" and default.detail == "ENOSYS", default  # the filter's bad-arch answer
    assert_contained(in_sbx(env, "grader", ["/atk/abi", abi]), "grader")


@pytest.mark.parametrize("profile", ["grader", "default-kill"])
@pytest.mark.parametrize("abi", ["i386", "x32"])
def test_foreign_abi_kill_named(env: Env, profile: str, abi: str) -> None:
    run = in_sbx(env, profile, ["/atk/abi", abi])
    expect = "seccomp: i386 ABI syscall getpid (20) blocked" if abi == "i386" else "seccomp: x32 ABI syscall 39 blocked"
    assert run.verdict == "SG" and run.message == expect, run


# --------------------------------------------------------------------------
# Processes: init, other processes, signals


@pytest.mark.parametrize("variant", ["default", "grader", "no-seccomp", "uid"])
def test_ptrace_init(env: Env, variant: str) -> None:
    """PTRACE_ATTACH to pid 1 (init): seccomp denies ptrace, and without seccomp init is not dumpable."""
    assert_escaped(control_under_parent([str(env.bin / "ptrace_peek")]))
    profile, extra = _variant(variant)
    assert_contained(in_sbx(env, profile, ["/atk/ptrace_peek", "1"], *extra), profile)


def _variant(variant: str) -> tuple[str, tuple[str, ...]]:
    return {
        "default": ("default", ()),
        "grader": ("grader", ()),
        "no-seccomp": ("default", ("--seccomp", "none")),  # the layers under seccomp alone
        "uid": ("default", ("--uid", "1000", "--gid", "1000")),
    }[variant]


@pytest.mark.parametrize("variant", ["no-seccomp", "uid"])
@pytest.mark.parametrize("name", ["process_vm_readv", "pidfd_getfd", "kcmp"])
def test_reach_init_without_seccomp(env: Env, name: str, variant: str) -> None:
    """process_vm_readv, pidfd_getfd and kcmp of init fail even without the filter (not dumpable)."""
    profile, extra = _variant(variant)
    run = in_sbx(env, profile, atk("syscalls.py", name, 1), *extra)
    assert run.status == "blocked" and run.detail in ("EPERM", "EACCES"), run


@pytest.mark.parametrize("variant", ["default", "grader", "no-seccomp", "uid"])
def test_proc_of_init(env: Env, variant: str) -> None:
    """/proc/1/mem, environ, maps, root, cwd and fd links of init are out of reach."""
    assert_escaped(control_under_parent(host_atk(env, "proc_pid.py")))
    profile, extra = _variant(variant)
    run = in_sbx(env, profile, atk("proc_pid.py", 1), *extra)
    assert_contained(run, profile)
    assert "mem: EACCES" in run.detail and "environ: EACCES" in run.detail, run


@pytest.mark.parametrize("variant", ["default", "grader", "no-seccomp", "uid"])
def test_setns_into_init(env: Env, variant: str) -> None:
    target = subprocess.Popen(["unshare", "-U", "-r", "-n", "-u", "sleep", "60"])
    try:
        assert wait_for(lambda: os.readlink(f"/proc/{target.pid}/ns/net") != os.readlink("/proc/self/ns/net"), 10), \
            "unshare did not create its namespaces"
        ctl = control(host_atk(env, "setns.py", target.pid))
    finally:
        target.kill()
        target.wait()
    assert_escaped(ctl)
    assert "user" in ctl.detail and "net" in ctl.detail, ctl
    profile, extra = _variant(variant)
    run = in_sbx(env, profile, atk("setns.py", 1), *extra)
    assert_contained(run, profile)
    assert "user: open EACCES" in run.detail, run


PF_EXITING = 0x4  # include/linux/sched.h: do_exit() has begun


def doomed(pid: int) -> str:
    """How a kill(SIGKILL) reached `pid`, or "" if none did. kill(2) queues the signal before it
    returns, so its mark is there at once (pending, then exiting, then a zombie): no sleep needed."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # state is field 3, flags 9
    kill_bit = 1 << (signal.SIGKILL - 1)
    if any(int(status[key], 16) & kill_bit for key in ("SigPnd", "ShdPnd")):
        return "SIGKILL pending"
    if stat[0] in "ZX" or int(stat[6]) & PF_EXITING:
        return f"exiting (state {stat[0]})"
    return ""


@pytest.mark.parametrize("profile", PROFILES)
def test_kill_host_process(env: Env, profile: str) -> None:
    victim = subprocess.Popen(["sleep", "60"])
    try:
        ctl = control(host_atk(env, "kill_pid.py", victim.pid))
        assert_escaped(ctl)
        assert victim.wait(5) == -signal.SIGKILL
    finally:
        victim.kill()
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        run = in_sbx(env, profile, atk("kill_pid.py", sentinel.pid))
        assert_contained(run, profile)
        assert run.detail == "ESRCH", run
        assert not doomed(sentinel.pid) and sentinel.poll() is None, doomed(sentinel.pid)
    finally:
        sentinel.kill()
        sentinel.wait()


@pytest.mark.parametrize("profile", PROFILES)
def test_kill_everything(env: Env, profile: str) -> None:
    """kill(-1, SIGKILL): the control in a throw-away pid namespace kills its neighbour; in sbx
    nothing outside is in reach: a host process of the same user and this test survive."""
    ctl = control(USERNS + ["sh", "-c", 'sleep 60 </dev/null >/dev/null 2>&1 & "$@"; wait', "sh", *host_atk(env, "kill_all.py")])
    assert_escaped(ctl)
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        run = in_sbx(env, profile, atk("kill_all.py"))
        assert_contained(run, profile)
        assert run.detail.startswith("ESRCH"), run
        assert not doomed(sentinel.pid) and sentinel.poll() is None, doomed(sentinel.pid)
    finally:
        sentinel.kill()
        sentinel.wait()


@pytest.fixture
def victim(env: Env) -> Iterator[tuple[int, str]]:
    """A process in another sandbox, holding a secret: (its pid on the host, the secret)."""
    tag = secrets.token_hex(8)
    p = subprocess.Popen([*SBX, "run", "-v", f"{env.bin}:/atk:ro", "--", *atk("victim.py", tag)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         # the single mapping: the victim is the caller's own uid, so the control (the
                         # caller reading it) works; under id ranges not even the caller could
                         env=sbx_environ(SINGLE), cwd=env.home)
    try:
        assert p.stdout is not None
        assert select.select([p.stdout], [], [], 20)[0], "the victim did not start"
        line = p.stdout.readline()
        assert line.startswith("SECRET "), line
        secret = line.split()[1]
        pids = []
        for d in Path("/proc").iterdir():
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")[:-1]
                if d.name.isdigit() and argv == [a.encode() for a in atk("victim.py", tag)]:
                    pids.append(int(d.name))
            except OSError:
                pass
        assert len(pids) == 1, pids
        yield pids[0], secret
    finally:
        if p.stdin:
            p.stdin.close()
        p.wait(10)


@pytest.mark.parametrize("profile", PROFILES)
def test_read_another_sandbox_memory(env: Env, profile: str, victim: tuple[int, str]) -> None:
    pid, secret = victim
    ctl = control(host_atk(env, "mem_scan.py", pid))  # the caller may read its own sandbox
    assert_escaped(ctl)
    assert secret in ctl.detail, ctl
    run = in_sbx(env, profile, atk("mem_scan.py", pid))
    assert_contained(run, profile)
    assert secret not in run.stdout


# --------------------------------------------------------------------------
# Privileges


def test_privileges_control(env: Env) -> None:
    assert_escaped(control(["unshare", "-U", "-r", *host_atk(env, "privs.py")]))  # root in a user namespace
    assert_escaped(control(["unshare", "-U", "-r", *host_atk(env, "privs_regain.py")]))


@pytest.mark.parametrize("variant", ["default", "grader", "no-seccomp", "uid"])
def test_no_privileges(env: Env, variant: str) -> None:
    """All capability sets empty (bounding and ambient too), securebits locked, no_new_privs."""
    profile, extra = _variant(variant)
    run = in_sbx(env, profile, atk("privs.py"), *extra)
    assert run.status == "blocked", run
    seccomp = "0" if variant == "no-seccomp" else "2"
    assert run.detail == f"caps 0, securebits 0xcf, no_new_privs 1, seccomp {seccomp}", run
    regain = in_sbx(env, profile, atk("privs_regain.py"), *extra)
    assert_contained(regain, profile)


@pytest.mark.parametrize("variant", ["default", "grader", "no-seccomp"])
def test_raise_hard_rlimits(env: Env, variant: str) -> None:
    ctl = control(host_atk(env, "rlimits.py"), preexec_fn=lambda: __import__("resource").setrlimit(4, (0, 0)))
    if has_cap("CAP_SYS_RESOURCE"):
        assert_escaped(ctl)
    else:
        # raising a hard limit needs CAP_SYS_RESOURCE in the initial user namespace (rootless, or a
        # root whose bounding set lacks it, as in some VMs and containers): the kernel refuses
        assert ctl.status == "blocked" and "CORE: EPERM" in ctl.detail, ctl
    profile, extra = _variant(variant)
    run = in_sbx(env, profile, atk("rlimits.py"), *extra)
    assert_contained(run, profile)
    assert "CORE: EPERM" in run.detail, run


# --------------------------------------------------------------------------
# Files, devices, /proc, /sys


@pytest.mark.parametrize("profile", PROFILES)
def test_host_files(env: Env, profile: str, tmp_path: Path) -> None:
    marker = tmp_path / "secret"
    marker.write_text("the host's secret\n")
    marker.chmod(0o644)
    home = os.path.expanduser("~")
    assert_escaped(control(host_atk(env, "host_files.py", home, marker)))
    run = in_sbx(env, profile, atk("host_files.py", home, marker))
    assert_contained(run, profile)
    # /root is empty, and under id ranges not even the payload's to list (it is root's, 0700)
    root = "/root: EACCES" if ranged() else "/root: empty"
    assert "/etc/shadow: ENOENT" in run.detail and root in run.detail, run


def _block_device() -> tuple[int, int, str]:
    for line in Path("/proc/partitions").read_text().splitlines()[2:]:
        major, minor, _, name = line.split()
        return int(major), int(minor), "/dev/" + name
    raise AssertionError("no block device in /proc/partitions")


def _host_opens(path: str) -> str:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        return "ok"
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "?")


@pytest.mark.parametrize("variant", ["default", "grader", "no-seccomp"])
def test_mknod_block_device(env: Env, variant: str, tmp_path: Path) -> None:
    major, minor, device = _block_device()
    ctl = control(host_atk(env, "mknod.py", major, minor, tmp_path))
    if not has_cap("CAP_MKNOD"):
        # only CAP_MKNOD in the initial user namespace creates device nodes
        assert ctl.status == "blocked" and ctl.detail == "mknod: EPERM", ctl
    elif (opened := _host_opens(device)) != "ok":
        # the node is made, but this host refuses even root to open its disk (a device cgroup,
        # an LSM): the same answer as for the real /dev node
        assert ctl.status == "blocked" and ctl.detail == f"mknod worked but open: {opened}", ctl
    else:
        assert_escaped(ctl)
    profile, extra = _variant(variant)
    run = in_sbx(env, profile, atk("mknod.py", major, minor), *extra)
    assert_contained(run, profile)
    # EACCES: Landlock, which never grants making device nodes, answers before the capability check
    assert run.detail in ("mknod: EPERM", "mknod: EACCES"), run


@pytest.mark.parametrize("variant", ["default", "grader", "no-seccomp"])
def test_cgroupfs(env: Env, variant: str) -> None:
    """No /sys in the sandbox, and no mounting cgroup2 (the control does, in its own namespaces)."""
    ctl = control(["unshare", "-U", "-r", "-m", "-C", *host_atk(env, "cgroup.py")])
    assert_escaped(ctl)
    profile, extra = _variant(variant)
    run = in_sbx(env, profile, atk("cgroup.py"), *extra)
    assert_contained(run, profile)
    if run.status == "blocked":
        assert "no /sys/fs/cgroup" in run.detail, run
    if variant != "grader":
        assert run.detail.startswith("mount cgroup2: EPERM"), run


@pytest.mark.parametrize("profile", PROFILES)
def test_sysrq_trigger(env: Env, profile: str) -> None:
    ctl = control(host_atk(env, "sysrq.py"))
    if not os.path.exists("/proc/sysrq-trigger"):
        # CONFIG_MAGIC_SYSRQ is off: the kernel has no trigger to write to
        assert kconfig("CONFIG_MAGIC_SYSRQ") in (False, None)
        assert ctl.status == "blocked" and ctl.detail == "ENOENT", ctl
    elif ROOT:
        assert_escaped(ctl)
    else:
        assert ctl.status == "blocked" and ctl.detail == "EACCES", ctl  # mode 0200, root's
    run = in_sbx(env, profile, atk("sysrq.py"))
    assert_contained(run, profile)
    assert run.detail in ("ENOENT", "EROFS", "EACCES"), run


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", ["keys", "timer_list", "kcore"])
def test_proc_masks(env: Env, profile: str, name: str) -> None:
    ctl = control(host_atk(env, "proc_read.py", name, "--add-key"))
    if not os.path.exists(f"/proc/{name}"):
        assert ctl.status == "blocked" and ctl.detail == "ENOENT", ctl  # not built into this kernel
    elif not os.access(f"/proc/{name}", os.R_OK):
        assert ctl.status == "blocked" and ctl.detail == "EACCES", ctl  # mode 0400 (kcore, timer_list): root's
    else:
        assert_escaped(ctl)
    run = in_sbx(env, profile, atk("proc_read.py", name))
    assert_contained(run, profile)
    assert run.status == "blocked", run


@pytest.fixture(scope="session")
def image_file() -> Path:
    """A small regular file of the host image (/usr)."""
    for candidate in ("/usr/lib/os-release", "/usr/share/common-licenses/MIT", "/usr/share/dict/README.select-wordlist"):
        p = Path(candidate).resolve()
        if p.is_file() and not p.is_symlink() and str(p).startswith("/usr/"):
            return p
    for p in sorted(Path("/usr/share/doc").rglob("copyright")):
        if p.is_file() and not p.is_symlink():
            return p
    raise AssertionError("no file in /usr to aim at")


def _digest(p: Path) -> tuple[str, int, int]:
    st = p.stat()
    return hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns


@pytest.mark.parametrize("profile", PROFILES)
def test_write_image_layers(env: Env, profile: str, image_file: Path, tmp_path: Path) -> None:
    """Changes to /usr stay in the run's disposable layer: never in the host's files, never in the next run."""
    marker = "m" + secrets.token_hex(6)
    copy = tmp_path / image_file.name
    shutil.copy(image_file, copy)
    first = control(host_atk(env, "image_write.py", copy, marker))
    assert first.status == "blocked" and "appended, created" in first.detail, first
    assert_escaped(control(host_atk(env, "image_write.py", copy, marker)))  # the mark persisted
    before = _digest(image_file)
    runs = [in_sbx(env, profile, atk("image_write.py", image_file, marker)) for _ in range(2)]
    for run in runs:
        assert_contained(run, profile)
        assert run.detail.startswith("no earlier mark"), run
    assert _digest(image_file) == before
    assert not (image_file.parent / f"sbx-attack-{marker}").exists()
    if not ROOT:
        # host root's files appear as nobody's: not even the disposable layer takes the write
        assert "append EACCES" in runs[0].detail, runs[0]


@pytest.mark.parametrize("where", ["disk", "tmp"])
@pytest.mark.parametrize("profile", PROFILES)
def test_disk_fill(env: Env, profile: str, where: str, tmp_path: Path) -> None:
    """Writes stop at the --disk size (or /tmp's size); the host's disk sees none of them."""
    ctl = control(host_atk(env, "fill.py", tmp_path, 24))
    assert_escaped(ctl)
    name = "fill-" + secrets.token_hex(4)
    directory = {"disk": "/box" if profile == "grader" else "/var/tmp", "tmp": "/tmp"}[where]
    limit = 8 << 20
    extra = ("--disk", "8M") if where == "disk" else ("--tmpfs", "/tmp:size=8M")
    run = in_sbx(env, profile, atk("fill.py", directory, 24, name), *extra)
    assert_contained(run, profile)
    m = re.fullmatch(r"(\w+) after (\d+) bytes \(a filesystem of (\d+) bytes\)", run.detail)
    assert m and m.group(1) == "ENOSPC" and int(m.group(2)) <= limit, run
    # the writes went to a filesystem of that size (the run's tmpfs), not to the host's disk
    assert int(m.group(3)) <= limit < shutil.disk_usage(env.home).total, run
    assert not list(env.home.rglob(name))  # in particular not in the working directory bound at /box


# --------------------------------------------------------------------------
# Terminal, descriptors, sockets


def _pty_ctty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)  # so that FIONREAD counts an injected byte at once
    return master, slave


def _pending_input(slave: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(slave, termios.FIONREAD, buf)
    return int.from_bytes(buf, sys.byteorder)


@pytest.mark.parametrize("variant", ["default", "grader", "default-t", "grader-t"])
def test_tiocsti(env: Env, variant: str) -> None:
    """Nothing typed into the caller's terminal, with (-t) or without a controlling terminal inside."""
    master, slave = _pty_ctty()
    try:
        ctl = control(host_atk(env, "tiocsti.py"), stdin=slave, preexec_fn=make_ctty)
        if has_cap("CAP_SYS_ADMIN") or sysctl("dev.tty.legacy_tiocsti", 1) == 1:
            assert_escaped(ctl)
            assert _pending_input(slave) == 1
        else:
            # dev.tty.legacy_tiocsti = 0: the kernel refuses TIOCSTI to all but CAP_SYS_ADMIN
            assert ctl.status == "blocked" and ctl.detail.startswith("TIOCSTI EIO"), ctl
        termios.tcflush(slave, termios.TCIFLUSH)
        assert _pending_input(slave) == 0
        profile = variant.split("-")[0]
        extra = ("-t",) if variant.endswith("-t") else ()
        run = in_sbx(env, profile, atk("tiocsti.py"), *extra, stdin=slave, preexec_fn=make_ctty)
        assert_contained(run, profile)
        if run.status == "blocked":
            if extra:
                assert "/dev/tty opened" in run.detail, run  # -t keeps the terminal: only seccomp stops it
            else:
                assert "/dev/tty: ENXIO" in run.detail, run  # setsid: no controlling terminal
        assert _pending_input(slave) == 0
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("profile", PROFILES)
def test_inherited_fds(env: Env, profile: str) -> None:
    r, w = os.pipe()
    try:
        os.set_inheritable(r, True)
        assert_escaped(control(host_atk(env, "fds.py"), pass_fds=(r,)))
        run = in_sbx(env, profile, atk("fds.py"), pass_fds=(r,))
        assert run.status == "blocked" and run.detail == "only 0, 1, 2", run
    finally:
        os.close(r)
        os.close(w)


@pytest.fixture
def abstract_server() -> Iterator[str]:
    with abstract_greeter("sbx-attack") as name:
        yield name


@pytest.mark.parametrize("profile", PROFILES)
def test_abstract_unix_socket(env: Env, profile: str, abstract_server: str) -> None:
    ctl = control(host_atk(env, "abstract_unix.py", abstract_server))
    assert_escaped(ctl)
    run = in_sbx(env, profile, atk("abstract_unix.py", abstract_server))
    assert_contained(run, profile)
    assert run.detail == ("connect: ECONNREFUSED" if profile == "default" else "socket: EACCES"), run


def test_network_host_exposes_abstract_sockets(env: Env, abstract_server: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """What SECURITY.md warns about: without Landlock's scope (ABI 6; SBX_LANDLOCK=5 uses at most 5)
    --network host shares the host's abstract unix sockets.  With it: tests/test_landlock.py."""
    monkeypatch.setenv("SBX_LANDLOCK", "5")
    run = in_sbx(env, "default", atk("abstract_unix.py", abstract_server), "--network", "host")
    assert run.status == "ESCAPED" and "hello from the host" in run.detail, run


@pytest.fixture
def loopback_server() -> Iterator[int]:
    """A TCP service on the host's 127.0.0.1 only."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    with greeting_server(srv, b"hello from the host's loopback"):
        yield srv.getsockname()[1]


@pytest.mark.parametrize("network", ["none", "pasta"])
def test_host_loopback_service(env: Env, network: str, loopback_server: int) -> None:
    """A service bound to the host's 127.0.0.1 is out of reach without --network host.

    Under --network pasta the host's loopback stays out too: pasta runs with --no-map-gw (and
    slirp4netns with --disable-host-loopback) unless --host-loopback asks for the mapping.
    """
    assert_escaped(control(host_atk(env, "loopback_tcp.py", loopback_server)))
    run = in_sbx(env, "default", atk("loopback_tcp.py", loopback_server), "--network", network)
    assert run.status == "blocked", run
