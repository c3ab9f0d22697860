"""sbx-waiter, the compiled end of a warm payload (runtime/waiter.c, waiter.py; issue #17).

The program is run here as the payload runs it, on the real protocol (protocol.py): the command,
the run's fds by SCM_RIGHTS, the ready message with credentials, the release, the exec pipe.  Its
results must be the Python payload's: the same messages and exit codes.  Then through warm
sandboxes: the payload waits in it, and a profile that denies what it calls keeps the payload in
Python.  CI builds it (test.sh installs gcc); a checkout or wheel without it fails here.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import wait_for
from sandbox.kernel import linux
from sandbox.runtime import protocol, waiter
from sandbox.runtime.protocol import RELEASE, Command, ExecFailed, SetupFailed
from sandbox.warm.api import Runner

pytestmark = pytest.mark.timeout(60)

PATH = (("PATH", "/usr/bin:/bin"),)


def test_the_program_was_built() -> None:
    """setup.py builds it where a compiler is (this suite's machines have one)."""
    assert os.access(waiter.PROGRAM, os.R_OK), f"{waiter.PROGRAM} was not built"


# The other architecture waiter.c has glue for, by this one: its cross compiler and the qemu that
# runs its build here (test.sh installs both).
OTHER = {"x86_64": ("aarch64-linux-gnu-gcc", "qemu-aarch64-static"),
         "aarch64": ("x86_64-linux-gnu-gcc", "qemu-x86_64-static")}


@dataclass(frozen=True)
class Build:
    program: str
    launcher: tuple[str, ...] = ()  # qemu, for the other architecture's build


@pytest.fixture(scope="module", params=["native", "other architecture"])
def build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Build:
    """The installed program, and waiter.c built for the other architecture, run under qemu."""
    if request.param == "native":
        return Build(waiter.PROGRAM)
    compiler, qemu = OTHER[os.uname().machine]
    program = str(tmp_path_factory.mktemp("other") / "sbx-waiter")
    built = subprocess.run([compiler, *waiter.CFLAGS, "-o", program, waiter.SOURCE], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    return Build(program, (shutil.which(qemu) or qemu,))


class Run:
    """One start of the program on fresh pipes, as a sandbox's payload execs it: its four fds at
    `fd_base` and up (else where they were made), nothing else open but 0-2.  `memfd`: exec
    that fd instead (the zygote's sealed copy)."""

    def __init__(self, build: Build, fd_base: int = 0, memfd: int = -1, setup: bytes | None = None,
                 ruleset: int = -1, userns: bool = False) -> None:
        """`setup`: start it as init does (payload.spawn_waiter), with this protocol.Setup and
        `ruleset`; `userns`: in a user namespace of its own, as root there (what the set-up drops)."""
        command_r, self.command_w = os.pipe()
        release_r, self.release_w = os.pipe()
        self.exec_r, exec_w = os.pipe()
        self.channel, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        self.channel.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        ends = [command_r, theirs.detach(), release_r, exec_w]
        setup_w = -1
        if setup is not None:
            setup_r, setup_w = os.pipe()
            ends.append(setup_r)
            if ruleset >= 0:
                ends.append(ruleset)
        targets = [fd_base + i for i in range(len(ends))] if fd_base else ends
        uid, gid = os.getuid(), os.getgid()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                # A test that fails midway leaves it waiting on a pipe nobody writes: end with us.
                linux.prctl(linux.PR_SET_PDEATHSIG, signal.SIGKILL)
                if userns:
                    linux.unshare(linux.CLONE_NEWUSER)
                    linux.map_ids(0, uid, 0, gid)
                lifted = [os.dup2(fd, 200 + i, inheritable=False) for i, fd in enumerate(ends)]
                image = os.dup2(memfd, 210, inheritable=False) if memfd >= 0 else -1
                for high, target in zip(lifted, targets):
                    os.dup2(high, target)
                keep = sorted({0, 1, 2, *targets, *([image] if image >= 0 else [])})
                os.closerange(keep[-1] + 1, 1 << 16)
                for fd in range(3, keep[-1]):
                    if fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                args = [str(fd) for fd in targets]
                if setup is not None and ruleset < 0:
                    args.append("-1")
                if image >= 0:
                    os.execve(image, ["sbx-waiter", *args], {})
                elif build.launcher:
                    os.execve(build.launcher[0], [*build.launcher, build.program, *args], {})
                else:
                    os.execve(build.program, ["sbx-waiter", *args], {})
            finally:
                os._exit(99)
        for fd in ends:
            if fd != ruleset:
                os.close(fd)
        if setup is not None:
            try:
                os.write(setup_w, setup)
            except BrokenPipeError:
                pass
            os.close(setup_w)
        self.status: int | None = None

    def wait(self) -> int:
        if self.status is None:
            _, wstatus = os.waitpid(self.pid, 0)
            self.status = os.waitstatus_to_exitcode(wstatus)
        return self.status

    def send(self, command: Command | bytes, fds: tuple[int, ...]) -> None:
        if isinstance(command, Command):
            protocol.write_command(self.command_w, command)
        else:
            os.write(self.command_w, command)
        os.close(self.command_w)
        self.command_w = -1
        if fds:
            protocol.send_run_fds(self.channel, fds)

    def ready(self) -> int:
        pid, listener = protocol.receive_payload_ready(self.channel)
        assert listener == -1
        return pid

    def finish(self, release: bool = True) -> tuple[int, protocol.ExecOutcome | None]:
        """The exit status and what the exec pipe said (None: exec'd)."""
        if release:
            os.write(self.release_w, RELEASE)
        os.close(self.release_w)
        data = b""
        while chunk := os.read(self.exec_r, 4096):
            data += chunk
        status = self.wait()
        self.close()
        return status, protocol.decode_exec(data)

    def close(self) -> None:
        for fd in (self.command_w, self.exec_r):
            if fd >= 0:
                os.close(fd)
        self.command_w = self.exec_r = -1
        self.channel.close()


@pytest.fixture
def stdio(tmp_path: Path) -> Iterator[tuple[int, int, int, Path]]:
    """stdin, and stdout and stderr on files (read back by the test)."""
    stdin = os.open("/dev/null", os.O_RDONLY)
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    err = os.open(tmp_path / "err", os.O_WRONLY | os.O_CREAT, 0o600)
    yield stdin, out, err, tmp_path
    for fd in (stdin, out, err):
        os.close(fd)


def run(build: Build, command: Command, fds: tuple[int, ...], fd_base: int = 0,
        ready: bool = True) -> tuple[int, protocol.ExecOutcome | None]:
    """Exit status and exec outcome; `ready`: whether it says ready (else it fails before)."""
    r = Run(build, fd_base=fd_base)
    r.send(command, fds)
    if ready:
        assert r.ready() == r.pid  # the credentials name the program itself
    return r.finish(release=ready)


def text(path: Path) -> str:
    return path.read_text()


def test_execs_with_argv_env_and_path_search(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    stdin, out, err, tmp = stdio
    command = Command(("sh", "-c", 'echo "$0|$1|$X|$PATH"; env | sort', "a b"), (*PATH, ("X", "é ü"), ("X", "last")),
                      ())
    status, outcome = run(build, command, (stdin, out, err))
    assert (status, outcome) == (0, None)
    lines = text(tmp / "out").splitlines()
    assert lines[0] == "a b||last|/usr/bin:/bin"
    assert sorted(line.split("=")[0] for line in lines[1:]) == ["PATH", "PWD", "X"]  # sh adds PWD


def test_fds_land_on_their_numbers_and_nothing_else_leaks(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    """stdin, stdout, stderr and the --pass-fd ones; the program's own fds sit where targets go
    (fd_base), so it must lift them first; the command sees none of them."""
    stdin, out, err, tmp = stdio
    extra_r, extra_w = os.pipe()
    try:
        command = Command(("sh", "-c", "ls /proc/self/fd; echo to-9 >&9; echo to-err >&2"), PATH, (), (5, 9))
        status, outcome = run(build, command, (stdin, out, err, extra_r, extra_w), fd_base=5)
        os.close(extra_w)
        extra_w = -1
        assert (status, outcome) == (0, None)
        assert sorted(int(fd) for fd in text(tmp / "out").split()) == [0, 1, 2, 3, 5, 9]  # 3: ls's own
        assert os.read(extra_r, 100) == b"to-9\n"
        assert text(tmp / "err") == "to-err\n"
    finally:
        os.close(extra_r)
        if extra_w >= 0:
            os.close(extra_w)


def test_redirects(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    stdin, out, err, tmp = stdio
    (tmp / "in").write_text("input\n")
    command = Command(("sh", "-c", "cat; echo both >&2; echo six >&6"), PATH, (), (),
                      ((0, str(tmp / "in")), (1, str(tmp / "new")), (2, ""), (6, str(tmp / "six"))))
    status, outcome = run(build, command, (stdin, out, err))
    assert (status, outcome) == (0, None)
    assert text(tmp / "new") == "input\nboth\n"  # "" copies fd 1
    assert text(tmp / "six") == "six\n"
    assert text(tmp / "err") == ""


def test_a_redirect_that_cannot_open(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    stdin, out, err, tmp = stdio
    missing = str(tmp / "no" / "such")
    status, outcome = run(build, Command(("true",), PATH, (), (), ((0, missing),)), (stdin, out, err), ready=False)
    assert status == 125
    assert outcome == SetupFailed(f'open("{missing}"): No such file or directory')


def test_rlimits(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    import resource

    stdin, out, err, tmp = stdio
    limits = ((resource.RLIMIT_NOFILE, 77, 88), (resource.RLIMIT_FSIZE, 1 << 40, resource.RLIM_INFINITY))
    script = "ulimit -Sn; ulimit -Hn; ulimit -Sf; ulimit -Hf; ulimit -c"
    status, outcome = run(build, Command(("sh", "-c", script), PATH, limits), (stdin, out, err))
    assert (status, outcome) == (0, None)
    assert text(tmp / "out").split() == ["77", "88", str((1 << 40) // 512), "unlimited", "0"]


def test_a_limit_it_may_not_raise(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    import resource

    stdin, out, err, _ = stdio
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if os.getuid() == 0:
        pytest.skip("root may raise a hard limit")
    status, outcome = run(build, Command(("true",), PATH, ((resource.RLIMIT_NOFILE, hard + 1, hard + 1),)),
                          (stdin, out, err), ready=False)
    assert (status, outcome) == (125, SetupFailed("setrlimit: Operation not permitted"))


@pytest.mark.parametrize("argv, path, code, err", [
    (("no-such-command-sbx",), "/usr/bin:/bin", 127, errno.ENOENT),
    (("/no/such",), "/bin", 127, errno.ENOENT),
    (("/etc/passwd",), "/bin", 126, errno.EACCES),
    (("/etc/passwd/x",), "/bin", 127, errno.ENOTDIR),
    # Where all fail, the first error that is not ENOENT or ENOTDIR wins, as execvp's
    (("passwd",), "/nonexistent:/etc:/no/such", 126, errno.EACCES),
    (("sh",), "/nonexistent:/etc/passwd:/bin/", 0, 0),  # "/bin/" + "sh": no doubled slash needed
])
def test_exec_failures_say_the_errno(build: Build, stdio: tuple[int, int, int, Path], argv: tuple[str, ...], path: str,
                                     code: int, err: int) -> None:
    stdin, out, stderr, _ = stdio
    command = Command((*argv, "-c", "exit 0") if argv == ("sh",) else argv, (("PATH", path),), ())
    status, outcome = run(build, command, (stdin, out, stderr))
    assert (status, outcome) == (code, ExecFailed(err) if err else None)


def test_without_path_searches_bin_and_usr_bin(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    stdin, out, err, tmp = stdio
    status, outcome = run(build, Command(("echo", "found"), (), ()), (stdin, out, err))
    assert (status, outcome) == (0, None)
    assert text(tmp / "out") == "found\n"


def test_embedded_null_byte(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    stdin, out, err, _ = stdio
    status, outcome = run(build, Command(("echo", "a\0b"), PATH, ()), (stdin, out, err), ready=False)
    assert (status, outcome) == (125, SetupFailed("embedded null byte"))


def test_the_wrong_number_of_fds(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    stdin, out, err, _ = stdio
    r = Run(build)
    r.send(Command(("true",), PATH, (), (7,)), (stdin, out, err))
    assert r.finish(release=False) == (125, SetupFailed("the supervisor sent the wrong number of descriptors"))


def test_discarded_unused_exits_quietly(build: Build) -> None:
    r = Run(build)
    os.close(r.command_w)
    r.command_w = -1
    assert r.finish(release=False) == (125, None)


def test_never_runs_unreleased(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    """EOF on the release pipe: the supervisor is gone, so no exec."""
    stdin, out, err, tmp = stdio
    r = Run(build)
    r.send(Command(("sh", "-c", "echo ran"), PATH, ()), (stdin, out, err))
    r.ready()
    status, outcome = r.finish(release=False)
    assert status == 125 and text(tmp / "out") == ""


def test_malformed_commands_fail_cleanly(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    """Every truncation of a valid command, and corrupted counts: exit 125 with a message, never
    a crash (the supervisor writes the command, but C must not trust a length)."""
    stdin, out, err, _ = stdio
    body = Command(("sh", "-c", "true"), PATH, ((7, 64, 64),), (5,), ((0, "/x"),)).encode()[8:]
    bodies = [body[:n] for n in range(0, len(body), 3)]
    bodies += [b"\xff\xff\xff\xff" + body[4:], body[:4] + b"\xff\xff\xff\x7f" + body[8:], body + b"x"]
    results = []
    for broken in bodies:
        r = Run(build)
        r.send(len(broken).to_bytes(8, "little") + broken, ())
        results.append(r.finish(release=False))
    assert all(status == 125 for status, _ in results), results
    assert {outcome for _, outcome in results} <= {SetupFailed("the supervisor sent a malformed command")}
    r = Run(build)
    r.send((1 << 40).to_bytes(8, "little"), ())  # a length beyond any command
    assert r.finish(release=False) == (125, SetupFailed("the supervisor sent a malformed command"))


# -- started by init, with the payload's set-up (payload.spawn_waiter) -------------------------------

def setup_of(workdir: str, flags: int = 0, uid: int = 0, gid: int = 0, program: bytes = b"") -> bytes:
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return protocol.Setup(flags, uid, gid, last_cap, workdir, program).encode()


def set_up_run(build: Build, command: Command, fds: tuple[int, ...], setup: bytes | None, ruleset: int = -1,
               ready: bool = True) -> tuple[int, protocol.ExecOutcome | None]:
    """As run(), but as root of a user namespace of its own (full capabilities there), with
    `setup` to carry out first (None: none, the control)."""
    r = Run(build, setup=setup, ruleset=ruleset, userns=True)
    try:
        r.send(command, fds)
    except (BrokenPipeError, ConnectionRefusedError):
        assert not ready  # it failed and exited first
    if ready:
        assert r.ready() == r.pid
    return r.finish(release=ready)


STATUS = ("grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Seccomp):' /proc/self/status; "
          "id -u; id -g; pwd; ls /proc/self/fd")


def status_of(out: Path) -> tuple[dict[str, str], list[str]]:
    lines = out.read_text().splitlines()
    return dict(line.split(":\t") for line in lines if ":\t" in line), [line for line in lines if ":\t" not in line]


def test_the_set_up_sheds_every_privilege(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    """Capabilities (every set, the bounding one too), no_new_privs, the working directory, and
    no fd but the run's: what payload.main does before the wait.  The control, without a set-up,
    has them all."""
    stdin, out, err, tmp = stdio
    status, outcome = set_up_run(build, Command(("sh", "-c", STATUS), PATH, ()), (stdin, out, err), None)
    assert (status, outcome) == (0, None)
    before, _ = status_of(tmp / "out")
    assert before["CapEff"] != "0000000000000000" and before["NoNewPrivs"] == "0"
    workdir = tmp / "work"
    workdir.mkdir()
    after = os.open(tmp / "after", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        status, outcome = set_up_run(build, Command(("sh", "-c", STATUS), PATH, ()), (stdin, after, err),
                                     setup_of(str(workdir)))
    finally:
        os.close(after)
    assert (status, outcome) == (0, None)
    fields, rest = status_of(tmp / "after")
    assert {fields[f"Cap{k}"] for k in ("Inh", "Prm", "Eff", "Bnd", "Amb")} == {"0000000000000000"}
    assert fields["NoNewPrivs"] == "1"
    assert rest[:3] == ["0", "0", str(workdir)]
    assert sorted(int(fd) for fd in rest[3:]) == [0, 1, 2, 3]  # 3: ls's own


def test_the_set_up_maps_the_run_s_ids(stdio: tuple[int, int, int, Path]) -> None:
    """--uid/--gid without id ranges: a child user namespace mapping them to our root.  The native
    build only: qemu-user has threads, and a threaded process may not unshare its user namespace."""
    build = Build(waiter.PROGRAM)
    stdin, out, err, tmp = stdio
    setup = setup_of(str(tmp), protocol.SETUP_NESTED_USERNS | protocol.SETUP_DUMPABLE, 1234, 5678)
    status, outcome = set_up_run(build, Command(("sh", "-c", STATUS), PATH, ()), (stdin, out, err), setup)
    assert (status, outcome) == (0, None)
    fields, rest = status_of(tmp / "out")
    assert fields["CapEff"] == fields["CapBnd"] == "0000000000000000"
    assert rest[:2] == ["1234", "5678"]


def test_the_set_up_loads_the_filter(stdio: tuple[int, int, int, Path]) -> None:
    """The seccomp program, before the command wait: one that makes mkdirat fail with EPERM.
    The native build only: under qemu-user the filter would judge qemu's own calls."""
    import struct

    stdin, out, err, tmp = stdio
    mkdir, mkdirat = {"x86_64": (83, 258), "aarch64": (34, 34)}[os.uname().machine]
    program = b"".join(struct.pack("<HBBI", *insn) for insn in (
        (0x20, 0, 0, 0),  # ld [0]: the call's number
        (0x15, 1, 0, mkdir),  # jeq mkdir: to the deny
        (0x15, 0, 1, mkdirat),  # jeq mkdirat
        (0x06, 0, 0, 0x00050000 | errno.EPERM),  # ret ERRNO(EPERM)
        (0x06, 0, 0, 0x7FFF0000)))  # ret ALLOW
    command = Command(("sh", "-c", "mkdir made; grep ^Seccomp: /proc/self/status"), PATH, ())
    status, outcome = set_up_run(Build(waiter.PROGRAM), command, (stdin, out, err), setup_of(str(tmp), program=program))
    assert (status, outcome) == (0, None)
    assert "Operation not permitted" in text(tmp / "err") and not (tmp / "made").exists()
    assert text(tmp / "out") == "Seccomp:\t2\n"


def test_the_set_up_enforces_the_ruleset(stdio: tuple[int, int, int, Path]) -> None:
    """Landlock: init builds the ruleset, the waiter enforces it (after no_new_privs).  Here one
    that lets nothing be written: the control, without it, writes.  The native build only (qemu-user
    does not pass Landlock's calls on)."""
    from sandbox.runtime import landlock

    stdin, out, err, tmp = stdio
    version = landlock.abi()
    assert version >= 1, "this suite's kernels have Landlock"
    rules = landlock.Rules(fs=landlock.FS_ALL_KNOWN, net=0, scoped=0,
                           paths=(("/", landlock.FS_READ | landlock.FS_EXECUTE),), ports=())
    command = Command(("sh", "-c", "echo x > written"), PATH, ())
    status, outcome = set_up_run(Build(waiter.PROGRAM), command, (stdin, out, err), setup_of(str(tmp)))
    assert (status, outcome) == (0, None) and (tmp / "written").exists()
    (tmp / "written").unlink()
    ruleset = landlock.build(rules, version)
    try:
        status, outcome = set_up_run(Build(waiter.PROGRAM), command, (stdin, out, err), setup_of(str(tmp)), ruleset)
    finally:
        os.close(ruleset)
    assert (status, outcome) == (2, None)
    assert "Permission denied" in text(tmp / "err") and not (tmp / "written").exists()


def test_a_set_up_that_fails_says_why(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    stdin, out, err, tmp = stdio
    missing = str(tmp / "no" / "such")
    status, outcome = set_up_run(build, Command(("true",), PATH, ()), (stdin, out, err), setup_of(missing), ready=False)
    assert (status, outcome) == (125, SetupFailed(f"{missing}: No such file or directory"))


def test_malformed_set_ups_fail_cleanly(build: Build, stdio: tuple[int, int, int, Path]) -> None:
    """Every truncation of a valid set-up, and corrupted fields: exit 125 with a message, never
    a crash, and nothing run."""
    stdin, out, err, tmp = stdio
    body = setup_of(str(tmp), program=bytes(16))[8:]
    broken = [len(b).to_bytes(8, "little") + b for b in [body[:n] for n in range(0, len(body), 3)]]
    broken += [len(body).to_bytes(8, "little") + body[:12] + b"\x40\0\0\0" + body[16:],  # last_cap 64
               len(body).to_bytes(8, "little") + body[:-20] + b"\x0c\0\0\0" + body[-16:],  # 12 program bytes
               (len(body) + 1).to_bytes(8, "little") + body + b"x",  # one byte too many
               (1 << 40).to_bytes(8, "little"),  # a length beyond any set-up
               len(body).to_bytes(8, "little") + body[:10]]  # cut short
    results = []
    for setup in broken:
        results.append(set_up_run(build, Command(("sh", "-c", "echo ran"), PATH, ()), (stdin, out, err), setup,
                                  ready=False))
    assert all(status == 125 for status, _ in results), results
    assert {outcome for _, outcome in results} <= {SetupFailed("init sent a malformed set-up"),
                                                   SetupFailed("init's set-up was cut short")}
    assert SetupFailed("init sent a malformed set-up") in {outcome for _, outcome in results}
    assert text(tmp / "out") == ""


def test_from_the_sealed_memfd(stdio: tuple[int, int, int, Path]) -> None:
    """What the zygote hands its sandboxes: a copy nobody can change."""
    stdin, out, err, tmp = stdio
    fd = waiter.open_program()
    assert fd >= 0
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_WRITE and seals & fcntl.F_SEAL_SEAL and seals & fcntl.F_SEAL_SHRINK
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\0", 0)
        with pytest.raises(PermissionError):
            with open(f"/proc/self/fd/{fd}", "r+b") as f:
                f.write(b"\0")
        r = Run(Build(waiter.PROGRAM), memfd=fd)
        r.send(Command(("echo", "from memfd"), PATH, ()), (stdin, out, err))
        r.ready()
        assert r.finish() == (0, None)
        assert text(tmp / "out") == "from memfd\n"
    finally:
        os.close(fd)


# -- through warm sandboxes ----------------------------------------------------------------------

def _sandbox_payload_names(runner: Runner) -> list[str]:
    """The names of the processes below the Runner's zygote that are payloads (init's children)."""
    assert runner.pool is not None and runner.pool.zygote is not None

    def children(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def name(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return ""

    names = []
    stack = children(runner.pool.zygote.process.pid)
    while stack:
        pid = stack.pop()
        if name(pid) == "sbx-init":
            names += [name(child) for child in children(pid)]
        else:
            stack += children(pid)
    return names


def _assert_prepared_payloads(runner: Runner, name: str) -> None:
    """The prepared sandboxes' payloads are all `name`, and stay so (a payload is sbx-payload
    until it execs the waiter)."""
    def names() -> set[str]:
        return {n for n in _sandbox_payload_names(runner) if n in ("sbx-waiter", "sbx-payload")}

    assert wait_for(lambda: names() == {name}, 20), names()
    time.sleep(0.3)
    assert names() == {name}


def test_warm_payloads_wait_in_the_waiter(tmp_path: Path) -> None:
    with Runner(root=str(tmp_path / "store")) as runner:
        result = runner.run(["sh", "-c", "echo $0", "warm"])
        assert (result.verdict, result.stdout) == ("OK", b"warm\n")
        _assert_prepared_payloads(runner, "sbx-waiter")
        for _ in range(3):  # and runs from it
            result = runner.run(["sh", "-c", "cat /proc/self/status | grep -e NoNewPrivs -e CapEff -e Seccomp:"])
            assert result.verdict == "OK"
            assert result.stdout is not None
            fields = dict(line.split(":\t") for line in result.stdout.decode().splitlines())
            assert fields == {"NoNewPrivs": "1", "CapEff": "0000000000000000", "Seccomp": "2"}


@pytest.mark.parametrize("deny, payload, expect", [
    (("prctl",), "sbx-payload", "dup2 ok"),  # the waiter names itself with it: Python goes on
    (("dup2", "dup3"), "sbx-payload", "dup2 EPERM"),  # loaded last, after the wait: no waiter
    ((), "sbx-waiter", "dup2 ok"),
])
def test_a_profile_denying_what_the_waiter_calls_keeps_python(
        tmp_path: Path, deny: tuple[str, ...], payload: str, expect: str) -> None:
    profile = tmp_path / "deny.toml"
    profile.write_text('extends = "default"\n\n[seccomp]\ndeny = [' + ", ".join(f'"{d}"' for d in deny) + "]\n")
    probe = "import errno, os\ntry:\n os.dup2(1, 7); print('dup2 ok')\nexcept OSError as e:\n print('dup2', errno.errorcode[e.errno])"
    with Runner(profile=str(profile), root=str(tmp_path / "store")) as runner:
        for _ in range(2):  # the first from a sandbox prepared at once, the second from the one made after
            result = runner.run(["python3", "-c", probe])
            assert (result.verdict, result.stdout) == ("OK", f"{expect}\n".encode()), result
            _assert_prepared_payloads(runner, payload)


def test_payloads_are_not_forks_of_the_interpreter(tmp_path: Path) -> None:
    """Where the waiter does the set-up too, init starts it by posix_spawn: the command's process
    never was a copy of Python.  A process's minor faults survive exec, so the command sees it:
    cat's own are ~80, a payload forked from init and set up in Python adds ~400 (copy-on-write).
    The Python payload (a profile denying prctl) is the control."""
    from conftest import sbx

    python = tmp_path / "python.toml"
    python.write_text('extends = "default"\n\n[seccomp]\ndeny = ["prctl"]\n')
    faults: dict[str, list[int]] = {}
    for profile in ("default", str(python)):
        seen = faults.setdefault(profile, [])
        cold = sbx("run", "--profile", profile, "--", "cat", "/proc/self/stat")
        assert cold.returncode == 0, cold.stderr
        seen.append(int(cold.stdout.rpartition(")")[2].split()[7]))
        with Runner(profile=profile, root=str(tmp_path / "store")) as runner:
            for _ in range(2):
                result = runner.run(["cat", "/proc/self/stat"])
                assert result.verdict == "OK" and result.stdout is not None
                seen.append(int(result.stdout.decode().rpartition(")")[2].split()[7]))
    assert max(faults["default"]) * 2 < min(faults[str(python)]), faults


def test_a_failing_exec_of_the_waiter_falls_back(tmp_path: Path) -> None:
    """A filter that denies execveat (how the payload starts the waiter) but not execve: the
    payload stays in Python and runs the command."""
    profile = tmp_path / "deny.toml"
    profile.write_text('extends = "default"\n\n[seccomp]\ndeny = ["execveat"]\n')
    with Runner(profile=str(profile), root=str(tmp_path / "store")) as runner:
        result = runner.run(["sh", "-c", "echo ran"])
        assert (result.verdict, result.stdout) == ("OK", b"ran\n")


def test_results_match_the_python_payload(tmp_path: Path) -> None:
    """The same commands with the waiter (the default profile) and without it (a profile denying
    prctl, which the waiter calls: the payload does it all in Python), cold and warm: the same
    exit codes, output and messages."""
    from conftest import sbx

    python = tmp_path / "python.toml"
    python.write_text('extends = "default"\n\n[seccomp]\ndeny = ["prctl"]\n')
    cases = [["no-such-command-sbx"], ["/etc/passwd"], ["sh", "-c", "ulimit -n; echo err >&2; exit 3"]]
    seen = []
    for profile in ("default", str(python)):
        cold = [sbx("run", "--profile", profile, "--open-files", "50", "--", *argv) for argv in cases]
        seen.append([(c.returncode, c.stdout, c.stderr) for c in cold])
        with Runner(profile=profile, root=str(tmp_path / "store"), options=["--open-files", "50"]) as runner:
            warm = [runner.run(argv) for argv in cases]
        seen.append([(r.exit_code, (r.stdout or b"").decode(), (r.stderr or b"").decode()) for r in warm])
    assert [code for code, _, _ in seen[0]] == [127, 126, 3]
    assert seen[0][2][:2] == (3, "50\n")
    assert seen[0] == seen[2], "cold runs differ with and without the waiter"
    assert seen[1] == seen[3], "warm runs differ with and without the waiter"
