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

The same ranges give the payload its identity (SECURITY.md, "Identity"):
with ranges, root inside is still the caller (init builds the root as it),
but the payload runs as inside id PAYLOAD_ID, a subordinate id that owns no
host file, as isolate's box user and podman's --userns=auto do.  Real root
maps root's own /etc/subuid range if it has one, else ROOT_RANGE.  Image
files extracted by real root keep the single mapping (all root's).
"""

from __future__ import annotations

import os

from ..errors import EXIT_SBX, SetupError
from ..model.frozen import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MAX_COUNT = 65535  # inside ids 1..65535: what images use
PAYLOAD_ID = 1000  # the payload's inside uid and gid where ranges are mapped (the user "sbx")
# Real root without an /etc/subuid entry: ids systemd leaves unused (above its container
# range 524288..1879048191, below its foreign-image range at 2147352576).
ROOT_RANGE = 1879048192


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


def _mapped(path: str, start: int, count: int) -> bool:
    """Whether ids start..start+count-1 are all mapped in this process's user namespace."""
    try:
        with open(path) as f:
            rows = [tuple(int(x) for x in line.split()) for line in f.read().splitlines()]
    except (OSError, ValueError):
        return False
    return any(inside <= start and start + count <= inside + length for inside, _outside, length in rows)


def _root_ranges() -> IdRanges | None:
    """Real root's ranges: its /etc/subuid and /etc/subgid entries, else ROOT_RANGE; written
    directly (root may map any ids it has), if this namespace maps them at all (a container's
    root often has only 65536 ids)."""
    users = _subordinate("/etc/subuid", "root", 0) or (ROOT_RANGE, MAX_COUNT)
    groups = _subordinate("/etc/subgid", "root", 0) or (ROOT_RANGE, MAX_COUNT)
    if not (_mapped("/proc/self/uid_map", users[0], MAX_COUNT) and _mapped("/proc/self/gid_map", groups[0], MAX_COUNT)):
        return None
    return IdRanges(0, 0, users[0], groups[0], MAX_COUNT, direct=True)


def for_payload(environ: Mapping[str, str]) -> IdRanges | None:
    """The ranges a run maps so its payload owns nothing on the host, or None (the single
    mapping: the payload is the caller).  SBX_ID_RANGES=0 asks for the single mapping."""
    if environ.get("SBX_ID_RANGES") == "0":
        return None
    return for_run()


def for_run() -> IdRanges | None:
    """The ranges a sandbox of this process maps when its Spec says id_ranges."""
    if os.getuid() == 0 and not inside_count():
        return _root_ranges()
    return available()


def write_maps(pid: int, ranges: IdRanges, debug: bool = False) -> None:
    """Give process `pid`, which has just unshared its user namespace, these ranges.  `debug`
    (SBX_DEBUG): a failing helper's whole stderr on ours, not only its last line in the error."""
    if ranges.direct:
        from .linux import write_file

        try:
            write_file(f"/proc/{pid}/uid_map", ranges.uid_map())
            write_file(f"/proc/{pid}/gid_map", ranges.gid_map())
        except OSError as exc:
            raise SetupError(f"cannot map the id ranges: {exc.strerror}") from None
        return
    # Both helpers at once, by posix_spawn: `subprocess` alone costs a cold run milliseconds.
    started = []
    try:
        for helper, ident, start in (("newuidmap", ranges.uid, ranges.uid_start),
                                     ("newgidmap", ranges.gid, ranges.gid_start)):
            path = _helper(helper)
            if path is None:
                raise SetupError(f"cannot map the id ranges: {helper} is missing (Debian package uidmap)")
            argv = [path, str(pid), "0", str(ident), "1", "1", str(start), str(ranges.count)]
            err_r, err_w = os.pipe()
            try:
                child = os.posix_spawn(path, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
                                       file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                                                     (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                                                     (os.POSIX_SPAWN_DUP2, err_w, 2)])
            except OSError as exc:
                os.close(err_r)
                raise SetupError(f"cannot map the id ranges: cannot run {helper}: {exc.strerror}") from None
            finally:
                os.close(err_w)
            started.append((helper, child, err_r))
    finally:
        failure = None
        for helper, child, err_r in started:
            detail = b""
            while chunk := os.read(err_r, 4096):
                detail = (detail + chunk)[-4096:]
            os.close(err_r)
            _, wstatus = os.waitpid(child, 0)
            said = detail.decode(errors="replace")
            if wstatus != 0 and said and debug:  # all it said; its last line ends the error
                os.write(2, f"sbx: {helper}'s stderr:\n{said.rstrip()}\n".encode(errors="replace"))
            if wstatus != 0 and failure is None:
                lines = [" ".join(line.split()) for line in said.splitlines() if line.strip()]
                code = os.waitstatus_to_exitcode(wstatus)
                silent = f" (exit status {code}; it said nothing)" if code >= 0 else f" (killed by signal {-code})"
                failure = f"cannot map the id ranges: {helper} failed" + (f": {lines[-1]}" if lines else silent)
        if failure is not None:
            raise SetupError(failure + " (SBX_ID_RANGES=0 runs with the single id mapping instead)")


# The handshake of a child that maps id ranges: it unshares its user namespace and says so
# (UNSHARED); its parent, still in the initial namespace where newuidmap works, writes the maps
# and says so (MAPPED).  The sandbox's entry process (runtime/), enter() and run_ranged() use it.
UNSHARED, MAPPED = b"U", b"G"


def announce_unshared(ready_w: int, go_r: int) -> bool:
    """The child's end, once it has its user namespace: True when the parent has mapped it
    (False: the parent could not, and says why)."""
    os.write(ready_w, UNSHARED)
    return os.read(go_r, 1) == MAPPED


def map_when_asked(child: int, ranges: IdRanges, ready_r: int, go_w: int, debug: bool = False) -> bool:
    """The parent's end: write the child's maps once it has unshared; False when it died first.
    SetupError when the maps cannot be written."""
    if os.read(ready_r, 1) != UNSHARED:
        return False
    write_maps(child, ranges, debug)
    os.write(go_w, MAPPED)
    return True


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
        mapped = announce_unshared(ready_w, go_r)
        os.close(ready_w)
        if not mapped:
            os._exit(EXIT_SBX)  # the parent could not map us: it says why
        os.close(go_r)
        return
    os.close(ready_w)
    os.close(go_r)
    for signum in (_signal.SIGINT, _signal.SIGQUIT):
        _signal.signal(signum, _signal.SIG_IGN)  # the terminal sends them to the child too
    status = EXIT_SBX
    try:
        map_when_asked(child, ranges, ready_r, go_w)
    except SetupError as exc:
        import sys

        sys.stderr.write(f"sbx: error: {exc}\n")
    finally:
        os.close(go_w)
        os.close(ready_r)
        _, wstatus = os.waitpid(child, 0)
        status = os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else 128 + os.WTERMSIG(wstatus)
    os._exit(status)


TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def run_ranged(ranges: IdRanges, fn: Callable[[], None]) -> None:
    """Call `fn` as root of a new user namespace mapping `ranges`, in a forked child; wait for it.

    Root there holds CAP_DAC_OVERRIDE and CAP_FOWNER over every mapped id, so `fn` can
    remove or change files that the caller's subordinate ids own (what a payload made).
    Only the user namespace is new: files, mounts and fds are the caller's.  `fn` runs in
    the child: what it needs must be imported or opened before this call.  SetupError when
    the namespace cannot be made or mapped (`fn` did not run); an OSError that `fn` raised
    comes back as OSError(errno, strerror), anything else as SbxError.
    """
    import signal as _signal

    from . import linux
    from ..errors import SbxError

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # never returns: every path ends in os._exit
        code, report = 1, b""
        try:
            os.close(ready_r)
            os.close(go_w)
            os.close(err_r)
            linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
            linux.unshare(linux.CLONE_NEWUSER)
            if announce_unshared(ready_w, go_r):  # else the parent could not map us: it says why
                fn()
                code = 0
        except OSError as exc:
            report = f"{exc.errno or 0}\0{exc.strerror or exc}".encode(errors="replace")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised in a fork
            report = f"0\0{type(exc).__name__}: {exc}".encode(errors="replace")
        finally:
            try:
                os.write(err_w, report[:4000])
            finally:
                os._exit(code)
    os.close(ready_w)
    os.close(go_r)
    os.close(err_w)
    mapped, failure = False, None
    try:
        try:
            mapped = map_when_asked(child, ranges, ready_r, go_w)
        except SetupError as exc:
            failure = exc
        finally:
            os.close(go_w)
            os.close(ready_r)
        report = b""
        while chunk := os.read(err_r, 4096):  # EOF when the child exits
            report += chunk
    finally:
        os.close(err_r)
        _, wstatus = os.waitpid(child, 0)
    number, _, text = report.decode(errors="replace").partition("\0")
    if failure is not None:
        raise failure
    if not mapped:
        raise SetupError(f"cannot make a user namespace for the id ranges: {text or 'the helper died'}")
    if os.WIFSIGNALED(wstatus):
        raise SbxError(f"the ranged helper died of signal {os.WTERMSIG(wstatus)}")
    if os.waitstatus_to_exitcode(wstatus) == 0:
        return
    if number.isdigit() and int(number):
        raise OSError(int(number), text)
    raise SbxError(text or "the ranged helper failed")
