"""Where a run's time goes: `sbx: stamp STEP MS` lines on stderr, one per step (SBX_STAMPS=1).

Off by default and free then: nothing imports this module unless the caller's environment
set SBX_STAMPS (read where the command line and the API read their environment:
config/compose.py sets Spec.stamps, cli/main.py makes the run's Stamps), and each hook
is a None check.  MS counts from the run's origin on CLOCK_MONOTONIC, which every process
of the sandbox shares (sbx makes no time namespace):
- `sbx run`: the process's start.  SBX_STAMPS=<CLOCK_MONOTONIC ns> names it exactly (a
  benchmark sets it as it spawns sbx); any other value estimates it as now less the CPU
  time spent so far, which holds while nothing has blocked (the interpreter's start-up).
- the API and `sbx batch`: the start of supervisor.execute(), per run.
Init (from its clone on) sends its steps as Stamp lines on the report pipe
(protocol.say_stamp, only when Spec.stamps); the supervisor prints them as it reads them,
so lines may come out of order: sort by MS.  Steps of a cold `sbx run -- /bin/true`:

    main args-parsed spec-built seccomp-ready cgroup-discovered spawn entry unshared
    root-built pivot payload-forked init-ready payload-ready released exec exit-seen
    result result-written

`entry` is init's first step once cloned, `unshared` once its user namespace is mapped.  A
warm run's sandbox was built before its run, so its steps begin at `take`.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# A cold run's steps in the order they happen (tests/test_stamps.py checks a real run against it).
COLD_STEPS = ("main", "args-parsed", "spec-built", "seccomp-ready", "cgroup-discovered", "spawn", "entry",
              "unshared", "root-built", "pivot", "payload-forked", "init-ready", "payload-ready", "released",
              "exec", "exit-seen", "result", "torn-down", "result-written")


class Stamps:
    """One run's clock: writes each step's time since `origin_ns` (CLOCK_MONOTONIC) to `fd`."""

    def __init__(self, origin_ns: int, fd: int = 2) -> None:
        self.origin_ns = origin_ns
        self.fd = fd

    @classmethod
    def for_process(cls, environ: Mapping[str, str]) -> Stamps:
        """From this process's start (see the module's docstring)."""
        value = environ.get("SBX_STAMPS", "")
        if value.isdigit() and int(value) > 1:
            return cls(int(value))
        return cls(time.monotonic_ns() - time.process_time_ns())

    @classmethod
    def now(cls) -> Stamps:
        return cls(time.monotonic_ns())

    def stamp(self, step: str) -> None:
        self.at(step, time.monotonic_ns())

    def at(self, step: str, ns: int) -> None:
        """A step stamped at `ns` (CLOCK_MONOTONIC), here or in another process of the run."""
        try:
            os.write(self.fd, f"sbx: stamp {step} {(ns - self.origin_ns) / 1e6:.3f}\n".encode())
        except OSError:
            pass  # a closed stderr: the figures are lost, not the run


def parse(text: str) -> list[tuple[str, float]]:
    """The (step, ms) pairs of the stamp lines in `text`, in time order (benchmarks and tests)."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[:2] == ["sbx:", "stamp"]:
            try:
                found.append((fields[2], float(fields[3])))
            except ValueError:
                continue
    return sorted(found, key=lambda pair: pair[1])
