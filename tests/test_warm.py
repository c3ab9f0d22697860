"""Warm runs: nothing one run does is visible to the next on the same Runner (issue #8).

A warm Runner prepares the next sandbox of a shape ahead of its run.  Every
run must still get its own namespaces, writable layer, /tmp, processes, IPC,
environment and figures.  Each test makes run 2 use a sandbox the pool
prepared (wait_prepared), so the reuse path is the one under test.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from conftest import host_processes, ranged, sleepers, wait_for, wait_prepared
from sandbox import Result, Runner
from sandbox.runtime.supervisor import shape_of

pytestmark = pytest.mark.timeout(60)

NAMESPACES = ("pid", "mnt", "ipc", "uts", "net", "user", "cgroup")


@pytest.fixture
def runner(tmp_path: Path) -> object:
    with Runner(root=str(tmp_path / "store")) as r:
        yield r


# Root inside (the caller on the host): for what only root inside may write (/etc, /root).
AS_ROOT = ["--uid", "0", "--gid", "0"]


def sh(runner: Runner, script: str, **kwargs: object) -> Result:
    result = runner.run(["sh", "-c", script], **kwargs)  # type: ignore[arg-type]
    assert result.verdict == "OK", (script, result)
    return result


def out(result: Result) -> list[str]:
    assert result.stdout is not None
    return result.stdout.decode().splitlines()


def marker() -> str:
    """A `sleep` argument no other process on the host has: seconds, then a random fraction."""
    return f"{3000 + int.from_bytes(os.urandom(2), 'big') % 1000}.{int.from_bytes(os.urandom(4), 'big')}"


# -- files ------------------------------------------------------------------------------------

DIRS = ("/tmp", "/root", "/var/tmp", "/", "/dev/shm", "/home", "/etc", "/usr/bin")


def test_files_written_by_one_run_are_gone_in_the_next(runner: Runner) -> None:
    script = " ; ".join(f"echo secret > {d.rstrip('/')}/sbx-warm-marker && echo wrote {d}" for d in DIRS)
    # As root inside, which may write the most (/root, /etc); the same shape serves both runs.
    first = runner.run(["sh", "-c", script + "; true"], options=AS_ROOT)
    wrote = [line.split(" ", 1)[1] for line in out(first) if line.startswith("wrote ")]
    assert {"/tmp", "/root", "/var/tmp", "/", "/dev/shm"} <= set(wrote), (first.stdout, first.stderr)
    wait_prepared(runner, options=AS_ROOT)
    check = " ; ".join(f"test -e {d.rstrip('/')}/sbx-warm-marker && echo FOUND {d}" for d in DIRS)
    second = sh(runner, check + "; ls -A /tmp /var/tmp /dev/shm; true", options=AS_ROOT)
    assert not [line for line in out(second) if line.startswith("FOUND")], second.stdout
    assert out(second) == ["/dev/shm:", "", "/tmp:", "", "/var/tmp:"], second.stdout


def test_a_deleted_host_file_stays_in_the_lower_layer(runner: Runner) -> None:
    """Run 1 removes and replaces files of its root (through the writable layer where it may: rootless,
    the host's root-owned /usr cannot be changed at all); run 2 sees the originals."""
    first = runner.run(["sh", "-c", "rm -f /etc/passwd && echo forged > /etc/passwd; rm -f /usr/bin/env 2>/dev/null; "
                                    "cat /etc/passwd; test -e /usr/bin/env || echo ENV-GONE"], options=AS_ROOT)
    assert first.stdout is not None and first.stdout.startswith(b"forged\n"), first
    if os.getuid() == 0:
        assert first.stdout == b"forged\nENV-GONE\n"  # a whiteout in run 1's layer
    wait_prepared(runner, options=AS_ROOT)
    second = sh(runner, "head -c 5 /etc/passwd; echo; test -x /usr/bin/env && echo ENV-THERE", options=AS_ROOT)
    assert out(second) == ["root:", "ENV-THERE"]


# -- processes --------------------------------------------------------------------------------


def test_background_processes_die_with_their_run(runner: Runner) -> None:
    plain, session, orphan, daemon = marker(), marker(), marker(), marker()
    script = (f"sleep {plain} & echo $!; "
              f"setsid sleep {session} & "
              f"(sleep {orphan} &) ; "
              # a daemon: double fork, setsid, SIGTERM and SIGHUP ignored
              "python3 -c 'import os, signal, sys\n"
              "if os.fork(): sys.exit(0)\n"
              "os.setsid()\n"
              "if os.fork(): sys.exit(0)\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN); signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
              f"os.execvp(\"sleep\", [\"sleep\", \"{daemon}\"])'; "
              "sleep 0.2; "
              f"for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done")
    first = runner.run(["sh", "-c", script])
    assert first.verdict == "OK", first
    listing = first.stdout.decode() if first.stdout else ""
    for m in (plain, session, orphan, daemon):
        assert f"sleep {m}" in listing, (m, listing)  # they did run inside
    # Once run 1 has returned, none of them is left anywhere on the host.
    assert host_processes(plain, session, orphan, daemon) == []
    wait_prepared(runner)
    second = sh(runner, "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done; "
                        "ls -d /proc/[0-9]* | wc -l")
    text = second.stdout.decode() if second.stdout else ""
    for m in (plain, session, orphan, daemon):
        assert m not in text, text
    assert int(out(second)[-1]) <= 4, text  # init, the shell and what it forks now


# -- SysV IPC, abstract sockets, namespaces ----------------------------------------------------


def sysv_listing() -> str:
    return "for f in shm msg sem; do tail -n +2 /proc/sysvipc/$f; done"


def test_sysv_ipc_of_one_run_is_not_in_the_next(runner: Runner) -> None:
    first = sh(runner, f"ipcmk -M 4096 && ipcmk -Q && ipcmk -S 2 && {sysv_listing()}")
    made = out(first)
    assert any(line.startswith("Shared memory id:") for line in made), made
    assert len([line for line in made if line.strip() and ":" not in line]) == 3, made  # one row each
    wait_prepared(runner)
    second = sh(runner, f"{sysv_listing()}; ipcs -m -q -s | grep -c '^0x' || true")
    assert [line for line in out(second) if line.strip()] == ["0"], second.stdout


def test_python_shmget_segment_is_not_in_the_next(runner: Runner) -> None:
    code = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
            "print(libc.shmget(0x5b7e57, 65536, 0o1000 | 0o600))")  # IPC_CREAT
    first = runner.run(["python3", "-c", code])
    assert first.verdict == "OK" and int(out(first)[0]) >= 0, first
    wait_prepared(runner)
    probe = ("import ctypes; libc = ctypes.CDLL(None, use_errno=True); "
             "print(libc.shmget(0x5b7e57, 0, 0), ctypes.get_errno())")
    second = runner.run(["python3", "-c", probe])
    assert out(second) == ["-1 2"], second  # ENOENT: no such key in this run's IPC namespace


LISTENER = """
import os, socket, sys
name = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind("\\0" + name)
s.listen(8)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
c.connect("\\0" + name)  # reachable from inside its own run
print("listening", flush=True)
os.close(1)
while True:
    s.accept()[0].close()
"""

CONNECT = """
import socket, sys
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    c.connect("\\0" + sys.argv[1])
    print("CONNECTED")
except OSError as exc:
    print("refused", exc.errno)
"""

NS_SCRIPT = "for n in " + " ".join(NAMESPACES) + "; do readlink /proc/self/ns/$n; done"


def read_lines(fd: int, count: int, timeout: float) -> list[str]:
    """`count` lines from a pipe, failing after `timeout` seconds."""
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], f"timed out; got {data!r}"
        chunk = os.read(fd, 4096)
        assert chunk, f"EOF; got {data!r}"
        data += chunk
    return data.decode().splitlines()[:count]


def host_pids_in(pid_ns: str) -> list[int]:
    """Host processes whose pid namespace link reads `pid_ns` (ours to read: the sandbox is our user's)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.readlink(f"/proc/{name}/ns/pid") == pid_ns:
                    found.append(int(name))
            except OSError:
                continue
    return found


@pytest.mark.timeout(60)
def test_abstract_socket_and_namespaces_differ_between_runs(runner: Runner) -> None:
    """Run 1 leaves a listener on an abstract socket and blocks.  Run 2, on the same Runner while
    run 1 is alive, cannot reach it; run 3, once run 1 has ended, takes a sandbox prepared for the
    shape.  Every namespace of runs 2 and 3 differs from run 1's.

    Namespace inode numbers are recycled once a namespace is freed, so run 1's namespaces are held
    open from here (by fd) until run 3 has reported: equal numbers then mean the same namespace.
    """
    name = f"sbx-warm-{os.urandom(6).hex()}"
    to_run1_r, to_run1_w = os.pipe()
    from_run1_r, from_run1_w = os.pipe()
    holds: list[int] = []
    outcome: list[object] = []
    script = (f"{NS_SCRIPT}; python3 -c '{LISTENER}' {name} & "
              "cat >/dev/null; kill $!")  # until the test closes our stdin

    def first_run() -> None:
        try:
            outcome.append(runner.run(["sh", "-c", script], stdin=to_run1_r, stdout=from_run1_w))
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    sh(runner, "true")  # a first run of the shape, so the pool prepares one for run 1
    wait_prepared(runner)
    thread = threading.Thread(target=first_run)
    thread.start()
    try:
        # Our copies of run 1's pipe ends stay open until it has ended (the run dups them).
        first_lines = read_lines(from_run1_r, len(NAMESPACES) + 1, 20)
        first_ns = first_lines[: len(NAMESPACES)]
        assert first_lines[-1] == "listening", (first_lines, outcome)
        assert all(line.split(":")[0] == n for line, n in zip(first_ns, NAMESPACES)), first_ns
        pids = host_pids_in(first_ns[0])
        assert pids, "run 1's processes are visible to their owner outside"
        holds = [os.open(f"/proc/{pids[0]}/ns/{n}", os.O_RDONLY) for n in NAMESPACES]
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in holds] == first_ns
        second = sh(runner, f"{NS_SCRIPT}; python3 -c '{CONNECT}' {name}")
        lines = out(second)
        assert lines[-1] == "refused 111", lines  # ECONNREFUSED: no such name in run 2's net namespace
        second_ns = lines[: len(NAMESPACES)]
        for a, b in zip(first_ns, second_ns):
            assert a != b, (a, b)
        os.close(to_run1_w)  # run 1 ends
        to_run1_w = -1
        thread.join(20)
        assert len(outcome) == 1 and isinstance(outcome[0], Result), outcome
        assert outcome[0].verdict == "OK", outcome[0]
        wait_prepared(runner)
        third_ns = out(sh(runner, NS_SCRIPT))
        assert len(third_ns) == len(NAMESPACES)
        for a, c in zip(first_ns, third_ns):
            assert a != c, (a, c)  # run 2's are not held: run 3 may reuse their numbers
    finally:
        if to_run1_w >= 0:
            os.close(to_run1_w)
        thread.join(20)
        for fd in (to_run1_r, from_run1_r, from_run1_w, *holds):
            os.close(fd)


def test_abstract_socket_of_a_finished_run_is_gone(runner: Runner) -> None:
    name = f"sbx-warm-{os.urandom(6).hex()}"
    first = runner.run(["sh", "-c", f"python3 -c '{LISTENER}' {name} & sleep 0.5; echo started"])
    assert out(first)[-1] == "started", first
    wait_prepared(runner)
    second = sh(runner, f"python3 -c '{CONNECT}' {name}")
    assert out(second) == ["refused 111"]


# -- environment, hostname ---------------------------------------------------------------------


def test_environment_is_per_run(runner: Runner) -> None:
    first = sh(runner, "echo $SECRET; export LEAK=1; echo LEAK=1 >> /etc/environment 2>/dev/null; env",
               env={"SECRET": "x", "OTHER": "y"})
    assert out(first)[0] == "x"
    wait_prepared(runner)
    second = sh(runner, "env")
    names = {line.split("=", 1)[0] for line in out(second)}
    assert not names & {"SECRET", "OTHER", "LEAK"}, names
    assert "PATH" in names and "HOME" in names


def test_hostname_is_per_run(runner: Runner) -> None:
    first = runner.run(["sh", "-c", "hostname changed-by-run-1 2>/dev/null; hostname"])
    assert first.verdict in ("OK", "RE")
    wait_prepared(runner)
    assert out(sh(runner, "hostname")) == ["sbx"]
    # The hostname is part of a sandbox's shape: prepared sandboxes of one never serve the other.
    assert out(sh(runner, "hostname", options=["--hostname", "judge-1"])) == ["judge-1"]
    wait_prepared(runner, options=["--hostname", "judge-1"])
    assert out(sh(runner, "hostname")) == ["sbx"]
    assert out(sh(runner, "hostname", options=["--hostname", "judge-1"])) == ["judge-1"]


# -- figures ---------------------------------------------------------------------------------

BURN = ("import time\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n")


def test_cpu_time_is_per_run(runner: Runner) -> None:
    first = runner.run(["python3", "-c", BURN])
    assert first.verdict == "OK" and first.cpu_time >= 0.3, first
    wait_prepared(runner)
    second = runner.run(["/bin/true"])
    assert second.verdict == "OK"
    assert second.cpu_time < 0.1, second
    assert second.wall_time < 0.3, second


def test_memory_peak_is_per_run(runner: Runner) -> None:
    first = runner.run(["python3", "-c", "b = bytearray(160 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1"])
    assert first.verdict == "OK" and first.memory_peak >= 160 << 20, first
    wait_prepared(runner)
    second = runner.run(["/bin/true"])
    assert second.verdict == "OK"
    assert 0 < second.memory_peak < 64 << 20, second


def test_output_bytes_and_limits_are_per_run(runner: Runner) -> None:
    first = runner.run(["sh", "-c", "head -c 5000 /dev/zero"], limits={"output": "1K"})
    assert first.verdict == "OLE", first
    wait_prepared(runner)
    second = runner.run(["sh", "-c", "head -c 5000 /dev/zero"])
    assert second.verdict == "OK" and second.output_bytes == 5000 and second.limits_enforced == (), second


# -- boxes -----------------------------------------------------------------------------------


def test_a_box_made_again_is_not_served_by_a_stale_sandbox(runner: Runner) -> None:
    box = runner.create_box("again")
    sh(runner, "echo old > old.txt", box=box)
    wait_prepared(runner, box=box)  # a sandbox prepared on this box's directory
    runner.remove_box("again")
    box = runner.create_box("again")
    second = sh(runner, "pwd; ls -A; echo new > new.txt", box="again")
    assert out(second) == ["/box"], second.stdout
    assert (Path(box.work) / "new.txt").read_text() == "new\n"  # written to the new directory
    third = sh(runner, "cat new.txt", box="again")
    assert out(third) == ["new"]


# -- id ranges through the zygote's user namespace (zygote.py, _Holder) -------------------------

def _zygote_children(runner: Runner) -> list[tuple[int, str]]:
    """(pid, name) of the fork server's children: its user-namespace holder and the sandboxes it forked."""
    assert runner.pool is not None and runner.pool.zygote is not None
    zygote = runner.pool.zygote.process.pid
    with open(f"/proc/{zygote}/task/{zygote}/children") as f:
        pids = [int(p) for p in f.read().split()]
    named = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/comm") as f:
                named.append((pid, f.read().strip()))
        except OSError:
            continue
    return named


def _holders(runner: Runner) -> list[int]:
    return [pid for pid, name in _zygote_children(runner) if name == "sbx-userns"]


def _payload_host_ids(runner: Runner) -> tuple[list[str], tuple[int, int], str]:
    """A run's view of its ids and user namespace, and its payload's ids as the host sees them."""
    mark = marker()
    seen: list[tuple[int, int]] = []

    def look() -> None:
        assert wait_for(lambda: sleepers(mark), 20)
        pid = sleepers(mark)[0]
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f.read().splitlines())
        seen.append((int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0])))
        os.kill(pid, 9)

    watcher = threading.Thread(target=look)
    watcher.start()
    result = runner.run(["sh", "-c", f"id -u; id -g; readlink /proc/self/ns/user; sleep {mark}; true"])
    watcher.join(30)
    lines = out(result)
    return lines[:2], seen[0], lines[2]


@pytest.mark.skipif(not ranged() or os.getuid() == 0, reason="the holder serves callers whose ranges need newuidmap")
def test_ranged_runs_keep_their_own_user_namespace_and_host_ids(runner: Runner) -> None:
    """With the caller's ranges mapped once by the zygote's holder, each run still makes a user
    namespace of its own (nested in the holder's), and its payload is the same subordinate id on
    the host as in a cold run; the helpers newuidmap/newgidmap run once, not per sandbox."""
    from sandbox.kernel import idmap

    ranges = idmap.for_payload(os.environ)
    assert ranges is not None and not ranges.direct
    expected = (ranges.uid_start + idmap.PAYLOAD_ID - 1, ranges.gid_start + idmap.PAYLOAD_ID - 1)
    sh(runner, "true")  # a first run of the shape, so the pool prepares the next ones
    views = []
    for _ in range(3):
        wait_prepared(runner)
        views.append(_payload_host_ids(runner))
    for inside, host, _ns in views:
        assert inside == ["1000", "1000"] and host == expected, views
    assert len({ns for _, _, ns in views}) == 3, views  # a user namespace per run
    assert len(_holders(runner)) == 1


@pytest.mark.skipif(not ranged() or os.getuid() == 0, reason="the holder serves callers whose ranges need newuidmap")
def test_a_killed_holder_is_replaced_and_takes_its_sandboxes_along(runner: Runner) -> None:
    sh(runner, "true")
    wait_prepared(runner)
    holders = _holders(runner)
    assert len(holders) == 1, _zygote_children(runner)
    with open(f"/proc/{holders[0]}/task/{holders[0]}/children") as f:
        prepared = [int(pid) for pid in f.read().split()]  # the prepared sandbox's entry process
    assert prepared
    os.kill(holders[0], 9)
    # Its sandboxes die with it (PR_SET_PDEATHSIG): none of them is left to serve a run.
    assert wait_for(lambda: not [p for p in prepared if os.path.exists(f"/proc/{p}/task")], 20)
    assert out(sh(runner, "id -u")) == ["1000"]
    assert wait_for(lambda: len(_holders(runner)) == 1, 20)
    assert _holders(runner) != holders


@pytest.mark.skipif(not ranged() or os.getuid() == 0, reason="the holder serves callers whose ranges need newuidmap")
def test_closing_the_runner_ends_the_holder(tmp_path: Path) -> None:
    runner = Runner(root=str(tmp_path / "store"))
    try:
        sh(runner, "true")
        wait_prepared(runner)
        holders = _holders(runner)
        assert len(holders) == 1
    finally:
        runner.close()
    assert wait_for(lambda: not os.path.exists(f"/proc/{holders[0]}/task"), 20)
