"""Which limits a run can enforce, and how loudly to say so when it cannot.

With a delegated cgroup v2 subtree, memory, pids, cpus, cpuset and io are
cgroup limits on the whole tree, and CPU time is watched there.  Without
one (cgroup v1 or hybrid hosts, containers without delegation) the degraded
path applies: rlimits per process, the supervisor's wall timer, the pid
namespace killed as a whole.  A limit that cannot be applied as asked is a
warning, or an error under --strict: sbx never pretends to enforce what it
does not.

Without the pids controller, --pids-limit is RLIMIT_NPROC: since Linux 5.14 the
kernel counts it per user namespace and per uid there (and charges every level
up to the caller), so it bounds the payload's tree as pids.max would.  CPU time
and memory are then counted by the supervisor over every task of the sandbox's
pid namespace (census.py); they stay `false` in limits_enforced, since the
counts are checks at intervals with known gaps (SECURITY.md), not a kernel bound.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from ..model.spec import Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..cgroup.discover import Delegation

# limit -> the cgroup controller that enforces it for the whole tree
CONTROLLER = {"memory": "memory", "pids": "pids", "cpus": "cpu", "cpuset": "cpuset",
              "io_read_bps": "io", "io_write_bps": "io"}
# limits the degraded path still applies, per process
PER_PROCESS = {"memory": "RLIMIT_AS", "time": "RLIMIT_CPU"}
# counted over the whole sandbox by the supervisor without a cgroup (census.py)
COUNTED = {"memory": "memory", "time": "CPU time"}
# limits that never need a cgroup: rlimits that mean what they say, or the supervisor's own
ALWAYS = ("wall_time", "output", "file_size", "open_files", "stack", "address_space")
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
        elif name == "pids" and not by_cgroup(name, delegation, unenforced):
            ok = nproc_limit(spec) is not None  # RLIMIT_NPROC, per user namespace
        else:
            ok = by_cgroup(name, delegation, unenforced)
        enforced[name] = ok
        if ok:
            continue
        why = ("it needs cgroup v2 delegation (see 'sbx doctor')" if delegation is None
               else f"the {controller} controller is not delegated to {delegation.path}")
        if name in PER_PROCESS:
            # Without a run cgroup the supervisor counts the whole sandbox (census.py); with one
            # that lacks the controller, nothing does.
            counted = (f"; over the whole sandbox the supervisor counts its {COUNTED[name]} at intervals"
                       if delegation is None else "")
            problems.append(f"{flag} is enforced per process only ({PER_PROCESS[name]}) by the kernel"
                            f"{counted}: {why}")
        elif name == "pids":
            problems.append(f"{flag} is not enforced: {why}, and RLIMIT_NPROC cannot stand in "
                            f"({_nproc_refusal(spec)})")
        else:
            problems.append(f"{flag} is not enforced: {why}")
    rw = [m for m in spec.mounts if m.mode == "rw" and m.source is not None]
    if rw and not spec.id_ranges:
        problems.append(f"-v {rw[0].source}:{rw[0].target}:rw" + (f" (and {len(rw) - 1} more rw binds)" if len(rw) > 1 else "")
                        + ": without subordinate ids the payload is you on the host, and may chmod, replace "
                        "or plant anything there (see 'sbx doctor' to add a range)")
    from . import landlock

    problems += landlock.notes(spec.landlock)  # a fence asked for and missing: a note, or refused under --strict
    if problems and spec.limits.strict:
        raise UsageError(problems[0] + "; refusing to run under --strict")
    if rw and spec.id_ranges and spec.uid == 0:
        problems.append("--uid 0 with an rw bind: the payload is root inside, which is you on the host, and "
                        "may chmod, replace or plant anything there")
    if spec.network == "host":
        sockets = "" if landlock.scoped(spec.landlock) else " and abstract unix sockets"  # Landlock ABI 6 scopes them
        problems.append("--network host: the sandbox shares the host's network namespace; services on the "
                        f"host's loopback{sockets} are reachable")
    return enforced, problems


def by_cgroup(name: str, delegation: Delegation | None, unenforced: tuple[str, ...]) -> bool:
    """Whether the run cgroup holds this limit for the whole tree."""
    controller = CONTROLLER.get(name)
    return (delegation is not None and controller is not None and controller not in unenforced
            and controller in delegation.controllers)


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _nproc_refusal(spec: Spec) -> str:
    if not _kernel_at_least(5, 14):
        return "before Linux 5.14 it counts every process of the user on the host"
    return "the payload would be real root, whom the kernel exempts from it"


def nproc_limit(spec: Spec) -> int | None:
    """The RLIMIT_NPROC that lets the payload's tree hold exactly spec.limits.pids tasks, or None
    where it cannot hold.

    The kernel counts the tasks of one uid in one user namespace (threads too), at fork and
    at every level up to the caller's.  The payload is alone in its count when it runs as a
    subordinate id (id ranges, uid != 0) or in a nested namespace of its own (uid != 0 without
    ranges); as uid 0 it shares the caller's count in the sandbox's namespace with init (and
    pasta, which joins it; whatever started init stays outside).  Real root is exempt.
    """
    pids = spec.limits.pids
    if pids is None or not _kernel_at_least(5, 14):
        return None
    if spec.uid != 0 and spec.id_ranges:
        return pids  # a subordinate id: never real root
    if os.getuid() == 0:
        return None  # the payload is the caller, real root: RLIMIT_NPROC does not apply
    if spec.uid != 0:
        return pids  # its own nested user namespace
    helper = 0
    if spec.network == "pasta":
        from ..net.network import helper_name

        helper = 1 if helper_name(spec.usernet) == "pasta" else 0  # slirp4netns stays outside the user namespace
    return pids + 1 + helper


def sandbox_spec(spec: Spec, enforced: dict[str, bool], nproc: int | None = None) -> Spec:
    """The spec init and the payload get: their rlimits, where the run cgroup does better.

    `nproc`: the RLIMIT_NPROC standing in for the pids controller (nproc_limit), or
    None; the inner spec's `pids` is that rlimit's value, not a task count.

    No RLIMIT_AS for --memory where memory.max holds the whole tree: RLIMIT_AS
    counts address space, not memory, so a run that maps more than it touches
    (Go, Java, ASan, a big malloc arena) would fail with ENOMEM, and an
    over-limit allocation would be an RE instead of the cgroup's MLE.
    --address-space is RLIMIT_AS whatever holds memory (isolate's -m): kept.

    RLIMIT_CPU only as a backstop a second past the limit where the supervisor
    watches the cgroup's CPU time: the payload's own clock also counts its set-up
    before release, which the run's figure leaves out, so at the limit itself
    the rlimit would fire first and turn a precise TLE into an early SIGXCPU.
    """
    changes: dict[str, object] = {}
    if spec.limits.pids is not None:
        changes["pids"] = nproc
    if spec.limits.memory is not None and enforced.get("memory"):
        changes["memory"] = None
    if spec.limits.time is not None and enforced.get("time"):
        changes["time"] = spec.limits.time + 1.0
    if not changes:
        return spec
    from ..model.frozen import replace

    return replace(spec, limits=replace(spec.limits, **changes))  # type: ignore[arg-type]


def rlimits_of(spec: Spec) -> tuple[tuple[int, int, int], ...]:
    """The payload's rlimits (after sandbox_spec), as (resource, soft, hard)."""
    import resource

    limits = spec.limits
    # --address-space, and --memory where no cgroup holds it (sandbox_spec): the smaller
    address = [size for size in (limits.address_space, limits.memory) if size is not None]
    out = []
    if limits.time is not None:
        seconds = max(1, int(limits.time + 0.999))
        out.append((resource.RLIMIT_CPU, seconds, seconds + 1))
    for which, value in ((resource.RLIMIT_FSIZE, limits.file_size), (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_STACK, limits.stack), (resource.RLIMIT_AS, min(address, default=None)),
                         (resource.RLIMIT_NPROC, limits.pids)):
        if value is not None:
            out.append((which, value, value))
    return tuple(out)
