"""cgroup v2: discovery, delegation, per-run cgroups, limits, figures, kill.

The supervisor asks `discover()` once for a delegated cgroup (a `Delegation`),
then makes one `RunCgroup` per run under it, puts the payload in before
releasing it, reads `stats()` for the figures, and at the end `kill()`s and
`remove()`s it.

Where a delegation comes from, in order:

1. explicit: `--cgroup PATH` or `$SBX_CGROUP`;
2. own: the cgroup we are in, when we may create children and move processes
   there (what `systemd-run --user --scope -p Delegate=yes` gives, or a
   cgroup an administrator chowned to us as systemd does);
3. a transient systemd user scope: when neither applies and a systemd user
   manager is reachable, `sbx run` re-executes itself under
   `systemd-run --user --scope -p Delegate=yes` (`scope_command()`), with
   `$SBX_SCOPE` naming the unit, and the re-executed sbx uses that scope as
   its own cgroup (2.), even without the `user.delegate` mark systemd < 253
   does not set; `SBX_NO_SCOPE=1` turns this off;
4. none: the caller falls back to rlimits and says so.

The kernel's "no internal processes" rule: a cgroup that has processes cannot
enable controllers for its children (EBUSY).  So before enabling controllers
every process already in the delegated cgroup is moved into a leaf child,
`sbx-leaf`; a later sbx that finds itself in `<D>/sbx-leaf` uses `<D>`.

Only `os`, `errno`, `stat` and `time` at module level: this is on the start-up path.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from ..model.frozen import dataclass
from ..kernel.linux import write_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping

    from ..model.spec import Limits

# Controllers sbx uses, in the order they are enabled.
WANTED = ("cpu", "cpuset", "io", "memory", "pids")
# Without these no limit that matters can be enforced.
ESSENTIAL = ("memory", "pids")
LEAF = "sbx-leaf"
CPU_PERIOD_USEC = 100_000
MIN_CPU_QUOTA_USEC = 1_000
_EBUSY_TRIES = 200  # x 1 ms, as crun does (it tries 1000)


class CgroupError(Exception):
    """A cgroup operation failed; the message says what and, where known, why."""


@dataclass(frozen=True)
class Delegation:
    """A cgroup v2 directory we may create run cgroups in.

    `how` is "explicit" (--cgroup / SBX_CGROUP), "own" (the cgroup we run in)
    or "systemd-scope"; `controllers` are those enabled for its children.
    """

    path: str
    how: str
    controllers: tuple[str, ...]


@dataclass(frozen=True)
class CgroupStats:
    """Figures of one run cgroup.  CPU times in microseconds, memory in bytes.

    `memory_peak` is None before Linux 5.19, `pids_peak` before 6.13 (it is
    then None); `oom_kills` counts processes the OOM killer killed in this
    cgroup or below it (`memory.events`); `pids_max_hits` counts
    forks refused by pids.max; `throttled_usec` is time held back by cpu.max.
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


# --- small file helpers -----------------------------------------------------


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _read_or(path: str, default: str | None = None) -> str | None:
    try:
        return _read(path)
    except OSError:
        return default


def _keyed(text: str | None) -> dict[str, int]:
    """Parse flat keyed files: cpu.stat, memory.events, pids.events, ..."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        try:
            out[key] = int(value)
        except ValueError:
            pass
    return out


def _int_or_none(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() else None


def _pids(path: str) -> list[int]:
    text = _read_or(os.path.join(path, "cgroup.procs"), "") or ""
    return [int(p) for p in text.split()]


def _errmsg(exc: OSError) -> str:
    return exc.strerror or str(exc)


# --- discovery ---------------------------------------------------------------


def cgroup2_mounts(mountinfo: str | None = None) -> list[tuple[str, str]]:
    """(mount point, root inside the hierarchy) of every cgroup2 mount."""
    if mountinfo is None:
        mountinfo = _read_or("/proc/self/mountinfo", "") or ""
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep or right.split(" ", 1)[0] != "cgroup2":
            continue
        fields = left.split(" ")
        if len(fields) >= 5:
            mounts.append((_unescape(fields[4]), _unescape(fields[3])))
    return mounts


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def own_cgroup(proc_cgroup: str | None = None) -> str | None:
    """Our path in the unified hierarchy ("0::/path"), or None (v1 only)."""
    if proc_cgroup is None:
        proc_cgroup = _read_or("/proc/self/cgroup", "") or ""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def own_cgroup_dir() -> str | None:
    """The directory of our own cgroup, if a cgroup2 mount shows it."""
    path = own_cgroup()
    if path is None or path.startswith("/.."):
        return None  # outside our cgroup namespace's view
    for mountpoint, root in cgroup2_mounts():
        if root == "/":
            rel = path
        elif path == root or path.startswith(root.rstrip("/") + "/"):
            rel = path[len(root.rstrip("/")) :]
        else:
            continue
        full = mountpoint.rstrip("/") + rel if rel != "/" else mountpoint
        if os.path.exists(os.path.join(full, "cgroup.procs")):
            return full
    return None


def _is_cgroup2_dir(path: str) -> bool:
    if not os.path.exists(os.path.join(path, "cgroup.controllers")):
        return False
    real = os.path.realpath(path)
    for mountpoint, _root in cgroup2_mounts():
        mp = os.path.realpath(mountpoint)
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            return True
    return False


def _writable(path: str) -> bool:
    return all(
        os.access(p, os.W_OK)
        for p in (path, os.path.join(path, "cgroup.procs"), os.path.join(path, "cgroup.subtree_control"))
    )


def _controllers(path: str, name: str = "cgroup.controllers") -> tuple[str, ...]:
    return tuple((_read_or(os.path.join(path, name), "") or "").split())


def _systemd_unit_not_delegated(path: str, environ: Mapping[str, str] | None = None) -> bool:
    """True for a systemd unit cgroup that says it is not delegated.

    Under user@UID.service every cgroup belongs to the user, delegated or not;
    systemd (>= 253) marks delegated ones with a `user.delegate` xattr (and
    `trusted.delegate`).  A unit without either mark is systemd's to manage,
    except the scope named by `$SBX_SCOPE`: the one `scope_command()` asked
    for with Delegate=yes (systemd 252 marks nothing).
    """
    name = os.path.basename(path.rstrip("/"))
    if not name.endswith((".scope", ".service", ".slice")):
        return False
    if environ is not None and name.endswith(".scope") and name == environ.get("SBX_SCOPE"):
        return False
    for attr in ("user.delegate", "trusted.delegate"):
        try:
            if os.getxattr(path, attr).strip() in (b"1", b"yes", b"true"):
                return False
        except OSError:
            pass
    return True


def _move_all(src: str, dst: str) -> None:
    """Move every process of `src` into `dst` (until none is left)."""
    procs = os.path.join(dst, "cgroup.procs")
    for _round in range(100):
        pids = _pids(src)
        if not pids:
            return
        for pid in pids:
            try:
                write_file(procs, str(pid))
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    continue  # exited meanwhile
                raise CgroupError(f"cannot move process {pid} from {src} to {dst}: {_errmsg(exc)}") from exc
    raise CgroupError(f"processes keep appearing in {src}")


def _enable(path: str, controllers: tuple[str, ...]) -> None:
    """Enable controllers for the children of `path`, one at a time.

    EBUSY means a process is (again) in `path` itself: move it out and retry.
    EINVAL/ENOTSUP/EPERM for one controller (e.g. cpu with a realtime process
    about, or one the parent does not pass down) skips that controller.
    """
    control = os.path.join(path, "cgroup.subtree_control")
    for ctrl in controllers:
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
                time.sleep(0.001)


def _make_leaf(path: str) -> str:
    leaf = os.path.join(path, LEAF)
    try:
        os.mkdir(leaf, 0o755)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CgroupError(f"cannot create {leaf}: {_errmsg(exc)}") from exc
    return leaf


def _is_root(path: str) -> bool:
    """The root of a hierarchy has no cgroup.type (nor cgroup.events)."""
    return not os.path.exists(os.path.join(path, "cgroup.type"))


def prepare(path: str, how: str) -> Delegation:
    """Make `path` usable: processes into a leaf, offered controllers on.

    The root cgroup may hold processes and enable controllers at once: its
    processes (the whole system's) stay where they are.
    """
    offered = _controllers(path)
    wanted = tuple(c for c in WANTED if c in offered)
    enabled = _controllers(path, "cgroup.subtree_control")
    if any(c not in enabled for c in wanted):
        if not _is_root(path) and _pids(path):
            _move_all(path, _make_leaf(path))
        _enable(path, tuple(c for c in wanted if c not in enabled))
        enabled = _controllers(path, "cgroup.subtree_control")
    return Delegation(path=path, how=how, controllers=tuple(c for c in WANTED if c in enabled))


def discover(explicit: str | None, environ: Mapping[str, str]) -> Delegation | None:
    """Find and prepare a delegated cgroup, or None when there is none.

    An explicit path (argument, else $SBX_CGROUP) that cannot be used is an
    error (CgroupError), never a silent fallback.  Our own cgroup is used
    when we may create children there and it offers memory and pids.
    """
    path = explicit or environ.get("SBX_CGROUP") or None
    if path:
        path = os.path.abspath(path)
        if not _is_cgroup2_dir(path):
            raise CgroupError(f"{path} is not a cgroup v2 directory")
        if not _writable(path):
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
    target = _usable_own(own, environ)
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


def _usable_own(own: str, environ: Mapping[str, str]) -> str | None:
    """The cgroup discover() would prepare when we are in `own`, or None.  Reads only.

    `own` itself, or `<D>` when we sit in `<D>/sbx-leaf` of a cgroup an
    earlier sbx prepared.
    """
    if os.path.basename(own) == LEAF:
        parent = os.path.dirname(own)
        if _writable(parent) and all(c in _controllers(parent, "cgroup.subtree_control") for c in ESSENTIAL):
            return parent
    if _is_root(own) or not _writable(own) or _systemd_unit_not_delegated(own, environ):
        return None  # never herd the whole system into a leaf
    if not all(c in _controllers(own) for c in ESSENTIAL):
        return None
    return own


def _no_scope(environ: Mapping[str, str]) -> bool:
    return environ.get("SBX_NO_SCOPE", "") not in ("", "0")


def user_manager_socket(environ: Mapping[str, str]) -> str | None:
    """The systemd user manager's private socket when one answers there, else None.

    `$XDG_RUNTIME_DIR/systemd/private` (else `/run/user/UID/...`): a stat,
    then a connect(2) to tell a live manager from a stale socket file.
    systemd-run --user and systemctl --user talk to it, D-Bus or not.
    """
    runtime = environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    path = os.path.join(runtime, "systemd", "private")
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(1.0)
        sock.connect(path)
    except OSError:
        return None
    finally:
        sock.close()
    return path


def _which(name: str, environ: Mapping[str, str]) -> str | None:
    for d in (environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin").split(":"):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def _unified_offers_essentials() -> bool:
    """Some cgroup2 mount offers memory and pids (not a hybrid layout where v1 holds them)."""
    return any(all(c in _controllers(m) for c in ESSENTIAL) for m, _root in cgroup2_mounts())


def scope_command(
    argv: list[str], environ: Mapping[str, str], explicit: str | None = None
) -> tuple[list[str], dict[str, str]] | None:
    """The command line and environment to re-run `argv` in a transient systemd user scope, or None.

    Only when no cgroup is given (`explicit`, `$SBX_CGROUP`), this is not
    already the re-run (`$SBX_SCOPE`) nor turned off (`$SBX_NO_SCOPE`), a user
    manager answers (`user_manager_socket`: a stat when there is none), our
    own cgroup is not usable as it is, the unified hierarchy holds memory
    and pids, and systemd-run is on $PATH.  systemd-run --scope moves itself
    into the new scope and execs `argv` (same pid); `$SBX_SCOPE` names the
    unit, so the re-run never loops and knows which cgroup it asked for.
    """
    if explicit or environ.get("SBX_CGROUP") or environ.get("SBX_SCOPE") or _no_scope(environ):
        return None
    if user_manager_socket(environ) is None:
        return None
    own = own_cgroup_dir()
    if own is None or _usable_own(own, environ) is not None or not _unified_offers_essentials():
        return None
    systemd_run = _which("systemd-run", environ)
    if systemd_run is None:
        return None
    unit = f"sbx-{os.getpid()}-{time.time_ns() % 10**9}.scope"
    env = dict(environ)
    env["SBX_SCOPE"] = unit
    env.setdefault("XDG_RUNTIME_DIR", f"/run/user/{os.getuid()}")
    cmd = [systemd_run, "--user", "--scope", "--quiet", "--collect", f"--unit={unit}", "-p", "Delegate=yes",
           "--", *argv]
    return cmd, env


def diagnose(environ: Mapping[str, str]) -> list[tuple[str, bool, str]]:
    """Checks for `sbx doctor`: (what, ok, detail or how to fix).  No side effects."""
    checks: list[tuple[str, bool, str]] = []
    mounts = cgroup2_mounts()
    if not mounts:
        checks.append(("cgroup v2 mounted", False, "no cgroup2 mount in /proc/self/mountinfo; limits fall back to rlimits"))
        return checks
    checks.append(("cgroup v2 mounted", True, ", ".join(m for m, _ in mounts)))
    v1 = [
        line.split(":", 2)[1]
        for line in (_read_or("/proc/self/cgroup", "") or "").splitlines()
        if not line.startswith("0::") and line.count(":") >= 2 and line.split(":", 2)[1]
    ]
    if v1:
        checks.append((
            "unified hierarchy owns the controllers",
            False,
            f"hybrid layout: cgroup v1 holds {', '.join(v1)}; boot with systemd.unified_cgroup_hierarchy=1",
        ))
    explicit = environ.get("SBX_CGROUP")
    if explicit:
        ok = _is_cgroup2_dir(explicit) and _writable(explicit)
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
    if _is_root(target):
        checks.append(("own cgroup delegated", False, f"{target} is the root cgroup; set SBX_CGROUP to a child cgroup"))
        if not explicit:
            checks.append(_scope_check(environ))
    else:
        writable = _writable(target) and not _systemd_unit_not_delegated(target, environ)
        checks.append((
            "own cgroup delegated",
            writable,
            target if writable else "run under `systemd-run --user --scope -p Delegate=yes sbx ...`, or set SBX_CGROUP to a cgroup delegated to you",
        ))
        if not writable and not explicit:
            checks.append(_scope_check(environ))
    offered = _controllers(target)
    for ctrl in WANTED:
        ok = ctrl in offered
        if ok:
            hint = "offered"
        elif ctrl in ("cpu", "memory", "pids"):
            hint = "not delegated: /etc/systemd/system/user@.service.d/delegate.conf with [Service] Delegate=cpu cpuset io memory pids"
        else:
            hint = f"not delegated (only needed for {'--cpuset' if ctrl == 'cpuset' else 'I/O limits'}); add it to Delegate="
        checks.append((f"controller {ctrl}", ok, hint))
    checks.append(("cgroup.kill (Linux >= 5.14)", os.path.exists(os.path.join(target, "cgroup.kill")), "else freeze + SIGKILL loop"))
    if "memory" in offered:
        # memory.peak only exists in non-root cgroups; look at ours.
        checks.append(("memory.peak (Linux >= 5.19)", os.path.exists(os.path.join(own, "memory.peak")), "else no peak memory figure"))
    return checks


def _scope_check(environ: Mapping[str, str]) -> tuple[str, bool, str]:
    """Whether `sbx run` will re-execute itself in a transient systemd user scope (scope_command)."""
    what = "transient systemd user scope"
    if environ.get("SBX_SCOPE"):
        return (what, False, f"already re-run for {environ['SBX_SCOPE']}, which is not usable")
    if _no_scope(environ):
        return (what, False, "SBX_NO_SCOPE is set")
    socket = user_manager_socket(environ)
    if socket is None:
        return (what, False, "no systemd user manager answers at $XDG_RUNTIME_DIR/systemd/private")
    if scope_command(["sbx"], environ) is None:
        return (what, False, f"a user manager answers at {socket}, but systemd-run is not on PATH or "
                             "the unified hierarchy does not offer memory and pids")
    return (what, True, f"sbx run re-executes itself under `systemd-run --user --scope -p Delegate=yes` "
                        f"(user manager at {socket}); SBX_NO_SCOPE=1 turns this off")


# --- per-run cgroups ---------------------------------------------------------


def _block_devices() -> list[str]:
    """MAJ:MIN of whole disks, for io.max (loop, ram and zram left out)."""
    out: list[str] = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if name.startswith(("loop", "ram", "zram")):
            continue
        dev = _read_or(f"/sys/block/{name}/dev")
        if dev:
            out.append(dev.strip())
    return out


def _whole_disk(dev: str) -> str | None:
    """MAJ:MIN of the disk a block device belongs to (itself unless a partition); None if not a block device.

    io.max takes whole disks only (a partition is ENODEV).
    """
    sys_dir = f"/sys/dev/block/{dev}"
    if not os.path.exists(os.path.join(sys_dir, "dev")):
        return None
    if os.path.exists(os.path.join(sys_dir, "partition")):
        parent = _read_or(os.path.join(os.path.realpath(sys_dir), "..", "dev"))
        return parent.strip() if parent else None
    return dev


def _mount_source_device(st_dev: int, mountinfo: str | None = None) -> str | None:
    """MAJ:MIN of the block device a mount of `st_dev` was made from (btrfs and others show an anonymous st_dev)."""
    if mountinfo is None:
        mountinfo = _read_or("/proc/self/mountinfo", "") or ""
    want = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split(" ")
        if not sep or len(fields) < 3 or fields[2] != want:
            continue
        source = _unescape((right.split(" ") + ["", ""])[1])
        if source.startswith("/dev/"):
            try:
                rdev = os.stat(source).st_rdev
            except OSError:
                continue
            if rdev:
                return f"{os.major(rdev)}:{os.minor(rdev)}"
    return None


def devices_behind(paths: Iterable[str]) -> tuple[str, ...]:
    """The whole disks (MAJ:MIN) that hold `paths`, for io.max: loop devices included, tmpfs and the like not."""
    out: list[str] = []
    mountinfo: str | None = None
    for path in paths:
        try:
            st_dev = os.stat(path).st_dev
        except OSError:
            continue
        disk = _whole_disk(f"{os.major(st_dev)}:{os.minor(st_dev)}")
        if disk is None:
            if mountinfo is None:
                mountinfo = _read_or("/proc/self/mountinfo", "") or ""
            source = _mount_source_device(st_dev, mountinfo)
            disk = None if source is None else _whole_disk(source)
        if disk is not None and disk not in out:
            out.append(disk)
    return tuple(out)


def cpu_max(cpus: float) -> str:
    """cpu.max for a share of `cpus` CPUs: "<quota_usec> <period_usec>"."""
    quota = max(MIN_CPU_QUOTA_USEC, round(cpus * CPU_PERIOD_USEC))
    return f"{quota} {CPU_PERIOD_USEC}"


class RunCgroup:
    """One run's cgroup, a child of the delegation.

    `unenforced` names the limits that were asked for but could not be set
    because their controller is not delegated ("cpu", "cpuset", "io",
    "memory", "pids"); the caller decides whether that is an error (strict).
    """

    def __init__(self, path: str, unenforced: tuple[str, ...] = ()) -> None:
        self.path = path
        self.unenforced = unenforced
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"RunCgroup({self.path!r})"

    @classmethod
    def create(cls, d: Delegation, limits: Limits, name: str, devices: tuple[str, ...] = ()) -> RunCgroup:
        """Make the run cgroup `name` under `d` with `limits` set.

        `devices`: MAJ:MIN of disks io.max must cover besides the machine's
        whole disks (those behind the run's binds, loop devices included).
        """
        if "/" in name or name in ("", ".", "..") or name == LEAF or name.startswith("cgroup."):
            raise CgroupError(f"bad cgroup name {name!r}")
        path = os.path.join(d.path, name)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            # A stale, empty cgroup of an earlier run with the same name.
            try:
                os.rmdir(path)
                os.mkdir(path, 0o755)
            except OSError as exc:
                raise CgroupError(f"cgroup {path} already exists and is in use") from exc
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {_errmsg(exc)}") from exc
        run = cls(path)
        try:
            run.unenforced = run._apply(d, limits, devices)
        except BaseException:
            run._rmdir_tree()
            raise
        return run

    def _apply(self, d: Delegation, limits: Limits, extra_devices: tuple[str, ...] = ()) -> tuple[str, ...]:
        have = d.controllers
        missing: list[str] = []
        sets: list[tuple[str, str, bool]] = []  # file, value, required
        if "memory" in have:
            if limits.memory is not None:
                sets.append(("memory.max", str(limits.memory), True))
                sets.append(("memory.swap.max", "0", False))  # absent without swap accounting
            sets.append(("memory.oom.group", "1", True))
        elif limits.memory is not None:
            missing.append("memory")
        if limits.pids is not None:
            if "pids" in have:
                sets.append(("pids.max", str(limits.pids), True))
            else:
                missing.append("pids")
        if limits.cpus is not None:
            if "cpu" in have:
                sets.append(("cpu.max", cpu_max(limits.cpus), True))
            else:
                missing.append("cpu")
        if limits.cpuset is not None:
            if "cpuset" in have:
                sets.append(("cpuset.cpus", limits.cpuset, True))
            else:
                missing.append("cpuset")
        if limits.io_read_bps is not None or limits.io_write_bps is not None:
            devices = [] if "io" not in have else list(dict.fromkeys((*extra_devices, *_block_devices())))
            if not devices:
                missing.append("io")
            parts = []
            if limits.io_read_bps is not None:
                parts.append(f"rbps={limits.io_read_bps}")
            if limits.io_write_bps is not None:
                parts.append(f"wbps={limits.io_write_bps}")
            ok = False
            for dev in devices:
                try:
                    write_file(os.path.join(self.path, "io.max"), f"{dev} {' '.join(parts)}")
                    ok = True
                except OSError:
                    # Not every block device takes io.max; one behind a bind must.
                    if dev in extra_devices:
                        ok = False
                        break
            if devices and not ok:
                missing.append("io")
        for fname, value, required in sets:
            try:
                write_file(os.path.join(self.path, fname), value)
            except FileNotFoundError:
                if required:
                    raise CgroupError(f"{self.path}: no {fname} (controller not enabled?)") from None
            except OSError as exc:
                raise CgroupError(f"cannot set {fname}={value} in {self.path}: {_errmsg(exc)}") from exc
        return tuple(missing)

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into this cgroup."""
        try:
            write_file(os.path.join(self.path, "cgroup.procs"), str(pid))
        except OSError as exc:
            raise CgroupError(f"cannot move process {pid} into {self.path}: {_errmsg(exc)}") from exc

    def fd(self) -> int:
        """An O_DIRECTORY fd of the cgroup (for clone3 CLONE_INTO_CGROUP); closed by remove()."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def pids(self) -> list[int]:
        """Processes in this cgroup and every cgroup below it."""
        out: list[int] = []
        for path in self._walk():
            out.extend(_pids(path))
        return out

    def populated(self) -> bool:
        events = _keyed(_read_or(os.path.join(self.path, "cgroup.events")))
        if "populated" in events:
            return events["populated"] != 0
        return bool(self.pids())

    def stats(self) -> CgroupStats:
        p = self.path
        cpu = _keyed(_read_or(os.path.join(p, "cpu.stat")))
        # Hierarchical: an OOM kill in a cgroup the payload made is still the run's.
        mev = _keyed(_read_or(os.path.join(p, "memory.events")))
        pev = _keyed(_read_or(os.path.join(p, "pids.events")))
        return CgroupStats(
            cpu_usec=cpu.get("usage_usec", 0),
            user_usec=cpu.get("user_usec", 0),
            system_usec=cpu.get("system_usec", 0),
            memory_peak=_int_or_none(_read_or(os.path.join(p, "memory.peak"))),
            memory_current=_int_or_none(_read_or(os.path.join(p, "memory.current"))),
            oom_kills=mev.get("oom_kill", 0),
            oom_events=mev.get("oom", 0),
            pids_peak=_int_or_none(_read_or(os.path.join(p, "pids.peak"))),
            pids_current=_int_or_none(_read_or(os.path.join(p, "pids.current"))),
            pids_max_hits=pev.get("max", 0),
            throttled_usec=cpu.get("throttled_usec", 0),
        )

    def _walk(self) -> Iterator[str]:
        """This cgroup and its descendants, deepest first."""
        for top, dirs, _files in os.walk(self.path, topdown=False):
            for name in dirs:
                yield os.path.join(top, name)
        yield self.path

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the cgroup tree and wait until it is empty."""
        try:
            write_file(os.path.join(self.path, "cgroup.kill"), "1")
            killed = True
        except FileNotFoundError:
            killed = False  # Linux < 5.14
        except OSError as exc:
            raise CgroupError(f"cannot kill {self.path}: {_errmsg(exc)}") from exc
        deadline = time.monotonic() + timeout
        if not killed:
            self._kill_by_signal(deadline)
        if not self.wait_empty(max(0.0, deadline - time.monotonic())):
            raise CgroupError(f"{self.path}: processes left after kill: {self.pids()}")

    def _kill_by_signal(self, deadline: float) -> None:
        """Before cgroup.kill: freeze, SIGKILL every process, until none is left.

        Frozen, nothing can fork a new process between reading cgroup.procs
        and the kill; SIGKILL still ends frozen tasks in cgroup v2.
        """
        frozen = False
        try:
            write_file(os.path.join(self.path, "cgroup.freeze"), "1")
            frozen = True
        except OSError:
            pass
        try:
            while time.monotonic() < deadline:
                pids = self.pids()
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, 9)
                    except (ProcessLookupError, PermissionError):
                        pass
                time.sleep(0.002)
        finally:
            if frozen:
                try:
                    write_file(os.path.join(self.path, "cgroup.freeze"), "0")
                except OSError:
                    pass

    def wait_empty(self, timeout: float) -> bool:
        """Wait (briefly polling) until no process is left; True when empty."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while self.populated():
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    def remove(self, timeout: float = 5.0) -> None:
        """Wait until the cgroup is empty (killing what is left), then rmdir it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not os.path.isdir(self.path):
            return
        if not self.wait_empty(min(timeout, 0.5)):
            self.kill(timeout)
        if not self.wait_empty(timeout):
            raise CgroupError(f"{self.path} still has processes: {self.pids()}")
        self._rmdir_tree()

    def _rmdir_tree(self) -> None:
        for path in self._walk():
            for attempt in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY: the last task is still on its way out.
                    if exc.errno != errno.EBUSY or attempt == 49:
                        raise CgroupError(f"cannot remove {path}: {_errmsg(exc)}") from exc
                    time.sleep(0.002)


RUN_PREFIX = "sbx-"


def run_name(pid: int, stamp: int) -> str:
    """A run cgroup's name: the supervisor's pid first, so a stale one can be told from a live one."""
    return f"{RUN_PREFIX}{pid}-{stamp}"


def remove_stale(d: Delegation) -> list[str]:
    """Remove run cgroups whose supervisor is gone (it was SIGKILLed); the paths removed.

    Only empty ones: a supervisor that dies takes its sandbox with it (init's
    PR_SET_PDEATHSIG, then the pid namespace), so nothing is left running.
    A supervisor we cannot see (another pid namespace) counts as alive.
    """
    removed: list[str] = []
    try:
        names = os.listdir(d.path)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(RUN_PREFIX) or name == LEAF:
            continue
        pid_text = name[len(RUN_PREFIX):].partition("-")[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive
        except PermissionError:
            continue  # alive, someone else's
        except ProcessLookupError:
            pass
        run = RunCgroup(os.path.join(d.path, name))
        try:
            if not run.populated():
                run._rmdir_tree()
                removed.append(run.path)
        except (CgroupError, OSError):
            pass
    return removed


# --- CPU-time limit ------------------------------------------------------------


def next_check_delay(limit_s: float, used_s: float, ncpus: float, min_delay: float = 0.001) -> float:
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
    return max(min_delay, remaining / max(ncpus, 0.001))


def usable_cpus(limits: Limits | None = None) -> float:
    """CPUs a run can use at once: the affinity/cpuset size, capped by --cpus."""
    try:
        n: float = float(len(os.sched_getaffinity(0)))
    except OSError:
        n = float(os.cpu_count() or 1)
    if limits is not None:
        if limits.cpuset:
            n = min(n, float(_cpuset_size(limits.cpuset)) or n)
        if limits.cpus is not None:
            n = min(n, limits.cpus)
    return max(n, 0.001)


def _cpuset_size(cpuset: str) -> int:
    """Number of CPUs in a list like "0-3,6"."""
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
