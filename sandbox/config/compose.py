"""Settings (from a profile and from flags) -> a validated Spec.

Settings are dotted keys, the same names profiles use ("limits.memory",
"sandbox.hostname", ...), holding values already converted by the schema
(schema.py), read here through typed accessors.  Flags override profile
values; `sandbox.env` merges by name and `mounts` append.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from ..model.spec import BIND_MODES, NETWORK_MODES, LandlockSpec, Limits, Mount, Spec
from ..seccomp import SeccompSpec
from . import schema
from .schema import LANDLOCK_KEYS, LIMIT_KEYS, MAX_ID, SECCOMP_KEYS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..image import ImageInfo

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def merge(profile: Mapping[str, object], flags: Mapping[str, object]) -> dict[str, object]:
    merged = dict(profile)
    for key, value in flags.items():
        if key == "sandbox.env":
            merged[key] = tuple(dict([*_pairs(merged, key), *_pairs(flags, key)]).items())
        elif key == "mounts":
            merged[key] = (*_mounts(merged), *_mounts(flags))
        else:
            merged[key] = value
    return merged


# Typed reads of settings.  The schema made the values of flags and profiles; the API's own keywords
# (image=, network=, workdir=) arrive as given, so a value of another type is a UsageError.

def _typed(settings: Mapping[str, object], key: str, kind: type, default: object) -> object:
    value = settings.get(key, default)
    if not isinstance(value, kind):
        raise UsageError(f"{key}: {value!r} is not a {kind.__name__}")
    return value


def _text(settings: Mapping[str, object], key: str, default: str) -> str:
    value = _typed(settings, key, str, default)
    assert isinstance(value, str)
    return value


def _names(settings: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = _typed(settings, key, tuple, ())
    assert isinstance(value, tuple)
    if not all(isinstance(item, str) for item in value):
        raise UsageError(f"{key}: {value!r} is not a tuple of strings")
    return value


def _pairs(settings: Mapping[str, object], key: str) -> tuple[tuple[str, str], ...]:
    value = _typed(settings, key, tuple, ())
    assert isinstance(value, tuple)
    if not all(isinstance(pair, tuple) and len(pair) == 2 for pair in value):
        raise UsageError(f"{key}: {value!r} is not a tuple of (name, value) pairs")
    return value


def _mounts(settings: Mapping[str, object]) -> tuple[Mount, ...]:
    value = _typed(settings, "mounts", tuple, ())
    assert isinstance(value, tuple)
    if not all(isinstance(mount, Mount) for mount in value):
        raise UsageError(f"mounts: {value!r} is not a tuple of Mounts")
    return value


def parse_volume(text: str, cwd: str) -> Mount:
    """SRC:DST[:ro|rw|overlay] (podman's -v), SRC relative to cwd."""
    if "\0" in text:
        raise UsageError("-v: the spec contains a NUL byte")
    parts = text.split(":")
    mode = "ro"
    if len(parts) == 3 and parts[2] in BIND_MODES:
        mode = parts.pop()
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UsageError(f"-v {text}: expected SRC:DST[:ro|rw|overlay]")
    source = os.path.join(cwd, os.path.expanduser(parts[0]))
    if not os.path.exists(source):
        raise UsageError(f"-v {text}: {parts[0]} does not exist")
    return Mount(target=sandbox_path(parts[1], f"-v {text}"), mode=mode, source=os.path.normpath(source))


def parse_tmpfs(text: str) -> Mount:
    """DST[:size=N] (podman's --tmpfs); N as a [[mount]]'s size (above 0: tmpfs reads 0 as unbounded)."""
    target, _, options = text.partition(":")
    size = None
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key != "size":
            raise UsageError(f"--tmpfs {text}: unknown option {key!r} (allowed: size)")
        try:
            checked = schema.SIZE(value)
        except schema.Bad as bad:
            raise UsageError(f"--tmpfs {text}: {value!r} is not {bad.args[0]}") from None
        assert isinstance(checked, int)
        size = checked
    return Mount(target=sandbox_path(target, f"--tmpfs {text}"), mode="tmpfs", size=size)


def sandbox_path(path: str, what: str) -> str:
    if not path.startswith("/"):
        raise UsageError(f"{what}: {path!r} must be an absolute path inside the sandbox")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise UsageError(f"{what}: '..' is not allowed in {path!r}")
    if "\0" in path:
        raise UsageError(f"{what}: the path contains a NUL byte")
    return "/" + "/".join(parts)


def parse_env(text: str, environ: Mapping[str, str]) -> tuple[str, str] | None:
    """NAME=VALUE, or NAME to copy the caller's value (None when the caller has none)."""
    name, eq, value = text.partition("=")
    if not schema.is_env_name(name) or "\0" in text:  # a name as [sandbox] env takes it
        raise UsageError(f"-e {text}: expected NAME=VALUE or NAME, NAME of letters, digits and '_'")
    if not eq:
        return (name, environ[name]) if name in environ else None
    return name, value


def read_env_file(path: str, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--env-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            pair = parse_env(line, environ)
        except UsageError:
            raise UsageError(f"--env-file {path}:{number}: expected NAME=VALUE or NAME, NAME of letters, digits "
                             "and '_'") from None
        if pair is not None:
            pairs.append(pair)
    return pairs


def _workdir(settings: Mapping[str, object], mounts: tuple[Mount, ...], cwd: str) -> str:
    workdir = settings.get("sandbox.workdir")
    if isinstance(workdir, str):
        return sandbox_path(workdir, "workdir")
    # The caller's cwd, where a bind makes it visible; else /.
    for mount in reversed(mounts):
        if mount.source is None:
            continue
        rel = os.path.relpath(cwd, mount.source)
        if rel == "." or not rel.startswith(".."):
            return os.path.normpath(os.path.join(mount.target, rel))
    return str(settings.get("run.image_workdir", "/"))


def _id(settings: Mapping[str, object], key: str, default: int) -> int:
    value = settings.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise UsageError(f"{key.split('.')[-1]}: {value!r} is not an id from 0 to {MAX_ID}")
    return value


def build(settings: Mapping[str, object], argv: list[str], cwd: str, environ: Mapping[str, str],
          images: Callable[[str, str | None], ImageInfo] | None = None) -> Spec:
    """The Spec; `images` resolves an image name (default: image.resolve, holding a new lock fd)."""
    if not argv and _text(settings, "sandbox.image", "host") == "host":
        raise UsageError("no command given (usage: sbx run [OPTIONS] -- COMMAND [ARG...])")
    if any("\0" in arg for arg in argv):
        raise UsageError("the command's arguments cannot contain NUL bytes")
    network = _text(settings, "network.mode", "none")
    if network == "nat":
        network = "pasta"
    if network not in NETWORK_MODES:
        raise UsageError(f"network mode {network!r} is not supported (choose one of: {', '.join(NETWORK_MODES)}, nat)")
    net_fields = _network(network, settings, environ)
    image = _text(settings, "sandbox.image", "host")
    # With subordinate ids the payload is a uid that owns no host file (idmap.PAYLOAD_ID unless
    # --uid/--gid say otherwise); without them it is the caller, root inside by default.
    from ..kernel import idmap

    ranged = idmap.for_payload(environ) is not None
    # A run whose writable layer becomes an image (--commit) changes the image as a build step
    # does, as root inside; its layer, not the host, is what it writes.
    default_id = idmap.PAYLOAD_ID if ranged and "run.commit" not in settings else 0
    uid, gid = _id(settings, "sandbox.uid", default_id), _id(settings, "sandbox.gid", default_id)
    tty = bool(settings.get("run.tty", False))
    env = {"PATH": DEFAULT_PATH, "HOME": "/root" if uid == 0 else "/home/sbx", "LANG": "C.UTF-8"}
    image_fields: dict[str, object] = {}
    if image != "host":
        if images is None:
            from ..image import resolve

            images = resolve
        root = settings.get("run.image_root")
        info = images(image, root if isinstance(root, str) else None)
        argv = list(info.command(argv))
        if not argv:
            raise UsageError(f"no command given, and image {image!r} has none (Entrypoint/Cmd)")
        env.update(info.env)
        image_fields = {"layers": info.layer_dirs, "image_lock": info.lock_fd}
        ranged = ranged or info.ranges  # its files' owners need the ranges (spawn says if they are gone)
        if "sandbox.workdir" not in settings and info.workdir:
            settings = {**settings, "run.image_workdir": info.workdir}
    if tty and "TERM" in environ:
        env["TERM"] = environ["TERM"]
    for name in _names(settings, "sandbox.pass_env"):
        if name in environ:
            env[name] = environ[name]
    env.update(_pairs(settings, "sandbox.env"))
    mounts = _mounts(settings)
    hostname = _text(settings, "sandbox.hostname", "sbx")
    if not hostname or len(hostname) > 64 or "/" in hostname or "\0" in hostname:
        raise UsageError(f"hostname {hostname!r} is not valid (1 to 64 characters, no '/')")
    limits = Limits(**{k: settings[f"limits.{k}"] for k in LIMIT_KEYS if f"limits.{k}" in settings})  # type: ignore[arg-type]
    seccomp = SeccompSpec(**{k: settings[f"seccomp.{k}"] for k in SECCOMP_KEYS  # type: ignore[arg-type]
                             if f"seccomp.{k}" in settings})
    optional = {field: settings[key] for key, field in _OPTIONAL_FIELDS if key in settings}
    landlock = _landlock(settings, environ)
    return Spec(
        argv=tuple(argv),
        env=tuple(env.items()),
        image=image,
        hostname=hostname,
        uid=uid,
        gid=gid,
        workdir=_workdir(settings, mounts, cwd),
        mounts=mounts,
        network=network,
        **net_fields,  # type: ignore[arg-type]
        tty=tty,
        id_ranges=ranged,
        debug=bool(environ.get("SBX_DEBUG")),
        stamps=bool(environ.get("SBX_STAMPS")),
        limits=limits,
        seccomp=seccomp,
        landlock=landlock,
        **image_fields,  # type: ignore[arg-type]
        **optional,  # type: ignore[arg-type]
    )


# Settings copied to the Spec field of the same meaning only when set, so the Spec's defaults apply otherwise.
_OPTIONAL_FIELDS = (("sandbox.disk", "disk"), ("sandbox.tmp_size", "tmp_size"), ("run.pass_fds", "pass_fds"),
                    ("io.stdin", "stdin"), ("io.stdout", "stdout"), ("io.stderr", "stderr"),
                    ("io.result", "result"), ("io.meta", "meta"),
                    ("run.cgroup", "cgroup"))


def _landlock(settings: Mapping[str, object], environ: Mapping[str, str]) -> LandlockSpec:
    """[landlock] keys; SBX_LANDLOCK=N uses at most ABI N (0: as on a kernel without Landlock)."""
    fields: dict[str, object] = {k: settings[f"landlock.{k}"] for k in LANDLOCK_KEYS if f"landlock.{k}" in settings}
    if "landlock.noexec" in settings:
        fields["noexec"] = tuple(sandbox_path(p, "landlock.noexec") for p in _names(settings, "landlock.noexec"))
    cap = environ.get("SBX_LANDLOCK")
    if cap is not None:
        if not cap.isdigit() or len(cap) > 3:
            raise UsageError(f"SBX_LANDLOCK={cap!r}: expected a Landlock ABI version (0: do not use Landlock)")
        fields["abi_cap"] = int(cap)
    return LandlockSpec(**fields)  # type: ignore[arg-type]


def _network(mode: str, settings: Mapping[str, object], environ: Mapping[str, str]) -> dict[str, object]:
    """publish, egress rules and DNS: checked here, host names resolved only when the run starts."""
    publish_texts = _names(settings, "network.publish")
    allow, deny = _names(settings, "network.allow"), _names(settings, "network.deny")
    dns = _names(settings, "network.dns")
    host_loopback = bool(settings.get("network.host_loopback", False))
    if mode != "pasta":
        if publish_texts:
            raise UsageError("-p/--publish needs --network pasta")
        if host_loopback:
            raise UsageError("--host-loopback needs --network pasta")
        if mode == "host" and (allow or deny):
            raise UsageError("egress rules (network.allow/deny) need --network pasta: sbx cannot filter the "
                             "host's own network namespace")
        return {}
    from ..net import network as net

    try:
        publish = tuple(net.parse_publish(text) for text in publish_texts)
        net.check_publish(publish)
        for text in (*allow, *deny):
            net.parse_rule(text)
        for server in dns:
            net.parse_rule(server)
    except net.NetError as exc:
        raise UsageError(str(exc)) from None
    helper = net.find_helper(environ)
    return {"publish": publish, "egress_allow": allow, "egress_deny": deny, "dns": net.sandbox_dns(dns, helper),
            "host_loopback": host_loopback, "usernet": helper}
