"""Where profiles are, and what a resolved one is: the error type, `Profile`, the search path,
and the built-in `default`.

This module is imported on every `sbx run`, so it stays small: a plain
`sbx run` only stats a few paths and gets `DEFAULT` (`builtin`); reading,
validation and inheritance (profile.py and the modules it imports, with
tomllib) load only when a TOML file really has to be read.

Names resolve through the trusted directories only ($XDG_CONFIG_HOME,
/etc, shipped).  The project's ./.sbx/profiles/ comes first only when the
caller opts in (`project=True`: --project-profiles, or `sbx profile trust`):
a submission must not supply the profile that limits it (SECURITY.md).
"""

from __future__ import annotations

import os
import sys

from ..errors import UsageError
from ..model.frozen import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SYSTEM_DIR = "/etc/sbx/profiles"
BUILTIN = "<built-in>"
SECURITY = "see SECURITY.md, 'Profiles'"  # where refusals of a profile send the reader


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


def inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def config_home(environ: Mapping[str, str]) -> str | None:
    # XDG: an unset, empty or relative XDG_CONFIG_HOME means $HOME/.config.
    xdg = environ.get("XDG_CONFIG_HOME", "")
    if xdg.startswith("/"):
        return xdg
    home = environ.get("HOME", "")
    return home + "/.config" if home.startswith("/") else None


def project_dir(cwd: str) -> str:
    """The project's profiles: used only when the caller opts in."""
    return os.path.join(cwd, ".sbx", "profiles")


def user_dirs(environ: Mapping[str, str]) -> list[str]:
    """The trusted directories that can override shipped profiles, highest first."""
    dirs = []
    config = config_home(environ)
    if config is not None:
        dirs.append(os.path.join(config, "sbx", "profiles"))
    dirs.append(SYSTEM_DIR)
    return dirs


def shipped_dir() -> str:
    """Installed data files first, else the repository checkout."""
    installed = os.path.join(sys.prefix, "share", "sbx", "profiles")
    if os.path.isdir(installed):
        return installed
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # sandbox/
    return os.path.join(os.path.dirname(package), "profiles")


def search_path(cwd: str, environ: Mapping[str, str], project: bool = False) -> list[str]:
    """Where a profile name is looked up, in order; ./.sbx/profiles only if `project`."""
    return ([project_dir(cwd)] if project else []) + user_dirs(environ) + [shipped_dir()]



def builtin(name: str | None, cwd: str, environ: Mapping[str, str]) -> Profile | None:
    """DEFAULT when `name` means the default and no file could override it; else None (read the files)."""
    if name is not None and name != "default":
        return None
    # The project's default is looked at even without opting in: to warn
    # that it is ignored, or to find the directory in the trust list.
    # lexists, not exists: a dangling default.toml must be an error, not ignored.
    dirs = [project_dir(cwd), *user_dirs(environ)]
    if any(os.path.lexists(os.path.join(d, "default.toml")) for d in dirs):
        return None
    return DEFAULT
