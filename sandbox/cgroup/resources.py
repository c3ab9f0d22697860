"""Writing a run's limits into its cgroup, one function per controller (as crun's cgroup-resources.c).

`apply_limits` returns the controllers that were asked for but are not
delegated (the caller decides whether that is an error: --strict); a file
that exists but refuses its value is a CgroupError.
"""

from __future__ import annotations

import os

from ..kernel.linux import write_file
from ..model.frozen import dataclass
from .fs import CgroupError, errmsg

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..model.spec import Limits
    from .discover import Delegation

CPU_PERIOD_USEC = 100_000
MIN_CPU_QUOTA_USEC = 1_000  # the kernel refuses a smaller quota


@dataclass(frozen=True)
class _Write:
    """One control file to set; `required`: its absence means the controller is not enabled."""

    name: str
    value: str
    required: bool = True


def cpu_max(cpus: float) -> str:
    """cpu.max for a share of `cpus` CPUs: "<quota_usec> <period_usec>"."""
    quota = max(MIN_CPU_QUOTA_USEC, round(cpus * CPU_PERIOD_USEC))
    return f"{quota} {CPU_PERIOD_USEC}"


def io_max_line(dev: str, read_bps: int | None, write_bps: int | None) -> str:
    """An io.max line for one disk: "MAJ:MIN rbps=N wbps=N" with the limits that are set."""
    parts = [dev]
    if read_bps is not None:
        parts.append(f"rbps={read_bps}")
    if write_bps is not None:
        parts.append(f"wbps={write_bps}")
    return " ".join(parts)


def _memory(limits: Limits) -> list[_Write]:
    writes = [_Write("memory.oom.group", "1")]  # an OOM kill takes the whole run, not one process
    if limits.memory is not None:
        writes[:0] = [_Write("memory.max", str(limits.memory)),
                      _Write("memory.swap.max", "0", required=False)]  # absent without swap accounting
    return writes


def _pids(limits: Limits) -> list[_Write]:
    return [] if limits.pids is None else [_Write("pids.max", str(limits.pids))]


def _cpu(limits: Limits) -> list[_Write]:
    return [] if limits.cpus is None else [_Write("cpu.max", cpu_max(limits.cpus))]


def _cpuset(limits: Limits) -> list[_Write]:
    return [] if limits.cpuset is None else [_Write("cpuset.cpus", limits.cpuset)]


def _asked(limits: Limits) -> dict[str, bool]:
    """Per controller: whether `limits` asks for something only it enforces."""
    return {"memory": limits.memory is not None, "pids": limits.pids is not None,
            "cpu": limits.cpus is not None, "cpuset": limits.cpuset is not None}


_WRITERS: tuple[tuple[str, Callable[[Limits], list[_Write]]], ...] = (
    ("memory", _memory), ("pids", _pids), ("cpu", _cpu), ("cpuset", _cpuset))


def apply_limits(path: str, d: Delegation, limits: Limits, extra_devices: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Set `limits` on the run cgroup `path` under `d`; the controllers asked for but missing.

    `extra_devices`: MAJ:MIN of disks io.max must cover besides the
    machine's whole disks (those behind the run's binds).
    """
    missing: list[str] = []
    writes: list[_Write] = []
    asked = _asked(limits)
    for controller, writer in _WRITERS:
        if controller in d.controllers:
            writes += writer(limits)
        elif asked[controller]:
            missing.append(controller)
    if not _io(path, d, limits, extra_devices):
        missing.append("io")
    for w in writes:
        try:
            write_file(os.path.join(path, w.name), w.value)
        except FileNotFoundError:
            if w.required:
                raise CgroupError(f"{path}: no {w.name} (controller not enabled?)") from None
        except OSError as exc:
            raise CgroupError(f"cannot set {w.name}={w.value} in {path}: {errmsg(exc)}") from exc
    return tuple(missing)


def _io(path: str, d: Delegation, limits: Limits, extra_devices: tuple[str, ...]) -> bool:
    """io.max for every whole disk; False when I/O limits are asked for and do not hold.

    Not every block device takes io.max (the machine's own may refuse), but
    one behind a bind of the run must.
    """
    if limits.io_read_bps is None and limits.io_write_bps is None:
        return True
    if "io" not in d.controllers:
        return False
    from .iodev import block_devices

    devices = list(dict.fromkeys((*extra_devices, *block_devices())))
    ok = False
    for dev in devices:
        try:
            write_file(os.path.join(path, "io.max"), io_max_line(dev, limits.io_read_bps, limits.io_write_bps))
            ok = True
        except OSError:
            if dev in extra_devices:
                return False
    return ok
