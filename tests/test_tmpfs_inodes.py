"""Kernel memory: every tmpfs sbx mounts has an inode cap sized from its byte limit.

Without `nr_inodes` a tmpfs takes about one inode per two pages of RAM (millions), each about 1 KiB
of kernel memory that no byte limit counts: empty files use no data pages, so `--tmpfs /t:size=1M`
held as many files as a 64G one.  Each case fills a mount with empty files until the kernel says
no, and checks that it stopped at the cap (rootfs.inode_cap), with ENOSPC, while the byte limit was
untouched (data still fits).  The control fills a plain tmpfs of the same size outside sbx, where
the same loop goes far past the cap.  Places writable by any uid (tmpfs mounts are 1777) unless the
case passes --uid 0 for the root-owned ones (/, /dev).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sbx

from sandbox.runtime.rootfs import DEV_INODES, MAX_INODES, MIN_INODES, inode_cap

# Make up to LIMIT empty files in DIR; print: inodes total, free before, files made, the error (or
# "none"), free inodes after, data blocks used by the loop, and whether 4 KiB of data still fit.
FILL = r"""
import errno, os, sys
d, limit = sys.argv[1], int(sys.argv[2])
os.makedirs(d, exist_ok=True)
before = os.statvfs(d)
made, err = 0, "none"
while made < limit:
    try:
        os.close(os.open(f"{d}/i{made}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        err = errno.errorcode[exc.errno]
        break
    made += 1
after = os.statvfs(d)
fits = "no"
if made:
    with open(f"{d}/i0", "wb") as f:
        f.write(b"x" * 4096)
    fits = "yes"
print(before.f_files, before.f_ffree, made, err, after.f_ffree, before.f_bfree - after.f_bfree, fits)
"""

MiB = 1 << 20


def fill(directory: str, limit: int, *options: str) -> tuple[int, int, int, str, int, int, str]:
    result = sbx("run", *options, "--", "python3", "-c", FILL, directory, str(limit))
    assert result.returncode == 0, result.stderr
    total, free, made, err, free_after, blocks, fits = result.stdout.split()
    return int(total), int(free), int(made), err, int(free_after), int(blocks), fits


def assert_capped(found: tuple[int, int, int, str, int, int, str], cap: int) -> None:
    total, free, made, err, free_after, blocks, fits = found
    assert total == cap, found
    assert err == "ENOSPC" and made == free and free_after == 0, found
    assert blocks == 0 and fits == "yes", found  # the inode cap stopped it, not the byte limit


def test_inode_cap_rule() -> None:
    assert inode_cap(1 * MiB) == MIN_INODES  # a small mount still holds an overlay's dirs and some files
    assert inode_cap(6 * MiB) == 1536 and inode_cap(256 * MiB) == 65536
    assert inode_cap(64 << 30) == MAX_INODES and inode_cap(0) == MAX_INODES  # size 0: no byte limit, inodes still
    assert DEV_INODES < MIN_INODES


@pytest.mark.parametrize("size", ["1M", "6M"])
def test_tmpfs_option_capped_by_size(size: str) -> None:
    cap = inode_cap(int(size[:-1]) * MiB)
    assert_capped(fill("/t", cap + 100, "--tmpfs", f"/t:size={size}"), cap)


def test_tmp_capped(tmp_path: Path) -> None:
    profile = tmp_path / "small-tmp.toml"
    profile.write_text('[sandbox]\ntmp_size = "5M"\n')
    assert_capped(fill("/tmp", 2000, "--profile", str(profile)), inode_cap(5 * MiB))


def test_dev_shm_capped() -> None:
    cap = inode_cap(64 * MiB)  # /dev/shm is 64M: 16384 files, a fraction of a second
    assert_capped(fill("/dev/shm", cap + 100), cap)


def test_writable_root_capped() -> None:
    # The overlay's upper and work dirs live on the --disk tmpfs: sbx's own set-up takes some of its
    # inodes (df counts them used), the payload gets the rest and no more.  Root inside writes to /.
    found = fill("/fill", 2000, "--uid", "0", "--gid", "0", "--disk", "4M")
    assert_capped(found, inode_cap(4 * MiB))
    assert found[1] < MIN_INODES - 20  # set-up used a few


def test_dev_capped() -> None:
    total, free, made, err, *_ = fill("/dev/x", 1000, "--uid", "0", "--gid", "0")
    assert total == DEV_INODES and err == "ENOSPC" and made == free, (total, free, made, err)


def test_df_inode_totals(tmp_path: Path) -> None:
    # 8G: a byte limit past MAX_INODES * INODE_BYTES, where the inode cap stops growing (nothing is allocated)
    result = sbx("run", "--disk", "8G", "--tmpfs", "/a:size=2M", "--tmpfs", "/b", "--", "df", "-i", "/", "/tmp",
                 "/dev", "/dev/shm", "/a", "/b")
    assert result.returncode == 0, result.stderr
    totals = {line.split()[-1]: int(line.split()[1]) for line in result.stdout.splitlines()[1:]}
    assert totals == {"/": MAX_INODES, "/tmp": inode_cap(64 * MiB), "/dev": DEV_INODES,
                      "/dev/shm": inode_cap(64 * MiB), "/a": MIN_INODES, "/b": inode_cap(64 * MiB)}, result.stdout
    small = sbx("run", "--uid", "0", "--gid", "0", "--disk", "1M", "--", "sh", "-c",
                "echo ok > /x && cat /x && df -i / | tail -1")
    assert small.returncode == 0 and small.stdout.split()[:2] == ["ok", "none"], small.stderr
    assert int(small.stdout.split()[2]) == MIN_INODES  # a 1M root still has room for its overlay


def test_control_plain_tmpfs_is_not_capped(tmp_path: Path) -> None:
    """The attack without the fix: a plain 1M tmpfs takes far more empty files than sbx's cap."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    limit = 3 * MIN_INODES
    script = f"mount -t tmpfs -o size=1M none {mnt} && {sys.executable} -c \"$0\" {mnt} {limit}"
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", script, FILL], capture_output=True, text=True,
                            timeout=60, env={**os.environ})
    assert result.returncode == 0, result.stderr
    total, _free, made, err, *_ = result.stdout.split()
    assert int(made) == limit and err == "none" and int(total) > 100 * inode_cap(MiB), result.stdout
