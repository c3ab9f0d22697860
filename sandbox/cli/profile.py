"""`sbx profile list | show NAME | check FILE... | trust [DIR] | untrust [DIR]`."""

from __future__ import annotations

import os
import sys

from ..config.profile import BUILTIN, ProfileError, resolve
from ..config.dump import dumps
from ..config.profile_file import listing

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

USAGE = """\
usage: sbx profile list          profiles in the search path, with their files
       sbx profile show NAME     a profile (name or .toml path) fully resolved, as TOML
       sbx profile check FILE... validate profile files; exit 0 if all are valid, else 125
       sbx profile trust [DIR]   let names resolve in DIR's ./.sbx/profiles/ (default: here)
                                 until a file there changes
       sbx profile untrust [DIR] stop that

--project-profiles (list, show, check) uses ./.sbx/profiles/ this once, as
`sbx run --project-profiles` does; see SECURITY.md, 'Profiles'."""
COMMANDS = "list, show, check, trust or untrust"


class _UsageError(Exception):
    pass


def main(argv: list[str]) -> int:
    try:
        return _run(argv, os.getcwd(), os.environ)
    except (ProfileError, _UsageError) as error:
        print(f"sbx: error: {error}", file=sys.stderr)
        return 125
    except FileNotFoundError:  # os.getcwd() of a removed directory
        print("sbx: error: the current directory no longer exists", file=sys.stderr)
        return 125


def _run(argv: list[str], cwd: str, environ: Mapping[str, str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        if not argv:
            raise _UsageError(f"profile: missing command: {COMMANDS} (see sbx profile --help)")
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    project = "--project-profiles" in args
    args = [arg for arg in args if arg != "--project-profiles"]
    if project and command not in ("list", "show", "check"):
        raise _UsageError(f"profile: {command} takes no --project-profiles")
    if command == "list":
        _expect(args, 0, 0, "list")
        print(_list(cwd, environ, project))
        return 0
    if command == "show":
        _expect(args, 1, 1, "show NAME")
        sys.stdout.write(_show(args[0], cwd, environ, project))
        return 0
    if command == "check":
        _expect(args, 1, None, "check FILE...")
        return _check(args, cwd, environ, project)
    if command in ("trust", "untrust"):
        _expect(args, 0, 1, f"{command} [DIR]")
        return _trust(command, os.path.join(cwd, args[0]) if args else cwd, environ)
    raise _UsageError(f"profile: unknown command '{command}': use {COMMANDS}")


def _expect(args: list[str], low: int, high: int | None, usage: str) -> None:
    if len(args) < low or (high is not None and len(args) > high):
        raise _UsageError(f"profile: usage: sbx profile {usage}")


def _list(cwd: str, environ: Mapping[str, str], project: bool) -> str:
    rows = [("NAME", "SOURCE", "DESCRIPTION")]
    found = listing(cwd, environ, project)
    for entry in found.entries:
        if entry.ignored:
            note = "(the project's: not used without --project-profiles or 'sbx profile trust')"
        elif entry.shadowed_by is not None:
            note = f"(shadowed by {entry.shadowed_by})"
        elif entry.error is not None:
            note = f"(invalid: {entry.error})"
        else:
            note = entry.description
        rows.append((entry.name, entry.source, note))
    name_width = max(len(r[0]) for r in rows)
    source_width = max(len(r[1]) for r in rows)
    lines = [f"{n:<{name_width}}  {s:<{source_width}}  {d}".rstrip() for n, s, d in rows]
    lines.append("")
    lines.append("searched, first match wins: " + ", ".join(found.searched))
    return "\n".join(lines)


def _warn(line: str) -> None:
    print(f"sbx: warning: {line}", file=sys.stderr)


def _show(name: str, cwd: str, environ: Mapping[str, str], project: bool) -> str:
    profile = resolve(name, cwd=cwd, environ=environ, project=project, warn=_warn)
    notes = _leading_comments(profile.source)
    text = dumps(profile)
    return "".join(f"{line}\n" for line in notes) + ("#\n" if notes else "") + text


def _leading_comments(source: str) -> list[str]:
    """The comment block that opens a profile file: its documentation."""
    if source == BUILTIN:
        return []
    try:
        with open(source, encoding="utf-8") as file:
            lines = [line.rstrip("\n") for line in file.readlines(65536)]
    except (OSError, UnicodeDecodeError):
        return []
    notes = []
    for line in lines:
        if not line.startswith("#"):
            break
        notes.append(line)
    return notes


def _check(files: list[str], cwd: str, environ: Mapping[str, str], project: bool) -> int:
    status = 0
    for file in files:
        # FILE is always a path, even "grader": ./grader, never the shipped one.
        path = file if "/" in file else "./" + file
        try:
            profile = resolve(path, cwd=cwd, environ=environ, project=project)
        except ProfileError as error:
            print(f"sbx: error: {error}", file=sys.stderr)
            status = 125
        else:
            print(f"{file}: ok (profile '{profile.name}')")
    return status


def _trust(command: str, directory: str, environ: Mapping[str, str]) -> int:
    from ..config import trust as profile_trust

    if command == "trust":
        real, names = profile_trust.trust(directory, environ)
        shown = ", ".join(names) if names else "none yet"
        print(f"trusted {real}/.sbx/profiles/ ({shown}): its names apply there until a file in it changes")
    else:
        real, listed = profile_trust.untrust(directory, environ)
        print(f"untrusted {real}" if listed else f"{real} was not trusted")
    return 0
