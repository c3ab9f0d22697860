"""--address-space / [limits] address_space: RLIMIT_AS of every process, with a cgroup or without
(isolate's -m), beside --memory (the cgroup's memory.max, or RLIMIT_AS and sbx's count without one).

Real runs of the command and of the API: an allocation past the limit fails inside the program
(Python's MemoryError, exit 1: RE, as isolate), a small one passes, and the smaller of the two
limits is the rlimit where no cgroup holds --memory.  The VM stage checks the cgroup side
(tests/cgroup/test_isolate_cg.py).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from sandbox import Runner

from conftest import delegated_here, sbx

DELEGATED = delegated_here()
BIG = ["python3", "-c", "b = bytearray(200 << 20); print(len(b))"]      # 200 MiB
SMALL = ["python3", "-c", "b = bytearray(8 << 20); print(len(b))"]      # 8 MiB


def run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    result = tmp_path / "result.json"
    proc = sbx("run", "--result", str(result), *args)
    data: dict[str, object] = json.loads(result.read_text())
    return proc, data


def failed_allocation(proc: subprocess.CompletedProcess[str], result: dict[str, object]) -> None:
    assert proc.returncode == 1 and "MemoryError" in proc.stderr, proc.stderr
    assert (result["verdict"], result["exit_code"], result["oom_killed"]) == ("RE", 1, False), result
    assert "209715200" not in proc.stdout


@pytest.mark.parametrize("how", ["flag", "profile"])
def test_address_space_fails_a_big_allocation_and_not_a_small_one(tmp_path: Path, how: str) -> None:
    profile = tmp_path / "as.toml"
    profile.write_text('[limits]\naddress_space = "64M"\n')
    options = ["--address-space", "64M"] if how == "flag" else ["--profile", str(profile)]
    proc, result = run(tmp_path, *options, "--", *BIG)
    failed_allocation(proc, result)
    assert result["limits_enforced"] == {"address_space": True}, result  # an rlimit: it holds as asked
    assert "sbx: warning" not in proc.stderr, proc.stderr
    proc, result = run(tmp_path, *options, "--", *SMALL)
    assert proc.returncode == 0 and proc.stdout == f"{8 << 20}\n", proc.stderr
    assert result["verdict"] == "OK", result


def test_memory_alone_is_as_before(tmp_path: Path) -> None:
    """--memory without --address-space: memory.max with a cgroup (MLE), else RLIMIT_AS (RE) with
    its warning; an --address-space above the allocation changes nothing of that."""
    for extra in ([], ["--address-space", "1G"]):
        proc, result = run(tmp_path, "--memory", "64M", *extra, "--", *BIG)
        if DELEGATED:
            assert result["verdict"] == "MLE" and result["oom_killed"], result
        else:
            failed_allocation(proc, result)
            assert "sbx: warning: --memory is enforced per process only (RLIMIT_AS)" in proc.stderr, proc.stderr
            assert dict(result["limits_enforced"]).get("memory") is False, result  # type: ignore[call-overload]
    proc, result = run(tmp_path, "--address-space", "1G", "--", *BIG)
    assert proc.returncode == 0 and proc.stdout == f"{200 << 20}\n", proc.stderr


def test_address_space_below_memory_is_the_limit(tmp_path: Path) -> None:
    """Both given: RLIMIT_AS is --address-space whatever holds --memory, so the allocation fails
    inside (RE), never an OOM kill."""
    proc, result = run(tmp_path, "--memory", "1G", "--address-space", "64M", "--", *BIG)
    failed_allocation(proc, result)
    enforced = dict(result["limits_enforced"])  # type: ignore[call-overload]
    assert enforced == {"memory": DELEGATED, "address_space": True}, result


def test_api_limits_key(tmp_path: Path) -> None:
    """Runner.run(limits={"address_space": ...}) goes through the same schema; the limit is the
    run's own, so the next run in the same warm Runner has none."""
    with Runner(root=str(tmp_path / "store")) as runner:
        result = runner.run(BIG, limits={"address_space": "64M"})
        assert result.verdict == "RE" and b"MemoryError" in (result.stderr or b""), result
        assert dict(result.limits_enforced) == {"address_space": True}
        result = runner.run(BIG)
        assert result.verdict == "OK" and result.stdout == f"{200 << 20}\n".encode(), result
