"""`sbx run`'s options -> settings: the flag half of the schema (schema.py), for the CLI and the API.

A small table-driven parser instead of argparse: argparse (with the `re` and
`gettext` it pulls in) costs ~8 ms per start, and `sbx run` aims to start
within 3x of bubblewrap's ~5 ms.  The options are the schema's rows with flags;
a value is checked by the row's check, the one a profile's value goes through.
"""

from __future__ import annotations

import os

from ..errors import UsageError
from . import schema

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..model.spec import Spec
    from ..warm.box import Box

RUN_USAGE_HEAD = """usage: sbx run [OPTIONS] [--] COMMAND [ARG...]

Runs COMMAND in new user, mount, pid, ipc, uts, cgroup and net namespaces on a
disposable writable layer over the host's /usr, and exits with its status
(128+N for signal N, 125 when sbx itself fails, 126 not executable, 127 not found).

options:
"""


class HelpRequested(Exception):
    """-h/--help among the options; str() is the text to print."""


def run_usage() -> str:
    lines = [RUN_USAGE_HEAD]
    for setting in schema.SETTINGS:
        if not setting.flags:
            continue
        left = ", ".join(setting.flags) + (f" {setting.metavar}" if setting.metavar else "")
        repeat = " (repeatable)" if setting.read == "list" else ""
        lines.append(f"  {left:<34} {setting.help}{repeat}\n")
    lines.append(f"  {'-h, --help':<34} show this help\n")
    return "".join(lines)


def parse_run_args(args: list[str]) -> tuple[dict[str, str | list[str] | bool], list[str]]:
    """Options by setting key (raw strings, lists for repeatable ones, True for switches) and the command."""
    table = {flag: setting for setting in schema.SETTINGS for flag in setting.flags}
    raw: dict[str, str | list[str] | bool] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return raw, args[i + 1:]
        if not arg.startswith("-") or arg == "-":
            return raw, args[i:]
        if arg in ("-h", "--help"):
            raise HelpRequested(run_usage())
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in table and not arg.startswith("--") and arg[:2] in table and len(arg) > 2:
            name, eq, value = arg[:2], "=", arg[2:]  # -vSRC:DST, -eX=1
        setting = table.get(name)
        if setting is None:
            raise UsageError(f"unknown option {name!r} (see 'sbx run --help')")
        if setting.read == "switch":
            if eq:
                raise UsageError(f"{name} takes no value")
            raw[setting.key] = True
        else:
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"{name} needs a value ({setting.metavar})")
                value = args[i]
            if setting.read == "list":
                repeats = raw.setdefault(setting.key, [])
                assert isinstance(repeats, list)
                repeats.append(value)
            else:
                raw[setting.key] = value
        i += 1
    return raw, []


def flag_settings(raw: Mapping[str, str | list[str] | bool], cwd: str,
                  environ: Mapping[str, str]) -> dict[str, object]:
    """Raw option strings -> settings with the profile's key names and value types."""
    from . import compose

    settings: dict[str, object] = {}
    env: list[tuple[str, str]] = []
    mounts = []
    for key, value in raw.items():
        setting = schema.BY_KEY[key]
        texts = value if isinstance(value, list) else []
        if key in ("profile", "project_profiles"):
            continue
        if key == "volume":
            mounts += [compose.parse_volume(v, cwd) for v in texts]
        elif key == "tmpfs":
            mounts += [compose.parse_tmpfs(v) for v in texts]
        elif key == "env_file":
            for path in texts:
                env += compose.read_env_file(path, environ)
        elif key == "env":
            for text in texts:
                pair = compose.parse_env(text, environ)
                if pair is not None:
                    env.append(pair)
        elif key == "run.pass_fds":
            settings[key] = tuple(_pass_fd(v) for v in texts)
        else:
            settings[key] = schema.from_flag(setting, value, setting.flag)
    if env:
        settings["sandbox.env"] = tuple(env)
    if mounts:
        settings["mounts"] = tuple(mounts)
    return settings


def _pass_fd(text: str) -> int:
    try:
        fd = int(text)
        os.fstat(fd)
    except ValueError:
        raise UsageError(f"--pass-fd: {text!r} is not a file descriptor number") from None
    except OSError:
        raise UsageError(f"--pass-fd: {text} is not an open file descriptor") from None
    if fd <= 2:
        raise UsageError(f"--pass-fd: {fd} is always passed (stdin, stdout, stderr)")
    from ..runtime.stdio import pass_fd_refusal

    # What is never passed, refused now; a regular file only once the run's ids are known (supervise).
    why = pass_fd_refusal(fd, regular_files=True)
    if why is not None:
        raise UsageError(f"--pass-fd {fd}: {why}")
    return fd


def limit_settings(limits: Mapping[str, object]) -> dict[str, object]:
    """The API's limits={"memory": "256M", "time": 1.5, "pids": 64, "strict": True} -> settings, through
    the same checks as --memory and [limits] memory."""
    out: dict[str, object] = {}
    for name, value in limits.items():
        key = f"limits.{name}"
        if name not in schema.LIMIT_KEYS:
            raise UsageError(f"limits: unknown limit {name!r} (known: {', '.join(schema.LIMIT_KEYS)})")
        if value is None or value == schema.UNLIMITED:
            out[key] = None
        elif name == "strict":
            if not isinstance(value, bool):
                raise UsageError(f"limits: strict must be true or false, not {value!r}")
            out[key] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UsageError(f"limits: {name} = {value!r} is not a number or a size/duration string")
        else:
            out[key] = schema.from_flag(schema.BY_KEY[key], str(value), f"limits.{name}")
    return out


def profile_settings(name: str | None, cwd: str, environ: Mapping[str, str], project: bool = False,
                     warn: Callable[[str], None] | None = None) -> dict[str, object]:
    """`project`: --project-profiles; `warn` gets the line saying a project profile was ignored
    (default: "sbx: warning: ..." on stderr).  A ProfileError is a UsageError."""
    from . import search

    found = search.builtin(name, cwd, environ)  # a plain `sbx run` reads no file
    if found is None:
        from . import profile

        found = profile.resolve(name, cwd=cwd, environ=environ, project=project, warn=warn or _warn)
    return dict(found.settings)


def _warn(line: str) -> None:
    import sys

    sys.stderr.write(f"sbx: warning: {line}\n")


def build_spec(args: list[str], cwd: str, environ: Mapping[str, str], box: Box | None = None,
               box_mode: str = "rw") -> Spec:
    """`sbx run`'s options and command -> a Spec.  `box`: its work directory at /box, replacing any
    profile mount there, and the workdir unless -w gives one."""
    from . import compose

    raw, argv = parse_run_args(args)
    for key in ("run.interactor", "run.interactor_profile"):
        if key in raw:
            raise UsageError(f"--{key[4:].replace('_', '-')} is only for 'sbx run'")
    profile_name = raw.get("profile")
    base = profile_settings(profile_name if isinstance(profile_name, str) else None, cwd, environ,
                            project=raw.get("project_profiles") is True)
    settings = compose.merge(base, flag_settings(raw, cwd, environ))
    if box is not None:
        settings = box.settings(settings, box_mode, workdir="sandbox.workdir" in raw)
    return compose.build(settings, argv, cwd, environ)
