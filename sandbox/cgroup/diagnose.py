"""The cgroup checks `sbx doctor` prints: each a (what, ok, detail or how to fix).  Reads only."""

from __future__ import annotations

import os

from .discover import LEAF, WANTED, systemd_unit_not_delegated
from .fs import PROC_CGROUP, UNIFIED_PREFIX, cgroup2_mounts, controllers, is_cgroup2_dir, is_root, own_cgroup
from .fs import own_cgroup_dir, read_or, writable
from .systemd import no_scope, scope_command, user_manager_socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

Check = tuple[str, bool, str]

# Which Linux version brings a figure or a kill sbx uses, and what it does without.
KILL_CHECK = ("cgroup.kill (Linux >= 5.14)", "cgroup.kill", "else freeze + SIGKILL loop")
PEAK_CHECK = ("memory.peak (Linux >= 5.19)", "memory.peak", "else no peak memory figure")
_DELEGATE_CONF = ("not delegated: /etc/systemd/system/user@.service.d/delegate.conf with "
                  "[Service] Delegate=cpu cpuset io memory pids")


def diagnose(environ: Mapping[str, str]) -> list[Check]:
    """Checks for `sbx doctor`: (what, ok, detail or how to fix).  No side effects."""
    checks: list[Check] = []
    mounts = cgroup2_mounts()
    if not mounts:
        checks.append(("cgroup v2 mounted", False, "no cgroup2 mount in /proc/self/mountinfo; limits fall back to rlimits"))
        return checks
    checks.append(("cgroup v2 mounted", True, ", ".join(m for m, _ in mounts)))
    v1 = v1_controllers(read_or(PROC_CGROUP, "") or "")
    if v1:
        checks.append((
            "unified hierarchy owns the controllers",
            False,
            f"hybrid layout: cgroup v1 holds {', '.join(v1)}; boot with systemd.unified_cgroup_hierarchy=1",
        ))
    explicit = environ.get("SBX_CGROUP")
    if explicit:
        ok = is_cgroup2_dir(explicit) and writable(explicit)
        checks.append((
            "SBX_CGROUP usable",
            ok,
            explicit if ok else f"{explicit}: not a cgroup v2 directory writable by us (chown it, its cgroup.procs, cgroup.subtree_control, cgroup.threads)",
        ))
    own = own_cgroup_dir()
    if own is None:
        checks.append(("own cgroup visible", False, f"/proc/self/cgroup: {own_cgroup()!r}"))
        return checks
    checks.append(("own cgroup visible", True, own))
    target = own
    if os.path.basename(own) == LEAF:
        target = os.path.dirname(own)
    if is_root(target):
        checks.append(("own cgroup delegated", False, f"{target} is the root cgroup; set SBX_CGROUP to a child cgroup"))
        if not explicit:
            checks.append(_scope_check(environ))
    else:
        delegated = writable(target) and not systemd_unit_not_delegated(target, environ)
        checks.append((
            "own cgroup delegated",
            delegated,
            target if delegated else "run under `systemd-run --user --scope -p Delegate=yes sbx ...`, or set SBX_CGROUP to a cgroup delegated to you",
        ))
        if not delegated and not explicit:
            checks.append(_scope_check(environ))
    offered = controllers(target)
    for ctrl in WANTED:
        ok = ctrl in offered
        if ok:
            hint = "offered"
        elif ctrl in ("cpu", "memory", "pids"):
            hint = _DELEGATE_CONF
        else:
            hint = f"not delegated (only needed for {'--cpuset' if ctrl == 'cpuset' else 'I/O limits'}); add it to Delegate="
        checks.append((f"controller {ctrl}", ok, hint))
    what, name, without = KILL_CHECK
    checks.append((what, os.path.exists(os.path.join(target, name)), without))
    if "memory" in offered:
        # memory.peak only exists in non-root cgroups; look at ours.
        what, name, without = PEAK_CHECK
        checks.append((what, os.path.exists(os.path.join(own, name)), without))
    return checks


def v1_controllers(proc_cgroup: str) -> list[str]:
    """The controllers cgroup v1 hierarchies hold, from /proc/self/cgroup ("4:memory:/x") (pure)."""
    return [
        line.split(":", 2)[1]
        for line in proc_cgroup.splitlines()
        if not line.startswith(UNIFIED_PREFIX) and line.count(":") >= 2 and line.split(":", 2)[1]
    ]


def _scope_check(environ: Mapping[str, str]) -> Check:
    """Whether `sbx run` will re-execute itself in a transient systemd user scope (systemd.scope_command)."""
    what = "transient systemd user scope"
    if environ.get("SBX_SCOPE"):
        return (what, False, f"already re-run for {environ['SBX_SCOPE']}, which is not usable")
    if no_scope(environ):
        return (what, False, "SBX_NO_SCOPE is set")
    socket = user_manager_socket(environ)
    if socket is None:
        return (what, False, "no systemd user manager answers at $XDG_RUNTIME_DIR/systemd/private")
    if scope_command(["sbx"], environ) is None:
        return (what, False, f"a user manager answers at {socket}, but systemd-run is not on PATH or "
                             "the unified hierarchy does not offer memory and pids")
    return (what, True, f"sbx run re-executes itself under `systemd-run --user --scope -p Delegate=yes` "
                        f"(user manager at {socket}); SBX_NO_SCOPE=1 turns this off")
