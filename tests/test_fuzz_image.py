"""The image fuzz harness (layer extraction, references), run for a bounded time like tests/test_fuzz.py."""

from __future__ import annotations

from pathlib import Path

from test_fuzz import run_harness


def test_fuzz_image(tmp_path: Path) -> None:
    run_harness("image", tmp_path, "-max_len=65536")
