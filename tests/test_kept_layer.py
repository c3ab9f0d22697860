"""A kept writable layer (`sbx run --commit`, build RUN steps) is bounded by --disk while the run
writes: it lives on the sandbox's tmpfs, and only a normalized copy reaches the store.

Each attack has a control: the same write under a --disk that fits it is saved whole.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import busybox_image, sbx

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("kept")
    sbx("image", "--root", str(base / "store"), "import", "--name", "busybox", str(busybox_image(base / "bb")),
        check=True, timeout=120)
    return base / "store"


def commit(store: Path, name: str, script: str, *options: str) -> subprocess.CompletedProcess[str]:
    return sbx("run", "--root", str(store), "--image", "busybox", *options, "--commit", name, "--",
               "sh", "-c", script, timeout=120)


def run(store: Path, image: str, script: str) -> subprocess.CompletedProcess[str]:
    return sbx("run", "--root", str(store), "--image", image, "--uid", "0", "--gid", "0", "--",
               "sh", "-c", script, timeout=120)


def layer_bytes(store: Path, name: str) -> int:
    """The data bytes of an image's top layer, as stored on the host."""
    record = json.loads(sbx("image", "--root", str(store), "inspect", name, check=True).stdout)[0]
    top = store / "layers" / "sha256" / str(record["layers"][-1])[7:]
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name_ in files:
            st = os.lstat(os.path.join(dirpath, name_))
            total += st.st_size
    return total


def leftovers(store: Path) -> list[str]:
    return os.listdir(store / "tmp")


def test_one_big_file_stops_at_disk(store: Path) -> None:
    result = commit(store, "big", "dd if=/dev/zero of=/big bs=1M count=64 2>&1; echo status=$?", "--disk", "16M")
    assert result.returncode == 0, result.stderr
    assert "No space left on device" in result.stdout and "status=1" in result.stdout
    assert "sbx: warning: the run filled its writable layer (--disk 16.0MiB)" in result.stderr
    assert layer_bytes(store, "big") <= 16 * MiB
    # Control: room for it, the whole file is kept and no warning is given.
    control = commit(store, "big-ok", "dd if=/dev/zero of=/big bs=1M count=20 2>&1; echo status=$?", "--disk", "32M")
    assert "status=0" in control.stdout and "warning" not in control.stderr, control.stderr
    assert layer_bytes(store, "big-ok") == 20 * MiB
    assert leftovers(store) == []


def test_many_files_each_under_the_limit_stop_at_disk(store: Path) -> None:
    # No one file is large (a per-file RLIMIT_FSIZE cannot help): their sum is bounded as it grows.
    script = "i=0; while [ $i -lt 40 ]; do dd if=/dev/zero of=/f$i bs=1M count=1 2>/dev/null || break; " \
             "i=$((i+1)); done; echo made=$i"
    result = commit(store, "many", script, "--disk", "8M")
    made = int(result.stdout.strip().split("=")[1])
    assert made < 8, result.stdout
    assert layer_bytes(store, "many") <= 8 * MiB
    control = commit(store, "many-ok", script, "--disk", "64M")
    assert control.stdout.strip() == "made=40", control.stderr
    assert layer_bytes(store, "many-ok") == 40 * MiB


def test_sparse_file_claiming_terabytes_is_refused_without_reading_it(store: Path) -> None:
    # A sparse file takes no tmpfs pages, yet its apparent size is what an image would hold:
    # the save refuses it from its size, before hashing a terabyte of zeros (the timeout would).
    result = commit(store, "sparse", "dd if=/dev/zero of=/sparse bs=1 count=1 seek=1099511627776 2>/dev/null; "
                    "ls -l /sparse", "--disk", "16M")
    assert result.returncode == 125, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sbx: error:")]
    assert errors == ["sbx: error: the writable layer holds more than the 16.0MiB --disk allows"], result.stderr
    assert sbx("image", "--root", str(store), "inspect", "sparse").returncode == 125
    assert leftovers(store) == []


def test_layer_keeps_its_shape_through_the_copy(store: Path) -> None:
    # Hard links, whiteouts, an opaque directory, a fifo, symlinks, modes and mtimes.
    script = ("echo one > /a && ln /a /b && mkfifo /p && ln -s a /s && rm /bin/vi && rm -r /etc && mkdir /etc "
              "&& echo only > /etc/only && mkdir -m 0 /closed && chmod 4755 /a && TZ=UTC touch -t 200102030405.06 /b")
    result = commit(store, "shaped", script)
    assert result.returncode == 0, result.stderr
    shown = run(store, "shaped", "stat -c '%i %h %a' /a /b | sort -u | wc -l; stat -c '%h %a %Y' /a; "
                "test -p /p && echo fifo; readlink /s; test -e /bin/vi || echo vi-gone; ls /etc; "
                "stat -c %a /closed")
    assert shown.stdout.split("\n") == ["1", "2 755 981173106", "fifo", "a", "vi-gone", "hosts", "only", "0", ""], \
        shown.stdout + shown.stderr


def test_killed_run_keeps_what_it_wrote(store: Path) -> None:
    # A run stopped by a limit still hands its layer over (the fd outlives the sandbox).
    result = commit(store, "killed", "echo early > /early; sleep 30", "--wall-time", "1")
    assert result.returncode != 0
    assert run(store, "killed", "cat /early").stdout == "early\n"
    assert leftovers(store) == []


def test_build_step_filling_disk_fails_with_the_reason(store: Path, tmp_path: Path) -> None:
    (tmp_path / "Containerfile").write_text("FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M count=64\n")
    result = sbx("image", "--root", str(store), "build", "-t", "toofull", "--disk", "16M", str(tmp_path), timeout=120)
    assert result.returncode == 125
    assert "Containerfile:2: RUN failed: exit status 1 (the run filled its writable layer (--disk 16.0MiB)" \
        in result.stderr, result.stderr
    assert leftovers(store) == []
    (tmp_path / "Containerfile").write_text("FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M count=8\n")
    fits = sbx("image", "--root", str(store), "build", "-t", "fits", "--disk", "16M", str(tmp_path), timeout=120)
    assert fits.returncode == 0, fits.stderr
    assert layer_bytes(store, "fits") == 8 * MiB
