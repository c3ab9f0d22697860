"""The Python API: Runner and sandbox.run, on real sandboxes (issue #8).

Streams (capture and its cap, bytes/path/fd in, path/fd out, never through a
symlink), limits given as a dict with units, exit status and signal fields,
typed errors, a frozen Result, warm and cold runs giving the same results,
one Runner used from many threads, and close() leaving nothing behind.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import sandbox
from sandbox import ProfileError, Result, Runner, SbxError, SetupError, UsageError

from conftest import busybox_image, delegated_here, sbx, wait_for, wait_prepared

pytestmark = pytest.mark.timeout(60)

BURN = "while :; do :; done"


DELEGATED = delegated_here()


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> object:
    with Runner(root=str(tmp_path_factory.mktemp("store"))) as r:
        yield r


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def settle(runner: Runner) -> None:
    """Until the module's warm Runner has stopped preparing sandboxes: our fds stay the same for
    a while (its pool thread opens and closes pipes as it prepares them)."""
    deadline = time.monotonic() + 10
    last, since = open_fds(), time.monotonic()
    while time.monotonic() - since < 0.3:
        assert time.monotonic() < deadline, "the pool never settled"
        time.sleep(0.02)
        now = open_fds()
        if now != last:
            last, since = now, time.monotonic()


def file_fds() -> list[str]:
    """What our fds to files point at (not pipes, sockets or anon inodes, which a warm Runner's
    pool thread opens and closes at any time)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/"):
            found.append(target)
    return sorted(found)


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[1]), int(fields[19])


def children_of(parent: int) -> set[tuple[int, int]]:
    """(pid, start time) of each live process whose parent is `parent`."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = proc_stat(int(name))
            if stat is not None and stat[0] == parent:
                found.add((int(name), stat[1]))
    return found


def descendants_of(root: int) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for child in children_of(todo.pop()):
            if child not in out:
                out.add(child)
                todo.append(child[0])
    return out


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""  # gone meanwhile


def alive(process: tuple[int, int]) -> bool:
    stat = proc_stat(process[0])
    if stat is None or stat[1] != process[1]:
        return False  # gone, or the pid was reused by another process
    with open(f"/proc/{process[0]}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0] != b"Z"


# -- captured output, stdin, stdout/stderr destinations ---------------------------------------


def test_captures_stdout_and_stderr(runner: Runner) -> None:
    result = runner.run(["sh", "-c", "echo out; echo err >&2; printf 'no newline'"])
    assert isinstance(result, Result)
    assert result.verdict == "OK" and result.ok
    assert result.stdout == b"out\nno newline"
    assert result.stderr == b"err\n"
    assert result.output_bytes == len(b"out\nno newline") + len(b"err\n")


def test_capture_limit_keeps_the_first_bytes_and_counts_all(runner: Runner) -> None:
    script = "head -c 100000 /dev/zero | tr '\\0' a; head -c 5000 /dev/zero | tr '\\0' b >&2"
    result = runner.run(["sh", "-c", script], capture_limit=1000)
    assert result.verdict == "OK", result
    assert result.stdout == b"a" * 1000
    assert result.stderr == b"b" * 1000
    assert result.output_bytes == 105000  # counted even where not kept


def test_stdin_bytes(runner: Runner) -> None:
    data = bytes(range(256)) * 1000  # larger than a pipe buffer, every byte value
    result = runner.run(["sh", "-c", "cat; echo; echo done >&2"], stdin=data)
    assert result.stdout == data + b"\n"
    assert result.stderr == b"done\n"


def test_stdin_default_is_empty(runner: Runner) -> None:
    result = runner.run(["sh", "-c", "cat; echo end"])
    assert result.stdout == b"end\n"


def test_stdin_from_a_path_and_from_an_fd(runner: Runner, tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"from a file\n")
    assert runner.run(["cat"], stdin=str(source)).stdout == b"from a file\n"
    assert runner.run(["cat"], stdin=source).stdout == b"from a file\n"  # os.PathLike too
    fd = os.open(source, os.O_RDONLY)
    try:
        os.lseek(fd, 5, os.SEEK_SET)
        assert runner.run(["cat"], stdin=fd).stdout == b"a file\n"
        os.fstat(fd)  # ours is still open: the run got a duplicate
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        os.write(w, b"through a pipe\n")
        os.close(w)
        w = -1
        assert runner.run(["cat"], stdin=r).stdout == b"through a pipe\n"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_stdout_and_stderr_to_paths(runner: Runner, tmp_path: Path) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    err.write_text("old content that must be truncated away\n")
    result = runner.run(["sh", "-c", "echo to-out; echo to-err >&2"], stdout=str(out), stderr=str(err))
    assert result.verdict == "OK"
    assert result.stdout is None and result.stderr is None  # not captured
    assert out.read_text() == "to-out\n"
    assert err.read_text() == "to-err\n"
    assert result.output_bytes == len("to-out\nto-err\n") or result.output_bytes == 0


@pytest.mark.parametrize("which", ["stdout", "stderr"])
def test_output_path_never_follows_a_symlink(tmp_path: Path, which: str) -> None:
    runner = Runner(root=str(tmp_path), warm=False)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    link = tmp_path / "link"
    link.symlink_to(victim)
    before = file_fds()
    with pytest.raises(UsageError) as caught:
        runner.run(["sh", "-c", "echo clobbered; echo clobbered >&2"], **{which: str(link)})  # type: ignore[arg-type]
    assert not isinstance(caught.value, OSError)
    assert "link" in str(caught.value) and "\n" not in str(caught.value)
    assert victim.read_text() == "keep me\n"
    assert link.is_symlink()
    assert file_fds() == before  # the /dev/null opened for stdin was closed again
    runner.close()


def test_stdin_path_never_follows_a_symlink(runner: Runner, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    link = tmp_path / "link"
    link.symlink_to(secret)
    with pytest.raises(UsageError):
        runner.run(["cat"], stdin=str(link))


def test_stdout_and_stderr_to_fds(runner: Runner, tmp_path: Path) -> None:
    path = tmp_path / "both"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        result = runner.run(["sh", "-c", "echo one; echo two >&2; echo three"], stdout=fd, stderr=fd)
        assert result.verdict == "OK"
        assert result.stdout is None and result.stderr is None
        os.write(fd, b"ours\n")  # still open here, and shares the offset with the run's copy
    finally:
        os.close(fd)
    assert sorted(path.read_text().splitlines()) == ["one", "ours", "three", "two"]
    assert path.read_text().endswith("ours\n")
    r, w = os.pipe()
    try:
        result = runner.run(["echo", "piped"], stdout=w)
        os.close(w)
        w = -1
        assert os.read(r, 100) == b"piped\n"
        assert os.read(r, 100) == b""  # no copy of the write end left anywhere
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_bad_stream_values_are_usage_errors(runner: Runner, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        runner.run(["true"], stdin=str(tmp_path / "missing"))
    with pytest.raises(UsageError):
        runner.run(["true"], stdout=str(tmp_path))  # a directory
    with pytest.raises(UsageError):
        runner.run(["true"], stdout=3.5)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        runner.run(["true"], stderr=b"bytes are only for stdin")  # type: ignore[arg-type]


@pytest.mark.parametrize("streams", [{"stdin": -1}, {"stdout": 1 << 20}, {"stderr": -5}, {"stdin": "in\0put"},
                                     {"stdout": "out\0put"}, {"stderr": "err\0put"}])
def test_bad_fds_and_nul_paths_are_usage_errors_not_os_errors(runner: Runner, streams: dict[str, object]) -> None:
    """Typed errors, never a bare OSError (EBADF from dup) or ValueError (os.open's embedded NUL)."""
    before = file_fds()
    with pytest.raises(UsageError):
        runner.run(["true"], **streams)  # type: ignore[arg-type]
    assert file_fds() == before


# -- limits, exit status, signals -------------------------------------------------------------


def test_limits_dict_with_units_wall_time(runner: Runner) -> None:
    start = time.monotonic()
    result = runner.run(["sh", "-c", BURN], limits={"time": "1s", "memory": "64M", "wall_time": 0.3})
    elapsed = time.monotonic() - start
    enforced = dict(result.limits_enforced)
    assert set(enforced) == {"time", "memory", "wall_time"}, enforced
    assert enforced["wall_time"] is True
    assert enforced["time"] is DELEGATED and enforced["memory"] is DELEGATED, enforced
    assert result.verdict == "WTLE", result
    assert result.signal == 9 and result.exit_code is None and result.status == 137
    assert 0.3 <= result.wall_time < 1.0, result
    assert elapsed < 3.0
    assert result.cpu_time < 1.0


def test_limits_dict_cpu_time(runner: Runner) -> None:
    result = runner.run(["sh", "-c", BURN], limits={"time": "300ms", "wall_time": "5s"})
    assert result.verdict == "TLE", result
    assert dict(result.limits_enforced)["time"] is DELEGATED
    assert 0.3 <= result.cpu_time < 1.0, result  # the supervisor's check, not RLIMIT_CPU's whole second
    assert result.wall_time < 2.0


def test_memory_limit(runner: Runner) -> None:
    result = runner.run(["python3", "-c", "b = bytearray(200 << 20); print(len(b))"], limits={"memory": "64M"})
    assert b"209715200" not in (result.stdout or b"")
    if DELEGATED:
        assert result.verdict == "MLE" and result.oom_killed, result
    else:  # RLIMIT_AS: the allocation fails inside
        assert result.verdict == "RE" and b"MemoryError" in (result.stderr or b""), result
        assert dict(result.limits_enforced) == {"memory": False}


def test_exit_code_and_signal_fields(runner: Runner) -> None:
    ok = runner.run(["true"])
    assert (ok.verdict, ok.status, ok.exit_code, ok.signal) == ("OK", 0, 0, None)
    failed = runner.run(["sh", "-c", "exit 3"])
    assert (failed.verdict, failed.status, failed.exit_code, failed.signal) == ("RE", 3, 3, None)
    killed = runner.run(["sh", "-c", "kill -TERM $$"])
    assert (killed.verdict, killed.status, killed.exit_code, killed.signal) == ("SG", 143, None, 15)
    segv = runner.run(["python3", "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    assert (segv.verdict, segv.status, segv.signal) == ("SG", 128 + 11, 11)


def test_missing_command_is_127_in_the_result(runner: Runner) -> None:
    result = runner.run(["no-such-command-sbx-test"])
    assert result.status == 127 and result.exit_code == 127
    assert result.verdict == "RE"
    assert "no-such-command-sbx-test" in result.message
    not_exec = runner.run(["/etc/passwd"])
    assert not_exec.status == 126 and not_exec.exit_code == 126


# -- typed errors ------------------------------------------------------------------------------


def test_unknown_profile_is_a_profile_error(runner: Runner, tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as caught:
        runner.run(["true"], profile="no-such-profile-sbx-test")
    assert isinstance(caught.value, UsageError) and isinstance(caught.value, SbxError)
    assert "no-such-profile-sbx-test" in str(caught.value)
    with pytest.raises(ProfileError):
        sandbox.run(["true"], profile="no-such-profile-sbx-test", root=str(tmp_path))


def test_unknown_runner_profile_is_a_profile_error(tmp_path: Path) -> None:
    with Runner(profile="no-such-profile-sbx-test", root=str(tmp_path)) as r:
        with pytest.raises(ProfileError):
            r.run(["true"])


def test_broken_profile_file_is_a_profile_error(runner: Runner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[limits]\nmemory = 'lots'\n")
    with pytest.raises(ProfileError):
        runner.run(["true"], profile=str(bad))


@pytest.mark.parametrize("limits", [{"bogus": 1}, {"time": "1x"}, {"time": [1]}, {"memory": "-5M"},
                                    {"time": True}, {"strict": "yes"}, {"pids": "many"}, {"open_files": 10 ** 30}])
def test_bad_limits_are_usage_errors(runner: Runner, limits: dict[str, object]) -> None:
    with pytest.raises(UsageError) as caught:
        runner.run(["true"], limits=limits)
    assert not isinstance(caught.value, OSError)
    assert str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("options", [["--bogus"], ["--memory"], ["--time", "soon"], ["--network", "bogus"],
                                     ["--", "echo"], ["echo"]])
def test_bad_options_are_usage_errors(runner: Runner, options: list[str]) -> None:
    with pytest.raises(UsageError):
        runner.run(["true"], options=options)


def test_bad_env_and_volume_are_usage_errors(runner: Runner, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        runner.run(["true"], env={"A=B": "x"})
    with pytest.raises(UsageError):
        runner.run(["true"], volumes=[f"{tmp_path}/missing:/x"])


def test_bad_runner_options_are_usage_errors(tmp_path: Path) -> None:
    with Runner(options=["--no-such-flag"], root=str(tmp_path)) as r:
        with pytest.raises(UsageError):
            r.run(["true"])


def test_result_is_frozen(runner: Runner) -> None:
    result = runner.run(["true"])
    with pytest.raises(AttributeError):
        result.verdict = "RE"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        result.stdout = b"forged"  # type: ignore[misc]
    assert result.verdict == "OK"
    assert hash(result) == hash(Result(**{k: getattr(result, k) for k in (
        "verdict", "status", "exit_code", "signal", "wall_time", "cpu_time", "user_time", "sys_time",
        "memory_peak", "oom_killed", "pids_peak", "output_bytes", "limits_enforced", "message", "stdout",
        "stderr", "fences", "max_rss", "csw_voluntary", "csw_forced", "killed", "cgroup")}))


# -- warm and cold -----------------------------------------------------------------------------

CASES: list[tuple[list[str], dict[str, object]]] = [
    (["sh", "-c", "echo hello; echo world >&2"], {}),
    (["sh", "-c", "cat; exit 4"], {"stdin": b"in\n"}),
    (["sh", "-c", "kill -USR1 $$"], {}),
    (["no-such-command-sbx-test"], {}),
    (["sh", "-c", "echo $A$B; pwd; hostname"], {"env": {"A": "1", "B": "2"}, "workdir": "/tmp"}),
    (["sh", "-c", BURN], {"limits": {"wall_time": "200ms"}}),
]


def outcome(result: Result) -> tuple[object, ...]:
    return (result.verdict, result.status, result.exit_code, result.signal, result.stdout, result.stderr,
            result.message, result.limits_enforced)


def test_warm_and_cold_give_the_same_results(tmp_path: Path) -> None:
    with Runner(root=str(tmp_path), warm=True) as warm, Runner(root=str(tmp_path), warm=False) as cold:
        assert warm.pool is not None and cold.pool is None
        for argv, kwargs in CASES:
            a, b = warm.run(argv, **kwargs), cold.run(argv, **kwargs)  # type: ignore[arg-type]
            assert outcome(a) == outcome(b), (argv, a, b)
            again = warm.run(argv, **kwargs)  # from a prepared sandbox this time
            assert outcome(again) == outcome(a), (argv, again, a)
    one_shot = sandbox.run(["sh", "-c", "echo hello; echo world >&2"], root=str(tmp_path))
    assert (one_shot.verdict, one_shot.stdout, one_shot.stderr) == ("OK", b"hello\n", b"world\n")


# -- threads, close ----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_one_runner_from_eight_threads(runner: Runner, tmp_path: Path) -> None:
    settle(runner)  # the module's Runner: idle while this test counts fds
    fds_before = open_fds()
    children_before = children_of(os.getpid())
    results: dict[str, Result] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    script = 'read x; echo "$x $1 $TOKEN"; echo "err $1" >&2'
    with Runner(root=str(tmp_path)) as r:
        def worker(index: int) -> None:
            try:
                for n in range(5):
                    token = f"t{index}-{n}-{os.urandom(4).hex()}"
                    result = r.run(["sh", "-c", script, "sh", token], stdin=token.encode() + b"\n",
                                   env={"TOKEN": token})
                    with lock:
                        results[token] = result
            except BaseException as exc:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(100)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len(results) == 40
    for token, result in results.items():
        assert result.verdict == "OK", (token, result)
        assert result.stdout == f"{token} {token} {token}\n".encode(), (token, result.stdout)
        assert result.stderr == f"err {token}\n".encode(), (token, result.stderr)
    assert open_fds() == fds_before
    assert children_of(os.getpid()) <= children_before


def wait_gone(processes: set[tuple[int, int]], seconds: float = 5.0) -> list[tuple[int, int]]:
    """Those still alive after `seconds` (SIGKILLed processes may take a moment to exit)."""
    deadline = time.monotonic() + seconds
    while True:
        left = [p for p in processes if alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def test_close_is_idempotent_and_leaves_nothing(runner: Runner, tmp_path: Path) -> None:
    settle(runner)
    fds_before = open_fds()
    children_before = children_of(os.getpid())
    r = Runner(root=str(tmp_path))
    for _ in range(3):
        assert r.run(["true"]).verdict == "OK"
    r.run(["sh", "-c", "echo"], workdir="/tmp")  # a second shape, also prepared ahead
    wait_prepared(r)  # the pool prepares the next sandboxes of both shapes
    wait_prepared(r, ["sh", "-c", "echo"], workdir="/tmp")
    assert r.pool is not None and r.pool.zygote is not None
    process = r.pool.zygote.process
    zygote_stat = proc_stat(process.pid)
    assert zygote_stat is not None and zygote_stat[0] == os.getpid()
    tree = descendants_of(process.pid)
    assert tree, "prepared sandboxes are forked by the zygote"
    r.close()
    r.close()  # again: nothing happens
    assert proc_stat(process.pid) is None or proc_stat(process.pid) != zygote_stat  # reaped
    assert children_of(os.getpid()) <= children_before
    assert open_fds() == fds_before
    assert not r.pool.thread.is_alive()  # (the `runner` fixture's own pool thread lives on)
    assert wait_gone(tree) == []
    with pytest.raises(SbxError):
        r.run(["true"])
    # The zygote ends at EOF of its socket after reaping its sandboxes' entry processes (zygote.py),
    # not by a SIGKILL that orphans them to the host's init.
    assert process.returncode == 0, f"the zygote ended with {process.returncode}"


def test_close_lets_a_run_in_progress_finish(tmp_path: Path) -> None:
    """Runner.close(): "runs in progress finish first"."""
    r = Runner(root=str(tmp_path))
    assert r.run(["true"]).verdict == "OK"
    outcome: list[object] = []
    started = threading.Event()

    def run() -> None:
        started.set()
        try:
            outcome.append(r.run(["sh", "-c", "sleep 0.6; echo done"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    started.wait()
    assert r.pool is not None and r.pool.zygote is not None
    zygote = r.pool.zygote.process.pid
    assert wait_for(lambda: any(_cmdline(pid).startswith(b"sleep") for pid, _ in descendants_of(zygote))), \
        "the run never started"
    r.close()
    thread.join(10)
    assert len(outcome) == 1
    result = outcome[0]
    assert isinstance(result, Result), result
    assert (result.verdict, result.stdout) == ("OK", b"done\n"), result


def test_cold_runner_leaves_no_children(runner: Runner, tmp_path: Path) -> None:
    settle(runner)
    fds_before = open_fds()
    children_before = children_of(os.getpid())
    with Runner(root=str(tmp_path), warm=False) as r:
        assert r.run(["sh", "-c", "sleep 30 & echo started"]).stdout == b"started\n"
    assert children_of(os.getpid()) <= children_before
    assert open_fds() == fds_before
    with pytest.raises(SbxError):
        r.run(["true"])


# A payload's own address: slirp4netns gives the sandbox 10.0.2.100, pasta the host's address.
OWN_ADDRESS = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
               "s.connect(('192.0.2.1', 9))\nprint(s.getsockname()[0])")


@pytest.mark.timeout(120)
def test_runner_environ_is_the_only_environment_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runner(environ=...) decides the image store, the box root and the networking helper,
    whatever this process's own environment says."""
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    sbx("image", "--root", str(theirs), "import", "-q", "--name", "envtest", str(busybox_image(tmp_path / "oci")),
        check=True)
    monkeypatch.setenv("SBX_ROOT", str(ours))  # this process's environment says otherwise throughout
    monkeypatch.setenv("SBX_USERNET", "pasta")
    environ = {**os.environ, "SBX_ROOT": str(theirs), "SBX_USERNET": "slirp4netns"}
    with Runner(environ=environ, warm=False) as r:
        box = r.create_box("env")
        assert Path(box.path) == theirs / "boxes" / "env"
        assert r.run(["sh", "-c", "echo made > /box/made"], box="env").verdict == "OK"
        assert (theirs / "boxes" / "env" / "work" / "made").read_text() == "made\n"
        result = r.run(["busybox", "echo", "from the image"], image="envtest")
        assert (result.verdict, result.stdout) == ("OK", b"from the image\n"), result
        result = r.run(["python3", "-c", OWN_ADDRESS], network="pasta")
        assert (result.verdict, result.stdout) == ("OK", b"10.0.2.100\n"), result  # slirp4netns's
        r.remove_box("env")
    assert not ours.exists()
    # Control: a Runner given this process's environment uses pasta (not slirp4netns's address).
    with Runner(warm=False, root=str(theirs)) as r:
        result = r.run(["python3", "-c", OWN_ADDRESS], network="pasta")
        assert result.verdict == "OK" and result.stdout not in (b"", b"10.0.2.100\n"), result


def test_runner_environ_names_the_cgroup(tmp_path: Path) -> None:
    """SBX_CGROUP in a Runner's environ is obeyed as the CLI obeys it: one that is no cgroup is an error."""
    with Runner(environ={**os.environ, "SBX_CGROUP": str(tmp_path / "nonexistent")}, warm=False) as r:
        with pytest.raises(SetupError, match="is not a cgroup v2 directory"):
            r.run(["true"])
