"""Profiles: named TOML files that preset everything a run's flags can set.

This module is imported on every `sbx run`, so it stays small: the error
type, the resolved `Profile`, the search path, and the built-in `default`.
A plain `sbx run` only stats a few paths and returns `DEFAULT`; parsing,
validation and inheritance live in `profile_file`, imported (with tomllib)
only when a TOML file really has to be read.
"""

from __future__ import annotations

import os
import sys

from .errors import UsageError
from .frozen import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SYSTEM_DIR = "/etc/sbx/profiles"
BUILTIN = "<built-in>"


class ProfileError(UsageError):
    """A profile that cannot be used; str() is one line without "sbx: error: "."""


@dataclass(frozen=True)
class Profile:
    """A profile after inheritance: `settings` maps dotted keys to converted values.

    Only keys that some file of the chain sets appear (a limit set to
    "unlimited" is left out, which is what an unset limit means).  Values
    are already typed: sizes int bytes, durations float seconds, lists
    tuples, `sandbox.env` a tuple of (name, value), `mounts` spec.Mount.
    """

    name: str
    source: str
    description: str
    settings: tuple[tuple[str, object], ...]

    def get(self, key: str, default: object = None) -> object:
        for name, value in self.settings:
            if name == key:
                return value
        return default


# Must equal profiles/default.toml once parsed (tests/test_profile.py checks);
# it saves the ~14 ms `import tomllib` on every plain `sbx run`.
DEFAULT = Profile(
    name="default",
    source=BUILTIN,
    description="General use: host programs read-only, no network, none of your files",
    settings=(
        ("sandbox.image", "host"),
        ("sandbox.hostname", "sbx"),
        ("sandbox.disk", 256 << 20),
        ("sandbox.tmp_size", 64 << 20),
        ("network.mode", "none"),
    ),
)


def _config_home(environ: Mapping[str, str]) -> str | None:
    # XDG: an unset, empty or relative XDG_CONFIG_HOME means $HOME/.config.
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg.startswith("/"):
        return xdg
    home = environ.get("HOME", "")
    return home + "/.config" if home.startswith("/") else None


def user_dirs(cwd: str, environ: Mapping[str, str]) -> list[str]:
    """The directories that can override shipped profiles, highest first."""
    dirs = [os.path.join(cwd, ".sbx", "profiles")]
    config = _config_home(environ)
    if config is not None:
        dirs.append(os.path.join(config, "sbx", "profiles"))
    dirs.append(SYSTEM_DIR)
    return dirs


def shipped_dir() -> str:
    """Installed data files first, else the repository checkout."""
    installed = os.path.join(sys.prefix, "share", "sbx", "profiles")
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiles")


def search_path(cwd: str, environ: Mapping[str, str]) -> list[str]:
    """Where a profile name is looked up, in order."""
    return user_dirs(cwd, environ) + [shipped_dir()]


def resolve(name: str | None, *, cwd: str, environ: Mapping[str, str]) -> Profile:
    """The profile `name` (a name or a path to a .toml file; None = "default")."""
    if name is None or name == "default":
        # lexists, not exists: a dangling default.toml must be an error, not ignored.
        if not any(os.path.lexists(os.path.join(d, "default.toml")) for d in user_dirs(cwd, environ)):
            return DEFAULT
        name = "default"
    from . import profile_file

    return profile_file.resolve(name, cwd=cwd, environ=environ)
