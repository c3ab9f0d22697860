"""No sbx process visible inside a sandbox shows the caller's command line or environment.

Init (pid 1) is a fork of the `sbx` process (or of the Runner's zygote), and /proc/1/cmdline reads the
argv strings of the memory it was forked from: without linux.scrub_title the payload read `-e`
values, host paths and an interactor's arguments there.  The payload reads every /proc/PID/cmdline
and environ it can see; the controls show the same secrets in the supervisor's own /proc files on
the host, and the probe's own argument in its /proc/self/cmdline (the reading works).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SBX, sbx
from sandbox import Runner

pytestmark = pytest.mark.timeout(90)

# Reads what the sandbox's pid namespace shows of every other process; its own argv[1] is the control.
PROBE = r"""
import json, os, sys
out = {}
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
    for name in ("cmdline", "environ"):
        for path in (f"/proc/{pid}/{name}", f"/proc/{pid}/task/{pid}/{name}"):
            try:
                with open(path, "rb") as f:
                    out[path] = f.read().decode("latin-1")
            except OSError as e:
                out[path] = f"error {e.errno}"
with open("/proc/self/cmdline", "rb") as f:
    out["self"] = f.read().decode("latin-1")
print(json.dumps(out), file=sys.stderr if len(sys.argv) > 2 else sys.stdout, flush=True)
if len(sys.argv) > 2:
    print("done", flush=True)  # to the interactor
"""


def tag() -> str:
    return os.urandom(6).hex()


def check_seen(seen: dict[str, str], secrets: list[str], own: str) -> None:
    assert own in seen["self"], seen  # the control: reading /proc works, and shows argv
    text = json.dumps({k: v for k, v in seen.items() if k != "self"})
    for secret in secrets:
        assert secret not in text, (secret, seen)
    assert seen["/proc/1/cmdline"] == "sbx-init\0", seen
    assert seen["/proc/1/task/1/cmdline"] == "sbx-init\0", seen
    for path in ("/proc/1/environ", "/proc/1/task/1/environ"):
        assert seen[path] == "error 13" or not seen[path].strip("\0"), seen  # init is not dumpable
    # Only init and the probe live in the pid namespace: nothing else to read.
    assert {k.split("/")[2] for k in seen if k != "self"} == {"1"}, seen


def host_view(supervisor: int) -> dict[str, tuple[bytes, bytes | None]]:
    """comm -> (cmdline, environ or None if unreadable) of the supervisor's descendants, seen from the host."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    parents[int(name)] = int(f.read().rsplit(b") ", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
    found: dict[str, tuple[bytes, bytes | None]] = {}
    for pid in parents:
        p = pid
        while p in parents and p not in (0, 1, supervisor):
            p = parents[p]
        if p != supervisor or pid == supervisor:
            continue
        try:
            with open(f"/proc/{pid}/comm", "rb") as f:
                comm = f.read().strip().decode()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ: bytes | None = f.read()
        except OSError:
            environ = None
        found[comm] = (cmdline, environ)
    return found


def test_cli_run_hides_options_paths_and_environment(tmp_path: Path) -> None:
    env_secret, caller_secret, own = f"hunter2-{tag()}", f"caller-{tag()}", f"probe-{tag()}"
    host_dir = tmp_path / f"some-host-path-{tag()}"
    host_dir.mkdir()
    args = ["run", "-e", f"SECRET={env_secret}", "-v", f"{host_dir}:/x", "--",
            "python3", "-c", PROBE + "sys.stdin.read()\n", own]
    env = dict(os.environ, PYTHONPATH=str(REPO), CALLER_TOKEN=caller_secret)
    proc = subprocess.Popen([*SBX, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()  # the payload has read /proc and now waits on stdin: the run is live
        assert line, proc.stderr.read() if proc.stderr else b""
        seen = json.loads(line)
        # The control: on the host, the supervisor's own cmdline and environ hold every secret.
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            supervisor = f.read()
        with open(f"/proc/{proc.pid}/environ", "rb") as f:
            supervisor += f.read()
        for secret in (env_secret, str(host_dir), caller_secret):
            assert secret.encode() in supervisor
        # Its forks, from the host: named, scrubbed.  `sbx run` is single-threaded, so init is
        # cloned straight into its namespaces: no entry process (tests/test_spawn.py has that path).
        forks = host_view(proc.pid)
        assert "sbx-entry" not in forks, forks
        assert forks.get("sbx-init", (b"",))[0] == b"sbx-init\0", forks
        for comm in ("sbx-init",):  # the payload's own environment holds SECRET: as asked
            cmdline, environ = forks[comm]
            assert environ is None or not environ.strip(b"\0"), forks
            for secret in (env_secret, str(host_dir), caller_secret):
                assert secret.encode() not in cmdline + (environ or b""), forks
    finally:
        out, err = proc.communicate(b"", timeout=30)
    assert proc.returncode == 0, err
    check_seen(seen, [env_secret, str(host_dir), "some-host-path", caller_secret, "-e", str(REPO)], own)


def test_interactor_arguments_hidden_from_the_solution(tmp_path: Path) -> None:
    secret, own = f"SECRETARG-{tag()}", f"probe-{tag()}"
    # The interactor only reads: a reply could meet a solution that has already exited (EPIPE).
    interactor = shlex.join(["python3", "-c", "import sys; sys.stdin.readline()", secret])
    result = sbx("run", "--interactor", interactor, "--", "python3", "-c", PROBE, own, "solution",
                 cwd=str(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("{"))
    check_seen(json.loads(line), [secret], own)
    assert secret in shlex.join([*SBX, "run", "--interactor", interactor])  # what the supervisor's argv held


def test_runner_hides_the_callers_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The warm path: the zygote was started with the caller's environment; run env stays the run's."""
    caller_secret, run_secret = f"caller-{tag()}", f"run-{tag()}"
    monkeypatch.setenv("CALLER_TOKEN", caller_secret)  # inherited by the zygote the Runner starts
    with Runner(root=str(tmp_path / "store")) as runner:
        zygote = runner_zygote_pid(runner)
        with open(f"/proc/{zygote}/environ", "rb") as f:
            assert not f.read().strip(b"\0")  # the control side: the zygote scrubbed itself...
        for i in range(3):  # cold, then sandboxes the pool prepared
            own = f"probe-{tag()}"
            result = runner.run(["python3", "-c", PROBE, own], env={"SECRET": run_secret})
            assert result.verdict == "OK", result
            assert result.stdout is not None
            check_seen(json.loads(result.stdout), [caller_secret, run_secret, str(REPO), "-c"], own)
    assert caller_secret in os.environ["CALLER_TOKEN"]  # ...of what the Runner's process holds


def runner_zygote_pid(runner: Runner) -> int:
    runner.run(["true"])  # the pool starts the zygote with its first sandbox
    children = subprocess.run(["ps", "-o", "pid=,comm=", "--ppid", str(os.getpid())], capture_output=True,
                              text=True, check=True).stdout.split()
    pids = [int(children[i]) for i in range(0, len(children), 2) if children[i + 1] == "sbx-zygote"]
    assert len(pids) == 1, children
    return pids[0]


def test_scrub_in_a_fresh_process() -> None:
    """linux.scrub_title alone: cmdline reads the name; environ, libc's getenv and os.environ after it."""
    secret = f"scrub-{tag()}"
    code = ("import ctypes, os, sys\n"
            "from sandbox.kernel import linux\n"
            "linux.scrub_title('sbx-test')\n"
            "libc = ctypes.CDLL(None); libc.getenv.restype = ctypes.c_char_p\n"
            "print(open('/proc/self/cmdline', 'rb').read(), open('/proc/self/environ', 'rb').read().strip(b'\\0'),"
            " libc.getenv(b'TOKEN'), os.environ['TOKEN'] == sys.argv[1], sys.argv[1:] == [os.environ['TOKEN']])\n")
    out = subprocess.run([sys.executable, "-c", code, secret], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO), TOKEN=secret)).stdout
    # The kernel's view is scrubbed; Python's own copies (sys.argv, os.environ) still work.
    assert out.strip() == "b'sbx-test\\x00' b'' None True True", out
