"""How a sandbox's init is started (runtime/spawn.py, runtime/init.py): cloned straight into its
namespaces by a single-threaded supervisor, or through an entry process where the supervisor
has other threads.  Both paths must give the same sandbox: init is pid 1, the payload pid 2,
the ids the same, RLIMIT_NPROC exact, and everything dies with the supervisor.

Each case runs a small program of its own (a `Runner(warm=False)`, which starts sandboxes from
the caller's process), with and without an extra thread, and looks at its process tree from here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import process_tree, wait_for

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]

PROGRAM = """
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
import sandbox
if sys.argv[2] == "threaded":
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
runner = sandbox.Runner(warm=False)
result = runner.run(["sh", "-c", sys.argv[3]], limits=json.loads(sys.argv[4]), options=json.loads(sys.argv[5]))
print(json.dumps({"verdict": result.verdict, "wall": str(result.wall_time), "stdout": (result.stdout or b"").decode(),
                  "stderr": (result.stderr or b"").decode(), "message": result.message}), flush=True)
"""


def start(mode: str, script: str, limits: dict[str, object] | None = None,
          options: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """The program above, `mode` "plain" or "threaded" (an extra thread in the supervisor)."""
    return subprocess.Popen([sys.executable, "-c", PROGRAM, str(REPO), mode, script, json.dumps(limits or {}),
                             json.dumps(options)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> dict[str, str]:
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    result: dict[str, str] = json.loads(out)
    return result


def descendants(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, comm) for every host process below `root`."""
    found: dict[int, tuple[int, str]] = {}
    for pid in process_tree(root) - {root}:
        try:
            with open(f"/proc/{pid}/stat") as f:
                head, tail = f.read().rsplit(") ", 1)
        except OSError:  # gone meanwhile
            continue
        found[pid] = (int(tail.split()[1]), head.split(" (", 1)[1])
    return found


def tree_while_running(mode: str) -> tuple[dict[int, tuple[int, str]], int, dict[str, str]]:
    """The supervisor's descendants while its payload waits (by comm), the supervisor's pid, and
    the run's result."""
    proc = start(mode, "echo pid=$$ ppid=$PPID; sleep 600 & wait")
    try:
        assert wait_for(lambda: "sleep" in [c for _, c in descendants(proc.pid).values()], 20)
        tree = descendants(proc.pid)
        for pid, (_, comm) in tree.items():
            if comm == "sleep":
                os.kill(pid, signal.SIGKILL)
    except BaseException:
        proc.kill()
        raise
    return tree, proc.pid, finish(proc)


def test_single_threaded_supervisor_clones_init_directly() -> None:
    tree, supervisor, result = tree_while_running("plain")
    comms = {comm: parent for parent, comm in tree.values()}
    assert "sbx-entry" not in comms, tree
    assert comms["sbx-init"] == supervisor, tree  # init is the supervisor's own child
    assert result["stdout"].split() == ["pid=2", "ppid=1"], result


def test_threaded_supervisor_starts_init_from_an_entry_process() -> None:
    tree, supervisor, result = tree_while_running("threaded")
    by_comm = {comm: (pid, parent) for pid, (parent, comm) in tree.items()}
    assert by_comm["sbx-entry"][1] == supervisor, tree
    assert by_comm["sbx-init"][1] == by_comm["sbx-entry"][0], tree
    assert result["stdout"].split() == ["pid=2", "ppid=1"], result


@pytest.mark.parametrize("mode", ["plain", "threaded"])
def test_both_paths_give_the_same_ids_and_namespaces(mode: str) -> None:
    script = "id -u; id -g; cat /proc/self/uid_map | wc -l; readlink /proc/1/ns/pid /proc/self/ns/pid | uniq | wc -l"
    result = finish(start(mode, script))
    assert result["verdict"] == "OK", result
    ids_plain = finish(start("plain", "id -u; id -g"))["stdout"].split()
    assert result["stdout"].split()[:2] == ids_plain
    assert result["stdout"].split()[3] == "1", result  # init and the payload: one pid namespace


@pytest.mark.parametrize("mode", ["plain", "threaded"])
def test_nproc_counts_only_the_payloads_tree_either_way(mode: str) -> None:
    """As uid 0 the payload shares its RLIMIT_NPROC count with init alone (no entry process in the
    user namespace): with --pids-limit 5 and no cgroup, exactly 5 tasks (itself and 4 more)."""
    from sandbox.cgroup.discover import discover

    try:
        if discover(None, os.environ) is not None:
            pytest.skip("pids are the run cgroup's here (tests/cgroup covers it)")
    except Exception:  # noqa: BLE001 - an unusable delegation: RLIMIT_NPROC applies, as in the run
        pass
    if os.getuid() == 0:
        pytest.skip("real root is exempt from RLIMIT_NPROC")
    bomb = ("import os, time\nn = 0\ntry:\n    while n < 10:\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint(n)")
    result = finish(start(mode, f"exec python3 -c '{bomb}'", {"pids": 5}, ("--uid", "0")))
    assert result["stdout"].split() == ["4"], result  # itself and 4 more; init's task is sbx's to add


def test_init_dies_with_a_killed_supervisor_on_either_path() -> None:
    for mode in ("plain", "threaded"):
        proc = start(mode, "sleep 600")
        assert wait_for(lambda: "sleep" in [c for _, c in descendants(proc.pid).values()], 20)
        sandbox = [pid for pid, (_, comm) in descendants(proc.pid).items()]
        proc.kill()
        proc.communicate(timeout=20)
        assert wait_for(lambda: not [p for p in sandbox if os.path.exists(f"/proc/{p}/task")], 20), mode


@pytest.mark.parametrize("mode", ["plain", "threaded"])
def test_the_run_is_watched_from_its_exec_on_either_path(mode: str) -> None:
    """The supervisor learns of the payload's exec when the last copy of the exec pipe closes: an
    entry process that kept one would leave the run unwatched (no wall-time limit) until its end."""
    result = finish(start(mode, "exec sleep 30", {"wall_time": "1s"}))
    assert result["verdict"] == "WTLE" and float(result["wall"]) < 10, result  # killed at the limit, not at its end
