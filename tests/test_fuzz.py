"""Fuzz harnesses, run for a bounded time: a crash or a stray exception fails.

atheris is a declared dev dependency: if it is missing, these fail too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

SECONDS = 7  # plus ~3 s of start-up and instrumentation: about 10 s in all


def run_harness(name: str, tmp_path: Path, *extra: str) -> None:
    corpus = tmp_path / "corpus"  # new inputs land here, not in the seeds
    corpus.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "fuzz" / f"fuzz_{name}.py"),
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            *extra,
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
            str(REPO / "fuzz" / "corpus" / name),
        ],
        env={**os.environ, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=SECONDS + 60,
    )
    log = result.stderr[-6000:]
    assert result.returncode == 0, f"exit {result.returncode}; crash files: {list(tmp_path.glob('crash-*'))}\n{log}"
    assert "Done " in log and " runs in " in log, log
    assert not list(tmp_path.glob("crash-*")), log


def test_fuzz_profile(tmp_path: Path) -> None:
    run_harness("profile", tmp_path, f"-dict={REPO / 'fuzz' / 'profile.dict'}")


def test_fuzz_flags(tmp_path: Path) -> None:
    """-v/--tmpfs/-e/--env-file specs, units and ids through the whole flag path."""
    run_harness("flags", tmp_path)


def test_fuzz_batch(tmp_path: Path) -> None:
    """`sbx batch` JSON Lines: parse_line raises nothing but LineError (the seeds hold a deeply nested line)."""
    run_harness("batch", tmp_path, "-max_len=8192")


def test_fuzz_isolate_args(tmp_path: Path) -> None:
    """sbx-isolate's getopt emulation, directory and environment rules: Usage or a valid layout."""
    run_harness("isolate_args", tmp_path)
