"""`sbx run --interactor CMD ... -- COMMAND`: the two runs of an interactive problem (warm/interact.py)."""

from __future__ import annotations

import os

from ..errors import UsageError


def cmd_interactive(args: list[str]) -> int:
    """`sbx run --interactor CMD [--interactor-profile NAME] [OPTIONS] -- COMMAND`."""
    import shlex
    import sys

    from ..config.flags import parse_run_args
    from ..kernel.hostfile import open_output
    from ..runtime.reports import close_reports, open_reports, write_reports
    from ..runtime.supervisor import warn_on_stderr as _warn
    from ..warm.api import Runner

    raw, argv = parse_run_args(args)
    text = str(raw["run.interactor"])
    try:
        interactor = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"--interactor {text}: {exc}") from None
    if not interactor:
        raise UsageError("--interactor needs a command")
    if not argv:
        raise UsageError("no command given (usage: sbx run --interactor CMD [OPTIONS] -- COMMAND [ARG...])")
    options = _without_interactor(args[: len(args) - len(argv)])
    if options and options[-1] == "--":
        options.pop()
    interactor_profile = raw.get("run.interactor_profile")
    with Runner(warm=False, warn=_warn) as runner:
        spec = runner.spec(argv, options=options)
        if spec.stdin is not None or spec.stdout is not None:
            raise UsageError("--stdin/--stdout cannot be used with --interactor (the two are wired together)")
        # Every file sbx writes is opened before either side starts (see hostfile).
        reports = open_reports(spec)
        stderr = -1
        try:
            stderr = open_output(spec.stderr, "--stderr") if spec.stderr else 2
            solution_args: dict[str, object] = {"options": options, "stderr": stderr}
            interactor_args: dict[str, object] = {"stderr": 2}
            if isinstance(interactor_profile, str):
                interactor_args["profile"] = interactor_profile
            else:
                interactor_args["options"] = [o for o in options]
            solution, other = runner.run_interactive(argv, interactor, solution_args=solution_args,
                                                     interactor_args=interactor_args)

            def both() -> str:
                import json

                return json.dumps({**solution.to_dict(), "interactor": other.to_dict()}, indent=2) + "\n"

            write_reports(reports, solution, both)
        finally:
            if stderr > 2:
                os.close(stderr)
            close_reports(reports)
    for name, result in (("", solution), ("interactor: ", other)):
        if result.message:
            sys.stderr.write(f"sbx: {name}{'error: ' if result.verdict == 'XX' else ''}{result.message}\n")
    return solution.status if solution.verdict != "OK" else other.status


def _without_interactor(options: list[str]) -> list[str]:
    out = []
    skip = False
    for arg in options:
        if skip:
            skip = False
            continue
        if arg in ("--interactor", "--interactor-profile"):
            skip = True
            continue
        if arg.startswith(("--interactor=", "--interactor-profile=")):
            continue
        out.append(arg)
    return out
