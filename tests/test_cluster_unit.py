"""The cluster's wire format (sandbox/cluster/jobs.py), as tables; its fuzz harness, smoke-run."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from sandbox.cluster import jobs
from sandbox.cluster.client import make_job
from sandbox.errors import UsageError
from sandbox.model.result import Result
from test_fuzz import run_harness

HEX = "ab" * 32


@pytest.mark.parametrize("line, message", [
    ("{", "not valid JSON"),
    ("[1]", "a job must be a JSON object"),
    ('{"argv": []}', "'argv' must be a non-empty list"),
    ('{"argv": ["x"], "stdout": "out"}', "unknown field 'stdout'"),
    ('{"argv": ["x"], "box": "b"}', "unknown field 'box'"),
    ('{"argv": ["x"], "profile": "/etc/p.toml"}', "a profile name, not a path"),
    ('{"argv": ["x"], "profile": "mine.toml"}', "a profile name, not a path"),
    ('{"argv": ["x"], "env": {"A": 1}}', "'env' values must be strings"),
    ('{"argv": ["x"], "capture_limit": -1}', "'capture_limit'"),
    ('{"argv": ["x"], "capture_limit": true}', "'capture_limit'"),
    ('{"argv": ["x"], "stdin": 5}', "'stdin' must be a path or"),
    ('{"argv": ["x"], "stdin": {"text": "a", "base64": ""}}', "'stdin' must be"),
    ('{"argv": ["x"], "stdin": {"sha256": "ABC"}}', "64 lower-case hex"),
    ('{"argv": ["x"], "files": []}', "'files' must be an object"),
    ('{"argv": ["x"], "files": {"../x": "a"}}', "relative path below /box"),
    ('{"argv": ["x"], "files": {"/etc/x": "a"}}', "relative path below /box"),
    ('{"argv": ["x"], "files": {"a//b": "a"}}', "relative path below /box"),
    ('{"argv": ["x"], "files": {"a/./b": "a"}}', "relative path below /box"),
    ('{"argv": ["x"], "files": {"a": {"text": "x"}}}', "must be a string or"),
    ('{"argv": ["x"], "files": {"a": 3}}', "must be a string or"),
])
def test_bad_jobs(line: str, message: str) -> None:
    with pytest.raises(jobs.JobError, match=message.replace("(", r"\(").replace("[", r"\[")) as caught:
        jobs.parse_line(line)
    assert "\n" not in str(caught.value)
    assert isinstance(caught.value, UsageError)  # the API's type for it


def test_good_job_and_inputs() -> None:
    job = jobs.parse_line('{"argv": ["cat"], "stdin": {"base64": "AAE="}, "files": {"d/a": "x", "b": {"sha256": "'
                          + HEX + '"}}, "capture_limit": 0}')
    assert jobs.inline_bytes(job["stdin"], "stdin") == b"\0\1"
    files = job["files"]
    assert isinstance(files, dict)
    assert jobs.inline_bytes(files["d/a"], "a") == b"x" and jobs.inline_bytes(files["b"], "b") is None
    with pytest.raises(jobs.JobError, match="not valid base64"):
        jobs.inline_bytes({"base64": "!!"}, "stdin")
    too_big = {"argv": ["x"], "files": {"a": "x" * (jobs.MAX_INLINE + 1)}}
    with pytest.raises(jobs.JobError, match="blob store"):
        jobs.check_job(too_big)


def test_make_job_from_api_keywords() -> None:
    job = make_job(["cat"], stdin=b"\xff", files={"a": b"\0", "b": "text", "c": {"sha256": HEX}},
                   limits={"time": 1}, options=("--network", "none"), env={"K": "V"})
    assert job["stdin"] == {"base64": base64.b64encode(b"\xff").decode()}
    assert job["files"] == {"a": {"base64": "AA=="}, "b": "text", "c": {"sha256": HEX}}
    assert job["options"] == ["--network", "none"] and job["limits"] == {"time": 1}
    assert make_job(["x"], stdin="/shared/in")["stdin"] == "/shared/in"
    for keyword in ("stdout", "box", "cpu"):
        with pytest.raises(UsageError, match="this host's files"):
            make_job(["x"], **{keyword: "v"})
    with pytest.raises(UsageError, match="unknown keyword"):
        make_job(["x"], bogus=1)


def test_answers_round_trip() -> None:
    result = Result(verdict="SG", status=137, signal=9, wall_time=1.5, cpu_time=0.25, memory_peak=1 << 20,
                    limits_enforced=(("memory", True),), message="killed", stdout=b"\xff\xfe", stderr=b"ok\n")
    fields = {**result.to_dict(), "status": result.status, **jobs.output_fields("stdout", result.stdout),
              **jobs.output_fields("stderr", result.stderr)}
    assert "stderr_base64" not in fields and "stdout_base64" in fields
    answer = jobs.check_answer({"worker": "sbx@a", "result": fields})
    back = jobs.to_result(answer["result"])  # type: ignore[arg-type]
    assert (back.verdict, back.status, back.signal, back.wall_time, back.cpu_time, back.memory_peak) == \
        ("SG", 137, 9, 1.5, 0.25, 1 << 20)
    assert back.stdout == b"\xff\xfe" and back.stderr == b"ok\n" and back.limits_enforced == (("memory", True),)
    for bad in ({"worker": "a"}, {"worker": "a", "result": {"verdict": 3}}, {"worker": "a", "error": {}}, []):
        with pytest.raises(jobs.JobError):
            jobs.check_answer(bad)
    with pytest.raises(jobs.JobError, match="unknown verdict"):
        jobs.to_result({"verdict": "NOPE"})
    with pytest.raises(jobs.JobError, match="bad 'cpu_time'"):
        jobs.to_result({"verdict": "OK", "cpu_time": "1"})
    error = jobs.answer_error("w", jobs.JobError("bad"))
    assert error == {"worker": "w", "error": {"type": "UsageError", "message": "bad"}}


def test_fuzz_cluster(tmp_path: Path) -> None:
    """Jobs and answers: nothing but JobError, one line, however malformed."""
    run_harness("cluster", tmp_path, "-max_len=8192")
