"""The Python client: runs on the cluster with the API's arguments and Result.

    from sandbox.cluster import Client

    with Client("redis://judge-redis:6379/0") as cluster:
        result = cluster.run(["python3", "sol.py"], files={"sol.py": source}, stdin=b"1 2\\n",
                             limits={"time": 1, "memory": "256M"})
        big = cluster.put(open("tests.bin", "rb").read())          # {"sha256": HEX}
        for result in cluster.map({"argv": ["./check"], "stdin": big} for _ in range(100)):
            print(result.verdict, result.cpu_time)

run() takes Runner.run's keywords, except what names this host's files
(stdout/stderr paths, boxes, cpu): "files" puts files in a fresh /box
instead; stdin is bytes (sent inline), a {"sha256": HEX} from put(), or a
str, a path on the worker.  Errors are typed as in the API (UsageError,
ProfileError, SetupError, BoxError, ImageError), raised when the answer is
read; ClusterError when the broker cannot be reached or an answer is
unusable, RunTimeout when `timeout` passes first.

Through a broker restart: an answer announced while the client's connection
was down is read directly (CHECK), and a run whose message the restart lost
is sent again (Client.recover).
"""

from __future__ import annotations

import base64
import json
import time
import weakref

from ..errors import SbxError, UsageError
from . import jobs
from .app import QUEUE, TASK, make_app

from collections.abc import Mapping

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from celery import Celery
    from celery.result import AsyncResult
    from redis import Redis

    from ..model.result import Result
    from .blobs import RedisBlobs

WINDOW = 1000        # runs submitted ahead of the one whose answer is awaited
RECONNECT = 60.0     # seconds to keep trying while the broker is away
CHECK = 5.0          # seconds between reading an awaited answer directly (pub/sub may have missed it)
RESEND_GAP = 1.0     # seconds between the two looks that find a run's message lost
UNACKED = "unacked"  # kombu's Redis hash of delivered, unacknowledged messages
SPEC_KEYWORDS = ("profile", "options", "limits", "env", "volumes", "workdir", "image", "network")


class ClusterError(SbxError):
    """The broker cannot be reached, or an answer is unusable."""


class RunTimeout(ClusterError):
    """No answer within the time given."""


def make_job(argv: Iterable[str], stdin: object = None, files: Mapping[str, object] | None = None,
             capture_limit: int = jobs.CAPTURE, **spec_args: object) -> dict[str, object]:
    """A job (jobs.py) from run()'s keywords."""
    unknown = sorted(set(spec_args) - set(SPEC_KEYWORDS))
    if unknown:
        local = {"stdout", "stderr", "box", "box_mode", "box_wait", "cpu"}
        raise UsageError(f"{unknown[0]}: " + ("names this host's files or CPUs: not for the cluster (use files=, "
                                               "captured output)" if unknown[0] in local else "unknown keyword"))
    job: dict[str, object] = {"argv": list(argv), "capture_limit": capture_limit}
    for key, value in spec_args.items():
        if value is None:
            continue
        if key in ("options", "volumes") and isinstance(value, (list, tuple)):
            value = list(value)
        elif key in ("limits", "env") and isinstance(value, Mapping):
            value = dict(value)
        job[key] = value
    if isinstance(stdin, (bytes, bytearray, memoryview)):
        job["stdin"] = {"base64": base64.b64encode(bytes(stdin)).decode()}
    elif stdin is not None:
        job["stdin"] = stdin
    if files:
        job["files"] = {name: {"base64": base64.b64encode(bytes(content)).decode()}
                        if isinstance(content, (bytes, bytearray, memoryview)) else content
                        for name, content in files.items()}
    return jobs.check_job(job)


def raise_error(error: Mapping[str, object]) -> None:
    """The API's exception for an error answer."""
    from ..config.search import ProfileError
    from ..image.errors import ImageError
    from ..errors import SetupError
    from ..warm.box import BoxBusy, BoxError

    kinds: dict[str, type[SbxError]] = {"UsageError": UsageError, "ProfileError": ProfileError,
                                        "SetupError": SetupError, "BoxError": BoxError, "BoxBusy": BoxBusy,
                                        "ImageError": ImageError}
    raise kinds.get(str(error.get("type")), SbxError)(str(error.get("message", "")))


def message_id(raw: bytes, delivered: bool = False) -> object:
    """The task id of a message as kombu keeps it in Redis: queued, the message; delivered,
    [message, exchange, routing key]."""
    try:
        message = json.loads(raw)
        return (message[0] if delivered else message)["headers"]["id"]
    except (ValueError, LookupError, TypeError):
        return None


class Pending:
    """A submitted run; answer() waits for it."""

    def __init__(self, client: Client, async_result: AsyncResult, job: dict[str, object]) -> None:
        self.client = client
        self.async_result = async_result
        self.job = job  # sent again should a broker restart lose its message

    @property
    def id(self) -> str:
        return str(self.async_result.id)

    def answer(self, timeout: float | None = None) -> dict[str, object]:
        """The worker's answer (jobs.py), checked; waits through broker restarts for up to RECONNECT s each."""
        deadline = None if timeout is None else time.monotonic() + timeout
        lost = 0.0
        while True:
            left = CHECK if deadline is None else min(CHECK, max(0.0, deadline - time.monotonic()))
            try:
                done = self._wait(left)
            except Exception as exc:  # the broker or backend went away: wait for it to come back
                lost = self.client.outage(exc, lost, f"the broker has been unreachable for {RECONNECT:g}s")
                continue
            lost = 0.0
            if done is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeout(f"run {self.id}: no answer within {timeout:g}s")
        self.client.unanswered.pop(self.id, None)
        value, state = done
        if state != "SUCCESS":
            raise ClusterError(f"run {self.id}: the worker failed ({state}): {str(value)[:200]}")
        try:
            return jobs.check_answer(value)
        except jobs.JobError as exc:
            raise ClusterError(f"run {self.id}: {exc}") from None

    def _wait(self, seconds: float) -> tuple[object, str] | None:
        """(answer, state) if the answer comes within about `seconds`, else None."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            value = self.async_result.get(timeout=seconds, propagate=False, interval=0.05)
            return value, str(self.async_result.state)
        except CeleryTimeout:
            pass
        # Answers are announced on a pub/sub channel: one announced while the connection
        # was down (a broker restart) is only seen by reading it.
        meta = self.client.app.backend.get_task_meta(self.id)
        if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
            return meta.get("result"), str(meta["status"])
        self.client.recover()
        return None

    def result(self, timeout: float | None = None) -> Result:
        answer = self.answer(timeout)
        error = answer.get("error")
        if isinstance(error, dict):
            raise_error(error)
        result = answer["result"]
        assert isinstance(result, dict)
        try:
            return jobs.to_result(result)
        except jobs.JobError as exc:
            raise ClusterError(f"run {self.id}: {exc}") from None


class Client:
    """Submits runs to workers through `broker` (a Redis URL)."""

    def __init__(self, broker: str, *, backend: str | None = None, queue: str = QUEUE) -> None:
        self.broker = broker
        self.queue = queue
        self.app: Celery = make_app(broker, backend)
        self._blobs: RedisBlobs | None = None
        self._broker: Redis | None = None   # for the broker's run id, the queue and delivered messages
        self._run: str | None = None        # the broker's run id when last recovered (or first sent to)
        self.unanswered: weakref.WeakValueDictionary[str, Pending] = weakref.WeakValueDictionary()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._blobs is not None:
            self._blobs.close()
        if self._broker is not None:
            self._broker.close()
        self.app.close()

    def outage(self, exc: Exception, since: float, what: str) -> float:
        """When the broker went away (`since`, 0.0 before `exc`), after a moment's wait.  `exc` again
        if it is no connection error; ClusterError ("`what`: exc") once RECONNECT s have passed."""
        errors = (*self.app.connection_for_write().connection_errors, *self.app.backend.connection_errors,
                  ConnectionError, OSError)
        # Celery's result consumer gives up on its own reconnection with a RuntimeError, from the error.
        if not isinstance(exc, errors) and not isinstance(exc.__cause__, errors):
            raise exc
        now = time.monotonic()
        if since and now - since > RECONNECT:
            raise ClusterError(f"{what}: {exc}") from None
        time.sleep(0.2)
        return since or now

    def put(self, data: bytes) -> dict[str, str]:
        """Store `data` in the broker's blob store; returns {"sha256": HEX} for files= or stdin=."""
        from .blobs import RedisBlobs

        if self._blobs is None:
            self._blobs = RedisBlobs(self.broker)
        return self._blobs.put(data)

    def submit(self, job: Mapping[str, object], task_id: str | None = None) -> Pending:
        """Send one job (a dict as jobs.py describes, checked here); its answer comes later."""
        import uuid

        checked = jobs.check_job(dict(job))
        task_id = task_id or str(uuid.uuid4())
        lost = 0.0
        while True:
            try:
                if self._run is None:
                    self._run = self.broker_run()
                sent = self.app.send_task(TASK, args=[checked], task_id=task_id, queue=self.queue)
                pending = self.unanswered[task_id] = Pending(self, sent, checked)
                return pending
            except Exception as exc:
                lost = self.outage(exc, lost, f"cannot reach the broker {self.broker}")

    def broker_run(self) -> str:
        """The broker's run id: Redis makes a new one each time it starts."""
        if self._broker is None:
            import redis

            self._broker = redis.Redis.from_url(self.broker)
        return str(self._broker.info("server").get("run_id", ""))

    def recover(self) -> None:
        """Send again the runs of this client whose message the broker lost in a restart.

        A worker takes a message off the queue (BRPOP), then records it as delivered; Redis going
        down between the two, or before its reply reached the worker, loses the message.  Once
        after each restart (a new run id), an unanswered run found neither queued, nor delivered,
        nor answered, twice RESEND_GAP apart, is sent again under its task id (answered once for
        all its messages, worker.py)."""
        run = self.broker_run()
        if run == self._run:
            return
        lost = self._nowhere(list(self.unanswered.values()))
        if lost:
            time.sleep(RESEND_GAP)  # a worker between taking a message and recording it
            lost = self._nowhere(lost)
        for pending in lost:
            self.app.send_task(TASK, args=[pending.job], task_id=pending.id, queue=self.queue)
        self._run = run

    def _nowhere(self, pendings: list[Pending]) -> list[Pending]:
        """Those of `pendings` whose message is neither queued nor delivered, and that have no answer."""
        assert self._broker is not None
        with self._broker.pipeline(transaction=True) as pipe:  # both at one moment: a message moves atomically
            pipe.lrange(self.queue, 0, -1)
            pipe.hvals(UNACKED)
            queued, delivered = pipe.execute()
        seen = {message_id(raw) for raw in queued} | {message_id(raw, delivered=True) for raw in delivered}
        rest = [pending for pending in pendings if pending.id not in seen]
        if not rest:
            return []
        # Read after the broker: a worker stores an answer before it acknowledges the message.
        backend = self.app.backend
        answers = backend.client.mget([backend.get_key_for_task(pending.id) for pending in rest])
        return [pending for pending, answer in zip(rest, answers) if answer is None]

    def run(self, argv: Iterable[str], *, stdin: object = None, files: Mapping[str, object] | None = None,
            capture_limit: int = jobs.CAPTURE, timeout: float | None = None, **spec_args: object) -> Result:
        """One run on the cluster, waited for: Runner.run's arguments and Result."""
        return self.submit(make_job(argv, stdin, files, capture_limit, **spec_args)).result(timeout)

    def answers(self, many: Iterable[Mapping[str, object] | BaseException],
                window: int = WINDOW) -> Iterator[dict[str, object] | BaseException]:
        """Each job's answer, in order; an exception in the input (a line that did not parse) comes
        back in its place, as does a job's own JobError."""
        from collections import deque

        queue: deque[Pending | BaseException] = deque()

        def take() -> dict[str, object] | BaseException:
            head = queue.popleft()
            return head if isinstance(head, BaseException) else head.answer()

        for job in many:
            if isinstance(job, BaseException):
                queue.append(job)
            else:
                try:
                    queue.append(self.submit(job))
                except jobs.JobError as exc:
                    queue.append(exc)
            while len(queue) > window:
                yield take()
        while queue:
            yield take()

    def map(self, many: Iterable[Mapping[str, object]], window: int = WINDOW) -> Iterator[Result]:
        """Results of many jobs (dicts of run()'s keywords: "argv", "stdin", "files", ...), in order;
        a job's error is raised when its place is reached."""
        def built() -> Iterator[dict[str, object]]:
            for keywords in many:
                rest = dict(keywords)
                yield make_job(rest.pop("argv"), **rest)  # type: ignore[arg-type]

        for answer in self.answers(built(), window):
            if isinstance(answer, BaseException):
                raise answer
            error = answer.get("error")
            if isinstance(error, dict):
                raise_error(error)
            result = answer["result"]
            assert isinstance(result, dict)
            yield jobs.to_result(result)
