"""A run cgroup's figures (`CgroupStats`, `read_stats`) and the CPU-time limit's arithmetic.

Kernel versions matter here: `memory.peak` exists from Linux 5.19,
`pids.peak` from 6.13; before, those figures are None.
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass
from .fs import int_or_none, keyed, read_or

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..model.spec import Limits

MIN_CHECK_DELAY_S = 0.001  # never a busy loop
MIN_CPUS = 0.001  # a floor for divisions by the usable CPUs


@dataclass(frozen=True)
class CgroupStats:
    """Figures of one run cgroup.  CPU times in microseconds, memory in bytes.

    `memory_peak` is None before Linux 5.19, `pids_peak` before 6.13;
    `oom_kills` counts processes the OOM killer killed in this cgroup or
    below it (`memory.events`); `pids_max_hits` counts forks refused by
    pids.max; `throttled_usec` is time held back by cpu.max.
    """

    cpu_usec: int
    user_usec: int
    system_usec: int
    memory_peak: int | None = None
    memory_current: int | None = None
    oom_kills: int = 0
    oom_events: int = 0
    pids_peak: int | None = None
    pids_current: int | None = None
    pids_max_hits: int = 0
    throttled_usec: int = 0

    def since(self, baseline: CgroupStats) -> CgroupStats:
        """These figures less a baseline taken before the payload was released."""
        return CgroupStats(
            cpu_usec=self.cpu_usec - baseline.cpu_usec,
            user_usec=self.user_usec - baseline.user_usec,
            system_usec=self.system_usec - baseline.system_usec,
            memory_peak=self.memory_peak,
            memory_current=self.memory_current,
            oom_kills=self.oom_kills - baseline.oom_kills,
            oom_events=self.oom_events - baseline.oom_events,
            pids_peak=self.pids_peak,
            pids_current=self.pids_current,
            pids_max_hits=self.pids_max_hits - baseline.pids_max_hits,
            throttled_usec=self.throttled_usec - baseline.throttled_usec,
        )


def read_stats(path: str) -> CgroupStats:
    """The figures of cgroup `path` now."""
    cpu = keyed(read_or(os.path.join(path, "cpu.stat")))
    # Hierarchical: an OOM kill in a cgroup the payload made is still the run's.
    mev = keyed(read_or(os.path.join(path, "memory.events")))
    pev = keyed(read_or(os.path.join(path, "pids.events")))
    return CgroupStats(
        cpu_usec=cpu.get("usage_usec", 0),
        user_usec=cpu.get("user_usec", 0),
        system_usec=cpu.get("system_usec", 0),
        memory_peak=int_or_none(read_or(os.path.join(path, "memory.peak"))),
        memory_current=int_or_none(read_or(os.path.join(path, "memory.current"))),
        oom_kills=mev.get("oom_kill", 0),
        oom_events=mev.get("oom", 0),
        pids_peak=int_or_none(read_or(os.path.join(path, "pids.peak"))),
        pids_current=int_or_none(read_or(os.path.join(path, "pids.current"))),
        pids_max_hits=pev.get("max", 0),
        throttled_usec=cpu.get("throttled_usec", 0),
    )


# --- CPU-time limit ------------------------------------------------------------------------


def next_check_delay(limit_s: float, used_s: float, ncpus: float, min_delay: float = MIN_CHECK_DELAY_S) -> float:
    """Seconds until the CPU-time limit could first be reached.

    A run can burn at most `ncpus` CPU-seconds per second (its usable CPUs:
    the cpuset size, or the cpu.max share), so nothing can happen before
    (limit - used) / ncpus.  Checking then, and again after each re-read,
    keeps the overshoot to about `min_delay` plus the kill, instead of up to
    a fixed poll interval.  0 when the limit is already reached.
    """
    remaining = limit_s - used_s
    if remaining <= 0:
        return 0.0
    return max(min_delay, remaining / max(ncpus, MIN_CPUS))


def usable_cpus(limits: Limits | None = None) -> float:
    """CPUs a run can use at once: the affinity/cpuset size, capped by --cpus."""
    try:
        n: float = float(len(os.sched_getaffinity(0)))
    except OSError:
        n = float(os.cpu_count() or 1)
    if limits is not None:
        if limits.cpuset:
            n = min(n, float(cpuset_size(limits.cpuset)) or n)
        if limits.cpus is not None:
            n = min(n, limits.cpus)
    return max(n, MIN_CPUS)


def cpuset_size(cpuset: str) -> int:
    """Number of CPUs in a list like "0-3,6"; 0 when it does not parse."""
    count = 0
    for part in cpuset.split(","):
        part = part.strip()
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            count += int(hi or lo) - int(lo) + 1
        except ValueError:
            return 0
    return count
