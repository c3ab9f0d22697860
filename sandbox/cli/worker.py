"""`sbx worker --broker URL`: a Celery worker running the cluster's runs (sandbox/cluster/).

Celery's own worker (its prefork pool, reconnection, warm shutdown on
SIGTERM, cold on SIGQUIT), one pool process per CPU this process may use,
each pinned to its CPU with a warm Runner.  The broker's visibility timeout
is the profile's wall time plus a margin (cluster/worker.py).
"""

from __future__ import annotations

import os
import sys

from ..errors import UsageError

USAGE = """usage: sbx worker --broker URL [--concurrency N] [--profile P] [--hostname NAME]
                  [--pidfile F] [--queues Q[,Q...]] [--root DIR] [--blob-dir DIR]

Runs the cluster's sandboxes: takes runs from the queue at URL (redis://HOST:PORT/DB),
answers through it.  Start one per host, after setting up cgroup delegation.

options:
  --broker URL        the Redis that clients submit to (broker and result backend)
  --concurrency N     runs at once (default: the CPUs this process may use), each pinned
  --profile P         profile for runs that name none; its wall time is the longest a run
                      may have here (default 600 s when it sets none)
  --hostname NAME     this worker's name in results: sbx@NAME (default: sbx@HOST)
  --pidfile F         write the worker's pid here (refuses to start if it names a live one)
  --queues Q          queues to take runs from (default: sbx)
  --root DIR          image and box store (images named by digest are pulled into it)
  --blob-dir DIR      read {"sha256": ...} inputs from this shared directory, not Redis
"""

VALUED = ("--broker", "--concurrency", "--profile", "--hostname", "--pidfile", "--queues", "--root", "--blob-dir")


def parse(args: list[str]) -> dict[str, str]:
    from ..config.argv import HELP, split

    found, operands = split(args, VALUED, unknown="unknown option {arg} (see 'sbx worker --help')")
    if any(found.get(name) for name in HELP):
        from ..config.flags import HelpRequested

        raise HelpRequested(USAGE)
    if operands:
        raise UsageError(f"unknown option {operands[0]!r} (see 'sbx worker --help')")
    values = {name[2:]: value for name, value in found.items() if isinstance(value, str)}
    if not values.get("broker"):
        raise UsageError("--broker URL is required (redis://HOST:PORT/DB)")
    return values


def main(args: list[str]) -> int:
    from ..cluster.app import QUEUE, make_app
    from ..cluster.worker import Settings, ceiling_of, install, state_dir

    values = parse(args)
    cpus = tuple(sorted(os.sched_getaffinity(0)))
    concurrency = len(cpus)
    if "concurrency" in values:
        text = values["concurrency"]
        if not text.isdigit() or not 1 <= int(text) <= 1024:
            raise UsageError(f"--concurrency: {text!r} is not a number from 1 to 1024")
        concurrency = int(text)
    queues = [q for q in values.get("queues", QUEUE).split(",") if q]
    if not queues:
        raise UsageError("--queues: name at least one queue")
    root = values.get("root")
    blob_dir = values.get("blob-dir")
    if blob_dir is not None and not os.path.isdir(blob_dir):
        raise UsageError(f"--blob-dir {blob_dir}: not a directory")
    profile = values.get("profile")
    ceiling = ceiling_of(profile, root)  # a bad profile: exit 125 before anything starts
    settings = Settings(broker=values["broker"], profile=profile, root=root, ceiling=ceiling, blob_dir=blob_dir,
                        cpus=cpus, state=state_dir(root))
    import warnings

    from celery.exceptions import SecurityWarning

    # Celery warns of a root worker because pickle would let the broker run code in it; this app
    # accepts JSON only, and a root worker runs its sandboxes rootless all the same.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    app = make_app(settings.broker, visibility_timeout=settings.visibility_timeout)
    install(app, settings)
    import socket

    hostname = values.get("hostname") or socket.gethostname()
    worker = app.Worker(hostname=hostname if "@" in hostname else f"sbx@{hostname}", concurrency=concurrency,
                        pool="prefork", queues=queues, pidfile=values.get("pidfile"), loglevel="WARNING", quiet=True,
                        optimization="fair", without_heartbeat=True, without_mingle=True, without_gossip=True)
    from celery.signals import worker_ready

    def ready(**_kwargs: object) -> None:  # after the broker answered: what scripts and tests wait for
        sys.stderr.write(f"sbx: worker {worker.hostname} ready: {concurrency} processes, queues {','.join(queues)}, "
                         f"runs up to {ceiling:g}s wall, visibility timeout {settings.visibility_timeout:g}s\n")
        sys.stderr.flush()

    worker_ready.connect(ready, weak=False)
    import shutil
    import tempfile

    # Celery's pool (billiard's shared-memory arenas) makes a pymp-* directory in the temp dir and
    # leaves its removal to an atexit finalizer, which sbx's exit skips (os._exit, bin/sbx): give
    # it a directory of ours, removed when the worker ends (a SIGKILL still leaves it, empty).
    scratch = tempfile.mkdtemp(prefix="sbx-worker-")
    tempfile.tempdir = scratch
    try:
        worker.start()
    finally:
        tempfile.tempdir = None
        shutil.rmtree(scratch, ignore_errors=True)
    return int(worker.exitcode or 0)
