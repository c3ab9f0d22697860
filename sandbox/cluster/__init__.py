"""Many machines: sbx workers on Celery over Redis (see README, "Running on many machines").

Modules: `jobs` (the wire format: a job, its answer), `app` (the Celery app both
ends build), `worker` (the task and each pool process's warm Runner), `blobs`
(inputs by digest, the worker's cache), `client` (`Client(broker).run/.map`),
`batch` (`sbx batch --broker`).  `sbx worker` is cli/worker.py.  Celery and
redis-py are the `cluster` extra, imported only when a cluster is used.
"""

from __future__ import annotations

from .client import ClusterError, Client, RunTimeout

__all__ = ["Client", "ClusterError", "RunTimeout"]
