"""Which block devices io.max must name: the machine's whole disks and those behind a run's binds.

io.max takes whole disks only (a partition is ENODEV), so a path is traced
to its disk through /sys/dev/block, and a mount with an anonymous st_dev
(btrfs and others) through its source device in mountinfo.
"""

from __future__ import annotations

import os

from .fs import MOUNTINFO, read_or, unescape

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

SYS_BLOCK = "/sys/block"
SYS_DEV_BLOCK = "/sys/dev/block"
VIRTUAL_DISKS = ("loop", "ram", "zram")  # left out of "the machine's disks"; a bind's loop device is added


def block_devices() -> list[str]:
    """MAJ:MIN of whole disks, for io.max (loop, ram and zram left out)."""
    out: list[str] = []
    try:
        names = os.listdir(SYS_BLOCK)
    except OSError:
        return out
    for name in names:
        if name.startswith(VIRTUAL_DISKS):
            continue
        dev = read_or(f"{SYS_BLOCK}/{name}/dev")
        if dev:
            out.append(dev.strip())
    return out


def devices_behind(paths: Iterable[str]) -> tuple[str, ...]:
    """The whole disks (MAJ:MIN) that hold `paths`, for io.max: loop devices included, tmpfs and the like not."""
    out: list[str] = []
    mountinfo: str | None = None
    for path in paths:
        try:
            st_dev = os.stat(path).st_dev
        except OSError:
            continue
        disk = whole_disk(majmin(st_dev))
        if disk is None:
            if mountinfo is None:
                mountinfo = read_or(MOUNTINFO, "") or ""
            source = mount_source_device(st_dev, mountinfo)
            disk = None if source is None else whole_disk(source)
        if disk is not None and disk not in out:
            out.append(disk)
    return tuple(out)


def majmin(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def whole_disk(dev: str) -> str | None:
    """MAJ:MIN of the disk a block device belongs to (itself unless a partition); None if not a block device."""
    sys_dir = f"{SYS_DEV_BLOCK}/{dev}"
    if not os.path.exists(os.path.join(sys_dir, "dev")):
        return None
    if os.path.exists(os.path.join(sys_dir, "partition")):
        parent = read_or(os.path.join(os.path.realpath(sys_dir), "..", "dev"))
        return parent.strip() if parent else None
    return dev


def mount_source_device(st_dev: int, mountinfo: str | None = None) -> str | None:
    """MAJ:MIN of the block device a mount of `st_dev` was made from (btrfs and others show an anonymous st_dev)."""
    if mountinfo is None:
        mountinfo = read_or(MOUNTINFO, "") or ""
    for source in mount_sources(majmin(st_dev), mountinfo):
        if not source.startswith("/dev/"):
            continue
        try:
            rdev = os.stat(source).st_rdev
        except OSError:
            continue
        if rdev:
            return majmin(rdev)
    return None


def mount_sources(dev: str, mountinfo: str) -> list[str]:
    """The source field of each mount of device `dev` (MAJ:MIN) in `mountinfo`, in order (pure)."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split(" ")
        if not sep or len(fields) < 3 or fields[2] != dev:  # id parent maj:min ...
            continue
        out.append(unescape((right.split(" ") + ["", ""])[1]))  # fstype source options
    return out
