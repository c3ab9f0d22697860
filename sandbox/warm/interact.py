"""Interactive problems: a solution and an interactor in two sandboxes, talking through pipes.

`Runner.run_interactive` runs a pair; `sbx run --interactor` is cli/interactor.py.

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
