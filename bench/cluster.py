"""The cluster against local `sbx batch`: per-run overhead, throughput with 1 and 2 workers, a soak.

    python bench/cluster.py [--runs 200] [--lines 400] [--soak 10000] [--quick]

Starts its own redis-server (loopback, a free port, a private directory, no
persistence) and `sbx worker`s on this machine, like tests/test_cluster.py.

1. Latency: /bin/true runs one at a time, alternating run by run so drift
   hits both alike:
     local     a long-lived `sbx batch -j 1` fed one JSON line through a pipe:
               write the line -> read its result line
     cluster   Client(broker).run() through one worker (concurrency 1):
               publish -> a worker's warm Runner -> the answer back
   The difference of the medians is what the cluster adds per run.
2. Throughput: the same --lines /bin/true lines, all at once, through
   `sbx batch -j 1` and `-j 2` (local), and `sbx batch --broker` with one
   worker of concurrency 1, then two such workers (each pins its one pool
   process to a CPU of its own).  Runs per second.
3. Soak (--soak N, 0 to skip): N runs through one worker (concurrency 1)
   with `sbx batch --broker`; the pool process's and the worker parent's RSS
   and open fds after a warm-up of 200 runs and at the end.

A benchmark, not a test: it asserts nothing (--quick is a smoke mode).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SBX = [sys.executable, str(REPO / "bin" / "sbx")]  # what users run
TRUE = json.dumps({"argv": ["/bin/true"]}) + "\n"


def environ(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "SBX_ROOT": str(root)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(base),
                             "--save", "", "--appendonly", "no", "--logfile", str(base / "redis.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    raise SystemExit("redis-server did not start")


class Worker:
    def __init__(self, broker: str, root: Path, name: str) -> None:
        self.proc = subprocess.Popen([*SBX, "worker", "--broker", broker, "--concurrency", "1", "--hostname", name],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, env=environ(root), start_new_session=True)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if " ready: " in line:
                break
        else:
            raise SystemExit(f"worker {name} did not start: exit {self.proc.wait()}")

    def pool_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


def usage(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open fds) of a process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def latency(broker: str, root: Path, runs: int) -> tuple[list[float], list[float]]:
    from sandbox.cluster import Client

    local = subprocess.Popen([*SBX, "batch", "-j", "1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=environ(root), bufsize=1)
    assert local.stdin is not None and local.stdout is not None
    local_times: list[float] = []
    cluster_times: list[float] = []
    with Client(broker) as cluster:
        for i in range(runs + 10):  # 10 to warm up both
            started = time.perf_counter()
            local.stdin.write(TRUE)
            local.stdin.flush()
            verdict = json.loads(local.stdout.readline())["verdict"]
            elapsed = time.perf_counter() - started
            assert verdict == "OK", verdict
            if i >= 10:
                local_times.append(elapsed)
            started = time.perf_counter()
            result = cluster.run(["/bin/true"])
            elapsed = time.perf_counter() - started
            assert result.verdict == "OK", result
            if i >= 10:
                cluster_times.append(elapsed)
    local.stdin.close()
    local.wait()
    return local_times, cluster_times


def batch_seconds(args: list[str], root: Path, lines: int) -> float:
    started = time.perf_counter()
    done = subprocess.run([*SBX, "batch", *args], input=TRUE * lines, capture_output=True, text=True,
                          env=environ(root), check=True)
    seconds = time.perf_counter() - started
    verdicts = [json.loads(line)["verdict"] for line in done.stdout.splitlines()]
    assert verdicts == ["OK"] * lines, verdicts[:5]
    return seconds


def ms(values: list[float]) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values) * 1000:6.2f} ms, p90 {values[int(len(values) * 0.9)] * 1000:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--soak", type=int, default=0, help="runs of the soak (0: none)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: few runs, no soak")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.lines, args.soak = 10, 20, 0
    if shutil.which("redis-server") is None:
        raise SystemExit("needs Debian's redis-server")
    base = Path(tempfile.mkdtemp(prefix="sbx-bench-cluster-"))
    root = base / "root"
    redis, broker = start_redis(base)
    workers: list[Worker] = []
    try:
        print(f"# {os.cpu_count()} CPUs, uid {os.getuid()}, redis at {broker}")
        workers.append(Worker(broker, root, "one"))
        local, cluster = latency(broker, root, args.runs)
        overhead = statistics.median(cluster) - statistics.median(local)
        print(f"latency, /bin/true one at a time ({args.runs} runs each, alternating):")
        print(f"  local sbx batch -j 1    {ms(local)}")
        print(f"  cluster, 1 worker       {ms(cluster)}")
        print(f"  the cluster adds        {overhead * 1000:6.2f} ms per run "
              f"({statistics.median(cluster) / statistics.median(local):.2f}x)")

        print(f"throughput, {args.lines} /bin/true lines at once:")
        figures: dict[str, float] = {}
        for label, batch_args in (("local -j 1", ["-j", "1"]), ("local -j 2", ["-j", "2"]),
                                  ("cluster, 1 worker", ["--broker", broker])):
            figures[label] = args.lines / batch_seconds(batch_args, root, args.lines)
        workers.append(Worker(broker, root, "two"))
        figures["cluster, 2 workers"] = args.lines / batch_seconds(["--broker", broker], root, args.lines)
        for label, rate in figures.items():
            print(f"  {label:22s}  {rate:7.1f} runs/s")
        print(f"  2 workers / 1 worker    {figures['cluster, 2 workers'] / figures['cluster, 1 worker']:.2f}x; "
              f"local -j 2 / -j 1 {figures['local -j 2'] / figures['local -j 1']:.2f}x")
        workers.pop().stop()

        if args.soak:
            soak = workers[0]
            warm = 200
            batch_seconds(["--broker", broker], root, warm)
            pool = soak.pool_pid()
            before = (usage(pool), usage(soak.proc.pid))
            seconds = batch_seconds(["--broker", broker], root, args.soak)
            after = (usage(pool), usage(soak.proc.pid))
            print(f"soak: {args.soak} runs through one worker in {seconds:.0f} s ({args.soak / seconds:.1f} runs/s), "
                  f"after {warm} to warm up")
            for label, index in (("pool process", 0), ("worker parent", 1)):
                (rss0, fds0), (rss1, fds1) = before[index], after[index]
                print(f"  {label:14s} RSS {rss0 / 1024:6.1f} -> {rss1 / 1024:6.1f} MiB, fds {fds0} -> {fds1}")
    finally:
        for worker in workers:
            worker.stop()
        redis.terminate()
        redis.wait()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
