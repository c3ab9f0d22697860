"""Shared helpers: every test runs real sandboxes through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SBX = [sys.executable, "-m", "sandbox"]


def sbx(*args: str, timeout: float = 60, check: bool = False, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `sbx ARGS...` and capture its output as text."""
    env = kwargs.pop("env", None)
    if env is None:
        env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([*SBX, *args], capture_output=True, text=True, timeout=timeout, env=env,
                            **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise AssertionError(f"sbx {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def sh(script: str, *options: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`sbx run OPTIONS -- sh -c SCRIPT`."""
    return sbx("run", *options, "--", "sh", "-c", script, **kwargs)


@pytest.fixture
def rootless() -> bool:
    return os.getuid() != 0


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" - ")[0].split(" ", 4)[4] for line in f)


def host_processes(*markers: str) -> list[tuple[int, str]]:
    """(pid, marker) for each host process (but this one) whose command line holds a marker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace")
        except OSError:
            continue
        found += [(int(name), m) for m in markers if m in argv]
    return found
