"""Interactive problems: a solution and an interactor in two sandboxes, talking through pipes.

The solution's stdout is the interactor's stdin and the interactor's stdout
the solution's stdin, as CMS and DOMjudge wire them.  Each side is a whole
run of its own (limits, cgroup, figures, verdict); they start together and
each ends on its own (a side that exits closes its pipes, so the other sees
EOF or EPIPE).
"""

from __future__ import annotations

import os
import threading

from ..errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from .api import Runner
    from ..model.result import Result


class Owned(int):
    """An fd handed over to a run: its Streams closes it (no dup), once `taken` is set."""

    taken = False


def run_pair(runner: Runner, solution: Sequence[str], interactor: Sequence[str], solution_args: dict[str, object],
             interactor_args: dict[str, object]) -> tuple[Result, Result]:
    for args in (solution_args, interactor_args):
        for key in ("stdin", "stdout"):
            if key in args:
                raise UsageError(f"an interactive run wires {key} itself: do not pass it")
    to_interactor = os.pipe()
    to_solution = os.pipe()
    ends = [Owned(fd) for fd in (*to_interactor, *to_solution)]
    outcome: dict[str, Result | BaseException] = {}

    def side(name: str, argv: Sequence[str], args: dict[str, object], stdin: Owned, stdout: Owned) -> None:
        try:
            outcome[name] = runner.run(argv, stdin=stdin, stdout=stdout, **args)  # type: ignore[arg-type]
        except BaseException as exc:  # re-raised in the caller's thread
            outcome[name] = exc

    helper = threading.Thread(target=side, name="sbx-interactor",
                              args=("interactor", interactor, interactor_args, ends[0], ends[3]))
    try:
        helper.start()
        side("solution", solution, solution_args, ends[2], ends[1])
    finally:
        helper.join()
        for end in ends:
            if not end.taken:
                os.close(end)
    for name in ("solution", "interactor"):
        failure = outcome[name]
        if isinstance(failure, BaseException):
            raise failure
    return outcome["solution"], outcome["interactor"]  # type: ignore[return-value]


def cmd_interactive(args: list[str]) -> int:
    """`sbx run --interactor CMD [--interactor-profile NAME] [OPTIONS] -- COMMAND`."""
    import shlex
    import sys

    from .api import Runner
    from ..cli.main import close_reports, open_reports, parse_run_args, write_reports
    from ..kernel.hostfile import open_output
    from ..runtime.supervise import _warn

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
