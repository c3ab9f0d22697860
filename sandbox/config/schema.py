"""Every setting of a run, once: its key, its flag, its profile key, its type and the values it accepts.

One row per setting drives both front ends: the flag parser (flags.py) and the
profile reader (profile_file.py, layers.py), so `--pids-limit 0` and `pids = 0`
are refused by the same check, with the same words.  A row's `check` takes a
value as TOML gives it (str, int, float, bool, list, table) and returns it
typed (sizes int bytes, durations float seconds, lists tuples; None for a
limit set to "unlimited"), or raises Bad saying what is allowed.  A flag's
text is first read as the TOML value it spells (`read`: an integer, a number,
a switch, a list of repeats), then checked the same way.

Rows without a section of the profile ("run.", "io.", "volume", ...) are
flags only; rows without flags are profile keys only.  The table's order is
the order of `sbx run --help` and of `sbx profile show`.

Imported on every `sbx run`: no dataclasses, enum or re here (see model/frozen.py).
"""

from __future__ import annotations

from ..model import spec
from ..seccomp import ACTIONS as SECCOMP_ACTIONS
from ..seccomp import POLICIES as SECCOMP_POLICIES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Convert = Callable[[object], object]

UNLIMITED = "unlimited"
NETWORK_MODES = (*spec.NETWORK_MODES, "nat")  # nat: pasta's other name
SECTIONS = ("sandbox", "limits", "network", "seccomp", "landlock")  # a profile's tables
MAX_ID = 65535  # the ids a sandbox maps (idmap.py)


class Bad(Exception):
    """A check's refusal: args[0] says what is allowed ("a size such as ...");
    args[1], if given, is the offending item of an array or table."""


class Invalid(Exception):
    """A check's complete message, for checks done by another module (seccomp entries)."""


class Setting:
    """One row: `key` is the profile's dotted key (or a flag-only name); `read` how a flag's text
    becomes a value ("text", "int", "number", "switch", "list"); `show` how `sbx profile show`
    writes it ("size", "duration", "path", "env" or plain).  `late`: the flag's text is checked
    when the Spec is built (compose), by the same parser; `item`: what one repeat of a repeatable
    flag must be, for its message.

    A plain class, not a dataclass: ~50 rows are built on every `sbx run`.  Read-only by convention.
    """

    __slots__ = ("key", "flags", "metavar", "help", "check", "read", "show", "late", "item", "section", "name")

    def __init__(self, key: str, flags: tuple[str, ...] = (), metavar: str = "", help: str = "",
                 check: Convert | None = None, *, read: str = "text", show: str = "", late: bool = False,
                 item: str = "") -> None:
        self.key = key
        self.flags = flags
        self.metavar = metavar
        self.help = help
        self.check = check  # None: a flag-only string, or one flags.py reads itself
        self.read = read
        self.show = show
        self.late = late
        self.item = item
        section, dot, name = key.partition(".")
        # The profile's [section] it is a key of; None for a flag-only setting.
        self.section: str | None = section if dot and section in SECTIONS and check is not None else None
        self.name = name

    @property
    def flag(self) -> str:
        """How messages name the flag: its long form."""
        return next((flag for flag in self.flags if flag.startswith("--")), self.flags[0])

    def __repr__(self) -> str:
        return f"Setting({self.key!r})"


# ----------------------------------------------------------------- checks


def toml_str(text: str) -> str:
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


def shown(value: object) -> str:
    """A value as the user wrote it in TOML, shortened for a message."""
    if isinstance(value, str):
        text = toml_str(value)
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


def string(value: object, allowed: str, item: bool = False) -> str:
    # NUL can be written as \u0000 in TOML but no path, name or env entry may hold it.
    if not isinstance(value, str) or "\0" in value:
        raise Bad(allowed, value) if item else Bad(allowed)
    return value


def _strings(value: object, allowed: str, check: Callable[[str], bool]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise Bad(allowed)
    items = tuple(string(item, allowed, item=True) for item in value)
    for item in items:
        if not check(item):
            raise Bad(allowed, item)
    return items


def _limit(convert: Convert, allowed: str) -> Convert:
    def check(value: object) -> object:
        if value == UNLIMITED:
            return None
        try:
            return convert(value)
        except Bad as bad:
            raise Bad(f'{allowed}, or "unlimited"', *bad.args[1:]) from None

    return check


def size(minimum: int) -> Convert:
    allowed = "a size such as 512K, 256M or 1.5G (binary units)"
    if minimum:
        allowed = "a size above 0 such as 512K, 256M or 1.5G (binary units)"

    def check(value: object) -> object:
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            raise Bad(allowed)
        from ..model.units import parse_size  # only when a size is given: not on a plain run

        try:
            result = parse_size(value)
        except ValueError:
            raise Bad(allowed) from None
        if not minimum <= result <= 1 << 62:
            raise Bad(allowed)
        return result

    return check


def _duration(value: object) -> object:
    allowed = "a duration above 0 such as 2, 2s, 500ms or 1.5m"
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise Bad(allowed)
    from ..model.units import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError:
        raise Bad(allowed) from None
    if not seconds > 0:
        raise Bad(allowed)
    return seconds


def _integer(low: int, high: int) -> Convert:
    allowed = f"an integer from {low} to {high}"

    def check(value: object) -> object:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise Bad(allowed)
        return value

    return check


def _cpus(value: object) -> object:
    allowed = "a number of CPUs above 0 such as 1 or 1.5 (at most 4096)"
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value <= 4096:
        raise Bad(allowed)
    return float(value)


def boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise Bad("true or false")
    return value


def choice(options: tuple[str, ...]) -> Convert:
    allowed = "one of " + ", ".join(f'"{o}"' for o in options)

    def check(value: object) -> object:
        if value not in options:
            raise Bad(allowed)
        return value

    return check


def is_env_name(name: str) -> bool:
    return name.isascii() and name.replace("_", "a").isalnum() and not name[:1].isdigit() and name != ""


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


def text(allowed: str, check: Callable[[str], bool]) -> Convert:
    def convert(value: object) -> object:
        result = string(value, allowed)
        if not check(result):
            raise Bad(allowed)
        return result

    return convert


def _list(allowed: str, check: Callable[[str], bool]) -> Convert:
    return lambda value: _strings(value, allowed, check)


def _syscalls(deny: bool) -> Convert:
    """Entries as the seccomp work reads them: `name` or `name(argN OP VALUE, ...)`.

    The syntax is checked here (seccomp/parse.py is pure Python); whether a
    name exists and how entries combine is checked when the filter is built.
    """
    key = "seccomp.deny" if deny else "seccomp.allow"
    allowed = 'an array of system calls such as ["ptrace", "socket(arg0 == AF_NETLINK)"]'

    def check(value: object) -> object:
        from ..seccomp import parse as seccomp_policy

        entries = _strings(value, allowed, bool)
        for entry in entries:
            try:
                seccomp_policy.parse_entry(entry, f"'{key}'", deny)
            except ValueError as error:  # PolicyError, or int() of a huge number
                message = str(error) if isinstance(error, seccomp_policy.PolicyError) else ""
                raise Invalid(message or f"'{key}': bad entry {shown(entry)}") from None
        return entries

    return check


def _is_sandbox_path(path: str) -> bool:
    return path.startswith("/") and ".." not in path.split("/")


def _ports(value: object) -> object:
    """TCP ports: integers (or their digits as strings, as `show` writes them)."""
    allowed = "an array of TCP ports from 0 to 65535 such as [80, 443]"
    if not isinstance(value, list):
        raise Bad(allowed)
    ports = []
    for item in value:
        if isinstance(item, str) and item.isdigit() and len(item) <= 5:
            item = int(item)
        if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= 65535:
            raise Bad(allowed, item)
        ports.append(item)
    return tuple(sorted(set(ports)))


def _env(value: object) -> object:
    """A table NAME = "value", or podman-style ["NAME=value", ...]; a tuple of (name, value)."""
    allowed = 'a table such as { LANG = "C.UTF-8" } or an array of "NAME=value"'
    if isinstance(value, list):
        pairs = [string(item, allowed, item=True).partition("=") for item in value]
        for name, sep, _ in pairs:
            if not sep:
                raise Bad(allowed, name)
        value = {name: item for name, _, item in pairs}
    if not isinstance(value, dict):
        raise Bad(allowed)
    env = {}
    for name, item in value.items():
        if not is_env_name(name):
            raise Bad(allowed + ", with names of letters, digits and '_'", name)
        env[name] = string(item, allowed + ", with string values", item=True)
    return tuple(env.items())


SIZE = size(1)
_DURATION = "a duration above 0 such as 2, 2s, 500ms or 1.5m"
_PATH = "an absolute path"


_S = Setting
SETTINGS: tuple[Setting, ...] = (
    _S("profile", ("--profile",), "NAME", "profile name or TOML file (default: 'default')"),
    _S("project_profiles", ("--project-profiles",), "",
       "let profile names resolve in ./.sbx/profiles/ first (the project's, restricted: SECURITY.md)", read="switch"),
    # [sandbox]
    _S("sandbox.image", ("--image",), "NAME", "image to run on (default: host, the host's /usr)",
       text('an image name such as "host"', _is_image)),
    _S("sandbox.hostname", ("--hostname",), "NAME", "hostname inside (default: sbx)",
       text("a host name of letters, digits, '-' and '.' (64 at most)", _is_hostname)),
    _S("sandbox.uid", ("--uid",), "N", "user id inside (default 1000 with subordinate ids, else 0)",
       _integer(0, MAX_ID), read="int"),
    _S("sandbox.gid", ("--gid",), "N", "group id inside (default 1000 with subordinate ids, else 0)",
       _integer(0, MAX_ID), read="int"),
    _S("sandbox.workdir", ("-w", "--workdir"), "DIR",
       "working directory inside (default: the caller's cwd where a bind shows it, else /)", text(_PATH, bool),
       show="path"),
    _S("sandbox.env", check=_env, show="env"),
    _S("sandbox.pass_env", check=_list("an array of variable names such as [\"TERM\"]", is_env_name)),
    _S("sandbox.disk", ("--disk",), "SIZE", "size of the writable layer (default 256M)", SIZE, show="size"),
    _S("sandbox.tmp_size", check=SIZE, show="size"),
    # [limits]
    _S("limits.memory", ("--memory", "-m"), "SIZE", "memory limit of the whole sandbox",
       _limit(SIZE, "a size above 0 such as 256M"), show="size"),
    _S("limits.address_space", ("--address-space",), "SIZE",
       "address space of each process (RLIMIT_AS), with a cgroup or without",
       _limit(SIZE, "a size above 0 such as 256M"), show="size"),
    _S("limits.cpus", ("--cpus",), "N", "CPU bandwidth limit, e.g. 1.5",
       _limit(_cpus, "a number of CPUs above 0 such as 1 or 1.5"), read="number"),
    _S("limits.cpuset", ("--cpuset",), "CPUS", "CPUs to run on, e.g. 0-1",
       text('a CPU list such as "0-3,6"', _is_cpuset)),
    _S("limits.pids", ("--pids-limit",), "N", "maximum number of processes",
       _limit(_integer(1, 4194304), "an integer from 1 to 4194304"), read="int"),
    _S("limits.time", ("--time",), "DURATION", "CPU time limit of the whole tree",
       _limit(_duration, _DURATION), show="duration"),
    _S("limits.wall_time", ("--wall-time",), "DURATION", "wall-clock limit", _limit(_duration, _DURATION),
       show="duration"),
    _S("limits.output", ("--output-limit",), "SIZE", "bytes the command may write to stdout and stderr",
       _limit(size(0), "a size such as 0, 64K or 64M"), show="size"),
    _S("limits.file_size", ("--file-size",), "SIZE", "largest file the command may write",
       _limit(size(0), "a size such as 0, 64K or 64M"), show="size"),
    _S("limits.open_files", ("--open-files",), "N", "maximum open file descriptors",
       _limit(_integer(1, 1 << 30), f"an integer from 1 to {1 << 30}"), read="int"),
    _S("limits.stack", ("--stack",), "SIZE", "stack size limit", _limit(SIZE, "a size above 0 such as 8M"),
       show="size"),
    _S("limits.io_read_bps", ("--io-read-bps",), "SIZE", "read bandwidth limit (bytes/s)",
       _limit(SIZE, "a size above 0 such as 50M"), show="size"),
    _S("limits.io_write_bps", ("--io-write-bps",), "SIZE", "write bandwidth limit (bytes/s)",
       _limit(SIZE, "a size above 0 such as 50M"), show="size"),
    _S("limits.strict", ("--strict",), "", "refuse to run when a protection or limit cannot be applied", boolean,
       read="switch"),
    # [network]
    _S("network.mode", ("--network", "--net"), "MODE",
       "none (default: loopback only), pasta (user-mode NAT; alias nat) or host", choice(NETWORK_MODES), late=True),
    _S("network.publish", ("-p", "--publish"), "[HOST_IP:]HOST_PORT:PORT[/tcp|udp]",
       "make a port inside reachable from the host (pasta)",
       _list('an array such as ["8080:80", "127.0.0.1:5353:53/udp"]', _is_publish), read="list", late=True),
    _S("network.allow", check=_list('an array such as ["10.0.0.0/8", "pypi.org:443"]', _is_rule)),
    _S("network.deny", check=_list('an array such as ["169.254.169.254", "10.0.0.0/8"]', _is_rule)),
    _S("network.dns", ("--dns",), "IP", "name server for the sandbox's resolv.conf (pasta)",
       _list('an array of IP addresses such as ["192.0.2.53"]', _is_ip), read="list", item="an IP address"),
    _S("network.host_loopback", ("--host-loopback",), "",
       "pasta: let the gateway address reach the host's loopback services (off by default)", boolean, read="switch"),
    # [seccomp]
    _S("seccomp.policy", ("--seccomp",), "POLICY", "syscall filter: default (deny-list), strict (allow-list) or none",
       choice(SECCOMP_POLICIES)),
    _S("seccomp.allow", check=_syscalls(deny=False)),
    _S("seccomp.deny", check=_syscalls(deny=True)),
    _S("seccomp.action", check=choice(SECCOMP_ACTIONS)),
    # [landlock]
    _S("landlock.enabled", check=boolean),
    _S("landlock.write", check=choice(spec.LANDLOCK_WRITE)),
    _S("landlock.noexec", check=_list('an array of absolute paths inside the sandbox such as ["/tmp"]',
                                      _is_sandbox_path)),
    _S("landlock.tcp_bind", check=_ports),
    _S("landlock.tcp_connect", check=_ports),
    # flags only: [[mount]] and sandbox.env in a profile
    _S("volume", ("-v", "--volume"), "SRC:DST[:MODE]",
       "bind SRC at DST; MODE ro (default), rw, or overlay (writable, changes discarded)", read="list"),
    _S("tmpfs", ("--tmpfs",), "DST[:size=N]", "mount a fresh tmpfs at DST", read="list"),
    _S("env", ("-e", "--env"), "NAME[=VALUE]", "set a variable, or copy NAME from the caller", read="list"),
    _S("env_file", ("--env-file",), "FILE", "read NAME=VALUE lines from FILE", read="list"),
    _S("run.image_root", ("--root",), "DIR", "image store (default: $SBX_ROOT, else $XDG_DATA_HOME/sbx)"),
    _S("run.commit", ("--commit",), "NAME",
       "save the writable layer as image NAME when the run ends (needs --image)"),
    _S("run.tty", ("-t", "--tty"), "", "keep the caller's terminal (no new session)", read="switch"),
    _S("run.pass_fds", ("--pass-fd",), "N", "keep file descriptor N open for the command", read="list"),
    _S("run.cgroup", ("--cgroup",), "PATH",
       "a delegated cgroup v2 directory to create run cgroups in (default: $SBX_CGROUP, else discovered)"),
    _S("io.stdin", ("--stdin",), "FILE", "read stdin from FILE"),
    _S("io.stdout", ("--stdout",), "FILE", "write stdout to FILE"),
    _S("io.stderr", ("--stderr",), "FILE", "write stderr to FILE"),
    _S("io.result", ("--result",), "FILE", "write the verdict and figures as JSON (- for stdout)"),
    _S("io.meta", ("--meta",), "FILE", "write isolate-style key:value figures (- for stdout)"),
    _S("run.interactor", ("--interactor",), "CMD",
       "run CMD (split like a shell) in a second sandbox, wired to COMMAND's stdin and stdout"),
    _S("run.interactor_profile", ("--interactor-profile",), "NAME",
       "the interactor's profile (default: the same profile and options as COMMAND)"),
)
del _S

BY_KEY = {setting.key: setting for setting in SETTINGS}
LIMIT_KEYS = tuple(s.name for s in SETTINGS if s.section == "limits")
SECCOMP_KEYS = tuple(s.name for s in SETTINGS if s.section == "seccomp")
LANDLOCK_KEYS = tuple(s.name for s in SETTINGS if s.section == "landlock")


def profile_keys(section: str) -> dict[str, Setting]:
    """The keys of a profile's [section], in order."""
    return {s.name: s for s in SETTINGS if s.section == section}


def from_text(setting: Setting, value: str | list[str] | bool) -> object:
    """A flag's text (a list of them for a repeated flag) as the TOML value it spells; what a profile
    would hold, for the same check.  Numbers only where the profile wants a number."""
    if setting.read in ("int", "number") and isinstance(value, str) and 0 < len(value) <= 40:
        try:
            return int(value) if setting.read == "int" else float(value)
        except ValueError:
            pass  # left a string, which the check refuses
    return value


def from_flag(setting: Setting, value: str | list[str] | bool, flag: str) -> object:
    """A flag's value, checked and typed as the profile key's; a one-line UsageError names the flag."""
    from ..errors import UsageError

    if setting.check is None or setting.late:
        return tuple(value) if isinstance(value, list) else value
    try:
        return setting.check(from_text(setting, value))
    except Bad as bad:
        item = bad.args[1] if len(bad.args) > 1 else value
        raise UsageError(f"{flag}: {item!r} is not {setting.item or bad.args[0]}") from None
    except Invalid as invalid:
        raise UsageError(f"{flag}: {invalid.args[0]}") from None

