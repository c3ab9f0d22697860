"""A resolved profile written back as TOML (`sbx profile show`), which `sbx profile check` accepts."""

from __future__ import annotations

from ..model.spec import Limits, Mount, Spec
from ..model.units import format_duration, format_size, parse_duration
from . import schema
from .schema import UNLIMITED, toml_str
from .search import Profile


def _toml_path(path: str) -> str:
    return toml_str(path.replace("$", "$$"))  # read back through _expand


def _toml_duration(seconds: float) -> str:
    text = format_duration(seconds)
    try:
        exact = parse_duration(text) == seconds
    except ValueError:
        exact = False
    return toml_str(text) if exact else repr(seconds)


def _toml_value(value: object, kind: str) -> str:
    if value is None:
        return toml_str(UNLIMITED)
    if kind == "size" and isinstance(value, int):
        return toml_str(format_size(value))
    if kind == "duration" and isinstance(value, float):
        return _toml_duration(value)
    if kind == "path" and isinstance(value, str):
        return _toml_path(value)
    if kind == "env" and isinstance(value, tuple):
        pairs = ", ".join(f"{name} = {toml_str(text)}" for name, text in value)
        return f"{{ {pairs} }}" if pairs else "{}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(toml_str(str(item)) for item in value) + "]"
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
    for key in schema.LIMIT_KEYS:
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
    lines.append(f"description = {toml_str(profile.description)}")
    for section in schema.SECTIONS:
        keys = [s for s in schema.profile_keys(section).values() if s.key in values]
        if not keys:
            continue  # [seccomp] unless the profile sets it
        lines += ["", f"[{section}]"]
        for setting in keys:
            value = values[setting.key]
            if setting.key == "limits.cpuset" and value is None:
                lines.append('# cpuset = "0-3"  (not set: any CPU)')
            else:
                lines.append(f"{setting.name} = {_toml_value(value, setting.show)}")
    mounts = values.get("mounts", ())
    assert isinstance(mounts, tuple)
    for mount in mounts:
        lines += ["", "[[mount]]", *_mount_lines(mount)]
    return "\n".join(lines) + "\n"


def _mount_lines(mount: Mount) -> list[str]:
    lines = []
    if mount.source is not None:
        lines.append(f"source = {_toml_path(mount.source)}")
    lines += [f"target = {_toml_path(mount.target)}", f"mode = {toml_str(mount.mode)}"]
    if mount.size is not None:
        lines.append(f"size = {toml_str(format_size(mount.size))}")
    if mount.optional:
        lines.append("optional = true")
    return lines
