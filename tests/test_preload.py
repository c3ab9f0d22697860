"""After pivot_root the host's stdlib may be out of reach: the run path imports it all before.

In an image run the new root is the image's: the interpreter's stdlib (here under the host's
/usr) is not in it.  A module the payload, the protocol, Landlock or the seccomp loader
imported lazily after the pivot would fail the run ("No module named 'fcntl'" was a pyenv
Python's `--network host`).  init.AFTER_PIVOT lists them; each run here takes one of those paths.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUSYBOX, REPO, busybox_layer, sbx
from sandbox.image.layout import Layout

# sbx as its console script starts it: not `python -m`, whose runpy imports more of the stdlib
# before sbx runs (warnings among them), which would hide a module imported after the pivot.
SBX_SCRIPT = [sys.executable, "-c", "import sys; from sandbox.cli.main import main; sys.argv[0] = 'sbx'; "
              "sys.exit(main())"]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert os.path.exists(BUSYBOX), "busybox-static is not installed"
    tmp = tmp_path_factory.mktemp("preload")
    src, root = tmp / "oci", tmp / "store"
    Layout(str(src)).index([Layout(str(src)).image([busybox_layer()], {"Cmd": ["/bin/sh"]})], ref_name="latest")
    done = subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(root), "import", "-q", "--name",
                           "bb", str(src)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    return root


def test_stdlib_is_out_of_reach_inside(store: Path) -> None:
    """The premise: the interpreter's stdlib is not in the image's root."""
    stdlib = os.path.dirname(os.__file__)
    done = sbx("run", "--root", str(store), "--image", "bb", "--", "sh", "-c", f"test -e {stdlib}/os.py; echo $?")
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr


# name, options, environment
PATHS = [
    ("network host", ("--network", "host"), {}),  # no loopback set-up before the pivot (it imported fcntl)
    ("network none", (), {}),
    ("another uid", ("--uid", "1000", "--gid", "1000"), {}),
    ("strict seccomp", ("--seccomp", "strict"), {}),
    ("no seccomp", ("--seccomp", "none"), {}),
    ("limits", ("--pids-limit", "50", "--open-files", "64", "--file-size", "1M", "--time", "5"), {}),
    ("no landlock", (), {"SBX_LANDLOCK": "0"}),
]


@pytest.mark.parametrize("name, options, extra", PATHS, ids=[p[0] for p in PATHS])
def test_image_run_needs_nothing_after_the_pivot(store: Path, name: str, options: tuple[str, ...],
                                                 extra: dict[str, str]) -> None:
    # `sh` by name: searched on PATH (os.execvpe would import warnings); a --pass-fd fd is placed too.
    r, w = os.pipe()
    try:
        done = subprocess.run([*SBX_SCRIPT, "run", "--root", str(store), "--image", "bb",
                               *options, "--pass-fd", str(r), "--", "sh", "-c", "echo ok"],
                              capture_output=True, text=True, pass_fds=(r,), timeout=60,
                              env={**os.environ, "PYTHONPATH": str(REPO), **extra})
    finally:
        os.close(r)
        os.close(w)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr
    assert "No module named" not in done.stderr
