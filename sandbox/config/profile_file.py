"""Which files a profile is made of, and the Profile they make: lookup, `extends`, merging, listing.

Imported only when a TOML file must really be parsed (see search.py), so
tomllib and difflib cost nothing on a plain `sbx run`.  One file is read by
tomlfile.py and checked by layers.py (against the schema); here the chain of
files is found and merged.

Who supplies what (SECURITY.md, 'Profiles'): a name needed by the command
line, the implicit default or a trusted file is looked up in the trusted
directories only; ./.sbx/profiles/ comes first only for the command line's
name when the caller opted in, and for what a project file extends.  Every
file is read through an fd whose owner and mode are checked: nobody but
you or root may be able to change a profile you use.
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass
from ..model.spec import Mount
from . import layers, schema, tomlfile, trust
from .layers import PROJECT, Context, File, Layer, close_match, display, display_dir, fail, in_project_sbx
from .schema import shown
from .search import BUILTIN, DEFAULT, SECURITY, Profile, ProfileError, inside, project_dir, search_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

MAX_DEPTH = 32
_OPT_IN = "pass --project-profiles or run 'sbx profile trust'"
# The settings a Profile holds, in the schema's order; `mounts` last.
KEYS = tuple(s.key for s in schema.SETTINGS if s.section is not None) + ("mounts",)


def _context(
    cwd: str, environ: Mapping[str, str], project: bool = False, warn: Callable[[str], None] | None = None
) -> Context:
    cwd = os.path.abspath(cwd)
    sbx = os.path.join(cwd, ".sbx")
    return Context(
        cwd=cwd,
        environ=environ,
        dirs=(project_dir(cwd), *search_path(cwd, environ)),
        project=os.path.realpath(cwd),
        project_sbx=(sbx, os.path.realpath(sbx)),
        opted_in=project,
        warn=warn,
    )


def _opted_in(ctx: Context) -> bool:
    """Do names from the command line resolve through ./.sbx/profiles/ here?"""
    if ctx.opted_in:
        return True
    return trust.is_trusted(ctx.cwd, ctx.environ)


def _is_path(ref: str) -> bool:
    return "/" in ref or ref.endswith(".toml")


def _valid_name(name: str) -> bool:
    return (
        0 < len(name) <= 64
        and name.isascii()
        and name.replace("-", "a").replace("_", "a").replace(".", "a").isalnum()
        and name[0] not in ".-"
    )


def _names(ctx: Context, start: int) -> set[str]:
    names = {"default"}
    for directory in ctx.dirs[start:]:
        try:
            entries = os.listdir(directory)
        except OSError:
            continue
        names.update(e[:-5] for e in entries if e.endswith(".toml") and _valid_name(e[:-5]))
    return names


def _find(ref: str, ctx: Context, start: int, stop: int | None = None) -> File | None:
    for index in range(start, len(ctx.dirs) if stop is None else stop):
        path = os.path.join(ctx.dirs[index], ref + ".toml")
        if os.path.lexists(path):
            return File(path, ref, display(path, ctx), in_project_sbx(path, ctx), index)
    return None


def _locate(ref: str, ctx: Context, origin: File | None) -> File:
    where = f"{origin.display}: 'extends': " if origin else ""
    if _is_path(ref):
        return _locate_path(ref, ctx, origin, where)
    if not _valid_name(ref):
        raise ProfileError(
            f"{where}invalid profile name {shown(ref)}: use letters, digits, '.', '_' and '-', "
            "or a path to a .toml file"
        )
    if origin is None:
        return _locate_top(ref, ctx)
    # What a trusted file extends never comes from ./.sbx/: the project would
    # supply the base of the caller's own limits.  A project file's may.
    start = PROJECT if origin.restricted else PROJECT + 1
    if origin.name == ref and origin.dir_index >= 0:
        start = max(start, origin.dir_index + 1)  # `extends = "grader"` in a grader.toml: the next one
    found = _find(ref, ctx, start)
    if found is not None:
        return found
    if ref == "default":
        return File(BUILTIN, "default", BUILTIN, False, len(ctx.dirs))
    note = ""
    if start > PROJECT and _find(ref, ctx, PROJECT, PROJECT + 1) is not None:
        note = "; ./.sbx/profiles/ is never searched for what a profile outside it extends"
    raise _not_found(ref, ctx, start, where, note)


def _locate_top(ref: str, ctx: Context) -> File:
    """The command line's name (or the implicit default)."""
    local = _find(ref, ctx, PROJECT, PROJECT + 1)
    if local is not None and _opted_in(ctx):  # the trust list is read only here
        return local
    # The default without the project's: yours, else the built-in (as profile.resolve's fast path).
    found = _find(ref, ctx, PROJECT + 1, len(ctx.dirs) - 1 if ref == "default" else None)
    if local is not None:
        if found is None and ref != "default":
            raise ProfileError(
                f"profile '{ref}' is only in ./.sbx/profiles/, the project's profiles, which apply only "
                f"when you opt in ({SECURITY}): {_OPT_IN}, or name the file: --profile ./{local.display}"
            )
        if ctx.warn is not None:
            used = "the built-in default" if found is None else found.path
            ctx.warn(f"ignored the project's {local.display}, used {used}: {_OPT_IN} to use the project's")
    if found is not None:
        return found
    if ref == "default":
        return File(BUILTIN, "default", BUILTIN, False, len(ctx.dirs))
    raise _not_found(ref, ctx, PROJECT if ctx.opted_in else PROJECT + 1, "", "")


def _not_found(ref: str, ctx: Context, start: int, where: str, note: str) -> ProfileError:
    hint = close_match(ref, _names(ctx, start))
    looked = ", ".join(display_dir(d, ctx) for d in ctx.dirs[start:])
    suffix = f" (did you mean '{hint}'?)" if hint else ""
    return ProfileError(f"{where}profile '{ref}' not found{suffix}; looked in {looked}{note}")


def _locate_path(ref: str, ctx: Context, origin: File | None, where: str) -> File:
    if "\0" in ref:
        raise ProfileError(f"{where}invalid profile path {shown(ref)}")
    base = os.path.dirname(origin.path) if origin else ctx.cwd
    path = os.path.normpath(os.path.join(base, ref))
    restricted = (origin is not None and origin.restricted) or in_project_sbx(path, ctx)
    if origin is not None and origin.restricted and not inside(os.path.realpath(path), ctx.project):
        raise ProfileError(
            f"{where}{ref} is outside the project directory {ctx.project}: a profile from ./.sbx/ "
            f"may extend only profiles by name or files inside the project ({SECURITY})"
        )
    if not os.path.lexists(path):
        stem = os.path.basename(path)[:-5] if path.endswith(".toml") else ""
        named = _names(ctx, PROJECT if ctx.opted_in else PROJECT + 1)
        hint = f" (for the profile named '{stem}', write just {stem})" if stem in named else ""
        raise ProfileError(f"{where}profile file {display(path, ctx)} not found{hint}")
    name = os.path.basename(path)
    name = name[:-5] if name.endswith(".toml") else name
    return File(path, name, display(path, ctx), restricted, -1)


def _builtin_layer() -> Layer:
    layer = Layer()
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


def _chain(top: File, ctx: Context) -> list[Layer]:
    """The layers of `top` and everything it extends, base first."""
    files: list[File] = []
    seen: list[str] = []
    chain: list[Layer] = []
    f: File | None = top
    while f is not None:
        key = f.path if f.path == BUILTIN else os.path.realpath(f.path)
        if key in seen:
            loop = " -> ".join(g.display for g in [*files, f])
            raise fail(top, f"'extends' goes round in a cycle: {loop}")
        if len(files) >= MAX_DEPTH:
            raise fail(top, f"'extends' chain is longer than {MAX_DEPTH} profiles")
        files.append(f)
        seen.append(key)
        if f.path == BUILTIN:
            chain.append(_builtin_layer())
            break
        layer, extends = layers.convert(tomlfile.read(f.path, f.display), f, ctx)
        chain.append(layer)
        f = _locate(extends, ctx, f) if extends is not None else None
    chain.reverse()
    return chain


def _merge(layers: list[Layer]) -> Layer:
    """Later layers win key by key; env merges by name; mounts append."""
    merged = Layer()
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


def _settings(merged: Layer) -> tuple[tuple[str, object], ...]:
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


def _resolve_file(top: File, ctx: Context) -> Profile:
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
    opted = ctx.opted_in or (os.path.isdir(ctx.dirs[PROJECT]) and _opted_in(ctx))
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
            if index == PROJECT and not opted:
                entries.append(Entry(name, path, "", ignored=True))
                continue
            if name in winners:
                entries.append(Entry(name, path, "", shadowed_by=winners[name]))
                continue
            winners[name] = path
            found = File(path, name, display(path, ctx), in_project_sbx(path, ctx), index)
            entries.append(_entry(found, ctx))
    if "default" not in winners:
        entries.append(Entry("default", BUILTIN, DEFAULT.description))
    entries.sort(key=lambda e: (e.name, e.ignored, e.shadowed_by is not None))
    searched = ctx.dirs if opted else ctx.dirs[PROJECT + 1 :]
    return Listing(tuple(entries), searched)


def _entry(f: File, ctx: Context) -> Entry:
    try:
        return Entry(f.name, f.path, _resolve_file(f, ctx).description)
    except ProfileError as error:
        return Entry(f.name, f.path, "", error=str(error))
