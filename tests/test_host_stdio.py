"""The payload holds no host file through its stdio or --pass-fd (issue 12, sandbox/runtime/stdio.py).

In the single id mapping the payload is the caller's own uid: any fd of a caller's file is its
to fchmod and to reopen through /proc/self/fd for writing.  Each attack here is run as a
control outside sbx (the same script, the same user: it succeeds) and then under sbx, in the
single mapping (SBX_ID_RANGES=0: the mode where only stdio.py stands in the way) and in the
default mode; the host file must be untouched.  Then the plumbing that replaces those fds:
terminals without -t, FIFOs, sockets, large inputs, early exits, stalled readers, limits.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import socket
import stat
import subprocess
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox import Runner, UsageError

from conftest import SBX, SINGLE, make_ctty, ranged, sbx, sbx_environ

pytestmark = pytest.mark.timeout(120)

PY = "/usr/bin/python3"  # the same interpreter inside (the host image's /usr) and outside
MODES = ("single", "default")
JUDGE_DATA = b"1 2\n3 4\n"
PROGRAM = b"#!/bin/sh\nexec /bin/sh -p\n"

# Rewrite the file behind stdin: make it writable, reopen it for writing (a fresh description
# that ignores the O_RDONLY one we were given), truncate it, write our own "test data".
STDIN_ATTACK = """
import os
done = []
def step(name, action):
    try:
        action()
        done.append(name)
    except OSError as exc:
        done.append(f"{name}:{exc.errno}")
step("fchmod", lambda: os.fchmod(0, 0o666))
def rewrite():
    fd = os.open("/proc/self/fd/0", os.O_WRONLY)
    os.ftruncate(fd, 0)
    os.write(fd, b"PWNED\\n")
step("rewrite", rewrite)
print(" ".join(done))
"""

# Turn the file behind stdout into a setuid program: through fd 1 itself and through a fresh
# read-write description of it.
STDOUT_ATTACK = """
import os
os.write(1, b"through the pipe\\n")
PROGRAM = %r
def attempt(fd):
    # The mode last: a write by a non-root owner clears the setuid bit.
    for action in (lambda: os.ftruncate(fd, 0), lambda: os.pwrite(fd, PROGRAM, 0), lambda: os.fchmod(fd, 0o4755)):
        try:
            action()
        except OSError:
            pass
attempt(1)
try:
    attempt(os.open("/proc/self/fd/1", os.O_RDWR))
except OSError:
    pass
""" % PROGRAM


def env_for(mode: str) -> dict[str, str]:
    return SINGLE if mode == "single" else dict(os.environ)


def assert_tried(mode: str, said: str | bytes | None) -> None:
    """In the single mapping the attack's syscalls are all allowed in the sandbox (the fchmod and
    the reopen succeed): only the object, a pipe of sbx's (ftruncate: EINVAL), stops it."""
    if mode == "single":
        assert said in ("fchmod rewrite:22\n", b"fchmod rewrite:22\n"), said


def _run(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    """`sbx ARGS...` run to its end with the streams given (those not given are captured)."""
    for name in ("stdout", "stderr"):
        kwargs.setdefault(name, subprocess.PIPE)
    done: subprocess.CompletedProcess[bytes] = subprocess.run(  # type: ignore[call-overload]
        [*SBX, *args], env=sbx_environ(env), timeout=120, **kwargs)
    return done


def judge_file(tmp_path: Path, name: str = "case.in") -> Path:
    path = tmp_path / name
    path.write_bytes(JUDGE_DATA)
    path.chmod(0o444)
    return path


def assert_untouched(path: Path) -> None:
    assert path.read_bytes() == JUDGE_DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o444


def assert_not_a_program(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode & 0o7111 == 0, oct(mode)  # neither setuid/setgid nor executable
    assert path.read_bytes() == b"through the pipe\n"


# -- stdin: the judge's data ---------------------------------------------------------------------


def test_stdin_attack_works_outside(tmp_path: Path) -> None:
    """The control: the same script on the host, as the same user, rewrites a 0444 file."""
    copy = judge_file(tmp_path)
    with copy.open("rb") as f:
        subprocess.run([PY, "-c", STDIN_ATTACK], stdin=f, check=True, capture_output=True)
    assert copy.read_bytes() == b"PWNED\n"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o666


@pytest.mark.parametrize("mode", MODES)
def test_stdin_flag_file_cannot_be_rewritten(tmp_path: Path, mode: str) -> None:
    data = judge_file(tmp_path)
    result = sbx("run", "--stdin", str(data), "--", PY, "-c", STDIN_ATTACK, env=env_for(mode))
    assert result.returncode == 0, result.stderr
    assert_tried(mode, result.stdout)
    assert_untouched(data)


@pytest.mark.parametrize("mode", MODES)
def test_stdin_redirect_cannot_be_rewritten(tmp_path: Path, mode: str) -> None:
    """`sbx run ... < file`: sbx's own fd 0 is the judge's file."""
    data = judge_file(tmp_path)
    with data.open("rb") as f:
        result = sbx("run", "--", PY, "-c", STDIN_ATTACK, stdin=f, env=env_for(mode))
    assert result.returncode == 0, result.stderr
    assert_tried(mode, result.stdout)
    assert_untouched(data)


@pytest.mark.parametrize("mode", MODES)
def test_api_stdin_path_cannot_be_rewritten(tmp_path: Path, mode: str) -> None:
    data = judge_file(tmp_path)
    with Runner(warm=False, environ=env_for(mode)) as runner:
        result = runner.run([PY, "-c", STDIN_ATTACK], stdin=str(data))
        assert result.verdict == "OK", result
        assert_tried(mode, result.stdout)
        assert_untouched(data)
        fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)  # an fd of the caller's (duplicated by the API)
        try:
            result = runner.run([PY, "-c", STDIN_ATTACK], stdin=fd)
        finally:
            os.close(fd)
        assert result.verdict == "OK", result
        assert_tried(mode, result.stdout)
    assert_untouched(data)


def test_stdin_still_reads_the_data(tmp_path: Path) -> None:
    data = judge_file(tmp_path)
    by_flag = sbx("run", "--stdin", str(data), "--", "cat")
    with data.open("rb") as f:
        by_redirect = sbx("run", "--", "cat", stdin=f)
    assert by_flag.stdout == by_redirect.stdout == JUDGE_DATA.decode()


def test_stdin_keeps_the_callers_offset(tmp_path: Path) -> None:
    """The payload reads from where the caller's reading stands (`{ read line; sbx run cat; } < file`)."""
    data = judge_file(tmp_path)
    with data.open("rb", buffering=0) as f:
        f.read(4)
        result = sbx("run", "--", "cat", stdin=f)
    assert result.stdout == JUDGE_DATA[4:].decode()


# -- stdout and stderr: a setuid program planted ----------------------------------------------------


def test_stdout_attack_works_outside(tmp_path: Path) -> None:
    copy = tmp_path / "out"
    with copy.open("wb") as f:
        subprocess.run([PY, "-c", STDOUT_ATTACK], stdout=f, check=True)
    assert copy.stat().st_mode & stat.S_ISUID
    assert copy.read_bytes() == PROGRAM


@pytest.mark.parametrize("mode", MODES)
def test_stdout_flag_file_is_no_program(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    result = sbx("run", "--stdout", str(out), "--", PY, "-c", STDOUT_ATTACK, env=env_for(mode))
    assert result.returncode == 0, result.stderr
    assert_not_a_program(out)


@pytest.mark.parametrize("mode", MODES)
def test_stdout_redirect_is_no_program(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    with out.open("wb") as f:
        result = _run("run", "--", PY, "-c", STDOUT_ATTACK, stdout=f, env=env_for(mode))
    assert result.returncode == 0, result.stderr
    assert_not_a_program(out)


@pytest.mark.parametrize("mode", MODES)
def test_stderr_redirect_is_no_program(tmp_path: Path, mode: str) -> None:
    err = tmp_path / "err"
    attack = STDOUT_ATTACK.replace("(1", "(2").replace("fd/1", "fd/2")
    with err.open("wb") as f:
        result = _run("run", "--", PY, "-c", attack, stderr=f, env=env_for(mode))
    assert result.returncode == 0
    assert_not_a_program(err)


@pytest.mark.parametrize("mode", MODES)
def test_api_stdout_path_is_no_program(tmp_path: Path, mode: str) -> None:
    out = tmp_path / "out"
    with Runner(warm=False, environ=env_for(mode)) as runner:
        result = runner.run([PY, "-c", STDOUT_ATTACK], stdout=str(out))
    assert result.verdict == "OK", result
    assert_not_a_program(out)


def test_stdout_and_stderr_to_one_file_keep_their_order(tmp_path: Path) -> None:
    """2>&1: one pipe for both, so lines come out in the order written."""
    out = tmp_path / "both"
    script = "for i in $(seq 300); do echo out$i; echo err$i >&2; done"
    with out.open("wb") as f:
        result = _run("run", "--", "sh", "-c", script, stdout=f, stderr=f)
    assert result.returncode == 0
    assert out.read_text().split() == [f"{s}{i}" for i in range(1, 301) for s in ("out", "err")]


# -- --pass-fd -------------------------------------------------------------------------------------


def _pass(fd: int, *options: str, env: dict[str, str] = SINGLE,
          command: tuple[str, ...] = ("echo", "RAN")) -> subprocess.CompletedProcess[str]:
    return sbx("run", "--pass-fd", str(fd), *options, "--", *command, pass_fds=(fd,), env=env)


def _assert_refused(result: subprocess.CompletedProcess[str], fd: int, why: str) -> None:
    assert result.returncode == 125, result
    assert "RAN" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if not line.startswith("sbx: warning:")]
    assert len(lines) == 1 and lines[0].startswith(f"sbx: error: --pass-fd {fd}: "), result.stderr
    assert why in lines[0], lines[0]


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    return path


@pytest.mark.parametrize("kind", ["file", "directory", "o_path", "fifo", "device"])
def test_pass_fd_of_host_objects_is_refused(tmp_path: Path, fifo: Path, kind: str) -> None:
    data = judge_file(tmp_path)
    opened = {
        "file": lambda: os.open(data, os.O_RDONLY),
        "directory": lambda: os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY),
        "o_path": lambda: os.open(data, os.O_PATH),
        "fifo": lambda: os.open(fifo, os.O_RDWR),
        "device": lambda: os.open("/dev/null", os.O_RDWR),
    }[kind]()
    try:
        why = {"file": "regular file", "directory": "directory", "o_path": "O_PATH", "fifo": "named FIFO",
               "device": "device"}[kind]
        _assert_refused(_pass(opened), opened, why)
        if kind != "file":  # refused whatever the mapping
            _assert_refused(_pass(opened, env=dict(os.environ)), opened, why)
    finally:
        os.close(opened)
    assert_untouched(data)


def test_pass_fd_control_a_file_fd_is_the_callers_to_rewrite(tmp_path: Path) -> None:
    """The control: a process given the fd on the host rewrites the 0444 file through it."""
    data = judge_file(tmp_path)
    fd = os.open(data, os.O_RDONLY)
    try:
        script = STDIN_ATTACK.replace("(0,", f"({fd},").replace("fd/0", f"fd/{fd}")
        subprocess.run([PY, "-c", script], pass_fds=(fd,), check=True, capture_output=True)
    finally:
        os.close(fd)
    assert data.read_bytes() == b"PWNED\n"


def test_pass_fd_of_pipes_and_sockets_works() -> None:
    r, w = os.pipe()
    ours, theirs = socket.socketpair()
    try:
        os.write(w, b"from a pipe\n")
        os.close(w)
        w = -1
        result = _pass(r, command=("head", "-n1", f"/proc/self/fd/{r}"))
        assert (result.returncode, result.stdout) == (0, "from a pipe\n"), result.stderr
        fd = theirs.fileno()
        result = _pass(fd, command=(PY, "-c", f"import os; os.write({fd}, b'over a socket\\n')"))
        assert result.returncode == 0, result.stderr
        ours.settimeout(10)
        assert ours.recv(100) == b"over a socket\n"
    finally:
        for end in (r, w):
            if end >= 0:
                os.close(end)
        ours.close()
        theirs.close()


@pytest.mark.skipif(not ranged(), reason="needs subordinate ids (the payload is another uid)")
def test_pass_fd_of_a_file_with_id_ranges(tmp_path: Path) -> None:
    """Where the payload is a subordinate uid, a file may be passed: it reads it, and cannot chmod or
    reopen it for writing (not its owner).  --uid 0 (the caller again) is refused."""
    data = judge_file(tmp_path)
    os.chmod(tmp_path, 0o755)
    fd = os.open(data, os.O_RDONLY)
    try:
        script = f"import os; print(os.read({fd}, 100).decode(), end='')\n" + STDIN_ATTACK.replace(
            "(0,", f"({fd},").replace("fd/0", f"fd/{fd}")
        result = _pass(fd, env=dict(os.environ), command=(PY, "-c", script))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(JUDGE_DATA.decode())
        assert "fchmod:1" in result.stdout and "rewrite:13" in result.stdout, result.stdout
        _assert_refused(_pass(fd, "--uid", "0", env=dict(os.environ)), fd, "regular file")
    finally:
        os.close(fd)
    assert_untouched(data)


# -- FIFOs, sockets and terminals ------------------------------------------------------------------


def _fifo_pair(path: Path) -> tuple[int, int]:
    """Both ends of the named FIFO (each open waits for the other)."""
    ends: dict[str, int] = {}
    writer = threading.Thread(target=lambda: ends.setdefault("w", os.open(path, os.O_WRONLY)))
    writer.start()
    r = os.open(path, os.O_RDONLY)
    writer.join()
    return r, ends["w"]


def _read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    """What fd gives until `marker` has come (or EOF); AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"no {marker!r} within {timeout}s: {data!r}"
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: a pty's other side closed
            chunk = b""
        if not chunk:
            break
        data += chunk
    return data


def _popen(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
    """`sbx ARGS...` started, with the streams given (stderr: a pipe unless given)."""
    kwargs.setdefault("stderr", subprocess.PIPE)
    environ = sbx_environ(env)
    proc: subprocess.Popen[bytes] = subprocess.Popen([*SBX, *args], env=environ, **kwargs)  # type: ignore[call-overload]
    return proc


def test_fifo_stdin_is_fed_not_given(fifo: Path) -> None:
    chmod = [PY, "-c", "import os; os.fchmod(0, 0o666)"]
    r, w = _fifo_pair(fifo)
    try:
        subprocess.run(chmod, stdin=r, check=True)  # control: the FIFO's fd lets a process chmod it
        assert stat.S_IMODE(fifo.stat().st_mode) == 0o666
        fifo.chmod(0o600)
        script = f"readlink /proc/self/fd/0; {chmod[0]} -c '{chmod[2]}'; cat"
        proc = _popen("run", "--", "sh", "-c", script, stdin=r, stdout=subprocess.PIPE, env=SINGLE)
        os.close(r)
        r = -1
        os.write(w, b"through the fifo\n")
        os.close(w)
        w = -1
        out, err = proc.communicate(timeout=60)
    finally:
        for end in (r, w):
            if end >= 0:
                os.close(end)
    assert proc.returncode == 0, err
    lines = out.decode().splitlines()
    assert lines[0].startswith("pipe:") and lines[1:] == ["through the fifo"], lines
    assert stat.S_IMODE(fifo.stat().st_mode) == 0o600


def test_run_ends_when_the_payload_does_not_when_stdin_does(fifo: Path) -> None:
    """A FIFO whose writer stays open: sbx ends with the payload, not at the input's EOF."""
    r, w = _fifo_pair(fifo)
    try:
        os.write(w, b"unread\n")
        proc = _popen("run", "--", "true", stdin=r, stdout=subprocess.PIPE)
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(r)
        os.close(w)


def test_socket_stdin_streams_line_by_line() -> None:
    """A socket on stdin is pumped, a line at a time as it comes, not held until EOF."""
    ours, theirs = socket.socketpair()
    proc = _popen("run", "--", "sh", "-c", 'while read l; do echo "got $l"; done', stdin=theirs,
                  stdout=subprocess.PIPE)
    theirs.close()
    try:
        assert proc.stdout is not None
        for word in (b"a", b"b", b"c"):
            ours.sendall(word + b"\n")
            assert _read_until(proc.stdout.fileno(), b"\n") == b"got " + word + b"\n"
        ours.shutdown(socket.SHUT_WR)
        assert proc.wait(timeout=60) == 0
    finally:
        ours.close()
        proc.kill()
        proc.communicate()


def test_pipe_stdin_streams() -> None:
    """An anonymous pipe is no host file: handed over as it is, streaming both ways."""
    assert sbx("run", "--", "cat", input="hi\n").stdout == "hi\n"
    proc = _popen("run", "--", "sh", "-c", "readlink /proc/self/fd/0; while read l; do echo \"got $l\"; done",
                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        first = _read_until(proc.stdout.fileno(), b"\n")
        assert first.startswith(b"pipe:")
        proc.stdin.write(b"x\n")
        proc.stdin.flush()
        assert _read_until(proc.stdout.fileno(), b"got x\n").endswith(b"got x\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_socket_stdout_gets_everything(tmp_path: Path) -> None:
    """A socket as sbx's stdout is drained into, as fast as its reader takes it."""
    ours, theirs = socket.socketpair()
    proc = _popen("run", "--", "head", "-c", "4M", "/dev/zero", stdout=theirs)
    theirs.close()
    received = 0
    with ours:
        while chunk := ours.recv(1 << 20):
            received += len(chunk)
    assert proc.wait(timeout=60) == 0
    assert received == 4 << 20


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


TTY_ATTACK = """
import os, sys, termios, tty
got = []
for fd in (0, 1, 2):
    try:
        tty.setraw(fd)
        got.append(f"{fd}:raw")
    except (termios.error, OSError):
        got.append(f"{fd}:no")
try:
    os.open("/dev/tty", os.O_RDWR)
    got.append("/dev/tty")
except OSError:
    got.append("no /dev/tty")
print(" ".join(got), "isatty", [os.isatty(fd) for fd in (0, 1, 2)], "END", flush=True)
"""


def test_terminal_without_t_keeps_its_settings(pty: tuple[int, int]) -> None:
    master, slave = pty
    before = termios.tcgetattr(slave)
    subprocess.run([PY, "-c", TTY_ATTACK], stdin=slave, stdout=slave, stderr=slave, check=True)  # control
    assert termios.tcgetattr(slave) != before
    _read_until(master, b"END")
    termios.tcsetattr(slave, termios.TCSANOW, before)
    for env in (SINGLE, dict(os.environ)):
        proc = _popen("run", "--", PY, "-c", TTY_ATTACK, stdin=slave, stdout=slave, stderr=slave, env=env)
        shown = _read_until(master, b"END")
        assert proc.wait(timeout=60) == 0
        assert b"0:no 1:no 2:no no /dev/tty isatty [False, False, False]" in shown, shown
        assert termios.tcgetattr(slave) == before


def test_terminal_without_t_is_still_read(pty: tuple[int, int]) -> None:
    master, slave = pty
    proc = _popen("run", "--", "head", "-n1", stdin=slave, stdout=subprocess.PIPE)
    os.write(master, b"typed\n")
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (0, b"typed\n"), err


@pytest.mark.parametrize("ending", ["exits", "killed"])
@pytest.mark.parametrize("ctty", [False, True], ids=["tty", "ctty"])
def test_terminal_with_t_is_restored(pty: tuple[int, int], ending: str, ctty: bool) -> None:
    """-t hands the terminal over: whatever the payload leaves it in, and however it ends, sbx puts
    the settings back (here while it is sbx's controlling terminal, or just its stdin)."""
    master, slave = pty
    before = termios.tcgetattr(slave)
    tail = "exit 0" if ending == "exits" else "exec sleep 60"
    proc = _popen("run", "-t", "--wall-time", "10", "--", "sh", "-c", f"stty raw -echo && echo changed && {tail}",
                  stdin=slave, stdout=subprocess.PIPE, preexec_fn=make_ctty if ctty else None)
    assert proc.stdout is not None
    assert _read_until(proc.stdout.fileno(), b"changed\n") == b"changed\n"
    if ending == "killed":
        during = termios.tcgetattr(slave)
        assert not during[3] & termios.ECHO  # the payload's change is real
    assert proc.wait(timeout=60) == (0 if ending == "exits" else 137)
    assert termios.tcgetattr(slave) == before


# -- sizes, early ends, limits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("big") / "big.in"
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(64):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    return path, digest.hexdigest()


def test_large_stdin_arrives_intact(big: tuple[Path, str]) -> None:
    path, digest = big
    result = sbx("run", "--stdin", str(path), "--", "sha256sum", timeout=120)
    assert result.returncode == 0 and result.stdout.split()[0] == digest, result.stderr
    with path.open("rb") as f:
        result = sbx("run", "--", "sha256sum", stdin=f, timeout=120)
    assert result.returncode == 0 and result.stdout.split()[0] == digest, result.stderr
    with Runner(warm=False) as runner:
        done = runner.run(["sha256sum"], stdin=str(path))
    assert done.verdict == "OK" and done.stdout is not None and done.stdout.split()[0].decode() == digest


@pytest.mark.parametrize("command", [("true",), ("sh", "-c", "sleep 0.2"), ("head", "-c", "10")])
def test_payload_that_does_not_read_all_of_stdin_ends_normally(big: tuple[Path, str], command: tuple[str, ...]) -> None:
    path, _ = big
    result = _run("run", "--stdin", str(path), "--", *command)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == (10 if command[0] == "head" else 0)


def test_directory_as_stdin_is_refused(tmp_path: Path) -> None:
    result = sbx("run", "--stdin", str(tmp_path), "--", "echo", "RAN")
    assert result.returncode == 125 and "RAN" not in result.stdout
    assert "directory" in result.stderr and result.stderr.startswith("sbx: error: stdin: "), result.stderr
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # (a Python sbx cannot even start on such a fd 0)
    try:
        with Runner(warm=False) as runner, pytest.raises(UsageError, match="stdin: a directory"):
            runner.run(["echo", "RAN"], stdin=fd)
    finally:
        os.close(fd)


def test_output_limit_on_a_drained_file(tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "result.json"
    with out.open("wb") as f:
        result = _run("run", "--output-limit", "5000", "--result", str(report), "--", "seq", "100000", stdout=f)
    assert result.returncode == 137, result.stderr
    assert json.loads(report.read_text())["verdict"] == "OLE"
    assert out.stat().st_size == 5000


def test_output_limit_on_a_socket(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    proc = _popen("run", "--output-limit", "5000", "--", "seq", "100000", stdout=theirs)
    theirs.close()
    received = b""
    with ours:
        while chunk := ours.recv(65536):
            received += chunk
    assert proc.wait(timeout=60) == 137
    assert len(received) == 5000


def _running(argv: list[bytes]) -> bool:
    """Whether a host process runs exactly this argv."""
    wanted = b"\0".join(argv) + b"\0"
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if name.isdigit() and f.read() == wanted:
                    return True
        except OSError:
            continue
    return False


def test_a_stalled_reader_does_not_stall_the_limits(tmp_path: Path) -> None:
    """sbx's stdout is a pipe nobody reads for now: the wall time is enforced all the same (sbx
    writes it only when poll says there is room), and the output follows once it is read."""
    marker = f"stalled-{os.getpid()}"
    report = tmp_path / "result.json"
    proc = _popen("run", "--output-limit", "1G", "--wall-time", "2", "--result", str(report), "--",
                  "sh", "-c", f"exec yes {marker}", stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    seen = False
    while True:  # the payload starts, fills the pipes, and must be killed while we read nothing
        running = _running([b"yes", marker.encode()])
        seen = seen or running
        if seen and not running:
            break
        assert time.monotonic() < deadline, "the payload was never killed"
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 137, err
    result = json.loads(report.read_text())
    assert result["verdict"] == "WTLE" and result["wall_time"] < 10, result
    assert out.startswith(marker.encode() + b"\n")


# The payload reads its own output back through a second description of its stdout pipe, racing
# sbx for every byte, then goes quiet: a supervisor that read after poll on a blocking pipe would
# wait there forever, with no wall time enforced.
STEAL = """
import os, threading, time
back = os.open("/proc/self/fd/1", os.O_RDONLY)
threading.Thread(target=lambda: [os.read(back, 65536) for _ in iter(int, 1)], daemon=True).start()
for _ in range(3000):
    os.write(1, b"x")
    time.sleep(0.0002)
print("stole", file=__import__("sys").stderr, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("where", ["file", "capture"])
def test_payload_stealing_its_output_cannot_stall_sbx(tmp_path: Path, where: str) -> None:
    control = subprocess.run([PY, "-c", "import os; print(os.read(os.open('/proc/self/fd/0', os.O_RDONLY), 3))"],
                             input=b"abc", capture_output=True, check=True)
    assert control.stdout == b"b'abc'\n"  # the control: a second description of a pipe reads it
    if where == "file":
        result = _run("run", "--wall-time", "2", "--stdout", str(tmp_path / "out"), "--", PY, "-c", STEAL, env=SINGLE)
        assert result.returncode == 137 and b"stole" in result.stderr, result.stderr
    else:
        with Runner(warm=False, environ=SINGLE) as runner:
            done = runner.run([PY, "-c", STEAL], limits={"wall_time": 2})
        assert done.verdict == "WTLE" and done.stderr is not None and b"stole" in done.stderr, done
