"""One run's cgroup under the delegation: made with its limits, entered, measured, killed, removed.

The supervisor makes a `RunCgroup` per run (`RunCgroup.create`), puts the
payload in before releasing it (`add`, or clone3 into `fd()`), reads
`stats()` for the figures, and at the end `kill()`s and `remove()`s it.
`remove_stale` clears the run cgroups of supervisors that were SIGKILLed.
"""

from __future__ import annotations

import errno
import os
import signal
import time

from ..kernel.linux import write_file
from .discover import LEAF
from .fs import DIR_MODE, CgroupError, errmsg, keyed, procs, read_or
from .resources import apply_limits
from .stats import CgroupStats, read_stats

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from ..model.spec import Limits
    from .discover import Delegation

RUN_PREFIX = "sbx-"
KILL_TIMEOUT_S = 5.0
EMPTY_GRACE_S = 0.5  # remove(): how long a run may take to empty by itself before it is killed
_KILL_POLL_S = 0.002
_EMPTY_POLL_FIRST_S = 0.0005
_EMPTY_POLL_MAX_S = 0.02
_RMDIR_TRIES = 50
_RMDIR_DELAY_S = 0.002


def run_name(pid: int, stamp: int) -> str:
    """A run cgroup's name: the supervisor's pid first, so a stale one can be told from a live one."""
    return f"{RUN_PREFIX}{pid}-{stamp}"


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
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            # A stale, empty cgroup of an earlier run with the same name.
            try:
                os.rmdir(path)
                os.mkdir(path, DIR_MODE)
            except OSError as exc:
                raise CgroupError(f"cgroup {path} already exists and is in use") from exc
        except OSError as exc:
            raise CgroupError(f"cannot create cgroup {path}: {errmsg(exc)}") from exc
        cg = cls(path)
        try:
            cg.unenforced = apply_limits(path, d, limits, devices)
        except BaseException:
            cg._rmdir_tree()
            raise
        return cg

    def add(self, pid: int) -> None:
        """Move a process (all its threads) into this cgroup."""
        try:
            write_file(os.path.join(self.path, "cgroup.procs"), str(pid))
        except OSError as exc:
            raise CgroupError(f"cannot move process {pid} into {self.path}: {errmsg(exc)}") from exc

    def fd(self) -> int:
        """An O_DIRECTORY fd of the cgroup (for clone3 CLONE_INTO_CGROUP); closed by remove()."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def pids(self) -> list[int]:
        """Processes in this cgroup and every cgroup below it."""
        out: list[int] = []
        for path in self._walk():
            out.extend(procs(path))
        return out

    def populated(self) -> bool:
        events = keyed(read_or(os.path.join(self.path, "cgroup.events")))
        if "populated" in events:
            return events["populated"] != 0
        return bool(self.pids())

    def stats(self) -> CgroupStats:
        return read_stats(self.path)

    def _walk(self) -> Iterator[str]:
        """This cgroup and its descendants, deepest first."""
        for top, dirs, _files in os.walk(self.path, topdown=False):
            for name in dirs:
                yield os.path.join(top, name)
        yield self.path

    def kill(self, timeout: float = KILL_TIMEOUT_S) -> None:
        """SIGKILL every process in the cgroup tree and wait until it is empty."""
        try:
            write_file(os.path.join(self.path, "cgroup.kill"), "1")
            killed = True
        except FileNotFoundError:
            killed = False  # Linux < 5.14
        except OSError as exc:
            raise CgroupError(f"cannot kill {self.path}: {errmsg(exc)}") from exc
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
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                time.sleep(_KILL_POLL_S)
        finally:
            if frozen:
                try:
                    write_file(os.path.join(self.path, "cgroup.freeze"), "0")
                except OSError:
                    pass

    def wait_empty(self, timeout: float) -> bool:
        """Wait (briefly polling) until no process is left; True when empty."""
        deadline = time.monotonic() + timeout
        delay = _EMPTY_POLL_FIRST_S
        while self.populated():
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, _EMPTY_POLL_MAX_S)
        return True

    def remove(self, timeout: float = KILL_TIMEOUT_S) -> None:
        """Wait until the cgroup is empty (killing what is left), then rmdir it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not os.path.isdir(self.path):
            return
        if not self.wait_empty(min(timeout, EMPTY_GRACE_S)):
            self.kill(timeout)
        if not self.wait_empty(timeout):
            raise CgroupError(f"{self.path} still has processes: {self.pids()}")
        self._rmdir_tree()

    def _rmdir_tree(self) -> None:
        for path in self._walk():
            for attempt in range(_RMDIR_TRIES):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    # EBUSY: the last task is still on its way out.
                    if exc.errno != errno.EBUSY or attempt == _RMDIR_TRIES - 1:
                        raise CgroupError(f"cannot remove {path}: {errmsg(exc)}") from exc
                    time.sleep(_RMDIR_DELAY_S)


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
        pid_text = name[len(RUN_PREFIX) :].partition("-")[0]
        if not pid_text.isdigit():
            continue
        try:
            os.kill(int(pid_text), 0)  # signal 0: does it exist?
            continue  # alive
        except PermissionError:
            continue  # alive, someone else's
        except ProcessLookupError:
            pass
        cg = RunCgroup(os.path.join(d.path, name))
        try:
            if not cg.populated():
                cg._rmdir_tree()
                removed.append(cg.path)
        except (CgroupError, OSError):
            pass
    return removed
