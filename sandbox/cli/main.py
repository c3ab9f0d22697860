"""Command line: the only reader of sys.argv.  `sbx COMMAND ...` -> the module that does it.

`sbx run`'s options are parsed by config/flags.py (the schema's flag half, which
the API shares); this module only dispatches, runs, and prints.
"""

from __future__ import annotations

import os
import sys

from ..config.flags import HelpRequested, build_spec, parse_run_args
from ..errors import EXIT_SBX, SbxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..warm.box import Box

USAGE = """usage: sbx [--version] [--help] COMMAND ...

Run untrusted code in a rootless sandbox under hard limits.

commands:
  run [OPTIONS] [--] COMMAND [ARG...]   run COMMAND in a fresh sandbox
  profile list|show NAME|check FILE     inspect profiles
  image pull|push|import|ls|inspect|rm|tag|prune   images (sbx image --help)
  box create|run|rm|ls                  persistent work directories (sbx box --help)
  batch [-j N] [FILE|-]                 many runs from JSON Lines, results as JSON Lines
  worker --broker URL                   run the cluster's runs (sbx worker --help)
  doctor                                what this host allows, with fixes
  completion bash|zsh                   shell completion script (sbx completion --help)
  man                                   this manual page, as roff (sbx man | man -l -)

'sbx run --help' lists the run options.
"""


def cmd_run(args: list[str], box: Box | None = None, box_mode: str = "rw", entry: bool = False) -> int:
    """`sbx run ARGS`; `entry`: this is the process's own command line (it may re-run in a scope)."""
    from ..runtime import supervisor

    stamps = None
    if os.environ.get("SBX_STAMPS"):  # where the time goes (runtime/stamps.py); else nothing imported
        from ..runtime.stamps import Stamps

        stamps = Stamps.for_process(os.environ)
        stamps.stamp("main")
    raw = parse_run_args(args)[0]
    if stamps is not None:
        stamps.stamp("args-parsed")
    if entry:
        _rerun_in_scope(raw.get("run.cgroup"))
    if box is None and "run.interactor" in raw:
        from .interactor import cmd_interactive

        return cmd_interactive(args)
    spec = build_spec(args, os.getcwd(), os.environ, box, box_mode)
    if stamps is not None:
        stamps.stamp("spec-built")
    commit, root = raw.get("run.commit"), raw.get("run.image_root")
    reports: tuple[int | None, int | None] = (None, None)  # --result, --meta
    if spec.result is not None or spec.meta is not None:  # else nothing to open, nothing imported
        from ..runtime.reports import open_reports

        reports = open_reports(spec)  # before anything runs: a bad path is exit 125 with nothing started
    try:
        if isinstance(commit, str):  # keep the writable layer and save it as an image
            from .image import run_and_save

            result = run_and_save(spec, commit, root if isinstance(root, str) else None,
                                  lambda spec: supervisor.run_sandbox(spec, os.environ))
        else:
            result = supervisor.run_sandbox(spec, os.environ, stamps=stamps)
        if reports != (None, None):
            from ..runtime.reports import write_reports

            write_reports(reports, result)
    finally:
        if reports != (None, None):
            from ..runtime.reports import close_reports

            close_reports(reports)
    if stamps is not None:
        stamps.stamp("result-written")
    if result.message:
        sys.stderr.write(f"sbx: {'error: ' if result.verdict == 'XX' else ''}{result.message}\n")
    return result.status


def _rerun_in_scope(explicit: object) -> None:
    """No usable cgroup but a systemd user manager: run this process's own command line again
    in a delegated scope (execs; returns when there is none to use).  Every command that runs
    sandboxes asks, from main() only: an in-process main(argv) is never re-run."""
    from ..cgroup.systemd import rerun_in_scope

    rerun_in_scope([sys.executable, *sys.orig_argv[1:]], os.environ, explicit if isinstance(explicit, str) else None)


def main(argv: list[str] | None = None) -> int:
    entry = argv is None  # the process's own command line, which a systemd scope may re-run
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            sys.stdout.write(USAGE)
            return 0 if args else EXIT_SBX
        command, rest = args[0], args[1:]
        if command == "--version":
            from .version import version

            sys.stdout.write(f"sbx {version()}\n")
            return 0
        if command == "run":
            return cmd_run(rest, entry=entry)
        if command == "doctor":
            from . import doctor

            return doctor.main(rest)
        if command == "profile":
            from . import profile as profile_cmd

            return profile_cmd.main(rest)
        if command == "image":
            from . import image as image_cli

            return image_cli.main(rest)
        if command == "box":
            from .box import main as box_main

            return box_main(rest, lambda args, box, mode: cmd_run(args, box, mode, entry))
        if command == "batch":
            if any(arg == "--broker" or arg.startswith("--broker=") for arg in rest):
                from ..cluster.batch import main as cluster_batch  # runs on the workers: no scope here

                return cluster_batch(rest)
            from ..warm.batch import main as batch_main

            if entry:
                _rerun_in_scope(None)
            return batch_main(rest)
        if command == "worker":
            from .worker import main as worker_main

            if entry:
                _rerun_in_scope(None)
            return worker_main(rest)
        if command == "completion":
            from .completion import main as completion_main

            return completion_main(rest, USAGE)
        if command == "man":
            from .manpage import main as man_main

            return man_main(rest, USAGE)
        raise UsageError(f"unknown command {command!r} (see 'sbx --help')")
    except HelpRequested as shown:
        sys.stdout.write(str(shown))
        return 0
    except SbxError as exc:
        sys.stderr.write(f"sbx: error: {exc}\n")
        return EXIT_SBX
    except KeyboardInterrupt:
        return 130
