"""Fuzz `sbx batch` line parsing: any line must give a job or a one-line LineError.

sandbox.batch.parse_line is the first thing a batch does with each input
line; anything it raises but LineError ends the whole batch with a
traceback instead of an XX result for that line.  A job it accepts must
have the field types the runner relies on.  Lines are decoded as `sbx
batch FILE` reads them (UTF-8 with surrogateescape).

    python fuzz/fuzz_batch.py -max_total_time=20 -max_len=8192 /tmp/batch-corpus fuzz/corpus/batch
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import json  # noqa: F401  (instrumented: parse_line's decoder)

    from sandbox.warm import batch  # noqa: E402

STRING_FIELDS = ("profile", "stdin", "stdout", "stderr", "box", "box_mode", "workdir", "image", "network")


def check_job(job: object) -> None:
    assert isinstance(job, dict), f"not a dict: {job!r}"
    assert set(job) <= set(batch.FIELDS), f"unknown fields accepted: {sorted(set(job) - set(batch.FIELDS))}"
    argv = job["argv"]
    assert isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv), argv
    for key in ("options", "volumes"):
        value = job.get(key, [])
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), (key, value)
    for key in ("limits", "env"):
        assert isinstance(job.get(key, {}), dict), (key, job.get(key))
    assert all(isinstance(v, str) for v in job.get("env", {}).values())
    for key in STRING_FIELDS:
        assert job.get(key) is None or isinstance(job[key], str), (key, job[key])


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        job = batch.parse_line(text)
    except batch.LineError as exc:
        message = str(exc)
        assert message and "\n" not in message, f"not one line: {message!r}"
        return
    check_job(job)
    batch._arguments(job, None)  # the keywords the runner gets: must not raise


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
