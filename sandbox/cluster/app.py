"""The Celery application both ends share: broker and result backend on Redis, JSON only.

Workers and clients build the same app from the broker URL.  The task is
`sbx.run` with one positional argument, the job (jobs.py), and returns the
answer; a non-Python client sends it with Celery's message protocol (v2,
JSON body `[[job], {}, {...}]`) to the queue `sbx` and reads the answer from
the backend key `celery-task-meta-<task id>`.

Reliability (the worker's side, see worker.py): tasks are acknowledged after
they ran (acks_late) and given back when their worker process dies
(reject_on_worker_lost); a whole worker host that dies leaves its messages
unacknowledged in Redis, and another worker puts them back on the queue once
the visibility timeout has passed, so the timeout is set from the longest
wall time a worker allows plus a margin (not kombu's hour).  A run is
idempotent by its task id (worker.py), so a message delivered twice is
answered once.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from celery import Celery

TASK = "sbx.run"
QUEUE = "sbx"
RESULT_EXPIRES = 24 * 3600   # answers kept this long: idempotency and late readers need them
RESTORE_INTERVAL = 10        # seconds between scans for unacknowledged messages past their timeout
MISSING = ("the cluster needs Celery and redis-py: pip install 'sbx[cluster]' "
           "(or: pip install 'celery[redis]')")


def make_app(broker: str, backend: str | None = None, visibility_timeout: float | None = None,
             extra: Mapping[str, object] | None = None) -> Celery:
    """The app for `broker` (redis:// or rediss://; also the result backend unless `backend` is given).

    `visibility_timeout`: seconds a delivered but unacknowledged message waits before it is
    given to another worker (workers set it; clients only publish)."""
    from ..errors import UsageError

    if not broker.startswith(("redis://", "rediss://", "unix://")):
        raise UsageError(f"--broker {broker[:60]!r}: give a Redis URL (redis://HOST:PORT/DB)")
    try:
        from celery import Celery
    except ImportError:
        raise UsageError(MISSING) from None
    app = Celery("sbx", broker=broker, backend=backend or broker, set_as_current=False)
    transport: dict[str, object] = {"unacked_restore_throttle": 1}
    if visibility_timeout is not None:
        transport["visibility_timeout"] = visibility_timeout
        transport["unacked_restore_interval"] = max(1, min(RESTORE_INTERVAL, int(visibility_timeout // 4)))
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"], result_accept_content=["json"],
        task_default_queue=QUEUE, task_acks_late=True, task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True, worker_prefetch_multiplier=1, result_expires=RESULT_EXPIRES,
        broker_transport_options=transport, result_backend_transport_options=dict(transport),
        broker_connection_retry_on_startup=True, broker_connection_max_retries=None,
        worker_hijack_root_logger=False, worker_redirect_stdouts=False, task_track_started=False,
        result_extended=False, worker_enable_remote_control=False, worker_send_task_events=False,
        task_send_sent_event=False, broker_heartbeat=0, redis_backend_health_check_interval=10,
        redis_retry_on_timeout=True, result_backend_always_retry=True, result_backend_max_retries=60,
    )
    if extra:
        app.conf.update(dict(extra))
    return app
