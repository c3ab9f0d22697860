"""Finding a delegated cgroup v2 subtree and making it usable (`discover`, `prepare`).

Where a delegation comes from, in order:

1. explicit: `--cgroup PATH` or `SBX_CGROUP` in the caller's environment;
2. own: the cgroup we are in, when we may create children and move processes
   there (what `systemd-run --user --scope -p Delegate=yes` gives, or a
   cgroup an administrator chowned to us as systemd does);
3. a transient systemd user scope: when neither applies and a systemd user
   manager is reachable, the CLI re-executes sbx under
   `systemd-run --user --scope -p Delegate=yes` (systemd.py), with
   `SBX_SCOPE` naming the unit, and the re-executed sbx uses that scope as
   its own cgroup (2.), even without the `user.delegate` mark systemd < 253
   does not set; `SBX_NO_SCOPE=1` turns this off;
4. none: the caller falls back to rlimits and says so.

The environment is always the caller's `environ` argument, never os.environ:
an API Runner's environment is the only one its runs see.

The kernel's "no internal processes" rule: a cgroup that has processes cannot
enable controllers for its children (EBUSY).  So before enabling controllers
every process already in the delegated cgroup is moved into a leaf child,
`sbx-leaf`; a later sbx that finds itself in `<D>/sbx-leaf` uses `<D>`.

Only `os`, `errno` and `time` at module level: this is on the start-up path.
"""

from __future__ import annotations

import errno
import os
import time

from ..kernel.linux import write_file
from ..model.frozen import dataclass
from .fs import (DIR_MODE, CgroupError, cgroup2_mounts, controllers, errmsg, is_cgroup2_dir, is_root, own_cgroup_dir,
                 procs, writable)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# Controllers sbx uses, in the order they are enabled.
WANTED = ("cpu", "cpuset", "io", "memory", "pids")
# Without these no limit that matters can be enforced.
ESSENTIAL = ("memory", "pids")
LEAF = "sbx-leaf"
UNIT_SUFFIXES = (".scope", ".service", ".slice")  # systemd's unit cgroups
DELEGATE_XATTRS = ("user.delegate", "trusted.delegate")  # systemd >= 253 marks Delegate=yes units
_XATTR_TRUE = (b"1", b"yes", b"true")
_EBUSY_TRIES = 200  # as crun does (it tries 1000)
_EBUSY_DELAY_S = 0.001
_MOVE_ROUNDS = 100  # of re-reading cgroup.procs while processes fork in


@dataclass(frozen=True)
class Delegation:
    """A cgroup v2 directory we may create run cgroups in.

    `how` is "explicit" (--cgroup / SBX_CGROUP), "own" (the cgroup we run in)
    or "systemd-scope"; `controllers` are those enabled for its children.
    """

    path: str
    how: str
    controllers: tuple[str, ...]


def discover(explicit: str | None, environ: Mapping[str, str]) -> Delegation | None:
    """Find and prepare a delegated cgroup, or None when there is none.

    An explicit path (argument, else `SBX_CGROUP` in `environ`) that cannot
    be used is an error (CgroupError), never a silent fallback.  Our own
    cgroup is used when we may create children there and it offers memory
    and pids.
    """
    path = explicit or environ.get("SBX_CGROUP") or None
    if path:
        path = os.path.abspath(path)
        if not is_cgroup2_dir(path):
            raise CgroupError(f"{path} is not a cgroup v2 directory")
        if not writable(path):
            raise CgroupError(
                f"{path} is not delegated to us (need write access to it, its cgroup.procs and cgroup.subtree_control)"
            )
        d = prepare(path, "explicit")
        missing = [c for c in ESSENTIAL if c not in d.controllers]
        if missing:
            raise CgroupError(f"{path} does not offer the {' and '.join(missing)} controller(s)")
        return d

    own = own_cgroup_dir()
    if own is None:
        return None
    target = usable_own(own, environ)
    if target is None:
        return None
    how = "systemd-scope" if os.path.basename(target) == environ.get("SBX_SCOPE") else "own"
    if target != own:
        return prepare(target, how)  # already set up by an earlier sbx: we sit in <D>/sbx-leaf
    try:
        d = prepare(own, how)
    except CgroupError:
        return None
    if not all(c in d.controllers for c in ESSENTIAL):
        return None
    return d


def usable_own(own: str, environ: Mapping[str, str]) -> str | None:
    """The cgroup discover() would prepare when we are in `own`, or None.  Reads only.

    `own` itself, or `<D>` when we sit in `<D>/sbx-leaf` of a cgroup an
    earlier sbx prepared.
    """
    if os.path.basename(own) == LEAF:
        parent = os.path.dirname(own)
        if writable(parent) and all(c in controllers(parent, "cgroup.subtree_control") for c in ESSENTIAL):
            return parent
    if is_root(own) or not writable(own) or systemd_unit_not_delegated(own, environ):
        return None  # never herd the whole system into a leaf
    if not all(c in controllers(own) for c in ESSENTIAL):
        return None
    return own


def systemd_unit_not_delegated(path: str, environ: Mapping[str, str]) -> bool:
    """True for a systemd unit cgroup that says it is not delegated.

    Under user@UID.service every cgroup belongs to the user, delegated or not;
    systemd (>= 253) marks delegated ones with a `user.delegate` xattr (and
    `trusted.delegate`).  A unit without either mark is systemd's to manage,
    except the scope named by `SBX_SCOPE`: the one systemd.scope_command()
    asked for with Delegate=yes (systemd 252 marks nothing).
    """
    name = os.path.basename(path.rstrip("/"))
    if not name.endswith(UNIT_SUFFIXES):
        return False
    if name.endswith(".scope") and name == environ.get("SBX_SCOPE"):
        return False
    for attr in DELEGATE_XATTRS:
        try:
            if os.getxattr(path, attr).strip() in _XATTR_TRUE:
                return False
        except OSError:
            pass
    return True


def unified_offers_essentials() -> bool:
    """Some cgroup2 mount offers memory and pids (not a hybrid layout where v1 holds them)."""
    return any(all(c in controllers(m) for c in ESSENTIAL) for m, _root in cgroup2_mounts())


# --- preparing a delegation ----------------------------------------------------------------


def prepare(path: str, how: str) -> Delegation:
    """Make `path` usable: processes into a leaf, offered controllers on.

    The root cgroup may hold processes and enable controllers at once: its
    processes (the whole system's) stay where they are.
    """
    offered = controllers(path)
    wanted = tuple(c for c in WANTED if c in offered)
    enabled = controllers(path, "cgroup.subtree_control")
    if any(c not in enabled for c in wanted):
        if not is_root(path) and procs(path):
            _move_all(path, _make_leaf(path))
        _enable(path, tuple(c for c in wanted if c not in enabled))
        enabled = controllers(path, "cgroup.subtree_control")
    return Delegation(path=path, how=how, controllers=tuple(c for c in WANTED if c in enabled))


def _enable(path: str, wanted: tuple[str, ...]) -> None:
    """Enable controllers for the children of `path`, one at a time.

    EBUSY means a process is (again) in `path` itself: move it out and retry.
    EINVAL/ENOTSUP/EPERM for one controller (e.g. cpu with a realtime process
    about, or one the parent does not pass down) skips that controller.
    """
    control = os.path.join(path, "cgroup.subtree_control")
    for ctrl in wanted:
        for attempt in range(_EBUSY_TRIES):
            try:
                write_file(control, f"+{ctrl}")
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    break
                if attempt == _EBUSY_TRIES - 1:
                    raise CgroupError(
                        f"cannot enable {ctrl} in {path}: busy (processes in a cgroup with controllers enabled)"
                    ) from exc
                _move_all(path, _make_leaf(path))
                time.sleep(_EBUSY_DELAY_S)


def _move_all(src: str, dst: str) -> None:
    """Move every process of `src` into `dst` (until none is left)."""
    target = os.path.join(dst, "cgroup.procs")
    for _round in range(_MOVE_ROUNDS):
        pids = procs(src)
        if not pids:
            return
        for pid in pids:
            try:
                write_file(target, str(pid))
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    continue  # exited meanwhile
                raise CgroupError(f"cannot move process {pid} from {src} to {dst}: {errmsg(exc)}") from exc
    raise CgroupError(f"processes keep appearing in {src}")


def _make_leaf(path: str) -> str:
    leaf = os.path.join(path, LEAF)
    try:
        os.mkdir(leaf, DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CgroupError(f"cannot create {leaf}: {errmsg(exc)}") from exc
    return leaf
