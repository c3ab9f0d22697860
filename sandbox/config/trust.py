"""Project profiles (./.sbx/profiles/): the rule they keep, and the directories the caller trusts.

The rule (SECURITY.md, 'Profiles'): a submission must not be able to widen
the sandbox that holds it, so a profile reached through ./.sbx/ may not set
what `project_refusal` and `source_refusal` list; those lists are the part
a security reviewer reads.

The trust list: the directories whose ./.sbx/profiles/ the caller trusts, as direnv trusts an .envrc.

`sbx profile trust [DIR]` records DIR's real path with a SHA-256 of its
.sbx/profiles/*.toml (names and contents): adding, removing or changing any of
them ends the trust until the caller trusts the directory again.  Trust only
lets names resolve there; a project profile keeps the project rule
(SECURITY.md, 'Profiles').

The list is $XDG_CONFIG_HOME/sbx/trusted (or ~/.config/sbx/trusted), one
"HEXDIGEST PATH" line per directory, read only when a project has a profile
of the name asked for, and replaced atomically (a new file renamed over it,
under a lock) so a concurrent `sbx run` reads the old list or the new one.
"""

from __future__ import annotations

import os

from .schema import shown
from .search import SECURITY, ProfileError, config_home, inside, project_dir
from .tomlfile import MAX_FILE, NotRegular, Refused, open_owned

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MAX_LIST = 1 << 20

# ---------------------------------------------------------------- the rule

# All a profile from ./.sbx/ may copy from the caller's environment: a
# project must not be able to ask for the caller's tokens.
PROJECT_PASS_ENV = frozenset(
    ("TERM", "COLORTERM", "NO_COLOR", "LANG", "LANGUAGE", "TZ", "COLUMNS", "LINES")
)
# What a profile from ./.sbx/ may not set, why, and how the user grants it.
_OWN = "use a profile of your own"
_PROJECT_REFUSED = {
    ("network.mode", "host"): ("it could carry your files away", "pass --network host yourself"),
    ("network.mode", "pasta"): ("it could carry your files away", "pass --network pasta yourself"),
    ("network.mode", "nat"): ("it could carry your files away", "pass --network nat yourself"),
    ("seccomp.policy", "none"): ("it would widen the kernel the sandbox can attack", _OWN),
    ("seccomp.action", "log"): ("it would let denied system calls through", _OWN),
    ("landlock.enabled", False): ("it would take down a fence around the sandbox", _OWN),
    ("landlock.write", "root"): ("it would let the sandbox write where its profile keeps it from", _OWN),
}


def project_refusal(values: Mapping[str, object]) -> str | None:
    """Why a profile from ./.sbx/ may not set these (checked) values, for keys other than mounts; None if it may."""
    for (key, value), (why, instead) in _PROJECT_REFUSED.items():
        if values.get(key) == value:
            return f"'{key}' cannot be {shown(value)} in a profile from ./.sbx/: {why} ({SECURITY}); {instead}"
    if values.get("network.publish"):
        return f"'network.publish' cannot be set in a profile from ./.sbx/ ({SECURITY}); use -p"
    for key in ("landlock.noexec", "landlock.tcp_bind", "landlock.tcp_connect"):
        if key in values:  # the list replaces the one of the profile it extends: it could only widen
            return (f"'{key}' cannot be set in a profile from ./.sbx/: it would replace the list of the "
                    f"profile it extends ({SECURITY}); use a profile of your own")
    if values.get("seccomp.allow"):
        return ("'seccomp.allow' cannot be set in a profile from ./.sbx/: it would widen the kernel "
                f"the sandbox can attack ({SECURITY}); use a profile of your own")
    names = values.get("sandbox.pass_env", ())
    assert isinstance(names, tuple)
    for name in names:
        if name not in PROJECT_PASS_ENV and not name.startswith("LC_"):
            allowed = ", ".join(sorted(PROJECT_PASS_ENV)) + ", LC_*"
            return (f"'sandbox.pass_env' cannot copy {name} into the sandbox: a profile from ./.sbx/ "
                    f"may pass only {allowed} ({SECURITY}); use -e {name} to pass it yourself")
    return None


def source_refusal(label: str, mode: str, source: str, project: str) -> str | None:
    """Why a [[mount]] of a profile from ./.sbx/ may not bind `source` (expanded, absolute) so: it may
    see the project (`project`, a real path), never change it."""
    if mode == "rw":
        return (f"'{label}.mode' cannot be \"rw\" in a profile from ./.sbx/: the sandbox could change "
                f"your files ({SECURITY}); use \"overlay\", or pass -v SRC:DST:rw yourself")
    if not inside(os.path.realpath(source), project):
        return (f"'{label}.source' {source} is outside the project directory {project}: a profile "
                f"from ./.sbx/ may bind only paths inside it ({SECURITY}); use -v to bind it yourself")
    return None


# ------------------------------------------------------------ the trust list


def list_path(environ: Mapping[str, str]) -> str | None:
    config = config_home(environ)
    return None if config is None else os.path.join(config, "sbx", "trusted")


def digest(directory: str) -> str | None:
    """What `trust` records for `directory`; None without a .sbx/profiles/ there."""
    import hashlib

    profiles = project_dir(directory)
    try:
        names = sorted(n for n in os.listdir(profiles) if n.endswith(".toml"))
    except OSError:
        return None
    h = hashlib.sha256()
    for name in names:
        data = _content(os.path.join(profiles, name), MAX_FILE + 1)
        encoded = name.encode("utf-8", "surrogateescape")
        h.update(len(encoded).to_bytes(8, "big") + encoded)
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()


def _content(path: str, limit: int) -> bytes:
    """The file's bytes after a "F", or "X" for what is not a readable regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return b"X"
    try:
        import stat

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b"X"
        chunks = [b"F"]
        size = 0
        while size < limit and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return b"X"
    finally:
        os.close(fd)


def _entries(environ: Mapping[str, str]) -> dict[str, str]:
    """real path -> digest, from the list (checked like a profile: only you or root may change it)."""
    path = list_path(environ)
    if path is None:
        return {}
    try:
        fd = open_owned(path)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ProfileError(f"trust list {path}: cannot read: {error.strerror}") from None
    except NotRegular:
        raise ProfileError(f"trust list {path}: not a regular file") from None
    except Refused as refused:
        raise ProfileError(f"trust list {path}: refused: {refused.args[0]}") from None
    try:
        data = os.read(fd, MAX_LIST + 1)
    finally:
        os.close(fd)
    entries = {}
    for line in data.decode("utf-8", "surrogateescape").splitlines():
        hexdigest, _, directory = line.partition(" ")
        if len(hexdigest) == 64 and directory.startswith("/"):
            entries[directory] = hexdigest
    return entries


def is_trusted(cwd: str, environ: Mapping[str, str]) -> bool:
    """Is cwd listed, with .sbx/profiles/ as they were when the caller trusted them?"""
    recorded = _entries(environ).get(os.path.realpath(cwd))
    return recorded is not None and recorded == digest(cwd)


def trust(directory: str, environ: Mapping[str, str]) -> tuple[str, list[str]]:
    """Add (or renew) `directory`; its real path and its profiles' names."""
    real = os.path.realpath(directory)
    if "\n" in real:
        raise ProfileError(f"cannot trust {real!r}: its path holds a newline")
    hexdigest = digest(real)
    if hexdigest is None:
        raise ProfileError(f"{real} has no .sbx/profiles/ directory: nothing to trust")
    names = sorted(n[:-5] for n in os.listdir(project_dir(real)) if n.endswith(".toml"))
    _update(environ, lambda entries: {**entries, real: hexdigest})
    return real, names


def untrust(directory: str, environ: Mapping[str, str]) -> tuple[str, bool]:
    """Remove `directory`; its real path, and whether it was listed."""
    real = os.path.realpath(directory)
    listed = real in _entries(environ)
    if listed:
        _update(environ, lambda entries: {k: v for k, v in entries.items() if k != real})
    return real, listed


def _update(environ: Mapping[str, str], change: Callable[[dict[str, str]], dict[str, str]]) -> None:
    """Rewrite the list under a lock on its directory: a new file, fsynced, renamed over it."""
    import fcntl

    path = list_path(environ)
    if path is None:
        raise ProfileError("cannot keep a trust list: neither XDG_CONFIG_HOME nor HOME is an absolute path")
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise ProfileError(f"trust list {path}: {error.strerror}") from None
    try:
        fcntl.flock(dir_fd, fcntl.LOCK_EX)
        entries = change(_entries(environ))
        text = "".join(f"{hexdigest} {real}\n" for real, hexdigest in sorted(entries.items()))
        _replace(path, text.encode("utf-8", "surrogateescape"), dir_fd)
    except OSError as error:
        raise ProfileError(f"trust list {path}: {error.strerror}") from None
    finally:
        os.close(dir_fd)


def _replace(path: str, data: bytes, dir_fd: int) -> None:
    temp = f"{os.path.basename(path)}.{os.getpid()}.new"
    try:
        os.unlink(temp, dir_fd=dir_fd)  # left by a run that died (we hold the lock)
    except FileNotFoundError:
        pass
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, os.path.basename(path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(temp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    os.fsync(dir_fd)
