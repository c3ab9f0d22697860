"""The worker's side: the `sbx.run` task, and what each worker process holds.

Each process of a worker's pool holds one warm Runner and is pinned to one
CPU, one that no other pool process of the host's workers holds (a lock file
per CPU in the state directory), so runs on one host do not share a CPU and
keep steady timings.  The Runner works from an empty
directory of its own, so a profile that binds the working directory (grader's
/box) shows the run nothing of the worker's.

A job (jobs.py) becomes one Runner.run: "files" are written into a fresh box
(removed after the run), blobs come from the local cache (blobs.py), an
image named by digest (`reg:5000/app@sha256:...`) is pulled on first use and
kept.  A job's wall time may not pass the worker's ceiling (its profile's
wall time, else DEFAULT_CEILING), which is what the broker's visibility
timeout was set from: a job that gives none gets the ceiling.

Exactly one answer per task id: a message delivered again (its worker died
after the run, or the broker came back from a restart) finds the stored
answer and returns it without running again; a message delivered more than
MAX_DELIVERIES times (each delivery killed its worker: a poisoned job) is
answered XX without running.

A broker restart: kombu's Redis transport records a delivered message in
Redis (its "unacked" hash), then in the consumer's memory, and forgets it in
the same order.  A connection error in between lost the message (delivered)
or kept it in memory for good (acknowledged): it held the consumer's one
prefetch slot and the worker took no more runs.  keep_deliveries() keeps the
memory side going; Redis, which still has such a message as unacknowledged,
gives it out again after the visibility timeout, answered from the stored answer.
"""

from __future__ import annotations

import os

from ..errors import SbxError
from ..model.frozen import dataclass
from . import jobs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from celery import Celery, Task

    from ..warm.api import Runner
    from ..warm.box import Box
    from .blobs import Cache

DEFAULT_CEILING = 600.0   # seconds of wall time for workers whose profile sets none
MARGIN = 15.0             # visibility timeout = ceiling + this (a delivered run starts at once: prefetch 1)
MAX_DELIVERIES = 3
OUTAGE = 60               # retries, a second apart, of the delivery count while Redis is away
DELIVERIES = "sbx:deliveries:"


@dataclass(frozen=True)
class Settings:
    """What `sbx worker` was started with."""

    broker: str
    profile: str | None = None
    root: str | None = None
    ceiling: float = DEFAULT_CEILING
    blob_dir: str | None = None
    cpus: tuple[int, ...] = ()
    state: str = ""           # this worker's directory: an empty cwd, the blob cache, the pull lock

    @property
    def visibility_timeout(self) -> float:
        return self.ceiling + MARGIN


def state_dir(root: str | None) -> str:
    from ..image.store import default_root

    path = os.path.join(root or default_root(), "cluster")
    for sub in ("", "cwd", "blobs"):
        os.makedirs(os.path.join(path, sub), 0o700, exist_ok=True)
    os.chmod(os.path.join(path, "cwd"), 0o500)  # stays empty
    return path


def ceiling_of(profile: str | None, root: str | None) -> float:
    """The profile's wall time (UsageError/ProfileError for a bad profile), else DEFAULT_CEILING."""
    from ..warm.api import Runner

    with Runner(profile, root=root, warm=False) as runner:
        wall = runner.spec(["true"]).limits.wall_time
    return DEFAULT_CEILING if wall is None else float(wall)


def claim_cpu(state: str, cpus: tuple[int, ...], index: int) -> tuple[int, int]:
    """A CPU no other pool process of this host's workers (sharing `state`) holds: (cpu, the fd holding
    its lock, -1 when every CPU is held and this one is shared).  Pool process i tries its i-th CPU first."""
    import fcntl

    start = index % len(cpus)
    order = cpus[start:] + cpus[:start]
    for cpu in order:
        fd = os.open(os.path.join(state, f"cpu-{cpu}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return cpu, fd
        except BlockingIOError:
            os.close(fd)
    return order[0], -1


class Process:
    """One pool process: a Runner pinned to a CPU, the blob cache."""

    def __init__(self, settings: Settings, index: int) -> None:
        from ..warm.api import Runner
        from .blobs import Cache, DirBlobs, RedisBlobs

        self.settings = settings
        self.cpu: int | None = None
        self.cpu_lock = -1
        if settings.cpus:
            self.cpu, self.cpu_lock = claim_cpu(settings.state, settings.cpus, index)
            os.sched_setaffinity(0, {self.cpu})
        self.runner: Runner = Runner(settings.profile, cwd=os.path.join(settings.state, "cwd"), root=settings.root)
        source = DirBlobs(settings.blob_dir) if settings.blob_dir else RedisBlobs(settings.broker)
        self.cache: Cache = Cache(os.path.join(settings.state, "blobs"), source)

    def close(self) -> None:
        self.runner.close()
        if self.cpu_lock >= 0:
            os.close(self.cpu_lock)
            self.cpu_lock = -1

    def execute(self, job: object, worker: str) -> dict[str, object]:
        """The answer to one job: a result, or a typed error."""
        box: Box | None = None
        try:
            checked = jobs.check_job(job)
            image = checked.get("image")
            if isinstance(image, str) and "@sha256:" in image:
                self.ensure_image(image)
            args = self.arguments(checked)
            files = checked.get("files") or {}
            assert isinstance(files, dict)
            if files:
                box = self.runner.create_box()
                self.place(box.work, files)
            argv = checked["argv"]
            assert isinstance(argv, list)
            result = self.runner.run(argv, box=box, cpu=self.cpu, **args)  # type: ignore[arg-type]
        except SbxError as exc:
            return jobs.answer_error(worker, exc)
        except Exception as exc:  # a bug of ours costs one job, not the worker
            return jobs.answer_error(worker, SbxError(f"internal error: {exc!r}"))
        finally:
            if box is not None:
                try:
                    box.remove(wait=True)
                except SbxError:
                    pass
        fields = {**result.to_dict(), "status": result.status, **jobs.output_fields("stdout", result.stdout),
                  **jobs.output_fields("stderr", result.stderr)}
        return {"worker": worker, "result": fields}

    def arguments(self, job: dict[str, object]) -> dict[str, object]:
        """Runner.run's keywords for a checked job; the wall time held to the ceiling."""
        args: dict[str, object] = {"options": tuple(job.get("options", ())),  # type: ignore[arg-type]
                                   "limits": dict(job.get("limits") or {}),  # type: ignore[call-overload]
                                   "env": job.get("env") or None,
                                   "volumes": tuple(job.get("volumes", ())),  # type: ignore[arg-type]
                                   "capture_limit": job.get("capture_limit", jobs.CAPTURE)}
        for key in ("profile", "workdir", "image", "network"):
            if job.get(key) is not None:
                args[key] = job[key]
        spec_args = {k: v for k, v in args.items() if k != "capture_limit"}
        wall = self.runner.spec(job["argv"], **spec_args).limits.wall_time  # type: ignore[arg-type]
        ceiling = self.settings.ceiling
        if wall is None:
            limits = args["limits"]
            assert isinstance(limits, dict)
            limits["wall_time"] = ceiling
        elif wall > ceiling:
            raise jobs.JobError(f"a wall time of {wall:g}s is more than this worker allows ({ceiling:g}s, "
                                "its profile's wall time)")
        stdin = job.get("stdin")
        if isinstance(stdin, str):
            args["stdin"] = stdin  # a path on the worker
        elif stdin is not None:
            data = jobs.inline_bytes(stdin, "stdin")
            assert isinstance(stdin, dict)
            args["stdin"] = data if data is not None else self.cache.path_of(str(stdin["sha256"]))
        return args

    def place(self, work: str, files: dict[str, object]) -> None:
        """Write the job's files under the box's work directory (fresh: nothing there to follow)."""
        import shutil

        for name, content in files.items():
            parts = jobs.check_file_name(name).split("/")
            parent = work
            for part in parts[:-1]:
                parent = os.path.join(parent, part)
                try:
                    os.mkdir(parent, 0o777)
                    os.chmod(parent, 0o777)  # the payload (a subordinate id with ranges) writes here as other
                except FileExistsError:
                    pass
            path = os.path.join(parent, parts[-1])
            data = jobs.inline_bytes(content, f"file {name!r}")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
            with os.fdopen(fd, "wb") as file:
                if data is not None:
                    file.write(data)
                else:  # a copy, never a link: the run may write to its files
                    assert isinstance(content, dict)
                    with open(self.cache.path_of(str(content["sha256"])), "rb") as blob:
                        shutil.copyfileobj(blob, file)
                os.fchmod(file.fileno(), 0o666)

    def ensure_image(self, name: str) -> None:
        """An image named by digest: pulled into the store the first time (one pull per host at a time)."""
        from ..image import find
        from ..image.errors import ImageError
        from ..image.pull import credentials_from_env, pull
        from ..image.store import Store, lock_file

        store = Store(self.settings.root)

        def stored() -> bool:
            try:
                with store.lock(False):
                    find(store, name)
                return True
            except ImageError:
                return False

        if stored():
            return
        fd = lock_file(os.path.join(self.settings.state, "pull.lock"), True)
        try:
            if not stored():  # another pool process may have pulled it while we waited
                pull(store, name, credentials=credentials_from_env(os.environ), progress="quiet")
        finally:
            os.close(fd)


def keep_deliveries() -> None:
    """kombu's Redis consumers (this process's), their memory of deliveries kept through a broker restart."""
    from kombu.transport import redis, virtual

    # kombu's methods are untyped: called through these.
    recorded: Any = redis.QoS   # in Redis, then in memory
    local: Any = virtual.QoS    # in memory only

    class KeptQoS(redis.QoS):
        def append(self, message: Any, delivery_tag: Any) -> None:
            try:
                recorded.append(self, message, delivery_tag)
            except self.channel.connection_errors:
                # Off the queue already (BRPOP): run it, though unrecorded it is not given out
                # again should this worker die.
                local.append(self, message, delivery_tag)

        def ack(self, delivery_tag: Any) -> None:
            try:
                recorded.ack(self, delivery_tag)
            except self.channel.connection_errors:
                local.ack(self, delivery_tag)  # its prefetch slot free; Redis gives it out again
                raise  # for Celery's "Couldn't ack"

        def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
            try:
                recorded.reject(self, delivery_tag, requeue)
            except self.channel.connection_errors:
                local.ack(self, delivery_tag)
                raise

    redis.Channel.QoS = KeptQoS


def install(app: Celery, settings: Settings) -> None:
    """Register the task and the pool processes' start and end on `app`."""
    from billiard.process import current_process
    from celery.signals import worker_process_init, worker_process_shutdown

    held: dict[str, Process] = {}

    def start(**_kwargs: object) -> None:
        held["process"] = Process(settings, int(getattr(current_process(), "index", 0) or 0))

    def stop(**_kwargs: object) -> None:
        process = held.pop("process", None)
        if process is not None:
            process.close()

    keep_deliveries()
    worker_process_init.connect(start, weak=False)
    worker_process_shutdown.connect(stop, weak=False)

    from .app import RESULT_EXPIRES, TASK

    def run(task: Task, job: object = None, *_args: object, **_kwargs: object) -> dict[str, object]:
        task_id = str(task.request.id)
        worker = str(task.request.hostname or "")
        stored = task.backend.get_task_meta(task_id)
        if stored.get("status") == "SUCCESS" and isinstance(stored.get("result"), dict):
            return dict(stored["result"])  # delivered again: answered already
        client, ensure = task.backend.client, task.backend.ensure
        # Through a broker restart (the stored answer's read above retries on its own): a connection
        # error raised here would answer the run with a Celery failure instead of running it.
        deliveries = int(ensure(client.incr, (DELIVERIES + task_id,), max_retries=OUTAGE))
        ensure(client.expire, (DELIVERIES + task_id, RESULT_EXPIRES), max_retries=OUTAGE)
        if deliveries > MAX_DELIVERIES:
            return jobs.answer_error(worker, jobs.JobError(
                f"delivered {deliveries} times: each time its worker died (a poisoned job?)"))
        if _args or _kwargs:
            return jobs.answer_error(worker, jobs.JobError("the task takes exactly one argument, the job"))
        process = held.get("process")
        if process is None:  # a solo pool: no process start signal
            process = held["process"] = Process(settings, 0)
        return process.execute(job, worker)

    app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True)(run)
