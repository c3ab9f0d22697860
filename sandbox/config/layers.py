"""One profile file's document -> a Layer: its values typed and checked by the schema, its mounts.

The checks are the schema's (schema.py), the ones `sbx run`'s flags go
through; what is particular to a file is here: unknown keys with a hint,
`~` and `$VAR` in paths, [[mount]] tables, and (for a file reached through
./.sbx/) the project rule, whose reviewed lists live in trust.py.

Every failure is a ProfileError whose text names the file, the key, the
value and what is allowed; nothing else escapes (fuzz/fuzz_profile.py).
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass
from ..model.spec import MOUNT_MODES, Mount
from . import schema, trust
from .schema import Bad, Invalid, shown
from .search import ProfileError, inside

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

TOP_KEYS = ("description", "extends", *schema.SECTIONS, "mount")
_MOUNT_KEYS = ("source", "target", "mode", "size", "optional")


class Unset(Exception):
    """A $VAR in a path that the environment does not set; args[0] is its name."""


@dataclass(frozen=True)
class Context:
    cwd: str
    environ: Mapping[str, str]
    dirs: tuple[str, ...]  # ./.sbx/profiles (index PROJECT), then the trusted search path
    project: str  # realpath of cwd: the directory that holds .sbx/
    project_sbx: tuple[str, ...]  # cwd/.sbx, literally and resolved
    opted_in: bool  # --project-profiles (the trust list is read only when it matters)
    warn: Callable[[str], None] | None


PROJECT = 0  # ctx.dirs[PROJECT] is ./.sbx/profiles; the trusted directories follow


@dataclass(frozen=True)
class File:
    path: str  # absolute, symlinks kept; BUILTIN for the built-in default
    name: str
    display: str  # how messages name it: relative to cwd when inside it
    restricted: bool  # reached through ./.sbx/: the project rule applies
    dir_index: int  # position in the search path; -1 for an explicit path


class Layer:
    """What one file sets, converted; None values are limits set to "unlimited"."""

    __slots__ = ("values", "env", "mounts")

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.env: dict[str, str] | None = None
        self.mounts: list[Mount] | None = None


# ------------------------------------------------------------------- messages

def fail(f: File, message: str) -> ProfileError:
    return ProfileError(f"{f.display}: {message}")


def must(f: File, key: str, value: object, allowed: str) -> ProfileError:
    return fail(f, f"'{key}' must be {allowed}, not {shown(value)}")


def refused(f: File, key: str, value: object, bad: Bad) -> ProfileError:
    return must(f, key, bad.args[1] if len(bad.args) > 1 else value, bad.args[0])


def close_match(word: str, candidates: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def _unknown(f: File, prefix: str, key: str, allowed: Iterable[str]) -> ProfileError:
    hint = close_match(key, allowed)
    if hint is None:  # a key of another section: `[sandbox] memory = ...`
        hint = next((s.key for s in schema.SETTINGS if s.section is not None and s.name == key), None)
    suffix = f" (did you mean '{hint}'?)" if hint else ""
    return fail(f, f"unknown key '{prefix}{key}'{suffix}")


def _check_keys(f: File, table: dict[str, object], allowed: Iterable[str], prefix: str) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            raise _unknown(f, prefix, key, allowed)


# --------------------------------------------------------------------- paths


def display(path: str, ctx: Context) -> str:
    return os.path.relpath(path, ctx.cwd) if inside(path, ctx.cwd) and path != ctx.cwd else path


def display_dir(path: str, ctx: Context) -> str:
    shown = display(path, ctx)
    return shown if shown.startswith("/") else "./" + shown


def _variable(name: str, ctx: Context) -> str:
    value = ctx.cwd if name == "PWD" else ctx.environ.get(name)
    if value is None or (name == "HOME" and not value):
        raise Unset(name)
    return value


def _expand(text: str, ctx: Context) -> str:
    """`~`, `$NAME`, `${NAME}` and `$$`, in one pass so values are not re-expanded."""
    bad = "a path where $ starts $NAME or ${NAME} ($$ is a literal $) and ~ only ~/..."
    out: list[str] = []
    i = 0
    if text == "~" or text.startswith("~/"):
        out.append(_variable("HOME", ctx))
        i = 1
    elif text.startswith("~"):
        raise Bad(bad)
    while (j := text.find("$", i)) >= 0:
        out.append(text[i:j])
        if text.startswith("$$", j):
            out.append("$")
            i = j + 2
            continue
        if text.startswith("${", j):
            end = text.find("}", j)
            if end < 0:
                raise Bad(bad)
            name, i = text[j + 2 : end], end + 1
        else:
            k = j + 1
            while k < len(text) and schema.is_env_name("a" + text[k]):
                k += 1
            name, i = text[j + 1 : k], k
        if not schema.is_env_name(name):
            raise Bad(bad)
        out.append(_variable(name, ctx))
    out.append(text[i:])
    return "".join(out)


def _expand_path(f: File, key: str, text: str, ctx: Context) -> str:
    """An expanded absolute path; relative ones are taken from cwd, like -v."""
    try:
        expanded = _expand(text, ctx)
    except Bad as bad:
        raise must(f, key, text, bad.args[0]) from None
    return os.path.normpath(os.path.join(ctx.cwd, expanded))


def in_project_sbx(path: str, ctx: Context) -> bool:
    literal, resolved = ctx.project_sbx
    return inside(path, literal) or inside(os.path.realpath(path), resolved)


# -------------------------------------------------------------- one file


def convert(doc: dict[str, object], f: File, ctx: Context) -> tuple[Layer, str | None]:
    """One file's values, typed and checked; and what it extends."""
    _check_keys(f, doc, TOP_KEYS, "")
    layer = Layer()
    for section in schema.SECTIONS:
        if section in doc:
            _convert_section(doc[section], section, f, layer)
    if "sandbox.workdir" in layer.values:
        workdir = layer.values["sandbox.workdir"]
        assert isinstance(workdir, str)
        layer.values["sandbox.workdir"] = absolute(f, "sandbox.workdir", workdir, ctx)
    if f.restricted:
        refusal = trust.project_refusal(layer.values)
        if refusal is not None:
            raise fail(f, refusal)
    if "mount" in doc:
        layer.mounts = _mounts(doc["mount"], f, ctx)
    if "description" in doc:
        layer.values["description"] = _description(f, doc["description"])
    extends = doc.get("extends")
    if extends is not None and (not isinstance(extends, str) or not extends or "\0" in extends):
        raise must(f, "extends", extends, "a profile name or a path to a .toml file")
    return layer, extends


def _convert_section(table: object, section: str, f: File, layer: Layer) -> None:
    if not isinstance(table, dict):
        raise must(f, section, table, f"a table ([{section}])")
    keys = schema.profile_keys(section)
    _check_keys(f, table, keys, section + ".")
    for key, value in table.items():
        setting = keys[key]
        try:
            assert setting.check is not None
            converted = setting.check(value)
        except Bad as bad:
            raise refused(f, setting.key, value, bad) from None
        except Invalid as invalid:
            raise fail(f, invalid.args[0]) from None
        if setting.key == "sandbox.env":
            assert isinstance(converted, tuple)
            layer.env = dict(converted)
        else:
            layer.values[setting.key] = converted


def _description(f: File, value: object) -> str:
    if not isinstance(value, str) or not value.isprintable():
        raise must(f, "description", value, "one line of text")
    return value


def absolute(f: File, key: str, text: str, ctx: Context) -> str:
    """A path inside the sandbox, after ~ and $VAR expansion (ci uses ${PWD})."""
    try:
        expanded = _expand(text, ctx)
    except Bad as bad:
        raise must(f, key, text, bad.args[0]) from None
    except Unset as unset:
        raise fail(f, f"'{key}' uses ${unset.args[0]}, which is not set") from None
    if not expanded.startswith("/"):
        raise must(f, key, text, "an absolute path")
    return os.path.normpath(expanded)


# -------------------------------------------------------------------- mounts


def _mounts(value: object, f: File, ctx: Context) -> list[Mount]:
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise must(f, "mount", value, "an array of tables ([[mount]])")
    mounts: list[Mount] = []
    for number, table in enumerate(value, 1):
        mount = _mount(table, f"mount[{number}]", f, ctx)
        if mount is None:
            continue
        if any(m.target == mount.target for m in mounts):
            raise fail(f, f"'mount[{number}].target' {mount.target} is mounted twice in this file")
        mounts.append(mount)
    return mounts


def _mount_field(table: dict[str, object], key: str, label: str, f: File, convert: schema.Convert) -> object:
    try:
        return convert(table[key])
    except Bad as bad:
        raise refused(f, f"{label}.{key}", table[key], bad) from None


def _mount(table: dict[str, object], label: str, f: File, ctx: Context) -> Mount | None:
    """One [[mount]]; None for an optional bind whose $VAR is not set."""
    _check_keys(f, table, _MOUNT_KEYS, label + ".")
    mode = _mount_field(table, "mode", label, f, schema.choice(MOUNT_MODES)) if "mode" in table else "ro"
    optional = _mount_field(table, "optional", label, f, schema.boolean) if "optional" in table else False
    size = _mount_field(table, "size", label, f, schema.SIZE) if "size" in table else None
    assert isinstance(mode, str) and isinstance(optional, bool) and (size is None or isinstance(size, int))
    if "target" not in table:
        raise fail(f, f"'{label}' needs a target: the path inside the sandbox")
    target = _mount_field(table, "target", label, f, schema.text("an absolute path", bool))
    assert isinstance(target, str)
    target = absolute(f, f"{label}.target", target, ctx)
    if target == "/":
        raise must(f, f"{label}.target", table["target"], "a path below /")
    if mode == "tmpfs":
        for key in ("source", "optional"):
            if key in table:
                raise fail(f, f"'{label}.{key}' does not apply to mode = \"tmpfs\"")
        return Mount(target=target, mode=mode, size=size)
    if size is not None:
        raise fail(f, f"'{label}.size' applies only to mode = \"tmpfs\"")
    if "source" not in table:
        raise fail(f, f"'{label}' needs a source: a host path (or mode = \"tmpfs\")")
    source = _mount_field(table, "source", label, f, schema.text("a host path", bool))
    assert isinstance(source, str)
    try:
        source = _expand_path(f, f"{label}.source", source, ctx)
    except Unset as unset:
        if optional:
            return None
        raise fail(f, f"'{label}.source' uses ${unset.args[0]}, which is not set") from None
    if f.restricted:
        refusal = trust.source_refusal(label, mode, source, ctx.project)
        if refusal is not None:
            raise fail(f, refusal)
        source = os.path.realpath(source)  # bind what was checked, not a symlink that may change
    return Mount(target=target, mode=mode, source=source, optional=optional)
