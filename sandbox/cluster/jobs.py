"""The cluster's wire format: a job (one JSON object, the task's only argument) and its answer.

A job is a line of `sbx batch` minus what names the submitting host's files
(stdout/stderr paths, boxes), plus inline inputs:

    {"argv": ["python3", "sol.py"], "id": "case-7", "profile": "grader",
     "options": ["--network", "none"], "limits": {"time": 1, "memory": "256M"},
     "env": {"K": "V"}, "workdir": "/box", "image": "reg:5000/py@sha256:...",
     "network": "none", "volumes": ["/srv/data:/data"],
     "files": {"sol.py": "print(1)", "in/a.bin": {"base64": "AAE="}, "big": {"sha256": "HEX"}},
     "stdin": {"text": "1 2\\n"} | {"base64": "..."} | {"sha256": "HEX"} | "/shared/path",
     "capture_limit": 1048576}

Only "argv" is required.  "files" are written into a fresh /box (the run's
working directory); "stdin" as a string is a path on the worker (only for
workers that share a file system).  {"sha256": HEX} names a blob put in the
blob store beforehand (blobs.py).  "profile" is a name, never a path: a job
cannot make a worker read a TOML file of its choosing.

The answer (the task's return value) is {"worker": HOSTNAME, "result": {...}}
with the fields of `sbx run --result` plus "stdout"/"stderr" as text (and
"stdout_base64"/"stderr_base64" when the bytes are not UTF-8), or
{"worker": HOSTNAME, "error": {"type": "UsageError", "message": "..."}} when
the job could not be run (the API's typed errors).

This module only checks shapes; it imports nothing heavy and is fuzzed
(fuzz/fuzz_cluster.py).
"""

from __future__ import annotations

import base64
import binascii
import json

from ..errors import SbxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..model.result import Result

FIELDS = ("argv", "id", "profile", "options", "limits", "env", "stdin", "files", "workdir", "image", "network",
          "volumes", "capture_limit")
STRING_FIELDS = ("profile", "workdir", "image", "network")
CAPTURE = 1 << 20           # bytes of stdout/stderr each sent back by default
MAX_CAPTURE = 16 << 20      # the most a job may ask for
MAX_FILES = 1000
MAX_INLINE = 32 << 20       # decoded bytes of inline files and stdin in one job
MAX_PATH = 1024
ERROR_TYPES = ("UsageError", "ProfileError", "SetupError", "BoxError", "BoxBusy", "ImageError", "SbxError")
HEX = frozenset("0123456789abcdef")


class JobError(UsageError):
    """A job that cannot be run as given: its answer is an XX result (or a UsageError for the API)."""


def parse_line(text: str) -> dict[str, object]:
    """A JSON line -> a checked job."""
    try:
        job = json.loads(text)
    except ValueError as exc:
        raise JobError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise JobError("not valid JSON: nested too deeply") from None
    return check_job(job)


def check_job(job: object) -> dict[str, object]:
    """The job if every field has its shape (what values mean is the worker's Runner to check)."""
    if not isinstance(job, dict):
        raise JobError("a job must be a JSON object")
    unknown = sorted(str(key) for key in set(job) - set(FIELDS))
    if unknown:
        raise JobError(f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    argv = job.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise JobError("'argv' must be a non-empty list of strings")
    for key in ("options", "volumes"):
        value = job.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise JobError(f"{key!r} must be a list of strings")
    for key in ("limits", "env"):
        if not isinstance(job.get(key, {}), dict):
            raise JobError(f"{key!r} must be an object")
    env = job.get("env", {})
    assert isinstance(env, dict)
    if not all(isinstance(v, str) for v in env.values()):
        raise JobError("'env' values must be strings")
    for key in STRING_FIELDS:
        if job.get(key) is not None and not isinstance(job[key], str):
            raise JobError(f"{key!r} must be a string or null")
    profile = job.get("profile")
    if isinstance(profile, str) and ("/" in profile or profile.endswith(".toml")):
        raise JobError("'profile' must be a profile name, not a path (the worker's own profiles only)")
    cap = job.get("capture_limit", CAPTURE)
    if isinstance(cap, bool) or not isinstance(cap, int) or not 0 <= cap <= MAX_CAPTURE:
        raise JobError(f"'capture_limit' must be a number of bytes from 0 to {MAX_CAPTURE}")
    inline = 0
    stdin = job.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        inline += input_size(stdin, "'stdin'", "text")
    files = job.get("files", {})
    if not isinstance(files, dict):
        raise JobError("'files' must be an object of NAME: content")
    if len(files) > MAX_FILES:
        raise JobError(f"'files' holds more than {MAX_FILES} files")
    for name, content in files.items():
        check_file_name(name)
        inline += len(content.encode(errors="surrogatepass")) if isinstance(content, str) else \
            input_size(content, f"file {name!r}", None)
    if inline > MAX_INLINE:
        raise JobError(f"the job's inline files and stdin are larger than {MAX_INLINE >> 20} MiB: put large "
                       "inputs in the blob store and name them by {\"sha256\": ...}")
    return job


def input_size(value: object, what: str, text_key: str | None) -> int:
    """The inline bytes of {"text"|"base64"|"sha256": ...} (0 for a blob); JobError for another shape."""
    keys = ("base64", "sha256") if text_key is None else (text_key, "base64", "sha256")
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in keys:
        shapes = " or ".join(f'{{"{k}": ...}}' for k in keys)
        raise JobError(f"{what} must be {'a string or ' if text_key is None else 'a path or '}{shapes}")
    (key, data), = value.items()
    if not isinstance(data, str):
        raise JobError(f"{what}: {key!r} must be a string")
    if key == "sha256":
        check_hex(data, what)
        return 0
    if key == "base64":
        return len(data) * 3 // 4
    return len(data.encode(errors="surrogatepass"))


def check_hex(digest: str, what: str) -> str:
    if len(digest) != 64 or not set(digest) <= HEX:
        raise JobError(f"{what}: 'sha256' must be 64 lower-case hex digits")
    return digest


def check_file_name(name: object) -> str:
    """A relative path below /box: no '..', no empty or '.' component, no NUL."""
    if not isinstance(name, str) or not name or len(name) > MAX_PATH or "\0" in name or name.startswith("/"):
        raise JobError(f"file name {str(name)[:80]!r} must be a relative path below /box")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise JobError(f"file name {name[:80]!r} must be a relative path below /box (no '', '.' or '..' parts)")
    return name


def inline_bytes(value: object, what: str) -> bytes | None:
    """The bytes of an inline input (a checked shape), or None for a blob reference."""
    if isinstance(value, str):
        return value.encode(errors="surrogateescape")
    assert isinstance(value, dict)
    (key, data), = value.items()
    if key == "sha256":
        return None
    if key == "base64":
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise JobError(f"{what}: not valid base64") from None
    return str(data).encode(errors="surrogateescape")


# -- answers ---------------------------------------------------------------------------

def answer_error(worker: str, exc: BaseException) -> dict[str, object]:
    kind = next((k.__name__ for k in type(exc).__mro__ if k.__name__ in ERROR_TYPES), "SbxError")
    return {"worker": worker, "error": {"type": kind, "message": str(exc)}}


def output_fields(name: str, data: bytes | None) -> dict[str, object]:
    if data is None:
        return {}
    try:
        return {name: data.decode()}
    except UnicodeDecodeError:
        return {name: data.decode(errors="replace"), f"{name}_base64": base64.b64encode(data).decode()}


def output_bytes(fields: dict[str, object], name: str) -> bytes | None:
    raw = fields.get(f"{name}_base64")
    if isinstance(raw, str):
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise JobError(f"the worker's answer has a bad {name}_base64") from None
    text = fields.get(name)
    return text.encode(errors="surrogateescape") if isinstance(text, str) else None


def check_answer(answer: object) -> dict[str, object]:
    """An answer's shape (it comes from the broker: a worker, or anyone who can write there)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("worker", ""), str):
        raise JobError("the worker's answer is not an object")
    if "error" in answer:
        error = answer["error"]
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise JobError("the worker's error answer has no message")
        return answer
    result = answer.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("verdict"), str):
        raise JobError("the worker's answer has no result")
    return answer


def to_result(fields: dict[str, object]) -> Result:
    """A Result from an answer's "result" (the worker's Result, as sent)."""
    from ..model.result import VERDICTS, Result

    def number(key: str, kind: type[int] | type[float], default: float | None) -> float | None:
        value = fields.get(key, default)
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return value if value is None else kind(value)
        raise JobError(f"the worker's answer has a bad {key!r}")

    verdict = fields.get("verdict")
    if verdict not in VERDICTS:
        raise JobError(f"the worker's answer has an unknown verdict {str(verdict)[:20]!r}")
    flags = {key: dict(value) if isinstance(value := fields.get(key), dict) else {}
             for key in ("limits_enforced", "fences")}
    exit_code, signal_number = number("exit_code", int, None), number("signal", int, None)
    pids_peak = number("pids_peak", int, None)
    return Result(
        verdict=str(verdict), status=int(number("status", int, 125) or 0),
        exit_code=None if exit_code is None else int(exit_code),
        signal=None if signal_number is None else int(signal_number),
        wall_time=float(number("wall_time", float, 0.0) or 0.0), cpu_time=float(number("cpu_time", float, 0.0) or 0.0),
        user_time=float(number("user_time", float, 0.0) or 0.0), sys_time=float(number("sys_time", float, 0.0) or 0.0),
        memory_peak=int(number("memory_peak", int, 0) or 0), oom_killed=fields.get("oom_killed") is True,
        pids_peak=None if pids_peak is None else int(pids_peak),
        output_bytes=int(number("output_bytes", int, 0) or 0),
        limits_enforced=tuple((str(k), v is True) for k, v in flags["limits_enforced"].items()),
        message=str(fields.get("message") or ""),
        fences=tuple((str(k), v is True) for k, v in flags["fences"].items()),
        stdout=output_bytes(fields, "stdout"), stderr=output_bytes(fields, "stderr"))
