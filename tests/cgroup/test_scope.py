"""Discovery step 3: a transient systemd user scope (sandbox/cgroup/systemd.py, scope_command).

Needs a `systemd --user` manager: the VM stage starts one when
SBX_VM_USER_MANAGER=1 (tests/vm/user_manager.sh; test.sh sets it), next to a
non-delegated `session-1.scope` (SBX_VM_SESSION_CGROUP) that the test user may
move its processes into but not create cgroups in, as in a login session.
sbx started there has no usable cgroup of its own, so it must re-execute
itself under `systemd-run --user --scope -p Delegate=yes` (same pid) and
enforce limits in that scope; with SBX_NO_SCOPE=1 it takes the degraded path.

Without SBX_VM_USER_MANAGER=1 these tests are skipped (the stage was not asked
for a user manager); asked for, they fail when there is none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandbox.cgroup.discover import LEAF, usable_own
from sandbox.cgroup.systemd import user_manager_socket

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.environ.get("SBX_VM_USER_MANAGER") != "1",
    reason="no systemd --user in this stage (run_stage.py with SBX_VM_USER_MANAGER=1)",
)


@pytest.fixture(scope="module")
def session() -> str:
    path = os.environ.get("SBX_VM_SESSION_CGROUP", "")
    assert path and os.path.isdir(path), f"SBX_VM_SESSION_CGROUP={path!r}: guest_setup did not start the manager"
    assert user_manager_socket(os.environ) is not None, "no systemd --user answers"
    return path


def systemctl_scopes() -> str:
    return subprocess.run(["systemctl", "--user", "list-units", "--type=scope", "--all", "--no-legend", "--plain"],
                          capture_output=True, text=True, check=True).stdout


def sbx_in_session(session: str, *args: str, env: dict[str, str] | None = None,
                   ) -> tuple[subprocess.CompletedProcess[str], dict[str, object], list[str]]:
    """`sbx run --result R ARGS` from a shell moved into the session scope.

    Returns the process, the result and every distinct /proc/PID/cgroup line
    of the sbx process (the same pid before and after systemd-run's exec)
    seen while it ran.
    """
    fd, result_file = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    full_env = dict(os.environ if env is None else env, PYTHONPATH=str(REPO))
    argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', session,
            sys.executable, "-m", "sandbox", "run", "--result", result_file, *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
    seen: list[str] = []
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/cgroup") as f:
                line = f.read().strip()
        except OSError:
            break
        if line and line not in seen:
            seen.append(line)
        time.sleep(0.01)
    out, err = proc.communicate(timeout=180)
    done = subprocess.CompletedProcess(argv, proc.returncode, out, err)
    with open(result_file) as f:
        text = f.read()
    os.unlink(result_file)
    assert text, f"no result written: {done}"
    return done, json.loads(text), seen


def test_session_scope_is_not_usable(session: str) -> None:
    """The premise: a root-owned, unmarked session scope is no delegation."""
    assert not os.access(session, os.W_OK)
    assert usable_own(session, os.environ) is None


def test_runs_in_a_transient_scope(session: str) -> None:
    uid = os.getuid()
    proc, r, seen = sbx_in_session(session, "--memory", "64M", "--", "sleep", "1")
    assert proc.returncode == 0 and r["verdict"] == "OK", (proc, r)
    assert r["limits_enforced"] == {"memory": True}, r
    assert "warning" not in proc.stderr, proc.stderr
    assert 0 < r["memory_peak"] < 64 << 20, r  # type: ignore[operator]
    # The same pid: first in the session, then in sbx-PID-N.scope under the user manager
    # (and its sbx-leaf once the scope is prepared).
    scopes = [line for line in seen if f"/user@{uid}.service/app.slice/sbx-" in line]
    assert scopes, seen
    unit = scopes[0].split("/app.slice/", 1)[1].split("/", 1)[0]
    assert unit.startswith("sbx-") and unit.endswith(".scope"), seen
    assert any(line.endswith(f"/{unit}/{LEAF}") for line in seen), seen
    # Gone once the run is over (--collect, and a scope ends with its last process).
    for _ in range(100):
        if unit not in systemctl_scopes():
            break
        time.sleep(0.1)
    assert unit not in systemctl_scopes()


def test_true_in_a_transient_scope(session: str) -> None:
    """The plain case: a run too short to watch, limits enforced all the same."""
    proc, r, _seen = sbx_in_session(session, "--memory", "64M", "--", "true")
    assert proc.returncode == 0 and r["verdict"] == "OK", (proc, r)
    assert r["limits_enforced"] == {"memory": True}, r
    assert proc.stderr == "", proc.stderr


def test_no_scope_opt_out_falls_back(session: str) -> None:
    proc, r, seen = sbx_in_session(session, "--memory", "64M", "--", "true",
                                   env=dict(os.environ, SBX_NO_SCOPE="1"))
    assert proc.returncode == 0 and r["verdict"] == "OK", (proc, r)
    assert r["limits_enforced"] == {"memory": False}, r
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("sbx: warning: --memory") for line in lines), proc.stderr
    assert not any(".scope" in line and "/app.slice/" in line for line in seen), seen


def test_doctor_says_scope_applies(session: str) -> None:
    argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', session,
            sys.executable, "-m", "sandbox", "doctor"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(argv, capture_output=True, text=True, env=env).stdout
    assert "transient systemd user scope" in out, out
    line = next(line for line in out.splitlines() if "transient systemd user scope" in line)
    assert "re-executes itself" in line, out
