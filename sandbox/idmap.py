"""Id ranges: user namespaces that map many ids, for images whose files have many owners.

By default a sandbox's user namespace maps one id: root inside is the
caller outside, and files of imported images all belong to the caller.
When the caller has subordinate ids (/etc/subuid and /etc/subgid, as
useradd gives every user on Debian) and the setuid helpers newuidmap and
newgidmap exist, sbx can do what podman does: map inside id 0 to the caller
and inside ids 1..N to the caller's range, so an image's files keep their
owners (uid 33 is www-data inside, owned by start+32 outside).

Two ways to write such maps for a new namespace:
- from the initial namespace, as an unprivileged caller: newuidmap and
  newgidmap (they check /etc/subuid and /etc/subgid);
- from inside a namespace that is itself ranged (`sbx image` runs there,
  see enter()): directly, since root there holds CAP_SETUID and CAP_SETGID
  over every id it maps.

sbx never maps ranges for real root: as root, files keep the caller's
single mapping (SECURITY.md: run sbx as an unprivileged user).
"""

from __future__ import annotations

import os

from .errors import SetupError
from .frozen import dataclass

MAX_COUNT = 65535  # inside ids 1..65535: what images use


@dataclass(frozen=True)
class IdRanges:
    """Inside 0 -> uid/gid; inside 1..count -> uid_start../gid_start.. in the parent namespace.

    `direct`: the maps may be written by us (we are root in a ranged namespace), not by
    newuidmap/newgidmap.
    """

    uid: int
    gid: int
    uid_start: int
    gid_start: int
    count: int
    direct: bool = False

    def uid_map(self) -> str:
        return f"0 {self.uid} 1\n1 {self.uid_start} {self.count}\n"

    def gid_map(self) -> str:
        return f"0 {self.gid} 1\n1 {self.gid_start} {self.count}\n"


def _subordinate(path: str, name: str, ident: int) -> tuple[int, int] | None:
    """The first range of at least MAX_COUNT ids for this user in /etc/subuid or /etc/subgid."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (name, str(ident)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if start > 0 and count >= MAX_COUNT:
            return start, count
    return None


def _helper(name: str) -> str | None:
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return None


def inside_count() -> int:
    """N when this process is in a user namespace mapping 0 and 1..N contiguously (a ranged
    one, as enter() makes), else 0."""
    try:
        with open("/proc/self/uid_map") as f:
            rows = [line.split() for line in f.read().splitlines()]
    except OSError:
        return 0
    if len(rows) != 2 or rows[0][0] != "0" or rows[0][2] != "1" or rows[1][0] != "1":
        return 0
    return int(rows[1][2])


def available() -> IdRanges | None:
    """The ranges this process can give a new user namespace, or None (single mapping)."""
    count = inside_count()
    if count:
        if os.geteuid() != 0:
            return None
        return IdRanges(0, 0, 1, 1, min(count, MAX_COUNT), direct=True)
    uid, gid = os.getuid(), os.getgid()
    if uid == 0 or _helper("newuidmap") is None or _helper("newgidmap") is None:
        return None
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    users = _subordinate("/etc/subuid", name, uid)
    groups = _subordinate("/etc/subgid", name, uid)
    if users is None or groups is None:
        return None
    return IdRanges(uid, gid, users[0], groups[0], MAX_COUNT)


def write_maps(pid: int, ranges: IdRanges) -> None:
    """Give process `pid`, which has just unshared its user namespace, these ranges."""
    if ranges.direct:
        from .linux import write_file

        try:
            write_file(f"/proc/{pid}/uid_map", ranges.uid_map())
            write_file(f"/proc/{pid}/gid_map", ranges.gid_map())
        except OSError as exc:
            raise SetupError(f"cannot map the id ranges: {exc.strerror}") from None
        return
    import subprocess

    for helper, ident, start in (("newuidmap", ranges.uid, ranges.uid_start),
                                 ("newgidmap", ranges.gid, ranges.gid_start)):
        path = _helper(helper)
        if path is None:
            raise SetupError(f"cannot map the id ranges: {helper} is missing (Debian package uidmap)")
        argv = [path, str(pid), "0", str(ident), "1", "1", str(start), str(ranges.count)]
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            detail = done.stderr.decode(errors="replace").strip().splitlines()
            raise SetupError(f"cannot map the id ranges: {helper} failed"
                             + (f": {detail[-1]}" if detail else ""))


def enter(ranges: IdRanges) -> None:
    """Continue this command as root of a new user namespace mapping `ranges`.

    Forks: the child unshares its user namespace and returns once the parent has mapped
    it; the parent waits for the child and exits with its status (it never returns).
    Only the user namespace is new: files, network and mounts are the caller's.
    """
    import signal as _signal

    from . import linux

    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.close(go_w)
        linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
        linux.unshare(linux.CLONE_NEWUSER)
        os.write(ready_w, b"U")
        os.close(ready_w)
        if os.read(go_r, 1) != b"G":
            os._exit(125)  # the parent could not map us: it says why
        os.close(go_r)
        return
    os.close(ready_w)
    os.close(go_r)
    for signum in (_signal.SIGINT, _signal.SIGQUIT):
        _signal.signal(signum, _signal.SIG_IGN)  # the terminal sends them to the child too
    status = 125
    try:
        if os.read(ready_r, 1) == b"U":
            write_maps(child, ranges)
            os.write(go_w, b"G")
    except SetupError as exc:
        import sys

        sys.stderr.write(f"sbx: error: {exc}\n")
    finally:
        os.close(go_w)
        os.close(ready_r)
        _, wstatus = os.waitpid(child, 0)
        status = os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else 128 + os.WTERMSIG(wstatus)
    os._exit(status)
