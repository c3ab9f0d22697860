"""`sbx box create|run|rm|ls`: boxes from the command line (see box.py)."""

from __future__ import annotations

import os
import sys

from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..warm.box import Box

    RunCommand = Callable[[list[str], Box, str], int]

USAGE = """usage: sbx box COMMAND ...

A box is a work directory that survives between runs: compile in it once,
then run the program per test case, each run with its own limits.

commands:
  create [--root DIR] [NAME]        make an empty box (a name is generated when none is given)
  run [--root DIR] [--mode MODE] [--wait] NAME [RUN OPTIONS] [--] COMMAND [ARG...]
                                    'sbx run' with the box at /box (the default workdir);
                                    MODE rw (default), ro, or overlay (changes discarded)
  rm [--root DIR] [--wait] NAME...  delete boxes and everything in them
  ls [--root DIR]                   list boxes

A box is locked while a run uses it: another run (or rm) fails with exit 125,
or waits with --wait.  Boxes live in $SBX_ROOT/boxes (default
$XDG_DATA_HOME/sbx/boxes).
"""


def _options(args: list[str], allowed: tuple[str, ...]) -> tuple[dict[str, str | bool], list[str]]:
    """Leading box options; the rest (the name, run options, command) untouched."""
    found: dict[str, str | bool] = {}
    i = 0
    while i < len(args) and args[i].startswith("--"):
        name, eq, value = args[i].partition("=")
        if name not in allowed:
            break
        if name in ("--root", "--mode"):
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"{name} needs a value")
                value = args[i]
            found[name] = value
        else:
            found[name] = True
        i += 1
    return found, args[i:]


def main(args: list[str], run_command: RunCommand) -> int:
    """`run_command(args, box, mode)` is `sbx run` (cli/main.py passes its own: no import back up)."""
    from ..warm.box import Box

    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0 if args else 125
    command, rest = args[0], args[1:]
    if command == "create":
        opts, names = _options(rest, ("--root",))
        if len(names) > 1 or any(n.startswith("-") for n in names):
            raise UsageError("usage: sbx box create [--root DIR] [NAME]")
        box = Box.create(names[0] if names else None, _root(opts))
        sys.stdout.write(f"{box.name}\t{box.work}\n")
        return 0
    if command == "run":
        opts, rest = _options(rest, ("--root", "--mode", "--wait"))
        if not rest or rest[0].startswith("-"):
            raise UsageError("usage: sbx box run [--root DIR] [--mode MODE] [--wait] NAME [RUN OPTIONS] -- COMMAND")
        box = Box.open(rest[0], _root(opts))
        mode = str(opts.get("--mode", "rw"))
        fd = box.lock(bool(opts.get("--wait")))
        try:
            return run_command(rest[1:], box, mode)
        finally:
            os.close(fd)
    if command == "rm":
        opts, names = _options(rest, ("--root", "--wait"))
        if not names:
            raise UsageError("usage: sbx box rm [--root DIR] [--wait] NAME...")
        for name in names:
            Box.open(name, _root(opts)).remove(bool(opts.get("--wait")))
        return 0
    if command == "ls":
        opts, extra = _options(rest, ("--root",))
        if extra:
            raise UsageError(f"sbx box ls: unexpected argument {extra[0]!r}")
        for box in Box.all(_root(opts)):
            sys.stdout.write(f"{box.name}\t{box.work}\n")
        return 0
    raise UsageError(f"unknown box command {command!r} (see 'sbx box --help')")


def _root(opts: dict[str, str | bool]) -> str | None:
    root = opts.get("--root")
    return root if isinstance(root, str) else None
