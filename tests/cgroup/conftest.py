"""Real cgroup v2 tests: they need a delegated cgroup v2 subtree.

This machine's cgroup layout is hybrid, so these tests run in the test VM
(tests/vm/run_stage.py, which sets SBX_VM=1) as the delegated user:

    python tests/vm/run_stage.py -- /opt/sbx-dev/bin/python -m pytest -q tests/cgroup

On a host with a real delegation, run them with SBX_CGROUP_TESTS=1.  They are
left out of a plain `pytest` run unless one of those is set or a path inside
tests/cgroup is named on the command line; once collected, they FAIL (never
skip) when there is no usable delegation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _asked_for(config: pytest.Config) -> bool:
    if os.environ.get("SBX_VM") == "1" or os.environ.get("SBX_CGROUP_TESTS") == "1":
        return True
    for arg in config.args:
        path = Path(arg.split("::", 1)[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if (collection_path == HERE or HERE in collection_path.parents) and not _asked_for(config):
        return True
    return None
