"""Counting a sandbox's tasks from /proc, where no cgroup counts them (the degraded path).

The supervisor finds every process of the sandbox's pid namespace as the
descendants of its init (by PPid: a process's parent is always in its own
namespace or the one above, so the tree from init is exactly the namespace),
and sums over them:

- CPU time: init's cutime+cstime (every child it reaped, with what they had
  reaped), then each live process's utime+stime+cutime+cstime, parents read
  before their children, so a child reaped mid-scan is missed once (seen at
  the next scan in its parent's cutime) but never counted twice.  Beside that
  sum, the highest utime+stime seen of each process (by pid and start time):
  a child whose parent ignores SIGCHLD is reaped by nobody, and its time would
  vanish from every cutime.  The figure is the highest of the two ever seen.
- memory: each process's proportional share (smaps_rollup Pss_Anon +
  Pss_Shmem: pages shared after fork count once), plus memfds held by a
  descriptor and mapped by nobody (their allocated blocks, once per inode),
  found through fdinfo and fstat of a copy pidfd_getfd(2) lends us.  Under a
  counted --memory init makes SysV segments countable (shm_rmid_forced: a
  segment no process attaches is destroyed).  What stays unseen: shared memory
  pages that no process has mapped (a segment attached but never touched, a
  shared mapping partly unmapped, a memfd held only by a mapping or in flight
  in a unix socket), and kernel memory.  SECURITY.md lists these.

A scan costs a listing of /proc plus a few reads per sandbox process: the
processes outside are read once and remembered, until their pid is handed
out again.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable
else:
    import _signal  # `signal` itself imports enum

_PSS_KEYS = (b"Pss_Anon:", b"Pss_Shmem:")


class Census:
    """What the sandbox whose init is `init_pid` (as we see it) uses; call scan() to update."""

    REFRESH = 50

    def __init__(self, init_pid: int, payload: int) -> None:
        self.init = init_pid
        self.own = 0  # 1: the root of the tree is the payload, whose own time counts too
        self.tick = 1.0 / os.sysconf("SC_CLK_TCK")
        self.outside: set[int] = set()  # processes known not to be the sandbox's (until they are gone)
        self.highest: dict[tuple[int, int], tuple[int, int]] = {}  # (pid, start) -> utime, stime (ticks)
        self.user = self.system = 0.0  # the highest CPU count seen, in seconds
        self.memory = 0  # bytes, at the last scan
        self.memory_peak = 0
        self.tasks = 0  # processes at the last scan
        self.parent: dict[int, int] = {}  # the sandbox's processes (but init) -> parent, as last read
        self.start: dict[int, int] = {}  # the same processes -> start time
        self.memfds = _Memfds()
        self.scans = 0
        self.last_pid = -1
        stat = _stat(init_pid)
        if stat is None:
            # Init is not dumpable: where /proc hides what we may not ptrace (hidepid), it is
            # invisible to us.  Then the payload's tree is all we can count: not the orphans.
            self.init, self.own, stat = payload, 1, _stat(payload)
        self.init_start = -1 if stat is None else int(stat[19])

    @property
    def cpu(self) -> float:
        return self.user + self.system

    def scan(self) -> None:
        if self.init_start < 0:
            return
        members = self._count_cpu(self._members())
        self._count_memory(members)
        self.tasks = len(members)

    def _members(self) -> list[int]:
        """The sandbox's processes but init, each after its parent (as last seen: a process
        whose parent is gone was adopted by init, or by a subreaper read before it)."""
        listed = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        self.outside &= listed
        self._forget_reused()
        known = {pid: ppid for pid, ppid in self.parent.items() if pid in listed}
        new: dict[int, int] = {}
        start: dict[int, int] = {}
        for pid in listed - self.outside - known.keys() - {self.init}:
            fields = _stat(pid)
            if fields is not None:
                new[pid], start[pid] = int(fields[1]), int(fields[19])
        every = {**new, **known}
        children: dict[int, list[int]] = {}
        for pid, ppid in every.items():
            children.setdefault(ppid if ppid in every else self.init, []).append(pid)
        order: list[int] = []
        level = [self.init]
        while level:
            level = sorted(child for pid in level for child in children.get(pid, ()))
            order += level
        inside = _reaching(self.init, {**new, **known}, set(known) | {self.init})
        order = [pid for pid in order if pid in inside]
        for pid in new.keys() - inside:
            if self._certainly_outside(pid, new, start):
                self.outside.add(pid)
        self.parent = {pid: every[pid] for pid in order}
        self.start = {pid: start[pid] if pid in start else self.start[pid] for pid in order}
        return order

    def kill(self) -> None:
        """SIGKILL every process the last scan found, at once: init would kill them too once the
        payload is dead, but on a loaded machine it may run only much later, while they burn on.
        Each through a pidfd whose process is checked (by start time) to be the one counted."""
        for pid, start in self.start.items():
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                fields = _stat(pid)
                if fields is not None and int(fields[19]) == start:
                    _signal.pidfd_send_signal(pidfd, _signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)

    def _forget_reused(self) -> None:
        """Pids are reused (pid_max may be as low as 32768): a pid known to be outside that was
        handed out again since the last scan (ns_last_pid moved past it) is looked at anew, and
        the whole list is dropped every REFRESH scans in case the counter went all the way round."""
        self.scans += 1
        last = _last_pid()
        if last is None or self.scans % self.REFRESH == 0:
            self.outside.clear()
        elif last != self.last_pid:
            low, high = self.last_pid, last
            if low < high:
                self.outside = {pid for pid in self.outside if not low < pid <= high}
            else:  # wrapped round
                self.outside = {pid for pid in self.outside if high < pid <= low}
        self.last_pid = -1 if last is None else last

    def _certainly_outside(self, pid: int, parent: dict[int, int], start: dict[int, int]) -> bool:
        """Started before init, or a descendant of such a process: a process of the sandbox
        whose parent died mid-scan stays undecided (checked again next time)."""
        for _ in range(4096):
            if pid in self.outside or (pid in start and start[pid] < self.init_start) or pid == 0:
                return True
            if pid not in parent:
                return False
            pid = parent[pid]
        return False

    def _count_cpu(self, members: list[int]) -> list[int]:
        """Counts CPU time; returns the members still there, each the same process as when found."""
        init = _stat(self.init)
        if init is None:
            return []  # gone: its report has the final figures
        user = int(init[13]) + self.own * int(init[11])  # cutime: everything it reaped
        system = int(init[14]) + self.own * int(init[12])
        there = []
        for pid in members:
            fields = _stat(pid)
            if fields is None:
                continue  # reaped since: in its parent's cutime at the next scan
            if int(fields[19]) != self.start[pid]:  # gone, and its pid handed out again: not ours
                del self.parent[pid], self.start[pid]
                continue
            there.append(pid)
            self.parent[pid] = int(fields[1])
            utime, stime = int(fields[11]), int(fields[12])
            user += utime + int(fields[13])
            system += stime + int(fields[14])
            key = (pid, int(fields[19]))
            old = self.highest.get(key, (0, 0))
            self.highest[key] = (max(old[0], utime), max(old[1], stime))
        seen_user = sum(u for u, _ in self.highest.values())
        seen_system = sum(s for _, s in self.highest.values())
        if seen_user + seen_system > user + system:
            user, system = seen_user, seen_system
        if (user + system) * self.tick > self.cpu:
            self.user, self.system = user * self.tick, system * self.tick
        return there

    def _count_memory(self, members: list[int]) -> None:
        """Resident counters first (cheap); the proportional shares (a walk of each process's
        page tables) only when the counters could mean a new peak, since a share is never more
        than the pages it is a share of."""
        memfds: dict[tuple[int, int], int] = {}
        for pid in members:
            memfds.update(self.memfds.held(pid))
        held = 0
        if memfds:
            mapped = set()
            for pid in members:
                mapped |= _mapped_memfds(pid)
            held = sum(size for (_dev, ino), size in memfds.items() if ino not in mapped)
        # An upper bound while it stays under the peak (and so under the limit); else the shares.
        total = held + sum(_resident(pid, shares=False) for pid in members)
        if total > self.memory_peak:
            total = held + sum(_resident(pid, shares=True) for pid in members)
        self.memory = total
        self.memory_peak = max(self.memory_peak, total)


def _reaching(root: int, parent: dict[int, int], members: set[int]) -> set[int]:
    """The processes whose parent chain reaches a member (or the root)."""
    inside = set(members)
    for pid in parent:
        chain: list[int] = []
        while pid not in inside and pid in parent and len(chain) < 4096:
            chain.append(pid)
            pid = parent[pid]
        if pid in inside:
            inside.update(chain)
    inside.discard(root)
    return inside


def _last_pid() -> int | None:
    """The last pid handed out in our pid namespace."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _stat(pid: int) -> list[bytes] | None:
    """/proc/PID/stat's fields after the command name (fields[1] is ppid), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()
    except OSError:
        return None


def _resident(pid: int, shares: bool) -> int:
    """Anonymous and shared memory this process holds (bytes): its resident pages, or with
    `shares` its proportional share of each (smaps_rollup, where we may read it)."""
    text = b""
    if shares:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                text = f.read()
        except OSError:
            pass  # not ours to read (a payload before its exec) or gone: its status says
    keys = _PSS_KEYS
    if b"Pss_Anon:" not in text:
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                text = f.read()
        except OSError:
            return 0
        keys = (b"RssAnon:", b"RssShmem:")
    total = 0
    for line in text.splitlines():
        if line.startswith(keys):
            total += int(line.split()[1]) * 1024
    return total


class _Memfds:
    """The memfds processes hold descriptors of.  /proc/PID/fd is its owner's alone (a payload of
    subordinate id is not us), but fdinfo is readable and pidfd_getfd(2) lends us a copy of a
    descriptor (we own the sandbox's user namespace), to fstat and close at once.  Only
    descriptors on the kernel's internal shmem mount are looked at (fdinfo's mnt_id)."""

    def __init__(self) -> None:
        fd = os.memfd_create("sbx-census", os.MFD_CLOEXEC)
        try:
            self.dev = os.fstat(fd).st_dev
            self.mnt_id = _fdinfo(f"/proc/self/fdinfo/{fd}").get(b"mnt_id")
        finally:
            os.close(fd)
        self.other: set[tuple[int, int]] = set()  # (pid, inode) known to be no memfd (a pipe, a socket)
        self.syscall: Callable[..., int] | None = None

    def _borrowed_stat(self, pidfd: int, fd: int) -> os.stat_result | None:
        """fstat of another process's descriptor, through a copy pidfd_getfd(2) gives us."""
        if self.syscall is None:
            from ..kernel.linux import syscall

            self.syscall = syscall
        copy = self.syscall(438, pidfd, fd, 0)  # SYS_pidfd_getfd (x86_64 and the generic table)
        if copy < 0:
            return None
        try:
            return os.fstat(copy)
        finally:
            os.close(copy)

    def held(self, pid: int) -> dict[tuple[int, int], int]:
        """(dev, inode) -> allocated bytes of each memfd this process holds a descriptor of."""
        base = f"/proc/{pid}/fdinfo"
        try:
            fds = os.listdir(base)
        except OSError:
            return {}
        found: dict[tuple[int, int], int] = {}
        pidfd = -1
        try:
            for name in fds:
                info = _fdinfo(f"{base}/{name}")
                ino = info.get(b"ino")
                if info.get(b"mnt_id") != self.mnt_id or ino is None or (pid, ino) in self.other:
                    continue
                if pidfd < 0:
                    pidfd = os.pidfd_open(pid)
                st = self._borrowed_stat(pidfd, int(name))
                if st is None:
                    continue
                if st.st_dev == self.dev and (st.st_mode & 0o170000) == 0o100000:
                    found[(st.st_dev, st.st_ino)] = st.st_blocks * 512
                else:
                    self.other.add((pid, ino))
        except OSError:
            pass  # gone
        finally:
            if pidfd >= 0:
                os.close(pidfd)
        return found


def _fdinfo(path: str) -> dict[bytes, int]:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key in (b"mnt_id", b"ino"):
            out[key] = int(value)
    return out


def _mapped_memfds(pid: int) -> set[int]:
    """Inodes of the memfds this process maps (their resident pages are in its Pss_Shmem)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return set()
    return {int(line.split()[4]) for line in lines if b"/memfd:" in line}
