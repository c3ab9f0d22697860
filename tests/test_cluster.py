"""The cluster with real parts: Debian's redis-server on loopback, `sbx worker`s as separate processes.

Each test starts its own Redis (own directory, a free port, append-only file
so a restart keeps the queue) and its workers (each in its own session, so a
SIGKILL takes the whole worker: its Celery parent and pool processes), and
stops them however it ends.  The workers' profile allows WALL seconds of wall
time, so the broker's visibility timeout (WALL + the margin) is short enough
for a killed worker's runs to be redone within the test.

Needs Debian's redis-server and the `cluster` extra (celery[redis]); as root
redis-server is installed when missing, otherwise the tests fail.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SBX, sbx, sbx_environ, wait_for

REDIS = "/usr/bin/redis-server"
WALL = 4  # seconds: the workers' ceiling
pytestmark = pytest.mark.timeout(240)


def ensure_redis() -> None:
    if not os.path.exists(REDIS) and os.getuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "redis-server"], check=True,
                       capture_output=True, timeout=600, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    assert os.path.exists(REDIS), "missing Debian package redis-server (the test command installs it)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A redis-server of the test's own, restartable on the same port and data."""

    def __init__(self, base: Path) -> None:
        ensure_redis()
        self.dir = base / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        argv = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--daemonize", "no",
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--logfile", str(self.dir / "redis.log")]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert wait_for(self.ping, timeout=15), (self.dir / "redis.log").read_text()

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: redis writes its append-only file and exits
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


class Worker:
    """`sbx worker` in a session of its own; `lines` collects its stderr."""

    def __init__(self, broker: str, base: Path, name: str, *extra: str, concurrency: int = 1) -> None:
        self.name = name
        self.hostname = f"sbx@{name}"
        profile = base / "cluster-profile.toml"
        if not profile.exists():
            profile.write_text(f'[limits]\nwall_time = "{WALL}s"\n')
        # A temp dir of its own: what the worker leaves there is seen (and not left in /tmp).
        self.tmp = base / f"tmp-{name}"
        self.tmp.mkdir()
        env = sbx_environ({**os.environ, "SBX_ROOT": str(base / "root"), "TMPDIR": str(self.tmp)})
        self.proc = subprocess.Popen(
            [*SBX, "worker", "--broker", broker, "--hostname", name, "--concurrency", str(concurrency),
             "--profile", str(profile), *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
            start_new_session=True)
        self.lines: list[str] = []
        assert self.proc.stderr is not None
        for line in self.proc.stderr:  # until it says it is ready (or dies)
            self.lines.append(line)
            if " ready: " in line:
                break
        else:
            self.proc.wait()
            raise AssertionError(f"worker {name} exited {self.proc.returncode}: {''.join(self.lines)}")
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def kill(self) -> None:
        """SIGKILL to the whole worker: the Celery parent and its pool processes at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # Celery's warm shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self.drain.join(5)


@pytest.fixture
def workers(redis: Redis, tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    try:
        yield started
    finally:
        for worker in started:
            worker.stop()


def start(workers: list[Worker], redis: Redis, tmp_path: Path, name: str, *extra: str,
          concurrency: int = 1) -> Worker:
    worker = Worker(redis.url, tmp_path, name, *extra, concurrency=concurrency)
    workers.append(worker)
    return worker


class Batch:
    """`sbx batch --broker` reading `lines`; result lines are collected as they come."""

    def __init__(self, broker: str, lines: list[dict[str, object] | str]) -> None:
        self.proc = subprocess.Popen([*SBX, "batch", "--broker", broker], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=sbx_environ())
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("".join((line if isinstance(line, str) else json.dumps(line)) + "\n"
                                      for line in lines))
        self.proc.stdin.close()
        self.proc.stdin = None
        self.results: list[dict[str, object]] = []

    def next(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"batch ended early: {self.proc.wait()} {self.proc.stderr.read() if self.proc.stderr else ''}"
        self.results.append(json.loads(line))
        return self.results[-1]

    def finish(self, timeout: float = 120) -> list[dict[str, object]]:
        # Through the same buffered reader as next(): communicate() reads the pipe's fd itself and
        # would miss a line next()'s readline had already buffered.
        assert self.proc.stdout is not None and self.proc.stderr is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            out = self.proc.stdout.read()
            err = self.proc.stderr.read()
            self.proc.wait()
        finally:
            timer.cancel()
        if self.proc.returncode == -signal.SIGKILL:
            raise AssertionError(f"the batch did not end: {len(self.results)} results, then {out!r}; {err}")
        assert self.proc.returncode == 0, err
        self.results.extend(json.loads(line) for line in out.splitlines())
        return self.results


def numbered(count: int, seconds: float = 0.0) -> list[dict[str, object]]:
    """Lines that echo their number, a file's content and stdin, optionally sleeping first."""
    return [{"argv": ["sh", "-c", f"sleep {seconds}; echo {i}; cat data.txt; cat"], "id": f"case-{i}",
             "files": {"data.txt": f"file-{i}\n"}, "stdin": {"text": f"in-{i}\n"}} for i in range(count)]


def check_numbered(results: list[dict[str, object]], count: int) -> None:
    """Every line answered exactly once, in order, by a run of its own."""
    assert [r["line"] for r in results] == list(range(1, count + 1)), [r["line"] for r in results]
    for i, result in enumerate(results):
        assert result["id"] == f"case-{i}"
        assert result["verdict"] == "OK", result
        assert result["stdout"] == f"{i}\nfile-{i}\nin-{i}\n", result


# -- the tests -------------------------------------------------------------------------

def test_batch_on_two_workers_with_poisoned_lines(redis: Redis, workers: list[Worker], tmp_path: Path) -> None:
    a = start(workers, redis, tmp_path, "a")
    b = start(workers, redis, tmp_path, "b")
    count = 8
    lines: list[dict[str, object] | str] = list(numbered(count, 0.3))
    poisoned: list[dict[str, object] | str] = [
        "{not json", {"argv": []}, {"argv": ["true"], "stdout": "out.txt"},  # refused by the client
        {"argv": ["true"], "profile": "no-such-profile"},  # by the worker
        {"argv": ["true"], "limits": {"wall_time": WALL * 10}},  # past the worker's ceiling
        {"argv": ["true"], "stdin": {"sha256": "0" * 64}},  # a blob nobody put
    ]
    batch = Batch(redis.url, [*lines[:4], *poisoned, *lines[4:]])
    results = batch.finish()
    bad = results[4:4 + len(poisoned)]
    assert [r["verdict"] for r in bad] == ["XX"] * len(poisoned), bad
    assert "not valid JSON" in str(bad[0]["message"]) and "argv" in str(bad[1]["message"])
    assert "unknown field 'stdout'" in str(bad[2]["message"])
    assert "no-such-profile" in str(bad[3]["message"]) and bad[3]["worker"] in (a.hostname, b.hostname)
    assert "more than this worker allows" in str(bad[4]["message"])
    assert "not in the blob store" in str(bad[5]["message"])
    good = [*results[:4], *results[4 + len(poisoned):]]
    for index, result in enumerate(good):
        result["line"] = index + 1  # the good lines, numbered as if alone
    check_numbered(good, count)
    assert {r["worker"] for r in good} == {a.hostname, b.hostname}  # each took runs while the other ran one


def test_worker_killed_mid_batch(redis: Redis, workers: list[Worker], tmp_path: Path) -> None:
    """A worker SIGKILLed while it runs: its run is redone by the other; every line answered once."""
    victim = start(workers, redis, tmp_path, "victim")
    survivor = start(workers, redis, tmp_path, "survivor")
    count = 10
    batch = Batch(redis.url, list(numbered(count, 1)))
    import redis as redis_py

    broker = redis_py.Redis.from_url(redis.url)
    while batch.next()["worker"] != victim.hostname:
        pass
    # Both busy: each holds one delivered, unacknowledged message (kombu's "unacked" hash).
    assert wait_for(lambda: broker.hlen("unacked") == 2, timeout=30)
    victim.kill()
    seen = len(batch.results)
    results = batch.finish()
    check_numbered(results, count)
    assert {r["worker"] for r in results[seen:]} == {survivor.hostname}  # the victim's run too, redone
    assert victim.proc.returncode == -signal.SIGKILL
    # acks_late: the survivor acknowledges a run after storing its answer, which the batch may
    # already have printed; nothing stays unacknowledged once it has.
    assert wait_for(lambda: broker.hlen("unacked") == 0, timeout=30), broker.hgetall("unacked")
    broker.close()


def test_broker_restart_mid_batch(redis: Redis, workers: list[Worker], tmp_path: Path) -> None:
    worker = start(workers, redis, tmp_path, "w")
    count = 8
    batch = Batch(redis.url, list(numbered(count, 0.5)))
    batch.next()
    redis.stop()
    redis.start()  # same port, same append-only file: the queue and the answers so far come back
    results = batch.finish()
    check_numbered(results, count)
    assert {r["worker"] for r in results} == {worker.hostname}
    assert worker.proc.poll() is None, "".join(worker.lines)


def test_delivery_acknowledged_while_broker_away(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """What stopped a worker for good after a restart (the batch above then never ended): kombu's
    Redis QoS kept a message whose acknowledgement failed, holding the consumer's one prefetch slot."""
    from kombu import Connection
    from kombu.transport import redis as kombu_redis

    from sandbox.cluster.worker import keep_deliveries

    monkeypatch.setattr(kombu_redis.Channel, "QoS", kombu_redis.Channel.QoS)  # kombu's own again afterwards
    keep_deliveries()
    with Connection(redis.url) as connection:
        queue = connection.SimpleQueue("acked-while-away")
        queue.put({"run": 1})
        message = queue.get(timeout=10)
        qos = queue.channel.qos
        qos.prefetch_count = 1  # the worker's (prefetch multiplier 1, one process)
        assert not qos.can_consume()
        redis.stop()
        with pytest.raises(connection.connection_errors):
            message.ack()
        assert qos.can_consume()  # the worker takes the next run once Redis is back
        redis.start()
        import redis as redis_py

        broker = redis_py.Redis.from_url(redis.url)
        assert broker.hlen("unacked") == 1  # still Redis's to give out again (the visibility timeout)
        broker.close()
        queue.close()


def test_message_lost_in_broker_restart(redis: Redis, workers: list[Worker], tmp_path: Path) -> None:
    """A message Redis took off the queue for a worker (BRPOP) but whose reply the restart lost is
    nowhere; the client sends that run again under its task id."""
    import redis as redis_py

    from sandbox.cluster import Client

    with Client(redis.url) as cluster:
        pending = [cluster.submit({"argv": ["sh", "-c", f"echo {i}"]}) for i in range(3)]
        broker = redis_py.Redis.from_url(redis.url)
        lost = broker.lindex("sbx", -2)  # the second one out
        assert lost is not None and json.loads(lost)["headers"]["id"] == pending[1].id
        assert broker.lrem("sbx", 1, lost) == 1
        broker.close()
        redis.stop()
        redis.start()
        start(workers, redis, tmp_path, "w")
        assert [p.result(60).stdout for p in pending] == [b"0\n", b"1\n", b"2\n"]


def test_client_api(redis: Redis, workers: list[Worker], tmp_path: Path) -> None:
    import redis as redis_py

    from sandbox.cluster import Client
    from sandbox.cluster.client import make_job
    from sandbox.config.search import ProfileError
    from sandbox.errors import UsageError

    worker = start(workers, redis, tmp_path, "api", concurrency=2)
    with Client(redis.url) as cluster:
        blob = cluster.put(b"from the blob store\n" * 1000)
        result = cluster.run(["sh", "-c", "cat big | head -n 1; cat; cat sub/dir/bin | od -An -tx1; pwd"],
                             files={"big": blob, "sub/dir/bin": b"\x00\xff"}, stdin=b"\xfe stdin\n")
        assert result.verdict == "OK" and result.exit_code == 0, result
        assert result.stdout == b"from the blob store\n\xfe stdin\n 00 ff\n/box\n"
        assert result.wall_time > 0 and result.memory_peak >= 0
        assert cluster.run(["sh", "-c", "exit 3"]).verdict == "RE"
        blob_stdin = cluster.run(["wc", "-l"], stdin=blob)
        assert blob_stdin.stdout == b"1000\n"
        results = list(cluster.map({"argv": ["sh", "-c", f"echo {i}"]} for i in range(6)))
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(6)]
        with pytest.raises(ProfileError, match="no-such-profile"):
            cluster.run(["true"], profile="no-such-profile")
        with pytest.raises(UsageError, match="unknown limit"):
            cluster.run(["true"], limits={"bogus": 1})
        with pytest.raises(UsageError, match="this host's files"):
            cluster.run(["true"], stdout="out.txt")
        with pytest.raises(UsageError, match="relative path below /box"):
            cluster.run(["true"], files={"../escape": "x"})
        # Idempotent by task id: the same message delivered again is answered from the first run.
        job = make_job(["sh", "-c", "od -An -tx8 -N8 /dev/urandom"])
        first = cluster.submit(job, task_id="same-task").result(60)
        with Client(redis.url) as other:  # nothing cached: the answer as the broker now holds it
            pending = other.submit(job, task_id="same-task")
            broker = redis_py.Redis.from_url(redis.url)
            assert wait_for(lambda: broker.llen("sbx") == 0 and broker.hlen("unacked") == 0, timeout=60)
            # Counted per delivery that goes on to run (worker.py): the second one did not.
            assert broker.get("sbx:deliveries:same-task") == b"1"
            broker.close()
            again = pending.result(60)  # had the worker run it again, its new answer would be stored
        assert first.stdout and again.stdout == first.stdout and again.wall_time == first.wall_time
        assert cluster.submit(job).result(60).stdout != first.stdout  # a new id: a new run
        # A job each delivery of which killed its worker (the count says so): answered, not run again.
        broker = redis_py.Redis.from_url(redis.url)
        broker.set("sbx:deliveries:poisoned", 3)
        broker.close()
        with pytest.raises(UsageError, match="delivered 4 times"):
            cluster.submit(make_job(["true"]), task_id="poisoned").result(60)
        # A non-Python client's message with a bad argument: answered with an error, not lost.
        raw = cluster.app.send_task("sbx.run", args=["not a job"], queue="sbx")
        answer = raw.get(timeout=60)
        assert answer["error"]["type"] == "UsageError" and answer["worker"] == worker.hostname
        extra = cluster.app.send_task("sbx.run", args=[{"argv": ["true"]}, "more"], queue="sbx").get(timeout=60)
        assert "exactly one argument" in extra["error"]["message"]


def test_worker_leaves_no_temp_dir(redis: Redis, workers: list[Worker], tmp_path: Path) -> None:
    """Celery's pool makes a directory in the temp dir that only an atexit finalizer removes, and
    sbx exits without running those: the worker gives it one of its own and removes that."""
    worker = start(workers, redis, tmp_path, "a")
    check_numbered(Batch(redis.url, list(numbered(2))).finish(), 2)
    during = [entry.name for entry in worker.tmp.iterdir()]
    assert [name[:11] for name in during] == ["sbx-worker-"], during  # the control: TMPDIR is the one used
    inside = [entry.name for entry in (worker.tmp / during[0]).iterdir()]
    assert [name[:5] for name in inside] == ["pymp-"], inside  # what the worker must remove
    worker.stop()
    assert worker.proc.returncode == 0, "".join(worker.lines)  # Celery's warm shutdown, not the SIGKILL
    assert list(worker.tmp.iterdir()) == []


def test_worker_refuses_bad_options(redis: Redis, tmp_path: Path) -> None:
    for args, message in ((["--concurrency", "0"], "--concurrency"), (["--profile", "no-such-profile"],
                                                                       "no-such-profile"),
                          (["--bogus"], "unknown option"), ([], "--broker")):
        broker = [] if not args else ["--broker", redis.url]
        done = sbx("worker", *broker, *args, timeout=60)
        assert done.returncode == 125, done.stderr
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("sbx: error: ") and message in done.stderr
    bad = sbx("worker", "--broker", "http://127.0.0.1:1/", timeout=60)
    assert bad.returncode == 125 and "Redis URL" in bad.stderr
    for args in (["--broker", "nothing"], ["--broker", redis.url, "--profile", "/etc/p.toml"],
                 ["--broker", redis.url, "-j", "2"]):
        batch = sbx("batch", *args, input='{"argv": ["true"]}\n', timeout=60)
        assert batch.returncode == 125 and batch.stderr.startswith("sbx: error: ") and batch.stdout == "", batch


def test_blobs_from_a_shared_directory(redis: Redis, workers: list[Worker], tmp_path: Path) -> None:
    """--blob-dir: blobs as files named by digest; one whose bytes do not match its name is refused."""
    import hashlib

    from sandbox.cluster import Client
    from sandbox.cluster.blobs import DirBlobs
    from sandbox.errors import UsageError

    shared = tmp_path / "blobs"
    shared.mkdir()
    shared.chmod(0o755)
    start(workers, redis, tmp_path, "dir", "--blob-dir", str(shared))
    good = DirBlobs(str(shared)).put(b"shared input\n")
    forged = hashlib.sha256(b"what the name says").hexdigest()
    (shared / forged).write_bytes(b"something else")
    with Client(redis.url) as cluster:
        assert cluster.run(["cat"], stdin=good).stdout == b"shared input\n"
        assert cluster.run(["cat", "f"], files={"f": good}).stdout == b"shared input\n"
        with pytest.raises(UsageError, match="does not match its digest"):
            cluster.run(["cat"], stdin={"sha256": forged})
