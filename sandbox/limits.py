"""Which limits a run can enforce, and how loudly to say so when it cannot.

With a delegated cgroup v2 subtree, memory, pids, cpus, cpuset and io are
cgroup limits on the whole tree, and CPU time is watched there.  Without
one (cgroup v1 or hybrid hosts, containers without delegation) the degraded
path applies: rlimits per process, the supervisor's wall timer, the pid
namespace killed as a whole.  A limit that cannot be applied as asked is a
warning, or an error under --strict: sbx never pretends to enforce what it
does not.
"""

from __future__ import annotations

from .errors import UsageError
from .spec import Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .cgroup import Delegation

# limit -> the cgroup controller that enforces it for the whole tree
CONTROLLER = {"memory": "memory", "pids": "pids", "cpus": "cpu", "cpuset": "cpuset",
              "io_read_bps": "io", "io_write_bps": "io"}
# limits the degraded path still applies, per process
PER_PROCESS = {"memory": "RLIMIT_AS", "time": "RLIMIT_CPU"}
# limits that never need a cgroup: rlimits that mean what they say, or the supervisor's own
ALWAYS = ("wall_time", "output", "file_size", "open_files", "stack")
FLAGS = {"pids": "--pids-limit", "output": "--output-limit", "time": "--time"}


def requested(spec: Spec) -> list[str]:
    names = (*CONTROLLER, "time", *ALWAYS)
    return [name for name in names if getattr(spec.limits, name) is not None]


def plan(spec: Spec, delegation: Delegation | None, unenforced: tuple[str, ...]) -> tuple[dict[str, bool], list[str]]:
    """Per requested limit, whether it holds for the whole sandbox; and the warnings.

    `unenforced`: controllers the run cgroup lacked.  Raises UsageError under
    --strict when a limit or protection would be weaker than asked.
    """
    enforced: dict[str, bool] = {}
    problems = []
    for name in requested(spec):
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        controller = CONTROLLER.get(name)
        if name in ALWAYS:
            ok = True
        elif name == "time":
            ok = delegation is not None
        else:
            ok = delegation is not None and controller not in unenforced and controller in delegation.controllers
        enforced[name] = ok
        if ok:
            continue
        why = ("it needs cgroup v2 delegation (see 'sbx doctor')" if delegation is None
               else f"the {controller} controller is not delegated to {delegation.path}")
        if name in PER_PROCESS:
            problems.append(f"{flag} is enforced per process only ({PER_PROCESS[name]}), not for the whole "
                            f"sandbox: {why}")
        else:
            problems.append(f"{flag} is not enforced: {why}")
    rw = [m for m in spec.mounts if m.mode == "rw" and m.source is not None]
    if rw and not spec.id_ranges:
        problems.append(f"-v {rw[0].source}:{rw[0].target}:rw" + (f" (and {len(rw) - 1} more rw binds)" if len(rw) > 1 else "")
                        + ": without subordinate ids the payload is you on the host, and may chmod, replace "
                        "or plant anything there (see 'sbx doctor' to add a range)")
    if problems and spec.limits.strict:
        raise UsageError(problems[0] + "; refusing to run under --strict")
    if rw and spec.id_ranges and spec.uid == 0:
        problems.append("--uid 0 with an rw bind: the payload is root inside, which is you on the host, and "
                        "may chmod, replace or plant anything there")
    if spec.network == "host":
        problems.append("--network host: the sandbox shares the host's network namespace; services on the "
                        "host's loopback and abstract unix sockets are reachable")
    return enforced, problems
