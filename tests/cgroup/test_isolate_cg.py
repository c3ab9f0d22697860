"""sbx-isolate's --cg with a delegated cgroup v2 subtree (see conftest.py; issue 15).

With delegation --cg is what isolate's control-group mode is: --cg-mem is the run cgroup's
memory.max, the meta file has cg-mem (memory.peak) and, after an OOM kill, cg-oom-killed,
and nothing is said on stderr about weaker limits; -m stays the address space (RLIMIT_AS),
as in isolate.  The payloads are tests/cgroup/probe.c and RESERVE_C below, compiled once; a
few runs only (the VM is slow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.cgroup.discover import LEAF, discover
from sandbox.kernel import idmap

REPO = Path(__file__).resolve().parents[2]
PROBE_C = Path(__file__).resolve().parent / "probe.c"
SCRIPT = REPO / "bin" / "sbx-isolate"
RESERVE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
int main(int argc, char **argv) {   /* map argv[1] MiB of address space, touching none of it */
    size_t size = (size_t)atol(argv[1]) << 20;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    printf("reserved %s\n", argv[1]);
    return 0;
}
"""


@pytest.fixture(scope="module")
def env() -> Iterator[dict[str, str]]:
    assert discover(None, os.environ) is not None, "no delegated cgroup v2 subtree"
    assert idmap.for_payload(os.environ) is not None, "sbx-isolate needs subordinate ids"
    base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None  # disk-backed in the VM
    root = tempfile.mkdtemp(prefix="sbx-isolate-cg-", dir=base)
    yield {**os.environ, "PYTHONPATH": str(REPO), "SBX_ISOLATE_ROOT": root}
    shutil.rmtree(root, ignore_errors=True)


def isolate(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True,
                          timeout=240, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def box(env: dict[str, str]) -> Iterator[Path]:
    init = isolate(env, "--cg", "-b", "1", "--init")
    assert init.returncode == 0, init.stderr
    path = Path(init.stdout.strip())
    subprocess.run(["gcc", "-O1", "-pthread", "-o", str(path / "box" / "probe"), str(PROBE_C)], check=True)
    (path / "reserve.c").write_text(RESERVE_C)
    subprocess.run(["gcc", "-O1", "-o", str(path / "box" / "reserve"), str(path / "reserve.c")], check=True)
    yield path
    assert isolate(env, "--cg", "-b", "1", "--cleanup").returncode == 0
    assert not path.exists()


@pytest.fixture(autouse=True)
def no_cgroup_left() -> Iterator[None]:
    yield
    delegation = discover(None, os.environ)
    assert delegation is not None
    left = [d for _top, dirs, _files in os.walk(delegation.path) for d in dirs if d.startswith("sbx-") and d != LEAF]
    assert left == []


def run(env: dict[str, str], box: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, str]]:
    meta = box / "meta"
    proc = isolate(env, "--cg", "-b", "1", "-M", str(meta), *args)
    return proc, dict(line.split(":", 1) for line in meta.read_text().splitlines())


def test_cg_mem_measured(env: dict[str, str], box: Path) -> None:
    proc, meta = run(env, box, "--cg-mem=262144", "--run", "--", "./probe", "hog", "16")
    assert proc.returncode == 0 and "warning" not in proc.stderr, (proc.stderr, meta)
    assert "status" not in meta and meta["exitcode"] == "0", meta
    assert 16 * 1024 <= int(meta["cg-mem"]) < 64 * 1024, meta   # memory.peak, KiB
    assert "cg-oom-killed" not in meta


def test_cg_oom_killed(env: dict[str, str], box: Path) -> None:
    """Past --cg-mem the kernel's OOM killer ends the box: SG, exitsig 9, cg-oom-killed, as CMS reads MLE."""
    proc, meta = run(env, box, "--cg-mem=32768", "-p", "--run", "--", "./probe", "hog", "128")
    assert proc.returncode == 1, (proc.stderr, meta)
    assert meta["status"] == "SG" and meta["exitsig"] == "9" and meta["cg-oom-killed"] == "1", meta
    assert "killed" not in meta   # the kernel killed it, not the time limits


def test_mem_is_address_space_beside_cg_mem(env: dict[str, str], box: Path) -> None:
    """-m is RLIMIT_AS with --cg too, as in isolate, and --cg-mem is memory.max: a 1 GiB reservation
    fails under -m 65536 whatever --cg-mem allows, and passes under a --cg-mem of 32 MiB alone
    (memory.max counts touched memory only); with both, memory.max still OOM-kills a hog -m allows."""
    proc, meta = run(env, box, "--cg-mem=262144", "-m", "65536", "--run", "--", "./reserve", "1024")
    assert proc.returncode == 1 and "mmap: Cannot allocate memory" in proc.stderr, (proc.stderr, meta)
    assert meta["status"] == "RE" and meta["exitcode"] == "1" and "cg-oom-killed" not in meta, meta
    proc, meta = run(env, box, "--cg-mem=32768", "--run", "--", "./reserve", "1024")
    assert proc.returncode == 0 and proc.stdout == "reserved 1024\n", (proc.stderr, meta)
    assert "status" not in meta and "warning" not in proc.stderr, (proc.stderr, meta)
    proc, meta = run(env, box, "--cg-mem=32768", "-m", "1048576", "-p", "--run", "--", "./probe", "hog", "128")
    assert proc.returncode == 1, (proc.stderr, meta)
    assert meta["status"] == "SG" and meta["exitsig"] == "9" and meta["cg-oom-killed"] == "1", meta


def test_cg_time_limit(env: dict[str, str], box: Path) -> None:
    proc, meta = run(env, box, "-t", "0.5", "-w", "20", "--run", "--", "./probe", "busy")
    assert proc.returncode == 1 and proc.stderr.strip().endswith("Time limit exceeded"), proc.stderr
    assert meta["status"] == "TO" and meta["killed"] == "1" and "exitsig" not in meta, meta
    assert 0.5 <= float(meta["time"]) < 0.5 + 0.3, meta
    assert "cg-mem" in meta
