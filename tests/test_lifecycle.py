"""The life of one sandbox: exit status, signals, orphans, teardown, stdio.

Every test runs real sandboxes through the real CLI on the real kernel.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SBX, errors, host_mounts, host_processes, sbx, sbx_environ, sh, sleepers, wait_for

pytestmark = pytest.mark.timeout(60)

# Unique per pytest process, so concurrent test runs on the host never see each other's markers.
TAG = f"{os.getpid() % 10000:04d}"


def anywhere(marker: str) -> list[int]:
    """Pids of host processes with MARKER anywhere in their command line."""
    return [pid for pid, _ in host_processes(marker)]


def popen(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*SBX, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=sbx_environ())


def read_line(proc: subprocess.Popen[bytes], timeout: float = 10) -> str:
    """One line of the process's stdout, unbuffered, or fail after `timeout` seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            proc.kill()
            raise AssertionError(f"no line within {timeout}s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            proc.wait()
            raise AssertionError(f"stdout closed before a line (got {data!r}); stderr: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        data += chunk
    return data.decode().rstrip("\n")


def kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


# -- exit status ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code_is_the_payloads(code: int) -> None:
    result = sh(f"exit {code}", timeout=20)
    assert result.returncode == code, result.stderr
    assert errors(result.stderr) == []


@pytest.mark.parametrize(("name", "signum"), [("SEGV", signal.SIGSEGV), ("TERM", signal.SIGTERM),
                                              ("KILL", signal.SIGKILL)])
def test_death_by_signal_is_128_plus_n(name: str, signum: int) -> None:
    result = sh(f"kill -{name} $$; sleep 5; exit 9", timeout=20)
    assert result.returncode == 128 + signum, result.stderr
    assert "Traceback" not in result.stderr


def test_command_not_found_is_127() -> None:
    result = sbx("run", "--", "no-such-command-sbx-test", "arg", timeout=20)
    assert result.returncode == 127
    lines = errors(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sbx:") and "no-such-command-sbx-test" in lines[0]
    assert result.stdout == ""


def test_missing_absolute_path_is_127() -> None:
    result = sbx("run", "--", "/nonexistent/dir/prog", timeout=20)
    assert result.returncode == 127
    assert len(errors(result.stderr)) == 1 and "/nonexistent/dir/prog" in result.stderr


def test_non_executable_file_is_126(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    result = sbx("run", "-v", f"{script}:/opt/script.sh", "--", "/opt/script.sh", timeout=20)
    assert result.returncode == 126, result.stderr
    lines = errors(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("sbx:") and "/opt/script.sh" in lines[0], result.stderr
    assert "ran" not in result.stdout
    # the same file with the x bit does run: the 126 was about the mode, not the bind
    script.chmod(0o755)
    ran = sbx("run", "-v", f"{script}:/opt/script.sh", "--", "/opt/script.sh", timeout=20)
    assert (ran.returncode, ran.stdout) == (0, "ran\n"), ran.stderr


def test_directory_as_command_is_126() -> None:
    result = sbx("run", "--", "/etc", timeout=20)
    assert result.returncode == 126, result.stderr


@pytest.mark.parametrize("args", [
    pytest.param(["run", "--no-such-flag", "--", "true"], id="unknown-flag"),
    pytest.param(["run", "-Z", "--", "true"], id="unknown-short-flag"),
    pytest.param(["run", "--disk"], id="missing-value"),
    pytest.param(["run", "-v"], id="missing-value-short"),
    pytest.param(["run"], id="no-command"),
    pytest.param(["run", "--"], id="no-command-after-dashes"),
    pytest.param(["run", "--disk", "12Q", "--", "true"], id="bad-size"),
    pytest.param(["run", "--tmpfs", "/scratch:size=lots", "--", "true"], id="bad-tmpfs-size"),
    pytest.param(["run", "-v", "/nonexistent-sbx-source:/x", "--", "true"], id="missing-source"),
    pytest.param(["run", "-v", "/etc:relative/dst", "--", "true"], id="relative-destination"),
    pytest.param(["run", "-v", "/etc:/a/../b", "--", "true"], id="dotdot-destination"),
    pytest.param(["run", "--tmpfs", "/a/../../b", "--", "true"], id="dotdot-tmpfs"),
    pytest.param(["run", "-w", "../x", "--", "true"], id="relative-workdir"),
    pytest.param(["run", "--uid", "abc", "--", "true"], id="bad-number"),
    pytest.param(["frobnicate"], id="unknown-command"),
])
def test_usage_errors_are_125_with_one_line(args: list[str]) -> None:
    result = sbx(*args, timeout=20)
    assert result.returncode == 125, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = errors(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sbx: error: ") and len(lines[0]) > len("sbx: error: ")


def test_setup_error_is_125_with_one_line() -> None:
    # /proc/self/root is a magic link: a bind target through it must be refused, not followed
    result = sbx("run", "-v", "/etc:/proc/self/root/sbx-evil", "--", "true", timeout=20)
    assert result.returncode == 125
    assert "Traceback" not in result.stderr
    lines = errors(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr
    assert not os.path.exists("/sbx-evil")


# -- signals sent to sbx reach the payload -----------------------------------------------------------


@pytest.mark.parametrize("name", ["TERM", "HUP", "INT"])
def test_signal_to_sbx_reaches_payload(name: str) -> None:
    script = f'trap "echo got-{name}; exit 7" {name}; echo ready; while :; do sleep 0.05; done'
    proc = popen("run", "--", "sh", "-c", script)
    try:
        assert read_line(proc) == "ready"
        proc.send_signal(getattr(signal, f"SIG{name}"))
        out, err = proc.communicate(timeout=10)
    finally:
        kill_and_reap(proc)
    assert out.decode() == f"got-{name}\n", err
    assert proc.returncode == 7, err
    assert "Traceback" not in err.decode()


def test_signal_during_setup_is_not_lost() -> None:
    # SIGTERM at many points of sbx's start (python start-up, root building, release, exec): each run
    # must end promptly, killed before it had a sandbox or with the payload killed by the signal.
    # A signal that reaches the payload before it has reset the dispositions it inherited must not
    # be lost (the sandbox would then run on as if never told to stop).
    for attempt in range(40):
        delay = 0.015 + (attempt % 20) * 0.002
        marker = f"765.{attempt:02d}{TAG}"
        proc = popen("run", "--", "sleep", marker)
        try:
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            try:
                _out, err = proc.communicate(timeout=3)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"SIGTERM {delay * 1000:.0f} ms after start was lost: sbx still runs") from None
        finally:
            kill_and_reap(proc)
            for pid in sleepers(marker):
                os.kill(pid, signal.SIGKILL)
        assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), err
        assert "Traceback" not in err.decode()
        assert wait_for(lambda: not sleepers(marker), 1), sleepers(marker)


# -- orphans and teardown ----------------------------------------------------------------------------


def test_background_child_is_killed_when_payload_exits() -> None:
    marker = f"987.65{TAG}"
    start = time.monotonic()
    result = sh(f"sleep {marker} & echo started", timeout=20)
    elapsed = time.monotonic() - start
    assert (result.returncode, result.stdout) == (0, "started\n"), result.stderr
    assert elapsed < 5
    assert wait_for(lambda: not sleepers(marker), 1), sleepers(marker)
    assert anywhere(marker) == []


def test_double_forked_daemon_is_killed_when_payload_exits() -> None:
    marker = f"987.66{TAG}"
    script = f"(setsid nohup sleep {marker} >/dev/null 2>&1 &) ; sleep 0.1; echo started"
    start = time.monotonic()
    result = sh(script, timeout=20)
    elapsed = time.monotonic() - start
    assert (result.returncode, result.stdout) == (0, "started\n"), result.stderr
    assert elapsed < 5
    assert wait_for(lambda: not sleepers(marker), 1), sleepers(marker)
    assert anywhere(marker) == []


def test_daemon_holding_stdout_does_not_keep_sbx_alive() -> None:
    # The daemon keeps the stdout pipe open: sbx only returns if it is really killed.
    marker = f"987.67{TAG}"
    start = time.monotonic()
    result = sh(f"setsid sleep {marker} & exit 0", timeout=20)
    assert time.monotonic() - start < 5
    assert result.returncode == 0, result.stderr
    assert sleepers(marker) == []


def test_sigkill_of_supervisor_takes_the_sandbox_down() -> None:
    marker = f"876.54{TAG}"
    proc = popen("run", "--", "sleep", marker)
    try:
        assert wait_for(lambda: bool(sleepers(marker)), 10), "the payload never started"
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=5)
        gone = wait_for(lambda: not sleepers(marker), 1 - (time.monotonic() - killed))
        assert gone, f"still running 1 s after SIGKILL of sbx: {sleepers(marker)}"
    finally:
        kill_and_reap(proc)
        for pid in sleepers(marker):  # do not leave a stray process behind when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_sigkill_of_supervisor_also_kills_daemons() -> None:
    marker = f"876.55{TAG}"
    proc = popen("run", "--", "sh", "-c", f"(setsid sleep {marker} &); echo ready; sleep 60")
    try:
        assert read_line(proc) == "ready"
        assert wait_for(lambda: bool(sleepers(marker)), 10)
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        proc.wait(timeout=5)
        assert wait_for(lambda: not sleepers(marker), 1 - (time.monotonic() - killed)), sleepers(marker)
    finally:
        kill_and_reap(proc)
        for pid in sleepers(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


ZOMBIE_COUNT = r"""
import glob
states = []
for path in glob.glob('/proc/[0-9]*/stat'):
    try:
        with open(path) as f:
            states.append(f.read().rsplit(') ', 1)[1].split()[0])
    except OSError:
        pass
print(len(states), states.count('Z'))
"""


def test_init_reaps_orphans() -> None:
    script = ("for i in $(seq 50); do (sleep 0.01 &); done; "
              "(sleep 5 &); sleep 0.5; "
              # the long orphan proves orphans really are reparented to init inside
              "for f in /proc/[0-9]*/cmdline; do "
              "  if [ \"$(tr '\\0' ' ' < $f 2>/dev/null)\" = 'sleep 5 ' ]; then "
              "    d=${f%/cmdline}; echo ppid=$(cut -d' ' -f4 $d/stat); fi; done; "
              f"python3 -c \"{ZOMBIE_COUNT}\"")
    result = sh(script, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert "ppid=1" in lines, result.stdout
    total, zombies = map(int, lines[-2].split())
    assert total >= 3  # sh, the long orphan, python
    assert zombies == 0, result.stdout


def test_payload_exit_kills_the_rest_quickly() -> None:
    start = time.monotonic()
    result = sh("sleep 100 & sleep 100 & exit 0", timeout=30)
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr
    assert elapsed < 5, f"sbx took {elapsed:.1f}s"


def test_no_leftover_mounts_or_tmp_entries(tmp_path: Path) -> None:
    marker = f"876.56{TAG}"
    mounts_before = host_mounts()
    tmp_before = set(os.listdir("/tmp"))

    assert sh("echo ok > /tmp/x; echo ok > /x", timeout=20).returncode == 0
    assert sh("exit 3", timeout=20).returncode == 3
    assert sbx("run", "--", "no-such-command-sbx-test", timeout=20).returncode == 127
    assert sbx("run", "--disk", "12Q", "--", "true", timeout=20).returncode == 125
    assert sbx("run", "-v", "/etc:/proc/self/root/x", "--", "true", timeout=20).returncode == 125
    assert sbx("run", "--tmpfs", "/scratch:size=1M", "-v", "/etc:/mnt/etc", "--", "sh", "-c",
               "dd if=/dev/zero of=/scratch/f bs=1M count=2 2>/dev/null", timeout=20).returncode != 0
    proc = popen("run", "--", "sh", "-c", f"echo ready; exec sleep {marker}")
    try:
        assert read_line(proc) == "ready"
        proc.kill()
        proc.wait(timeout=5)
    finally:
        kill_and_reap(proc)
    assert wait_for(lambda: not sleepers(marker), 1)
    proc = popen("run", "--", "sh", "-c", 'trap "exit 7" TERM; echo ready; while :; do sleep 0.05; done')
    try:
        assert read_line(proc) == "ready"
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        kill_and_reap(proc)
    assert proc.returncode == 7

    assert host_mounts() == mounts_before
    new = new_tmp_entries(tmp_before)
    assert new == set(), f"sbx left entries in the host's /tmp: {sorted(new)}"


# Temporary files other programs on a shared host create and delete on their own (gcc, go build).
OTHERS_TMP = re.compile(r"cc\w{6}\.\w{1,3}|go-build\d+")


def new_tmp_entries(before: set[str]) -> set[str]:
    """Entries of the host's /tmp created since `before` that can be sbx's.

    Other sessions may use /tmp meanwhile: only entries owned by us that are still there a moment
    later count (sbx has exited by now, so anything it left stays).
    """
    def ours(name: str) -> bool:
        try:
            return os.lstat("/tmp/" + name).st_uid == os.getuid() and not OTHERS_TMP.fullmatch(name)
        except FileNotFoundError:
            return False

    new = {name for name in set(os.listdir("/tmp")) - before if ours(name)}
    if new:
        time.sleep(1)
        new = {name for name in new if ours(name)}
    return new


# -- stdin and stdout ---------------------------------------------------------------------------------


def test_stdin_and_stdout_pass_through() -> None:
    result = sbx("run", "--", "cat", input="hi\n", timeout=20)
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_large_stdin_and_stdout_pass_through() -> None:
    data = "".join(f"line {i}\n" for i in range(100_000))
    result = sbx("run", "--", "cat", input=data, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


def test_stderr_passes_through() -> None:
    result = sh("echo to-err >&2", timeout=20)
    assert result.returncode == 0
    assert errors(result.stderr) == ["to-err"]


def test_stdout_file(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old contents that must be truncated\n")
    result = sbx("run", "--stdout", str(out), "--", "echo", "hello", timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert out.read_text() == "hello\n"


def test_stdin_file(tmp_path: Path) -> None:
    src = tmp_path / "in.txt"
    src.write_text("from a file\n")
    result = sbx("run", "--stdin", str(src), "--", "cat", input="not this\n", timeout=20)
    assert (result.returncode, result.stdout) == (0, "from a file\n"), result.stderr


def test_stdin_and_stdout_files_together(tmp_path: Path) -> None:
    src, out = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("b\na\n")
    result = sbx("run", "--stdin", str(src), "--stdout", str(out), "--", "sort", timeout=20)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "a\nb\n"


def test_stdout_onto_symlink_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    result = sbx("run", "--stdout", str(link), "--", "echo", "overwritten", timeout=20)
    assert result.returncode == 125
    lines = errors(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_text() == "precious\n"
    assert link.is_symlink()


def test_stdout_onto_dangling_symlink_creates_nothing(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "created-through-link")
    result = sbx("run", "--stdout", str(link), "--", "echo", "x", timeout=20)
    assert result.returncode == 125
    assert not (tmp_path / "created-through-link").exists()


def test_missing_stdin_file_is_125(tmp_path: Path) -> None:
    result = sbx("run", "--stdin", str(tmp_path / "absent"), "--", "cat", timeout=20)
    assert result.returncode == 125
    lines = errors(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr


STDOUT_FD = """
import os, sys
from sandbox.model.spec import Spec
from sandbox.runtime.supervisor import run_sandbox
fd = int(sys.argv[1])
if fd > 2:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
result = run_sandbox(Spec(argv=("sh", "-c", "echo payload out; echo payload err >&2")), os.environ, stdout_fd=fd)
os.write(fd, b"caller's fd still open\\n")
print("sbx's own stdout")
sys.exit(result.status)
"""


@pytest.mark.parametrize("fd", [2, 7])
def test_stdout_fd_takes_the_payloads_stdout(tmp_path: Path, fd: int) -> None:
    """run_sandbox(stdout_fd=): the payload's stdout goes there (an image build's RUN output to
    stderr), sbx's own stdout is left alone, and the caller's fd stays open."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", STDOUT_FD, str(fd), str(out)], capture_output=True, text=True,
                          env=sbx_environ(), timeout=30)
    assert (done.returncode, done.stdout) == (0, "sbx's own stdout\n"), done.stderr
    written = done.stderr if fd == 2 else out.read_text()
    assert "payload out\n" in written and written.endswith("caller's fd still open\n"), (done.stderr, written)
    assert "payload err\n" in done.stderr
