"""Reading, validating, merging and writing profile files.

Imported only when a TOML file must really be parsed (see profile.py), so
tomllib and difflib cost nothing on a plain `sbx run`.

Every failure is a ProfileError whose text names the file, the key, the
value and what is allowed; nothing else escapes (fuzz/fuzz_profile.py).

Who supplies what (SECURITY.md, 'Profiles'): a name needed by the command
line, the implicit default or a trusted file is looked up in the trusted
directories only; ./.sbx/profiles/ comes first only for the command line's
name when the caller opted in, and for what a project file extends.  Every
file is read through an fd whose owner and mode are checked: nobody but
you or root may be able to change a profile you use.
"""

from __future__ import annotations

import os
import stat

from ..model.frozen import dataclass
from .profile import BUILTIN, DEFAULT, Profile, ProfileError, project_dir, search_path
from ..model.spec import LANDLOCK_WRITE, MOUNT_MODES, Limits, Mount, Spec
from ..model.units import format_duration, format_size, parse_duration, parse_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    _Convert = Callable[[object], object]

MAX_FILE = 1 << 20
MAX_DEPTH = 32
NETWORK_MODES = ("none", "host", "pasta", "nat")
SECCOMP_POLICIES = ("default", "strict", "none")
SECCOMP_ACTIONS = ("errno", "kill", "log")
UNLIMITED = "unlimited"
# All a profile from ./.sbx/ may copy from the caller's environment: a
# project must not be able to ask for the caller's tokens (SECURITY.md).
PROJECT_PASS_ENV = frozenset(
    ("TERM", "COLORTERM", "NO_COLOR", "LANG", "LANGUAGE", "TZ", "COLUMNS", "LINES")
)
_SECURITY = "see SECURITY.md, 'Profiles'"


class _Bad(Exception):
    """A converter's refusal: args[0] says what is allowed ("a size such as ...");
    args[1], if given, is the offending item of an array or table."""


class _Invalid(Exception):
    """A converter's complete message, for checks done by another module."""


class _Unset(Exception):
    """A $VAR in a path that the environment does not set; args[0] is its name."""


@dataclass(frozen=True)
class _Context:
    cwd: str
    environ: Mapping[str, str]
    dirs: tuple[str, ...]  # ./.sbx/profiles (index _PROJECT), then the trusted search path
    project: str  # realpath of cwd: the directory that holds .sbx/
    project_sbx: tuple[str, ...]  # cwd/.sbx, literally and resolved
    opted_in: bool  # --project-profiles (the trust list is read only when it matters)
    warn: Callable[[str], None] | None


_PROJECT = 0  # ctx.dirs[_PROJECT] is ./.sbx/profiles; the trusted directories follow
_OPT_IN = "pass --project-profiles or run 'sbx profile trust'"


@dataclass(frozen=True)
class _File:
    path: str  # absolute, symlinks kept; BUILTIN for the built-in default
    name: str
    display: str  # how messages name it: relative to cwd when inside it
    restricted: bool  # reached through ./.sbx/: the project rule applies
    dir_index: int  # position in the search path; -1 for an explicit path


class _Layer:
    """What one file sets, converted; None values are limits set to "unlimited"."""

    __slots__ = ("values", "env", "mounts")

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.env: dict[str, str] | None = None
        self.mounts: list[Mount] | None = None


# ---------------------------------------------------------------- converters


def _shown(value: object) -> str:
    """A value as the user wrote it in TOML, shortened for a message."""
    if isinstance(value, str):
        text = _toml_str(value)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, list):
        text = "an array"
    else:
        text = "a date or time"
    return text if len(text) <= 60 else text[:57] + "..."


def _string(value: object, allowed: str, item: bool = False) -> str:
    # NUL can be written as \u0000 in TOML but no path, name or env entry may hold it.
    if not isinstance(value, str) or "\0" in value:
        raise _Bad(allowed, value) if item else _Bad(allowed)
    return value


def _strings(value: object, allowed: str, check: Callable[[str], bool]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(allowed)
    items = tuple(_string(item, allowed, item=True) for item in value)
    for item in items:
        if not check(item):
            raise _Bad(allowed, item)
    return items


def _with_unlimited(convert: _Convert, allowed: str) -> _Convert:
    def run(value: object) -> object:
        if value == UNLIMITED:
            return None
        try:
            return convert(value)
        except _Bad as bad:
            raise _Bad(f'{allowed}, or "unlimited"', *bad.args[1:]) from None

    return run


def _size(minimum: int) -> _Convert:
    allowed = "a size such as 512K, 256M or 1.5G (binary units)"
    if minimum:
        allowed = "a size above 0 such as 512K, 256M or 1.5G (binary units)"

    def run(value: object) -> object:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise _Bad(allowed)
        try:
            size = parse_size(value)
        except ValueError:
            raise _Bad(allowed) from None
        if not minimum <= size <= 1 << 62:
            raise _Bad(allowed)
        return size

    return run


def _duration(value: object) -> object:
    allowed = "a duration above 0 such as 2, 2s, 500ms or 1.5m"
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise _Bad(allowed)
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise _Bad(allowed) from None
    if not seconds > 0:
        raise _Bad(allowed)
    return seconds


def _integer(low: int, high: int) -> _Convert:
    allowed = f"an integer from {low} to {high}"

    def run(value: object) -> object:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise _Bad(allowed)
        return value

    return run


def _cpus(value: object) -> object:
    allowed = "a number of CPUs above 0 such as 1 or 1.5 (at most 4096)"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 4096:
        raise _Bad(allowed)
    return float(value)


def _bool(value: object) -> object:
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


def _choice(options: tuple[str, ...]) -> _Convert:
    allowed = "one of " + ", ".join(f'"{o}"' for o in options)

    def run(value: object) -> object:
        if value not in options:
            raise _Bad(allowed)
        return value

    return run


def _is_env_name(name: str) -> bool:
    return (
        name.isascii()
        and name.replace("_", "a").isalnum()
        and not name[:1].isdigit()
        and name != ""
    )


def _is_hostname(name: str) -> bool:
    labels = name.split(".")
    return 0 < len(name) <= 64 and all(
        0 < len(label) <= 63
        and label.isascii()
        and label.replace("-", "a").isalnum()
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    )


def _is_number(text: str, high: int) -> bool:
    # Length first: int() refuses strings of over 4300 digits.
    return 0 < len(text) <= 10 and text.isascii() and text.isdecimal() and int(text) <= high


def _is_cpuset(text: str) -> bool:
    for part in text.split(","):
        low, dash, high = part.partition("-")
        high = high if dash else low
        if not (_is_number(low, 65535) and _is_number(high, 65535) and int(low) <= int(high)):
            return False
    return True


def _is_port(text: str) -> bool:
    return _is_number(text, 65535) and int(text) > 0


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_publish(text: str) -> bool:
    """[HOST_IP:]HOST_PORT:PORT[/tcp|udp], IPv6 in brackets: what -p takes."""
    from ..net.network import parse_publish

    return _net_accepts(parse_publish, text)


def _is_rule(text: str) -> bool:
    """ADDRESS[/PREFIX], HOST, HOST:PORT or [IPv6]:PORT."""
    from ..net.network import parse_rule

    return _net_accepts(parse_rule, text)


def _net_accepts(parse: Callable[[str], object], text: str) -> bool:
    """The profile accepts exactly what the run path's own parser does."""
    from ..net.network import NetError

    try:
        parse(text)
    except NetError:
        return False
    return True


def _is_image(name: str) -> bool:
    return 0 < len(name) <= 255 and name.isprintable() and " " not in name


def _text(allowed: str, check: Callable[[str], bool]) -> _Convert:
    def run(value: object) -> object:
        text = _string(value, allowed)
        if not check(text):
            raise _Bad(allowed)
        return text

    return run


def _list(allowed: str, check: Callable[[str], bool]) -> _Convert:
    return lambda value: _strings(value, allowed, check)


def _syscalls(deny: bool) -> _Convert:
    """Entries as the seccomp work reads them: `name` or `name(argN OP VALUE, ...)`.

    The syntax is checked here (seccomp_policy is pure Python); whether a
    name exists and how entries combine is checked when the filter is built.
    """
    key = "seccomp.deny" if deny else "seccomp.allow"
    allowed = 'an array of system calls such as ["ptrace", "socket(arg0 == AF_NETLINK)"]'

    def run(value: object) -> object:
        from ..seccomp import policy as seccomp_policy

        entries = _strings(value, allowed, bool)
        for entry in entries:
            try:
                seccomp_policy.parse_entry(entry, f"'{key}'", deny)
            except ValueError as error:  # PolicyError, or int() of a huge number
                message = str(error) if isinstance(error, seccomp_policy.PolicyError) else ""
                raise _Invalid(message or f"'{key}': bad entry {_shown(entry)}") from None
        return entries

    return run


def _is_sandbox_path(text: str) -> bool:
    return text.startswith("/") and ".." not in text.split("/")


def _ports(value: object) -> object:
    """TCP ports: integers (or their digits as strings, as `show` writes them)."""
    allowed = "an array of TCP ports from 0 to 65535 such as [80, 443]"
    if not isinstance(value, list):
        raise _Bad(allowed)
    ports = []
    for item in value:
        if isinstance(item, str) and item.isdigit() and len(item) <= 5:
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= 65535:
            raise _Bad(allowed, item)
        ports.append(item)
    return tuple(sorted(set(ports)))


def _env(value: object) -> object:
    """A table NAME = "value", or podman-style ["NAME=value", ...]."""
    allowed = 'a table such as { LANG = "C.UTF-8" } or an array of "NAME=value"'
    if isinstance(value, list):
        pairs = [_string(item, allowed, item=True).partition("=") for item in value]
        for name, sep, text in pairs:
            if not sep:
                raise _Bad(allowed, name)
        value = {name: text for name, _, text in pairs}
    if not isinstance(value, dict):
        raise _Bad(allowed)
    env = {}
    for name, text in value.items():
        if not _is_env_name(name):
            raise _Bad(allowed + ", with names of letters, digits and '_'", name)
        env[name] = _string(text, allowed + ", with string values", item=True)
    return env


_SIZE = _size(1)
_DURATION = "a duration above 0 such as 2, 2s, 500ms or 1.5m"


def _limit(convert: _Convert, allowed: str, kind: str = "") -> tuple[_Convert, str]:
    return _with_unlimited(convert, allowed), kind


_SCHEMA: dict[str, dict[str, tuple[_Convert, str]]] = {
    # section -> key -> (converter, how `show` writes the value)
    "sandbox": {
        "image": (_text('an image name such as "host"', _is_image), ""),
        "hostname": (_text("a host name of letters, digits, '-' and '.' (64 at most)", _is_hostname), ""),
        "uid": (_integer(0, 4294967294), ""),
        "gid": (_integer(0, 4294967294), ""),
        "workdir": (_text("an absolute path", bool), "path"),
        "env": (_env, "env"),
        "pass_env": (_list("an array of variable names such as [\"TERM\"]", _is_env_name), ""),
        "disk": (_SIZE, "size"),
        "tmp_size": (_SIZE, "size"),
    },
    "limits": {
        "memory": _limit(_SIZE, "a size above 0 such as 256M", "size"),
        "cpus": _limit(_cpus, "a number of CPUs above 0 such as 1 or 1.5"),
        "cpuset": (_text('a CPU list such as "0-3,6"', _is_cpuset), ""),
        "pids": _limit(_integer(1, 4194304), "an integer from 1 to 4194304"),
        "time": _limit(_duration, _DURATION, "duration"),
        "wall_time": _limit(_duration, _DURATION, "duration"),
        "output": _limit(_size(0), "a size such as 0, 64K or 64M", "size"),
        "file_size": _limit(_size(0), "a size such as 0, 64K or 64M", "size"),
        "open_files": _limit(_integer(1, 1 << 30), f"an integer from 1 to {1 << 30}"),
        "stack": _limit(_SIZE, "a size above 0 such as 8M", "size"),
        "io_read_bps": _limit(_SIZE, "a size above 0 such as 50M", "size"),
        "io_write_bps": _limit(_SIZE, "a size above 0 such as 50M", "size"),
        "strict": (_bool, ""),
    },
    "network": {
        "mode": (_choice(NETWORK_MODES), ""),
        "publish": (_list('an array such as ["8080:80", "127.0.0.1:5353:53/udp"]', _is_publish), ""),
        "allow": (_list('an array such as ["10.0.0.0/8", "pypi.org:443"]', _is_rule), ""),
        "deny": (_list('an array such as ["169.254.169.254", "10.0.0.0/8"]', _is_rule), ""),
        "dns": (_list('an array of IP addresses such as ["192.0.2.53"]', _is_ip), ""),
        "host_loopback": (_bool, ""),
    },
    "seccomp": {
        "policy": (_choice(SECCOMP_POLICIES), ""),
        "allow": (_syscalls(deny=False), ""),
        "deny": (_syscalls(deny=True), ""),
        "action": (_choice(SECCOMP_ACTIONS), ""),
    },
    "landlock": {
        "enabled": (_bool, ""),
        "write": (_choice(LANDLOCK_WRITE), ""),
        "noexec": (_list('an array of absolute paths inside the sandbox such as ["/tmp"]', _is_sandbox_path), ""),
        "tcp_bind": (_ports, ""),
        "tcp_connect": (_ports, ""),
    },
}
_TOP_KEYS = ("description", "extends", *_SCHEMA, "mount")
_MOUNT_KEYS = ("source", "target", "mode", "size", "optional")
KEYS = tuple(f"{s}.{k}" for s, table in _SCHEMA.items() for k in table) + ("mounts",)


# ------------------------------------------------------------------- messages


def _fail(f: _File, message: str) -> ProfileError:
    return ProfileError(f"{f.display}: {message}")


def _must(f: _File, key: str, value: object, allowed: str) -> ProfileError:
    return _fail(f, f"'{key}' must be {allowed}, not {_shown(value)}")


def _refused(f: _File, key: str, value: object, bad: _Bad) -> ProfileError:
    return _must(f, key, bad.args[1] if len(bad.args) > 1 else value, bad.args[0])


def _close_match(word: str, candidates: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def _unknown(f: _File, prefix: str, key: str, allowed: Iterable[str]) -> ProfileError:
    hint = _close_match(key, allowed)
    if hint is None:  # a key of another section: `[sandbox] memory = ...`
        hint = next((f"{s}.{key}" for s, table in _SCHEMA.items() if key in table), None)
    suffix = f" (did you mean '{hint}'?)" if hint else ""
    return _fail(f, f"unknown key '{prefix}{key}'{suffix}")


def _check_keys(f: _File, table: dict[str, object], allowed: Iterable[str], prefix: str) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise _unknown(f, prefix, key, allowed)


# --------------------------------------------------------------------- paths


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _display(path: str, ctx: _Context) -> str:
    return os.path.relpath(path, ctx.cwd) if _inside(path, ctx.cwd) and path != ctx.cwd else path


def _display_dir(path: str, ctx: _Context) -> str:
    shown = _display(path, ctx)
    return shown if shown.startswith("/") else "./" + shown


def _variable(name: str, ctx: _Context) -> str:
    value = ctx.cwd if name == "PWD" else ctx.environ.get(name)
    if value is None or (name == "HOME" and not value):
        raise _Unset(name)
    return value


def _expand(text: str, ctx: _Context) -> str:
    """`~`, `$NAME`, `${NAME}` and `$$`, in one pass so values are not re-expanded."""
    bad = "a path where $ starts $NAME or ${NAME} ($$ is a literal $) and ~ only ~/..."
    out: list[str] = []
    i = 0
    if text == "~" or text.startswith("~/"):
        out.append(_variable("HOME", ctx))
        i = 1
    elif text.startswith("~"):
        raise _Bad(bad)
    while (j := text.find("$", i)) >= 0:
        out.append(text[i:j])
        if text.startswith("$$", j):
            out.append("$")
            i = j + 2
            continue
        if text.startswith("${", j):
            end = text.find("}", j)
            if end < 0:
                raise _Bad(bad)
            name, i = text[j + 2 : end], end + 1
        else:
            k = j + 1
            while k < len(text) and _is_env_name("a" + text[k]):
                k += 1
            name, i = text[j + 1 : k], k
        if not _is_env_name(name):
            raise _Bad(bad)
        out.append(_variable(name, ctx))
    out.append(text[i:])
    return "".join(out)


def _expand_path(f: _File, key: str, text: str, ctx: _Context) -> str:
    """An expanded absolute path; relative ones are taken from cwd, like -v."""
    try:
        expanded = _expand(text, ctx)
    except _Bad as bad:
        raise _must(f, key, text, bad.args[0]) from None
    return os.path.normpath(os.path.join(ctx.cwd, expanded))


def _in_project_sbx(path: str, ctx: _Context) -> bool:
    literal, resolved = ctx.project_sbx
    return _inside(path, literal) or _inside(os.path.realpath(path), resolved)


# -------------------------------------------------------------- one file


def _read(f: _File) -> dict[str, object]:
    try:
        fd = open_owned(f.path)
    except OSError as error:
        raise _fail(f, f"cannot read: {error.strerror}") from None
    except NotRegular:
        raise _fail(f, "not a regular file") from None
    except Refused as refused:
        raise ProfileError(f"profile {f.path}: refused: {refused.args[0]} ({_SECURITY})") from None
    try:
        chunks = []
        size = 0
        while size <= MAX_FILE and (chunk := os.read(fd, 65536)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as error:
        raise _fail(f, f"cannot read: {error.strerror}") from None
    finally:
        os.close(fd)
    if size > MAX_FILE:
        raise _fail(f, f"larger than {format_size(MAX_FILE)}: not a profile")
    return _parse(f, b"".join(chunks))


class NotRegular(Exception):
    """A directory, FIFO or device where a file was expected."""


class Refused(Exception):
    """A file someone other than the caller or root could have changed; args[0] says how."""


def open_owned(path: str) -> int:
    """`path` (absolute) opened read-only, once it is a regular file that only you or root
    can change: the file and the directory it is named in (and, through a symlink, the
    directory it is in) are owned by you or root and writable by nobody else.

    Checked on the opened fds (fstat), so what is checked is what is read.  A sticky
    directory (/tmp) passes: others cannot replace a file of yours there.  Raises
    OSError, NotRegular or Refused.
    """
    head, tail = os.path.split(path)
    dir_fd = os.open(head, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_writers(os.fstat(dir_fd), f"its directory {head}", head)
        # O_NONBLOCK: a FIFO named as a profile must fail, not hang.
        fd = os.open(tail, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular
        _check_writers(st, "it", path)
        real = os.path.dirname(os.path.realpath(path))
        if real != os.path.realpath(head):  # a symlink: where it points counts too
            target_fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                _check_writers(os.fstat(target_fd), f"the directory it links into, {real},", real)
            finally:
                os.close(target_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_writers(st: os.stat_result, what: str, path: str) -> None:
    if st.st_uid not in (os.geteuid(), 0):
        raise Refused(f"{what} is owned by {_user(st.st_uid)}, not by you or root: they could change it")
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return  # sticky: nobody else can rename or remove what the owner put there
    mode = f"mode {stat.S_IMODE(st.st_mode):04o}"
    if st.st_mode & stat.S_IWOTH:
        raise Refused(f"{what} is writable by others ({mode}); chmod o-w {path}")
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid, st.st_uid):
        raise Refused(f"{what} is writable by group {_group(st.st_gid)} ({mode}); chmod g-w {path}")


def _user(uid: int) -> str:
    import pwd

    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _private_group(gid: int, owner: int) -> bool:
    """The owner's own group, whose only member is the owner (Debian's and Ubuntu's
    user groups, where umask 002 makes every new file group-writable)."""
    import grp
    import pwd

    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(owner)
    except KeyError:
        return False
    if any(member != user.pw_name for member in group.gr_mem):
        return False
    if any(p.pw_gid == gid and p.pw_uid != owner for p in pwd.getpwall()):
        return False
    return user.pw_gid == gid or user.pw_name in group.gr_mem


def _parse(f: _File, data: bytes) -> dict[str, object]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        raise ProfileError(f"{f.display}:{line}:{column}: invalid TOML: not UTF-8 text") from None
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(_toml_error(f, text, str(error))) from None
    except ValueError as error:  # int() of a 5000-digit integer
        raise _fail(f, f"invalid TOML: {error}") from None
    except RecursionError:
        raise _fail(f, "invalid TOML: nested too deeply") from None


def _toml_error(f: _File, text: str, message: str) -> str:
    """tomllib says "Invalid value (at line 3, column 10)"; we say "f.toml:3:10: ..."."""
    what, sep, where = message.rpartition(" (at ")
    if not sep:
        what, where = message, ""
    what = what[:1].lower() + what[1:]
    if where.startswith("line ") and ", column " in where:
        line, _, column = where[5:].rstrip(")").partition(", column ")
        return f"{f.display}:{line}:{column}: invalid TOML: {what}"
    if where.startswith("end of document"):
        lines = text.split("\n")
        return f"{f.display}:{len(lines)}:{len(lines[-1]) + 1}: invalid TOML: {what}"
    return f"{f.display}: invalid TOML: {what}"


def _convert(doc: dict[str, object], f: _File, ctx: _Context) -> tuple[_Layer, str | None]:
    """One file's values, typed and checked; and what it extends."""
    _check_keys(f, doc, _TOP_KEYS, "")
    layer = _Layer()
    for section, schema in _SCHEMA.items():
        if section in doc:
            _convert_section(doc[section], section, schema, f, layer)
    if "sandbox.workdir" in layer.values:
        workdir = layer.values["sandbox.workdir"]
        assert isinstance(workdir, str)
        layer.values["sandbox.workdir"] = _absolute(f, "sandbox.workdir", workdir, ctx)
    if f.restricted:
        _check_project(f, layer)
    if "mount" in doc:
        layer.mounts = _mounts(doc["mount"], f, ctx)
    if "description" in doc:
        layer.values["description"] = _description(f, doc["description"])
    extends = doc.get("extends")
    if extends is not None and (not isinstance(extends, str) or not extends or "\0" in extends):
        raise _must(f, "extends", extends, "a profile name or a path to a .toml file")
    return layer, extends


def _convert_section(
    table: object, section: str, schema: dict[str, tuple[_Convert, str]], f: _File, layer: _Layer
) -> None:
    if not isinstance(table, dict):
        raise _must(f, section, table, f"a table ([{section}])")
    _check_keys(f, table, schema, section + ".")
    for key, value in table.items():
        dotted = f"{section}.{key}"
        try:
            converted = schema[key][0](value)
        except _Bad as bad:
            raise _refused(f, dotted, value, bad) from None
        except _Invalid as invalid:
            raise _fail(f, invalid.args[0]) from None
        if dotted == "sandbox.env":
            assert isinstance(converted, dict)
            layer.env = converted
        else:
            layer.values[dotted] = converted


def _description(f: _File, value: object) -> str:
    if not isinstance(value, str) or not value.isprintable():
        raise _must(f, "description", value, "one line of text")
    return value


def _absolute(f: _File, key: str, text: str, ctx: _Context) -> str:
    """A path inside the sandbox, after ~ and $VAR expansion (ci uses ${PWD})."""
    try:
        expanded = _expand(text, ctx)
    except _Bad as bad:
        raise _must(f, key, text, bad.args[0]) from None
    except _Unset as unset:
        raise _fail(f, f"'{key}' uses ${unset.args[0]}, which is not set") from None
    if not expanded.startswith("/"):
        raise _must(f, key, text, "an absolute path")
    return os.path.normpath(expanded)


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


def _check_project(f: _File, layer: _Layer) -> None:
    """The rule for ./.sbx/ profiles (SECURITY.md), for keys other than mounts."""
    for (key, value), (why, instead) in _PROJECT_REFUSED.items():
        if layer.values.get(key) == value:
            refused = f"'{key}' cannot be {_shown(value)} in a profile from ./.sbx/"
            raise _fail(f, f"{refused}: {why} ({_SECURITY}); {instead}")
    if layer.values.get("network.publish"):
        raise _fail(f, f"'network.publish' cannot be set in a profile from ./.sbx/ ({_SECURITY}); use -p")
    for key in ("landlock.noexec", "landlock.tcp_bind", "landlock.tcp_connect"):
        if key in layer.values:  # the list replaces the one of the profile it extends: it could only widen
            raise _fail(f, f"'{key}' cannot be set in a profile from ./.sbx/: it would replace the list of the "
                        f"profile it extends ({_SECURITY}); use a profile of your own")
    if layer.values.get("seccomp.allow"):
        raise _fail(
            f,
            "'seccomp.allow' cannot be set in a profile from ./.sbx/: it would widen the kernel "
            f"the sandbox can attack ({_SECURITY}); use a profile of your own",
        )
    names = layer.values.get("sandbox.pass_env", ())
    assert isinstance(names, tuple)
    for name in names:
        if name not in PROJECT_PASS_ENV and not name.startswith("LC_"):
            allowed = ", ".join(sorted(PROJECT_PASS_ENV)) + ", LC_*"
            raise _fail(
                f,
                f"'sandbox.pass_env' cannot copy {name} into the sandbox: a profile from ./.sbx/ "
                f"may pass only {allowed} ({_SECURITY}); use -e {name} to pass it yourself",
            )


# -------------------------------------------------------------------- mounts


def _mounts(value: object, f: _File, ctx: _Context) -> list[Mount]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise _must(f, "mount", value, "an array of tables ([[mount]])")
    mounts: list[Mount] = []
    for number, table in enumerate(value, 1):
        mount = _mount(table, f"mount[{number}]", f, ctx)
        if mount is None:
            continue
        if any(m.target == mount.target for m in mounts):
            raise _fail(f, f"'mount[{number}].target' {mount.target} is mounted twice in this file")
        mounts.append(mount)
    return mounts


def _mount_field(table: dict[str, object], key: str, label: str, f: _File, convert: _Convert) -> object:
    try:
        return convert(table[key])
    except _Bad as bad:
        raise _refused(f, f"{label}.{key}", table[key], bad) from None


def _mount(table: dict[str, object], label: str, f: _File, ctx: _Context) -> Mount | None:
    """One [[mount]]; None for an optional bind whose $VAR is not set."""
    _check_keys(f, table, _MOUNT_KEYS, label + ".")
    mode = _mount_field(table, "mode", label, f, _choice(MOUNT_MODES)) if "mode" in table else "ro"
    optional = _mount_field(table, "optional", label, f, _bool) if "optional" in table else False
    size = _mount_field(table, "size", label, f, _SIZE) if "size" in table else None
    assert isinstance(mode, str) and isinstance(optional, bool) and (size is None or isinstance(size, int))
    if "target" not in table:
        raise _fail(f, f"'{label}' needs a target: the path inside the sandbox")
    target = _mount_field(table, "target", label, f, _text("an absolute path", bool))
    assert isinstance(target, str)
    target = _absolute(f, f"{label}.target", target, ctx)
    if target == "/":
        raise _must(f, f"{label}.target", table["target"], "a path below /")
    if mode == "tmpfs":
        for key in ("source", "optional"):
            if key in table:
                raise _fail(f, f"'{label}.{key}' does not apply to mode = \"tmpfs\"")
        return Mount(target=target, mode=mode, size=size)
    if size is not None:
        raise _fail(f, f"'{label}.size' applies only to mode = \"tmpfs\"")
    if "source" not in table:
        raise _fail(f, f"'{label}' needs a source: a host path (or mode = \"tmpfs\")")
    source = _mount_field(table, "source", label, f, _text("a host path", bool))
    assert isinstance(source, str)
    try:
        source = _expand_path(f, f"{label}.source", source, ctx)
    except _Unset as unset:
        if optional:
            return None
        raise _fail(f, f"'{label}.source' uses ${unset.args[0]}, which is not set") from None
    if f.restricted:
        source = _project_source(f, label, mode, source, ctx)
    return Mount(target=target, mode=mode, source=source, optional=optional)


def _project_source(f: _File, label: str, mode: str, source: str, ctx: _Context) -> str:
    """The rule for ./.sbx/ profiles (SECURITY.md): see the project, never change it."""
    if mode == "rw":
        raise _fail(
            f,
            f"'{label}.mode' cannot be \"rw\" in a profile from ./.sbx/: the sandbox could change "
            f"your files ({_SECURITY}); use \"overlay\", or pass -v SRC:DST:rw yourself",
        )
    real = os.path.realpath(source)
    if not _inside(real, ctx.project):
        raise _fail(
            f,
            f"'{label}.source' {source} is outside the project directory {ctx.project}: a profile "
            f"from ./.sbx/ may bind only paths inside it ({_SECURITY}); use -v to bind it yourself",
        )
    return real  # bind what was checked, not a symlink that may change


# -------------------------------------------------------------- inheritance


def _context(
    cwd: str, environ: Mapping[str, str], project: bool = False, warn: Callable[[str], None] | None = None
) -> _Context:
    cwd = os.path.abspath(cwd)
    sbx = os.path.join(cwd, ".sbx")
    return _Context(
        cwd=cwd,
        environ=environ,
        dirs=(project_dir(cwd), *search_path(cwd, environ)),
        project=os.path.realpath(cwd),
        project_sbx=(sbx, os.path.realpath(sbx)),
        opted_in=project,
        warn=warn,
    )


def _opted_in(ctx: _Context) -> bool:
    """Do names from the command line resolve through ./.sbx/profiles/ here?"""
    if ctx.opted_in:
        return True
    from . import trust as profile_trust

    return profile_trust.is_trusted(ctx.cwd, ctx.environ)


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(".toml")


def _valid_name(name: str) -> bool:
    return (
        0 < len(name) <= 64
        and name.isascii()
        and name.replace("-", "a").replace("_", "a").replace(".", "a").isalnum()
        and name[0] not in ".-"
    )


def _names(ctx: _Context, start: int) -> set[str]:
    names = {"default"}
    for directory in ctx.dirs[start:]:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        names.update(e[:-5] for e in entries if e.endswith(".toml") and _valid_name(e[:-5]))
    return names


def _find(ref: str, ctx: _Context, start: int, stop: int | None = None) -> _File | None:
    for index in range(start, len(ctx.dirs) if stop is None else stop):
        path = os.path.join(ctx.dirs[index], ref + ".toml")
        if os.path.lexists(path):
            return _File(path, ref, _display(path, ctx), _in_project_sbx(path, ctx), index)
    return None


def _locate(ref: str, ctx: _Context, origin: _File | None) -> _File:
    where = f"{origin.display}: 'extends': " if origin else ""
    if _is_path(ref):
        return _locate_path(ref, ctx, origin, where)
    if not _valid_name(ref):
        raise ProfileError(
            f"{where}invalid profile name {_shown(ref)}: use letters, digits, '.', '_' and '-', "
            "or a path to a .toml file"
        )
    if origin is None:
        return _locate_top(ref, ctx)
    # What a trusted file extends never comes from ./.sbx/: the project would
    # supply the base of the caller's own limits.  A project file's may.
    start = _PROJECT if origin.restricted else _PROJECT + 1
    if origin.name == ref and origin.dir_index >= 0:
        start = max(start, origin.dir_index + 1)  # `extends = "grader"` in a grader.toml: the next one
    found = _find(ref, ctx, start)
    if found is not None:
        return found
    if ref == "default":
        return _File(BUILTIN, "default", BUILTIN, False, len(ctx.dirs))
    note = ""
    if start > _PROJECT and _find(ref, ctx, _PROJECT, _PROJECT + 1) is not None:
        note = "; ./.sbx/profiles/ is never searched for what a profile outside it extends"
    raise _not_found(ref, ctx, start, where, note)


def _locate_top(ref: str, ctx: _Context) -> _File:
    """The command line's name (or the implicit default)."""
    local = _find(ref, ctx, _PROJECT, _PROJECT + 1)
    if local is not None and _opted_in(ctx):  # the trust list is read only here
        return local
    # The default without the project's: yours, else the built-in (as profile.resolve's fast path).
    found = _find(ref, ctx, _PROJECT + 1, len(ctx.dirs) - 1 if ref == "default" else None)
    if local is not None:
        if found is None and ref != "default":
            raise ProfileError(
                f"profile '{ref}' is only in ./.sbx/profiles/, the project's profiles, which apply only "
                f"when you opt in ({_SECURITY}): {_OPT_IN}, or name the file: --profile ./{local.display}"
            )
        if ctx.warn is not None:
            used = "the built-in default" if found is None else found.path
            ctx.warn(f"ignored the project's {local.display}, used {used}: {_OPT_IN} to use the project's")
    if found is not None:
        return found
    if ref == "default":
        return _File(BUILTIN, "default", BUILTIN, False, len(ctx.dirs))
    raise _not_found(ref, ctx, _PROJECT if ctx.opted_in else _PROJECT + 1, "", "")


def _not_found(ref: str, ctx: _Context, start: int, where: str, note: str) -> ProfileError:
    hint = _close_match(ref, _names(ctx, start))
    looked = ", ".join(_display_dir(d, ctx) for d in ctx.dirs[start:])
    suffix = f" (did you mean '{hint}'?)" if hint else ""
    return ProfileError(f"{where}profile '{ref}' not found{suffix}; looked in {looked}{note}")


def _locate_path(ref: str, ctx: _Context, origin: _File | None, where: str) -> _File:
    if "\0" in ref:
        raise ProfileError(f"{where}invalid profile path {_shown(ref)}")
    base = os.path.dirname(origin.path) if origin else ctx.cwd
    path = os.path.normpath(os.path.join(base, ref))
    restricted = (origin is not None and origin.restricted) or _in_project_sbx(path, ctx)
    if origin is not None and origin.restricted and not _inside(os.path.realpath(path), ctx.project):
        raise ProfileError(
            f"{where}{ref} is outside the project directory {ctx.project}: a profile from ./.sbx/ "
            f"may extend only profiles by name or files inside the project ({_SECURITY})"
        )
    if not os.path.lexists(path):
        stem = os.path.basename(path)[:-5] if path.endswith(".toml") else ""
        named = _names(ctx, _PROJECT if ctx.opted_in else _PROJECT + 1)
        hint = f" (for the profile named '{stem}', write just {stem})" if stem in named else ""
        raise ProfileError(f"{where}profile file {_display(path, ctx)} not found{hint}")
    name = os.path.basename(path)
    name = name[:-5] if name.endswith(".toml") else name
    return _File(path, name, _display(path, ctx), restricted, -1)


def _builtin_layer() -> _Layer:
    layer = _Layer()
    for key, value in DEFAULT.settings:
        if key == "sandbox.env":
            assert isinstance(value, tuple)
            layer.env = dict(value)
        elif key == "mounts":
            assert isinstance(value, tuple)
            layer.mounts = list(value)
        else:
            layer.values[key] = value
    layer.values["description"] = DEFAULT.description
    return layer


def _chain(top: _File, ctx: _Context) -> list[_Layer]:
    """The layers of `top` and everything it extends, base first."""
    files: list[_File] = []
    seen: list[str] = []
    layers: list[_Layer] = []
    f: _File | None = top
    while f is not None:
        key = f.path if f.path == BUILTIN else os.path.realpath(f.path)
        if key in seen:
            loop = " -> ".join(g.display for g in [*files, f])
            raise _fail(top, f"'extends' goes round in a cycle: {loop}")
        if len(files) >= MAX_DEPTH:
            raise _fail(top, f"'extends' chain is longer than {MAX_DEPTH} profiles")
        files.append(f)
        seen.append(key)
        if f.path == BUILTIN:
            layers.append(_builtin_layer())
            break
        layer, extends = _convert(_read(f), f, ctx)
        layers.append(layer)
        f = _locate(extends, ctx, f) if extends is not None else None
    layers.reverse()
    return layers


def _merge(layers: list[_Layer]) -> _Layer:
    """Later layers win key by key; env merges by name; mounts append."""
    merged = _Layer()
    for layer in layers:
        merged.values.update(layer.values)
        if layer.env is not None:
            merged.env = {**(merged.env or {}), **layer.env}
        if layer.mounts is not None:
            merged.mounts = _append_mounts(merged.mounts or [], layer.mounts)
    return merged


def _append_mounts(base: list[Mount], extra: list[Mount]) -> list[Mount]:
    # A child's mount on an inherited target replaces it in place, so
    # mount order (parents before children) stays what the parent meant.
    mounts = list(base)
    for mount in extra:
        same = [i for i, m in enumerate(mounts) if m.target == mount.target]
        if same:
            mounts[same[0]] = mount
        else:
            mounts.append(mount)
    return mounts


def _settings(merged: _Layer) -> tuple[tuple[str, object], ...]:
    settings: list[tuple[str, object]] = []
    for key in KEYS:
        if key == "sandbox.env":
            if merged.env is not None:
                settings.append((key, tuple(merged.env.items())))
        elif key == "mounts":
            if merged.mounts is not None:
                settings.append((key, tuple(merged.mounts)))
        elif merged.values.get(key) is not None:  # None: a limit set to "unlimited"
            settings.append((key, merged.values[key]))
    return tuple(settings)


def _resolve_file(top: _File, ctx: _Context) -> Profile:
    merged = _merge(_chain(top, ctx))
    description = merged.values.get("description", "")
    assert isinstance(description, str)
    return Profile(name=top.name, source=top.path, description=description, settings=_settings(merged))


def resolve(
    ref: str,
    *,
    cwd: str,
    environ: Mapping[str, str],
    project: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Profile:
    """The profile `ref`: a name looked up in the search path, or a file path.

    `project`: the caller opted in to ./.sbx/profiles/ (profile.resolve)."""
    ctx = _context(cwd, environ, project, warn)
    return _resolve_file(_locate(ref, ctx, None), ctx)


@dataclass(frozen=True)
class Entry:
    """One line of `sbx profile list`."""

    name: str
    source: str
    description: str
    shadowed_by: str | None = None  # the file that wins for this name
    error: str | None = None  # why this profile cannot be used
    ignored: bool = False  # a project profile the caller did not opt in to


@dataclass(frozen=True)
class Listing:
    entries: tuple[Entry, ...]
    searched: tuple[str, ...]  # the search path names go through, first match wins


def listing(cwd: str, environ: Mapping[str, str], project: bool = False) -> Listing:
    """Every profile file in the search path, in search order within a name."""
    ctx = _context(cwd, environ, project)
    opted = ctx.opted_in or (os.path.isdir(ctx.dirs[_PROJECT]) and _opted_in(ctx))
    entries: list[Entry] = []
    winners: dict[str, str] = {}
    for index, directory in enumerate(ctx.dirs):
        try:
            files = sorted(e for e in os.listdir(directory) if e.endswith(".toml"))
        except OSError:
            continue
        for file_name in files:
            name, path = file_name[:-5], os.path.join(directory, file_name)
            if not _valid_name(name):
                continue
            if index == _PROJECT and not opted:
                entries.append(Entry(name, path, "", ignored=True))
                continue
            if name in winners:
                entries.append(Entry(name, path, "", shadowed_by=winners[name]))
                continue
            winners[name] = path
            found = _File(path, name, _display(path, ctx), _in_project_sbx(path, ctx), index)
            entries.append(_entry(found, ctx))
    if "default" not in winners:
        entries.append(Entry("default", BUILTIN, DEFAULT.description))
    entries.sort(key=lambda e: (e.name, e.ignored, e.shadowed_by is not None))
    searched = ctx.dirs if opted else ctx.dirs[_PROJECT + 1 :]
    return Listing(tuple(entries), searched)


def _entry(f: _File, ctx: _Context) -> Entry:
    try:
        return Entry(f.name, f.path, _resolve_file(f, ctx).description)
    except ProfileError as error:
        return Entry(f.name, f.path, "", error=str(error))


# ----------------------------------------------------------------- writing


def _toml_str(text: str) -> str:
    escapes = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in escapes:
            out.append(escapes[ch])
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_path(path: str) -> str:
    return _toml_str(path.replace("$", "$$"))  # read back through _expand


def _toml_duration(seconds: float) -> str:
    text = format_duration(seconds)
    try:
        exact = parse_duration(text) == seconds
    except ValueError:
        exact = False
    return _toml_str(text) if exact else repr(seconds)


def _toml_value(value: object, kind: str) -> str:
    if value is None:
        return _toml_str(UNLIMITED)
    if kind == "size" and isinstance(value, int):
        return _toml_str(format_size(value))
    if kind == "duration" and isinstance(value, float):
        return _toml_duration(value)
    if kind == "path" and isinstance(value, str):
        return _toml_path(value)
    if kind == "env" and isinstance(value, tuple):
        pairs = ", ".join(f"{name} = {_toml_str(text)}" for name, text in value)
        return f"{{ {pairs} }}" if pairs else "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_str(str(item)) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _defaults() -> dict[str, object]:
    """What a run uses for keys no profile sets (the Spec's own defaults)."""
    spec, limits = Spec(argv=()), Limits()
    values: dict[str, object] = {
        "sandbox.image": spec.image,
        "sandbox.hostname": spec.hostname,
        "sandbox.uid": spec.uid,
        "sandbox.gid": spec.gid,
        "sandbox.workdir": spec.workdir,
        "sandbox.env": (),
        "sandbox.pass_env": (),
        "sandbox.disk": spec.disk,
        "sandbox.tmp_size": spec.tmp_size,
        "network.mode": spec.network,
        "network.publish": (),
        "network.allow": (),
        "network.deny": (),
        "network.dns": (),
        "network.host_loopback": spec.host_loopback,
    }
    for key in _SCHEMA["limits"]:
        values["limits." + key] = getattr(limits, key)
    return values


def dumps(profile: Profile, *, header: bool = True) -> str:
    """The profile fully resolved, as TOML that `sbx profile check` accepts."""
    values = {**_defaults(), **dict(profile.settings)}
    lines = []
    if header:
        lines += [
            f"# Profile '{profile.name}' from {profile.source}, resolved:",
            "# inheritance applied, unset keys shown with sbx's defaults.",
            "",
        ]
    lines.append(f"description = {_toml_str(profile.description)}")
    for section, schema in _SCHEMA.items():
        keys = [k for k in schema if f"{section}.{k}" in values]
        if not keys:
            continue  # [seccomp] unless the profile sets it
        lines += ["", f"[{section}]"]
        for key in keys:
            value = values[f"{section}.{key}"]
            if key == "cpuset" and value is None:
                lines.append('# cpuset = "0-3"  (not set: any CPU)')
            else:
                lines.append(f"{key} = {_toml_value(value, schema[key][1])}")
    mounts = values.get("mounts", ())
    assert isinstance(mounts, tuple)
    for mount in mounts:
        lines += ["", "[[mount]]", *_mount_lines(mount)]
    return "\n".join(lines) + "\n"


def _mount_lines(mount: Mount) -> list[str]:
    lines = []
    if mount.source is not None:
        lines.append(f"source = {_toml_path(mount.source)}")
    lines += [f"target = {_toml_path(mount.target)}", f"mode = {_toml_str(mount.mode)}"]
    if mount.size is not None:
        lines.append(f"size = {_toml_str(format_size(mount.size))}")
    if mount.optional:
        lines.append("optional = true")
    return lines
