"""`sbx batch --broker URL`: the JSON Lines of `sbx batch`, run on the cluster.

A line is a job (jobs.py): local batch's fields minus stdout/stderr paths and
boxes, plus "files" and inline "stdin".  Results come back in input order
with local batch's fields (captured stdout/stderr as text) plus "worker",
the Celery hostname that ran the line.  A line that cannot be run (bad JSON,
a bad field, an unknown profile on the worker) is an XX result; the batch
goes on.
"""

from __future__ import annotations

import json

from ..errors import EXIT_SBX

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

HIDDEN = ("status", "stdout_base64", "stderr_base64")  # the answer's fields a local batch line has not


def _failed(message: str) -> dict[str, object]:
    from ..model.result import Result

    return Result(verdict="XX", status=EXIT_SBX, message=message).to_dict()


def line_for(number: int, job_id: object, answer: dict[str, object] | BaseException) -> str:
    if isinstance(answer, BaseException):
        return json.dumps({"line": number, "id": job_id, **_failed(f"line {number}: {answer}"), "worker": None}) + "\n"
    worker = answer.get("worker")
    error = answer.get("error")
    if isinstance(error, dict):
        fields = _failed(f"line {number}: {error.get('message', '')}")
    else:
        result = answer.get("result")
        assert isinstance(result, dict)
        fields = {k: v for k, v in result.items() if k not in HIDDEN}
    return json.dumps({"line": number, "id": job_id, **fields, "worker": worker}) + "\n"


def run(broker: str, lines: Iterable[str], emit: Callable[[str], None], profile: str | None = None,
        queue: str | None = None) -> int:
    """Submit each line, emit each result line in input order."""
    from . import jobs
    from .client import Client

    order: list[tuple[int, object]] = []  # (line number, id) of what was handed to the client, in order

    def parsed() -> Iterator[dict[str, object] | BaseException]:
        number = 0
        for text in lines:
            number += 1
            if not text.strip():
                continue
            job_id: object = None
            try:
                job = jobs.parse_line(text)
                job_id = job.get("id")
                if profile is not None and job.get("profile") is None:
                    job["profile"] = profile
                order.append((number, job_id))
                yield job
            except jobs.JobError as exc:
                order.append((number, job_id))
                yield exc

    client = Client(broker, **({"queue": queue} if queue else {}))
    try:
        for index, answer in enumerate(client.answers(parsed())):
            number, job_id = order[index]
            emit(line_for(number, job_id, answer))
    finally:
        client.close()
    return 0


def parse_args(args: list[str]) -> tuple[str, str | None, str | None, str]:
    """(broker, profile, queue, source) of `sbx batch --broker URL [--profile P] [--queue Q] [FILE|-]`."""
    from ..config.argv import HELP, split
    from ..errors import UsageError
    from ..warm.batch import ONE_FILE, USAGE

    found, operands = split(args, ("--broker", "--profile", "--queue"), unknown=(
        "{arg}: not an option of 'sbx batch --broker' (runs go to the workers: -j, --root, --no-pin and --cold "
        "are theirs)"), one_operand_last=ONE_FILE)
    if any(found.get(name) for name in HELP):
        from ..config.flags import HelpRequested

        raise HelpRequested(USAGE)
    values = {name[2:]: value for name, value in found.items() if isinstance(value, str)}
    source = operands[0] if operands else "-"
    if not values.get("broker"):
        raise UsageError("--broker needs a Redis URL")
    if "/" in values.get("profile", "") or values.get("profile", "").endswith(".toml"):
        raise UsageError("--profile with --broker: a profile name of the workers', not a path")
    return values["broker"], values.get("profile"), values.get("queue"), source


def main(args: list[str]) -> int:
    """`sbx batch --broker URL ...`."""
    import sys

    from ..warm.batch import open_lines
    from .app import make_app

    broker, profile, queue, source = parse_args(args)
    make_app(broker)  # a bad URL or a missing extra: exit 125 before reading anything
    stream = open_lines(source)

    def emit(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()

    try:
        return run(broker, stream, emit, profile, queue)
    except BrokenPipeError:
        return 0
    finally:
        if source != "-":
            stream.close()
