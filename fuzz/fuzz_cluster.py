"""Fuzz the cluster's wire format: jobs (`sbx batch --broker` lines, task arguments) and answers.

A job comes from a JSON line or from anyone who can write to the broker; an
answer comes back through the broker.  jobs.parse_line and check_job must
give a checked job or a one-line JobError; the inline inputs of an accepted
job decode or raise JobError; check_answer and to_result accept an answer
or raise JobError, never anything else.

    python fuzz/fuzz_cluster.py -max_total_time=20 -max_len=8192 /tmp/cluster-corpus fuzz/corpus/cluster
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from sandbox.cluster import jobs  # noqa: E402


def one_line(message: str) -> None:
    assert message and "\n" not in message, f"not one line: {message!r}"


def as_job(text: str) -> None:
    try:
        job = jobs.parse_line(text)
    except jobs.JobError as exc:
        one_line(str(exc))
        return
    assert set(job) <= set(jobs.FIELDS)
    argv = job["argv"]
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)
    stdin = job.get("stdin")
    files = job.get("files", {})
    assert isinstance(files, dict)
    for what, value in (("stdin", stdin), *((f"file {n}", v) for n, v in files.items())):
        if value is None:
            continue
        try:
            data = jobs.inline_bytes(value, what)
        except jobs.JobError as exc:
            one_line(str(exc))
            continue
        assert data is None or isinstance(data, bytes)
    for name in files:
        assert jobs.check_file_name(name) == name
        assert not name.startswith("/") and ".." not in name.split("/")


def as_answer(text: str) -> None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return
    try:
        answer = jobs.check_answer(value)
        result = answer.get("result")
        if isinstance(result, dict):
            jobs.to_result(result)
    except jobs.JobError as exc:
        one_line(str(exc))


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    as_job(text)
    as_answer(text)


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
