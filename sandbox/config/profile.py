"""Profiles: named TOML files that preset everything a run's flags can set.

`resolve` is the entry point: the built-in default without reading a file when
nothing overrides it (search.py), else the file and what it extends
(profile_file.py).  The names callers use (ProfileError, Profile, the search
path) are re-exported from search.py, which the run path imports alone.
"""

from __future__ import annotations

from .search import (BUILTIN, DEFAULT, SYSTEM_DIR, Profile, ProfileError, builtin, config_home, project_dir,
                     search_path, shipped_dir, user_dirs)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping


def resolve(
    name: str | None,
    *,
    cwd: str,
    environ: Mapping[str, str],
    project: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Profile:
    """The profile `name` (a name or a path to a .toml file; None = "default").

    `project`: the caller opted in to ./.sbx/profiles/ for this directory
    (--project-profiles); `warn` gets the line saying a project profile of
    that name was ignored.
    """
    found = builtin(name, cwd, environ)
    if found is not None:
        return found
    from . import profile_file

    name = "default" if name is None else name
    return profile_file.resolve(name, cwd=cwd, environ=environ, project=project, warn=warn)


__all__ = ["BUILTIN", "DEFAULT", "SYSTEM_DIR", "Profile", "ProfileError", "config_home", "project_dir", "resolve",
           "search_path", "shipped_dir", "user_dirs"]
