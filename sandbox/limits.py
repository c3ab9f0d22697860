"""Which limits this run can enforce, and how loudly to say so when it cannot.

Without cgroup v2 delegation (not wired in yet) the degraded path applies:
rlimits per process, a wall timer in the supervisor, and the pid namespace
killed as a whole.  A limit that cannot be applied is a warning, or an error
under --strict: sbx never pretends to enforce what it does not.
"""

from __future__ import annotations

from .errors import UsageError
from .spec import Spec

# limit -> how the degraded path enforces it (None: it cannot)
DEGRADED = {
    "memory": "RLIMIT_AS per process",
    "time": "RLIMIT_CPU per process",
    "wall_time": "the supervisor's timer",
    "file_size": "RLIMIT_FSIZE",
    "open_files": "RLIMIT_NOFILE",
    "stack": "RLIMIT_STACK",
    "cpus": None,
    "cpuset": None,
    "pids": None,
    "output": None,
    "io_read_bps": None,
    "io_write_bps": None,
}
PER_PROCESS = ("memory", "time")
FLAGS = {"pids": "--pids-limit", "output": "--output-limit"}


def requested(spec: Spec) -> list[str]:
    return [name for name in DEGRADED if getattr(spec.limits, name) is not None]


def enforced(spec: Spec) -> dict[str, bool]:
    """Per requested limit: is it enforced for the whole sandbox?"""
    return {name: DEGRADED[name] is not None and name not in PER_PROCESS for name in requested(spec)}


def check(spec: Spec) -> list[str]:
    """Warnings for limits that are weaker than asked; raises under --strict."""
    problems = []
    for name in requested(spec):
        how = DEGRADED[name]
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        if how is None:
            problems.append(f"{flag} is not enforced: it needs cgroup v2 delegation (see 'sbx doctor')")
        elif name in PER_PROCESS:
            problems.append(f"{flag} is enforced per process only ({how}), not for the whole sandbox: "
                            "it needs cgroup v2 delegation (see 'sbx doctor')")
    if problems and spec.limits.strict:
        raise UsageError(problems[0] + "; refusing to run under --strict")
    return problems
