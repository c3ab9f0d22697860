"""`sbx batch`: many runs from JSON Lines, results as JSON Lines in input order.

Each input line is an object:

    {"argv": ["./sol"], "id": "case-7", "profile": "grader", "options": ["--network", "none"],
     "limits": {"time": 1, "memory": "256M"}, "env": {"K": "V"}, "stdin": "in/7.txt",
     "stdout": "out/7.txt", "stderr": null, "box": "sub-42", "box_mode": "overlay",
     "workdir": "/box", "image": "python", "volumes": ["data:/data"]}

Only "argv" is required.  Paths are relative to the current directory.
Without "stdout"/"stderr" the output is captured (up to 1 MiB each) into the
result line's "stdout"/"stderr" strings.  Each output line is the run's
result (as --result writes it) plus "line" and the input's "id".  A line
that cannot be run (bad JSON, bad field, unknown profile, missing box) gets
an XX result with the reason; the batch goes on.

Runs use one warm Runner; -j N runs N at once, each worker pinned to its
own CPU so timings stay steady.  Lines naming the same box run one after
another, in input order (compile, then the tests).
"""

from __future__ import annotations

import json
import os
import sys
import threading

from ..errors import EXIT_SBX, SbxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from concurrent.futures import Future
    from typing import TextIO

    from .api import Runner

USAGE = """usage: sbx batch [-j N] [--profile NAME] [--root DIR] [--no-pin] [--cold] [FILE|-]
       sbx batch --broker URL [--profile NAME] [FILE|-]

Runs one sandbox per JSON line of FILE (default: stdin) and writes one JSON
result line per input line, in input order, to stdout.

options:
  -j, --jobs N       runs at once (default 1), each pinned to its own CPU
  --profile NAME     profile for lines that name none (default: 'default')
  --root DIR         image and box store
  --no-pin           do not pin runs to CPUs
  --cold             build every sandbox when its run starts (no warm pool)
  --broker URL       run the lines on sbx workers through this Redis instead (lines
                     carry their files inline; results add "worker"; README, "Running
                     on many machines")
"""

FIELDS = ("argv", "id", "profile", "options", "limits", "env", "stdin", "stdout", "stderr", "box", "box_mode",
          "workdir", "image", "network", "volumes")
CAPTURE = 1 << 20


class LineError(SbxError):
    """A line that cannot be run; its result is XX."""


def parse_line(text: str) -> dict[str, object]:
    """A line's fields, checked for type (what they mean is checked when it runs)."""
    try:
        job = json.loads(text)
    except ValueError as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise LineError("not valid JSON: nested too deeply") from None
    if not isinstance(job, dict):
        raise LineError("a line must be a JSON object")
    unknown = sorted(set(job) - set(FIELDS))
    if unknown:
        raise LineError(f"unknown field {unknown[0]!r} (known: {', '.join(FIELDS)})")
    argv = job.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise LineError("'argv' must be a non-empty list of strings")
    for key in ("options", "volumes"):
        value = job.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise LineError(f"{key!r} must be a list of strings")
    for key in ("limits", "env"):
        value = job.get(key, {})
        if not isinstance(value, dict):
            raise LineError(f"{key!r} must be an object")
    env = job.get("env", {})
    assert isinstance(env, dict)
    if not all(isinstance(v, str) for v in env.values()):
        raise LineError("'env' values must be strings")
    for key in ("profile", "stdin", "stdout", "stderr", "box", "box_mode", "workdir", "image", "network"):
        if job.get(key) is not None and not isinstance(job[key], str):
            raise LineError(f"{key!r} must be a string or null")
    return job


def _arguments(job: dict[str, object], default_profile: str | None) -> dict[str, object]:
    args: dict[str, object] = {"profile": job.get("profile") or default_profile,
                               "options": tuple(job.get("options", ())),  # type: ignore[arg-type]
                               "limits": job.get("limits") or None, "env": job.get("env") or None,
                               "volumes": tuple(job.get("volumes", ())),  # type: ignore[arg-type]
                               "stdin": job.get("stdin"), "stdout": job.get("stdout"), "stderr": job.get("stderr"),
                               "capture_limit": CAPTURE, "box_wait": True}
    for key in ("box", "box_mode", "workdir", "image", "network"):
        if job.get(key) is not None:
            args[key] = job[key]
    return args


def _result_line(number: int, job_id: object, result: dict[str, object]) -> str:
    return json.dumps({"line": number, "id": job_id, **result}) + "\n"


def _failed(message: str) -> dict[str, object]:
    from ..model.result import Result

    return Result(verdict="XX", status=EXIT_SBX, message=message).to_dict()


class Batch:
    """Runs lines on a Runner with `jobs` workers; results come back in input order."""

    def __init__(self, runner: Runner, jobs: int, cpus: list[int] | None, profile: str | None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.runner = runner
        self.jobs = jobs
        self.profile = profile
        self.cpus = cpus
        self.local = threading.local()
        self.next_worker = 0
        self.lock = threading.Lock()
        self.executor = ThreadPoolExecutor(jobs, thread_name_prefix="sbx-batch", initializer=self._worker_start)
        self.last_of_box: dict[str, Future[str]] = {}
        self.done = 0
        self.running = 0

    def _worker_start(self) -> None:
        with self.lock:
            index = self.next_worker
            self.next_worker += 1
        self.local.cpu = None if not self.cpus else self.cpus[index % len(self.cpus)]

    def _run(self, number: int, text: str, job: dict[str, object] | None, error: str, after: Future[str] | None) -> str:
        if after is not None:
            after.exception()  # the previous line of the same box has ended, however it ended
        job_id = None if job is None else job.get("id")
        with self.lock:
            self.running += 1
        try:
            if job is None:
                return _result_line(number, job_id, _failed(f"line {number}: {error}"))
            try:
                result = self.runner.run(job["argv"], cpu=self.local.cpu, **_arguments(job, self.profile))  # type: ignore[arg-type]
            except SbxError as exc:
                return _result_line(number, job_id, _failed(f"line {number}: {exc}"))
            except Exception as exc:  # a bug of ours must cost one line, not the batch
                return _result_line(number, job_id, _failed(f"line {number}: internal error: {exc!r}"))
            fields = result.to_dict()
            for name, data in (("stdout", result.stdout), ("stderr", result.stderr)):
                if data is not None:
                    fields[name] = data.decode(errors="replace")
            return _result_line(number, job_id, fields)
        finally:
            with self.lock:
                self.running -= 1
                self.done += 1

    def submit(self, number: int, text: str) -> Future[str]:
        job: dict[str, object] | None
        try:
            job, error = parse_line(text), ""
        except LineError as exc:
            job, error = None, str(exc)
        box = None if job is None else job.get("box")
        after = self.last_of_box.get(box) if isinstance(box, str) else None
        future = self.executor.submit(self._run, number, text, job, error, after)
        if isinstance(box, str):
            self.last_of_box[box] = future
        return future

    def run(self, lines: Iterable[str], emit: Callable[[str], None]) -> None:
        """Submit every line; `emit` gets each result line, in input order, as soon as it and
        all before it are done (from a writer thread: a client may wait for each result
        before it sends the next line)."""
        import queue

        ordered: queue.Queue[Future[str] | None] = queue.Queue(maxsize=4 * self.jobs)
        failure: list[BaseException] = []

        def writer() -> None:
            while True:
                future = ordered.get()
                if future is None:
                    return
                try:
                    emit(future.result())
                except BaseException as exc:  # stdout gone, say: stop writing, stop reading
                    failure.append(exc)
                    return

        thread = threading.Thread(target=writer, name="sbx-batch-writer", daemon=True)
        thread.start()
        try:
            number = 0
            for text in lines:
                number += 1
                if failure:
                    break
                if text.strip():
                    ordered.put(self.submit(number, text))
        finally:
            ordered.put(None)
            thread.join()
        if failure:
            raise failure[0]

    def close(self) -> None:
        self.executor.shutdown(wait=True)


ONE_FILE = "sbx batch takes at most one FILE, last"


def open_lines(source: str) -> TextIO:
    """The batch's input: standard input for "-", else the file (a UsageError when unreadable)."""
    if source == "-":
        return sys.stdin
    try:
        return open(source, encoding="utf-8", errors="surrogateescape")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None


def _parse_args(args: list[str]) -> tuple[dict[str, object], str]:
    from ..config.argv import HELP, split

    found, operands = split(args, ("-j", "--jobs", "--profile", "--root"), ("--no-pin", "--cold"),
                            unknown="unknown option {arg} (see 'sbx batch --help')", one_operand_last=ONE_FILE)
    if any(found.get(name) for name in HELP):
        from ..config.flags import HelpRequested

        raise HelpRequested(USAGE)
    opts: dict[str, object] = {"jobs": 1, "profile": found.get("--profile"), "root": found.get("--root"),
                               "pin": "--no-pin" not in found, "warm": "--cold" not in found}
    for name in ("-j", "--jobs"):
        value = found.get(name)
        if isinstance(value, str):
            if not value.isdigit() or not 1 <= int(value) <= 1024:
                raise UsageError(f"{name}: {value!r} is not a number of jobs from 1 to 1024")
            opts["jobs"] = int(value)
    return opts, operands[0] if operands else "-"


def main(args: list[str]) -> int:
    from .api import Runner

    opts, source = _parse_args(args)
    stream = open_lines(source)
    jobs = int(opts["jobs"])  # type: ignore[call-overload]
    cpus = sorted(os.sched_getaffinity(0)) if opts["pin"] else None
    progress = None
    if sys.stderr.isatty():
        total = None
        if source != "-":
            with open(source, "rb") as counting:
                total = sum(1 for line in counting if line.strip())
        progress = _Progress(total)
    runner = Runner(warm=bool(opts["warm"]), depth=jobs + 1, root=opts["root"])  # type: ignore[arg-type]
    batch = Batch(runner, jobs, cpus, opts["profile"])  # type: ignore[arg-type]

    def emit(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()
        if progress is not None:
            progress.show(batch.done, batch.running)

    try:
        batch.run(stream, emit)
    except BrokenPipeError:
        pass  # the reader went away: stop
    finally:
        batch.close()
        runner.close()
        if source != "-":
            stream.close()
        if progress is not None:
            progress.end()
    return 0


class _Progress:
    """One status line on a terminal's stderr: a bar when the number of lines is known."""

    def __init__(self, total: int | None) -> None:
        self.total = total

    def show(self, done: int, running: int) -> None:
        if self.total:
            width = 30
            filled = min(width, width * done // self.total)
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}"
        else:
            bar = f"{done} done"
        sys.stderr.write(f"\rsbx batch: {bar}, {running} running ")
        sys.stderr.flush()

    def end(self) -> None:
        sys.stderr.write("\n")
