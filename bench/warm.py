"""Warm runs: per-run overhead and throughput of the API and `sbx batch` against cold bubblewrap.

    python bench/warm.py [--runs 200] [--seconds 10] [--idle 30] [--quick]

1. Latency.  Variants alternate run by run in one process (bare, bwrap,
   warm, warm b2b, batch, batch b2b, for each payload: /bin/true and
   python3 -c 'print("hello")'), so drift hits all alike:
     bare       the payload spawned directly (posix_spawn + waitpid): the floor
     bwrap      `bwrap --unshare-all --die-with-parent --new-session` with the
                view of sbx's host image (ro /usr, the /bin /lib* /sbin links,
                fresh /proc, /dev, tmpfs /tmp, the /etc files python needs),
                one process per run, started with posix_spawn like `bare`
     warm       one sandbox.Runner reused: runner.run(argv, stdout=/dev/null fd)
     batch      a long-lived `sbx batch -j 1` fed one JSON line at a time
                through a pipe: write the line -> read its result line
   Every variant but the b2b ones is timed after a fixed idle (--idle ms,
   default 30), so the pool's background work (reaping the last sandbox,
   preparing the next) has finished and steals no CPU from the run being
   timed (the breakdown below prints how long that work takes: the idle
   must exceed it).  "b2b" (back to back) is a second warm/batch run timed
   right after the first, with no idle: the preparation of its successor
   then competes with it for the 2 CPUs, as in a judge running back to back.
   All runs get the same environment (sbx's default PATH, HOME, LANG) and
   /dev/null as stdin, stdout and stderr.
2. Throughput with 2 workers for --seconds each (in two alternating halves):
   two bwrap /bin/true loops in parallel; `sbx batch -j 2` fed /bin/true
   lines (at most a few ahead); the API from 2 threads on one Runner(depth=2).
   Runs per second, and all-process CPU per run from /proc/stat.
3. Where a warm run's time goes: the supervisor-side phases of one warm
   /bin/true run, stamped by wrapping functions in this (the Runner's)
   process.  Init and the payload run in processes the zygote forks, so only
   the supervisor's side of each hand-off can be stamped.

Run it as an unprivileged user for the rootless figures.  A benchmark, not
a test: it asserts nothing (--quick is a smoke mode for the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sandbox import Runner
from sandbox.warm import pool
from sandbox.runtime import spawn, supervisor, watch
from sandbox.warm.api import Runner as _RunnerClass  # noqa: E402
from sandbox.config.compose import DEFAULT_PATH  # noqa: E402

# Files of /etc that sbx's host image shares and python needs (bubblewrap binds what exists).
BWRAP_ETC = ("ld.so.cache", "alternatives", "python3", f"python3.{sys.version_info.minor}", "passwd", "group",
             "nsswitch.conf", "hosts", "ssl")
# With this many lines ahead, `sbx batch -j 1` hands back the first one's result as soon as it
# is done even when it waits for input (its look-ahead is 4 lines a job).
NUDGE = "0\n"


class Watchdog:
    """Ends the benchmark, and what it started, when a phase overruns (a hung sandbox)."""

    def __init__(self) -> None:
        self.deadline = 0.0
        self.what = ""
        self.children: list[int] = []  # pids to SIGKILL (sbx batch processes)
        self.cond = threading.Condition()
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    def arm(self, seconds: float, what: str) -> None:
        with self.cond:
            self.deadline, self.what = time.monotonic() + seconds, what
            self.cond.notify()

    def disarm(self) -> None:
        with self.cond:
            self.deadline, self.what = 0.0, ""
            self.cond.notify()

    def _watch(self) -> None:
        import faulthandler

        with self.cond:
            while True:
                if self.deadline and time.monotonic() >= self.deadline:
                    break
                self.cond.wait(None if not self.deadline else self.deadline - time.monotonic())
        sys.stdout.flush()
        print(f"\nwarm.py: {self.what} hung; stacks of this process follow, then everything it started is "
              "killed", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        for pid in self.children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os._exit(3)  # the zygotes die with their threads (PR_SET_PDEATHSIG), their sandboxes with them


WATCHDOG: Watchdog | None = None


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def p90(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=10)[-1] if len(samples) > 1 else samples[0]


# -- plain processes ---------------------------------------------------------------------------


class Spawner:
    """posix_spawn + waitpid, stdio on /dev/null, a fixed environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.null_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.null_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)

    def run(self, argv: list[str], stdout: int | None = None) -> int:
        actions = [(os.POSIX_SPAWN_DUP2, self.null_r, 0),
                   (os.POSIX_SPAWN_DUP2, self.null_w if stdout is None else stdout, 1),
                   (os.POSIX_SPAWN_DUP2, self.null_w, 2)]
        pid = os.posix_spawn(argv[0], argv, self.env, file_actions=actions)
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    def output(self, argv: list[str]) -> tuple[int, bytes]:
        r, w = os.pipe()
        try:
            code = self.run(argv, stdout=w)
        finally:
            os.close(w)
        with os.fdopen(r, "rb") as f:
            return code, f.read()

    def close(self) -> None:
        os.close(self.null_r)
        os.close(self.null_w)


def bwrap_prefix(bwrap: str) -> list[str]:
    from startup import bwrap_argv  # bench/ is this script's sys.path[0]

    return bwrap_argv(bwrap, BWRAP_ETC, ("--",))


# -- sbx batch -----------------------------------------------------------------------------------


class BatchProcess:
    """A long-lived `sbx batch` fed through a pipe; result lines read straight from its stdout."""

    def __init__(self, command: list[str], jobs: int, env: dict[str, str], log: str) -> None:
        self.log = open(log, "w+b")  # noqa: SIM115  (its stderr: shown if something fails)
        self.proc = subprocess.Popen([*command, "batch", "-j", str(jobs)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=str(REPO))
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if WATCHDOG is not None:
            WATCHDOG.children.append(self.proc.pid)
        self.jobs = jobs
        self.win = self.proc.stdin.fileno()
        self.rout = self.proc.stdout.fileno()
        self.buffer = b""
        self.sent = 0  # input lines written (result lines carry this number)
        self.nudge = False  # True: the batch holds results until more input comes (see probe())

    def write(self, data: str) -> None:
        view = memoryview(data.encode())
        while view:
            view = view[os.write(self.win, view):]

    def send(self, line: dict[str, object]) -> int:
        self.sent += 1
        text = json.dumps(line) + "\n"
        if self.nudge:
            text += NUDGE * (4 * self.jobs)
            number = self.sent
            self.sent += 4 * self.jobs
        else:
            number = self.sent
        self.write(text)
        return number

    def read_line(self, timeout: float | None = None) -> dict[str, object] | None:
        """The next result line, or None when none came within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([self.rout], [], [], wait)[0]:
                return None
            chunk = os.read(self.rout, 65536)
            if not chunk:
                raise RuntimeError(f"sbx batch exited:\n{self.stderr()}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def result_of(self, number: int, timeout: float | None = None) -> dict[str, object] | None:
        while True:
            result = self.read_line(timeout)
            if result is None or result["line"] == number:
                return result

    def probe(self, line: dict[str, object]) -> dict[str, object]:
        """Run one line; find out whether its result comes back before the next line is written."""
        number = self.send(line)
        result = self.result_of(number, timeout=3.0)
        if result is None:
            self.nudge = True
            self.write(NUDGE * (4 * self.jobs))
            self.sent += 4 * self.jobs
            result = self.result_of(number, timeout=30.0)
            if result is None:
                raise RuntimeError(f"sbx batch gave no result:\n{self.stderr()}")
        return result

    def roundtrip(self, line: dict[str, object]) -> float:
        start = time.perf_counter()
        number = self.send(line)
        result = self.result_of(number)
        elapsed = time.perf_counter() - start
        assert result is not None
        if result.get("verdict") != "OK":
            raise RuntimeError(f"sbx batch run failed: {result}")
        return elapsed

    def window(self, line: dict[str, object], seconds: float) -> int:
        """Keep the batch busy for `seconds`; how many results came back within them."""
        ahead = 4 * self.jobs + 4  # more than its look-ahead, so results never wait for input
        lock = threading.Condition()
        state = {"out": 0, "stop": False}
        text = json.dumps({**line, "id": "w"}) + "\n"

        def feed() -> None:
            while True:
                with lock:
                    while state["out"] >= ahead and not state["stop"]:
                        lock.wait()
                    if state["stop"]:
                        return
                    state["out"] += 1
                self.sent += 1
                self.write(text)

        writer = threading.Thread(target=feed, daemon=True)
        start = time.perf_counter()
        end = start + seconds
        writer.start()
        count = 0
        try:
            while True:
                result = self.read_line(max(0.0, end - time.perf_counter()))
                if result is None or time.perf_counter() >= end:
                    if result is not None and result.get("id") == "w":
                        with lock:
                            state["out"] -= 1
                    break
                if result.get("id") == "w":
                    if result.get("verdict") != "OK":
                        raise RuntimeError(f"sbx batch run failed: {result}")
                    count += 1
                    with lock:
                        state["out"] -= 1
                        lock.notify()
        finally:
            with lock:
                state["stop"] = True
                lock.notify()
            writer.join()
        # Collect what is still running, so the next measurement starts idle.
        self.write(NUDGE * (4 * self.jobs + 1))
        self.sent += 4 * self.jobs + 1
        while state["out"] > 0:
            result = self.read_line(30.0)
            if result is None:
                raise RuntimeError(f"sbx batch stalled:\n{self.stderr()}")
            if result.get("id") == "w":
                state["out"] -= 1
        return count

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            while select.select([self.rout], [], [], 10.0)[0] and os.read(self.rout, 65536):
                pass
            self.proc.wait(timeout=10)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()  # type: ignore[union-attr]
        self.log.close()


# -- the parts of the benchmark --------------------------------------------------------------------


def cpu_busy_seconds() -> float:
    """All CPUs' busy time so far (/proc/stat: everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.idle = args.idle / 1000
        python = shutil.which("python3", path=DEFAULT_PATH) or "/usr/bin/python3"
        self.payloads = {"/bin/true": ["/bin/true"],
                         "python hello": [python, "-c", 'print("hello")']}
        self.env = {"PATH": DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8"}  # what sbx gives its runs
        self.spawner = Spawner(self.env)
        self.bwrap = shutil.which("bwrap")
        self.bwrap_argv = bwrap_prefix(self.bwrap) if self.bwrap else []
        self.sbx = args.sbx.split() if args.sbx else [sys.executable, "-m", "sandbox"]
        self.batch_env = dict(os.environ, PYTHONPATH=str(REPO))
        self.log_dir = args.log_dir
        # sbx writes output only to regular files (a device path is refused): a scratch file stands in for /dev/null
        self.sink = os.path.join(self.log_dir, "batch-output")
        self.cleanup: list[Callable[[], None]] = []

    def close(self) -> None:
        for step in reversed(self.cleanup):
            try:
                step()
            except Exception as exc:  # noqa: BLE001  (cleaning up: go on with the rest)
                print(f"  (cleanup: {exc})", file=sys.stderr)
        self.cleanup.clear()
        self.spawner.close()

    def batch(self, jobs: int) -> BatchProcess:
        process = BatchProcess(self.sbx, jobs, self.batch_env, os.path.join(self.log_dir, f"sbx-batch-j{jobs}.log"))
        self.cleanup.append(process.close)
        return process

    def environment(self) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        print("environment")
        print(f"  kernel        {platform.release()} ({platform.machine()})")
        print(f"  cpus          {os.cpu_count()} (usable: {len(os.sched_getaffinity(0))})")
        print(f"  python        {platform.python_version()} ({sys.executable})")
        print(f"  user          {user} (uid {os.getuid()})")
        version = "missing"
        if self.bwrap:
            version = subprocess.run([self.bwrap, "--version"], capture_output=True, text=True).stdout.strip()
        print(f"  bubblewrap    {version}")
        import hashlib

        digest = hashlib.sha256()
        for path in sorted((REPO / "sandbox").rglob("*.py")):
            digest.update(path.read_bytes())
        batch = " ".join(self.sbx)
        print(f"  sbx           {REPO}/sandbox (sources sha256 {digest.hexdigest()[:12]}); batch: {batch} batch")
        print(f"  load average  {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other work on the machine skews all figures)")
        delegation = supervisor.delegation_for(None)
        print(f"  run cgroups   {'delegated: ' + delegation.path if delegation else 'none (no cgroup v2 delegation: rlimits only, no cgroup set-up in the figures)'}")  # noqa: E501
        print(f"  payloads      {'; '.join(' '.join(a) for a in self.payloads.values())}")

    def check(self, runner: Runner, batch: BatchProcess) -> None:
        """Every variant runs each payload once, successfully (and python says hello)."""
        for name, argv in self.payloads.items():
            want = b"hello\n" if name == "python hello" else b""
            code, out = self.spawner.output(argv)
            assert code == 0 and out == want, f"bare {name}: {code} {out!r}"
            if self.bwrap:
                code, out = self.spawner.output(self.bwrap_argv + argv)
                if code != 0 or out != want:
                    print(f"  bwrap cannot run {name} here (exit {code}): bubblewrap figures skipped")
                    self.bwrap = None
            result = runner.run(argv)
            assert result.verdict == "OK" and result.stdout == want, f"sbx warm {name}: {result}"
            line = batch.probe({"argv": argv})
            assert line["verdict"] == "OK" and line["stdout"].encode() == want, f"sbx batch {name}: {line}"

    # 1 -------------------------------------------------------------------------------------------

    def latency(self) -> dict[str, dict[str, list[float]]]:
        runs = self.args.runs
        runner = Runner()
        self.cleanup.append(runner.close)
        batch = self.batch(1)
        self.check(runner, batch)
        if batch.nudge:
            print("  note: `sbx batch` held each result until more input came; the bench writes "
                  f"{4 * batch.jobs} invalid lines after each run's line to push it out")
        null = self.spawner.null_w
        lines = {name: {"argv": argv, "stdout": self.sink, "stderr": self.sink}
                 for name, argv in self.payloads.items()}

        def warm(argv: list[str]) -> float:
            start = time.perf_counter()
            result = runner.run(argv, stdout=null, stderr=null)
            elapsed = time.perf_counter() - start
            if result.verdict != "OK":
                raise RuntimeError(f"sbx warm run failed: {result}")
            return elapsed

        def plain(argv: list[str]) -> float:
            start = time.perf_counter()
            code = self.spawner.run(argv)
            elapsed = time.perf_counter() - start
            if code != 0:
                raise RuntimeError(f"{argv[0]} exited {code}")
            return elapsed

        # (variant, timed after the idle?, how)
        variants: list[tuple[str, bool, Callable[[str], float]]] = [
            ("bare", True, lambda p: plain(self.payloads[p])),
        ]
        if self.bwrap:
            variants.append(("bwrap", True, lambda p: plain(self.bwrap_argv + self.payloads[p])))
        variants += [
            ("sbx warm", True, lambda p: warm(self.payloads[p])),
            ("sbx warm b2b", False, lambda p: warm(self.payloads[p])),
            ("sbx batch", True, lambda p: batch.roundtrip(lines[p])),
            ("sbx batch b2b", False, lambda p: batch.roundtrip(lines[p])),
        ]
        times = {p: {v[0]: [] for v in variants} for p in self.payloads}
        for _ in range(3):  # warm the page cache and the pool
            for payload in self.payloads:
                for _name, _idle, how in variants:
                    how(payload)
        for _ in range(runs):
            for payload in self.payloads:
                for name, idle, how in variants:
                    if idle:
                        time.sleep(self.idle)
                    times[payload][name].append(how(payload))
        runner.close()
        batch.close()
        return times

    def report_latency(self, times: dict[str, dict[str, list[float]]]) -> None:
        print(f"\n1. latency per run, {self.args.runs} alternating runs each, idle {self.args.idle:g} ms "
              "before each run but the b2b ones")
        print(f"  {'':22} {'median':>8} {'p90':>8} {'overhead':>9}   (ms; overhead = median - bare median)")
        for payload, by_variant in times.items():
            bare = statistics.median(by_variant["bare"])
            print(f"  {payload}")
            for name, samples in by_variant.items():
                med = statistics.median(samples)
                print(f"    {name:20} {ms(med)} {ms(p90(samples))}  {ms(med - bare)}")
            if "bwrap" not in by_variant:
                print("    (no bubblewrap: no ratios)")
                continue
            bwrap = statistics.median(by_variant["bwrap"])
            bwrap_over = bwrap - bare
            for name in ("sbx warm", "sbx warm b2b", "sbx batch", "sbx batch b2b"):
                med = statistics.median(by_variant[name])
                over = med - bare
                met = "met" if over <= bwrap / 2 else "NOT met"
                print(f"    {name:20} total/bwrap {med / bwrap:5.2f}x   overhead/bwrap total {over / bwrap:5.2f} "
                      f"(goal <= 0.5: {met})   overhead/bwrap overhead {over / bwrap_over:5.2f}")

    # 2 -------------------------------------------------------------------------------------------

    def throughput(self) -> dict[str, tuple[int, float, float]]:
        """name -> (runs, seconds, busy CPU seconds) over --seconds, in two alternating halves."""
        half = self.args.seconds / 2
        argv = ["/bin/true"]
        runner = Runner(depth=2)
        self.cleanup.append(runner.close)
        batch = self.batch(2)
        batch.probe({"argv": argv})
        for _ in range(4):
            runner.run(argv)

        def threads(one: Callable[[], None]) -> Callable[[float], int]:
            def measure(seconds: float) -> int:
                counts = [0, 0]
                errors: list[BaseException] = []
                end = time.perf_counter() + seconds

                def loop(index: int) -> None:
                    try:
                        while True:
                            one()
                            if time.perf_counter() > end:
                                return
                            counts[index] += 1
                    except BaseException as exc:  # noqa: BLE001  (re-raised below)
                        errors.append(exc)

                workers = [threading.Thread(target=loop, args=(i,)) for i in range(2)]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
                if errors:
                    raise errors[0]
                return sum(counts)
            return measure

        def bwrap_one() -> None:
            if self.spawner.run(self.bwrap_argv + argv) != 0:
                raise RuntimeError("bwrap /bin/true failed")

        null = self.spawner.null_w

        def api_one() -> None:
            if runner.run(argv, stdout=null, stderr=null).verdict != "OK":
                raise RuntimeError("sbx warm run failed")

        variants: dict[str, Callable[[float], int]] = {}
        if self.bwrap:
            variants["2 bwrap loops"] = threads(bwrap_one)
        variants["sbx batch -j 2"] = lambda s: batch.window({"argv": argv, "stdout": self.sink}, s)
        variants["sbx API, 2 threads"] = threads(api_one)
        totals = {name: (0, 0.0, 0.0) for name in variants}
        for _ in range(2):
            for name, measure in variants.items():
                time.sleep(0.2)
                busy = cpu_busy_seconds()
                start = time.perf_counter()
                count = measure(half)
                elapsed = time.perf_counter() - start
                busy = cpu_busy_seconds() - busy
                runs, secs, cpu = totals[name]
                totals[name] = (runs + count, secs + elapsed, cpu + busy)
        runner.close()
        batch.close()
        return totals

    def report_throughput(self, totals: dict[str, tuple[int, float, float]]) -> None:
        print(f"\n2. throughput, /bin/true, 2 workers, {self.args.seconds:g} s each (two alternating halves)")
        print(f"  {'':22} {'runs/s':>8} {'CPU/run':>8}   (CPU: all processes, /proc/stat, ms)")
        for name, (runs, secs, cpu) in totals.items():
            print(f"    {name:20} {runs / secs:8.1f} {ms(cpu / max(runs, 1))}")
        if "2 bwrap loops" not in totals:
            print("    (no bubblewrap: no ratios)")
            return
        runs, secs, _ = totals["2 bwrap loops"]
        base = runs / secs
        for name in ("sbx batch -j 2", "sbx API, 2 threads"):
            r, s, _ = totals[name]
            ratio = r / s / base
            print(f"    {name:20} / bwrap {ratio:5.2f}x  (goal >= 2x: {'met' if ratio >= 2 else 'NOT met'})")

    # 3 -------------------------------------------------------------------------------------------

    def breakdown(self) -> None:
        runs = self.args.breakdown_runs
        marks: dict[str, list[tuple[str, float]]] = {}
        local = threading.local()

        def mark(label: str) -> None:
            mine = getattr(local, "marks", None)
            if mine is None:
                mine = local.marks = marks.setdefault(threading.current_thread().name, [])
            mine.append((label, time.perf_counter()))

        patched: list[tuple[object, str, object]] = []
        missing: list[str] = []

        def wrap(owner: object, attr: str, label: str) -> None:
            original = getattr(owner, attr, None)
            if original is None:  # the code moved on: say so rather than fail
                missing.append(f"{getattr(owner, '__name__', owner)}.{attr}")
                return
            patched.append((owner, attr, original))

            def wrapper(*a: object, **k: object) -> object:
                mark(label + "<")
                try:
                    return original(*a, **k)  # type: ignore[operator]
                finally:
                    mark(label + ">")
            setattr(owner, attr, wrapper)

        for owner, attr, label in ((_RunnerClass, "run", "run"), (_RunnerClass, "spec", "spec"),
                                   (pool.Pool, "take", "take"), (spawn.Prepared, "send", "send"),
                                   (watch, "_await_payload", "payload"), (watch, "_await_exec", "exec"),
                                   (watch.Watch, "wait", "watch"), (watch, "outcome", "result"),
                                   (pool.Pool, "spawn", "spawn"), (spawn.Prepared, "ready", "ready"),
                                   (spawn.Prepared, "discard", "discard")):
            wrap(owner, attr, label)
        null = self.spawner.null_w
        argv = ["/bin/true"]
        per_run: list[dict[str, float]] = []
        cpu_main: list[float] = []
        cpu: dict[str, float] = {}
        try:
            runner = Runner()
            self.cleanup.append(runner.close)
            for _ in range(3):
                runner.run(argv, stdout=null, stderr=null)
                time.sleep(self.idle)
            pool_tid = getattr(getattr(runner.pool, "thread", None), "native_id", None)
            process = getattr(getattr(runner.pool, "zygote", None), "process", None)
            zygote_pid = getattr(process, "pid", None)
            before = process_cpu(pool_tid, zygote_pid)
            for _ in range(runs):
                mine = marks.setdefault(threading.current_thread().name, [])
                mine.clear()
                time.sleep(self.idle)
                local.marks = mine
                start_cpu = time.thread_time()
                result = runner.run(argv, stdout=null, stderr=null)
                cpu_main.append(time.thread_time() - start_cpu)
                if result.verdict != "OK":
                    raise RuntimeError(f"sbx warm run failed: {result}")
                stamps: dict[str, float] = {}
                for label, t in mine:
                    stamps.setdefault(label, t)  # the first of each (ready() and discard() come twice)
                per_run.append(stamps)
            time.sleep(max(self.idle, 0.5))  # the zygote reaps its entry processes every 200 ms
            after = process_cpu(pool_tid, zygote_pid)
            cpu = {name: (after[name] - before[name]) / runs for name in before if name in after}
        finally:
            for owner, attr, original in reversed(patched):
                setattr(owner, attr, original)
        runner.close()
        self.report_breakdown(per_run, marks.get("sbx-pool", []), cpu_main, cpu, missing)

    def report_breakdown(self, per_run: list[dict[str, float]], pool_marks: list[tuple[str, float]],
                         cpu_main: list[float], cpu: dict[str, float], missing: list[str]) -> None:
        phases = [
            ("entry -> spec()", "run<", "spec<"),
            ("spec build (Runner.spec)", "spec<", "spec>"),
            ("streams, cached inputs", "spec>", "take<"),
            ("pool take", "take<", "take>"),
            ("run set-up (cgroup, plan, pipes)", "take>", "send<"),
            ("command send", "send<", "send>"),
            ("send -> payload ready (P)", "send>", "payload>"),
            ("P -> release (cgroup add, pin)", "payload>", "exec<"),
            ("release -> exec done", "exec<", "exec>"),
            ("exec done -> init's exit report", "exec>", "watch>"),
            ("report -> result (drain, stats)", "watch>", "result<"),
            ("result (_result)", "result<", "result>"),
            ("teardown (discard, pool.done)", "result>", "run>"),
        ]
        print(f"\n3. where a warm /bin/true run's time goes, {len(per_run)} runs, idle {self.args.idle:g} ms "
              "before each\n   (supervisor-side stamps in the Runner's process; init and the payload run "
              "in processes\n   the zygote forks, so their work shows only as the wait between two stamps)")
        if missing:
            print(f"  not found, not stamped: {', '.join(missing)}")
        print(f"  {'':36} {'median':>8} {'p90':>8}   (ms)")
        for label, a, b in phases:
            samples = [s[b] - s[a] for s in per_run if a in s and b in s]
            if samples:
                print(f"    {label:34} {ms(statistics.median(samples))} {ms(p90(samples))}")
        totals = [s["run>"] - s["run<"] for s in per_run if "run<" in s and "run>" in s]
        if totals:
            print(f"    {'total (with stamps)':34} {ms(statistics.median(totals))} {ms(p90(totals))}")
        # Off the run's path: the pool thread prepares the next sandbox and reaps the used one.
        after: dict[str, list[float]] = {"zygote spawn (request -> fds)": [], "spawned -> root ready (R)": [],
                                         "reap used sandbox": [], "run end -> next sandbox ready": [],
                                         "run end -> used one reaped": []}
        for stamps in per_run:
            end = stamps.get("run>")
            if end is None:
                continue
            first: dict[str, float] = {}
            for label, t in pool_marks:
                if t >= end:
                    first.setdefault(label, t)
            for label, a, b in (("zygote spawn (request -> fds)", "spawn<", "spawn>"),
                                ("spawned -> root ready (R)", "ready<", "ready>"),
                                ("reap used sandbox", "discard<", "discard>")):
                if a in first and b in first and first[b] >= first[a]:
                    after[label].append(first[b] - first[a])
            if "ready>" in first:
                after["run end -> next sandbox ready"].append(first["ready>"] - end)
            if "discard>" in first:
                after["run end -> used one reaped"].append(first["discard>"] - end)
        print("  off the run's path (the pool's thread, after each run)")
        for label, samples in after.items():
            if samples:
                print(f"    {label:34} {ms(statistics.median(samples))} {ms(p90(samples))}")
        print("  CPU per run (mean; process figures from /proc in clock ticks)")
        print(f"    {'supervisor thread (run())':34} {ms(statistics.mean(cpu_main))}")
        for name, value in cpu.items():
            print(f"    {name:34} {ms(value)}")
        ready = after["run end -> next sandbox ready"]
        if ready and p90(ready) > self.idle:
            print(f"  warning: the idle ({self.args.idle:g} ms) is shorter than the refill's p90: "
                  "'sbx warm' figures include some back-to-back contention (raise --idle)")


def process_cpu(pool_tid: int | None, zygote_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of the pool's thread, and of the zygote with the sandboxes it has reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, path, fields in (("pool thread (refill, reap)", f"/proc/self/task/{pool_tid}/stat", 2),
                               ("zygote + sandboxes (fork, root, run)", f"/proc/{zygote_pid}/stat", 4)):
        if path.endswith("None/stat"):
            continue
        try:
            with open(path, "rb") as f:
                values = f.read().rpartition(b")")[2].split()[11:11 + fields]
        except OSError:
            continue
        out[name] = sum(int(v) for v in values) / tick
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="latency runs per variant and payload (200)")
    parser.add_argument("--seconds", type=float, default=10.0, help="throughput seconds per variant (10)")
    parser.add_argument("--idle", type=float, default=30.0, help="ms of idle before each timed run but b2b (30)")
    parser.add_argument("--breakdown-runs", type=int, default=None, help="runs for the breakdown (--runs)")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 10 runs, 1 s of throughput")
    parser.add_argument("--sbx", help="the command `batch` is appended to (default: this Python -m sandbox)")
    parser.add_argument("--log-dir", default=None, help="where sbx batch's stderr goes (a temporary directory)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = min(args.runs, 10), min(args.seconds, 1.0)
    if args.breakdown_runs is None:
        args.breakdown_runs = args.runs
    if args.runs < 2 or args.breakdown_runs < 2:
        parser.error("--runs and --breakdown-runs must be at least 2")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sbx-bench-warm-") as tmp:
        if args.log_dir is None:
            args.log_dir = tmp

        def terminate(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)  # unwinds through the cleanups below

        import faulthandler

        global WATCHDOG
        WATCHDOG = Watchdog()
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: where is it stuck?
        signal.signal(signal.SIGTERM, terminate)
        signal.signal(signal.SIGHUP, terminate)
        bench = Bench(args)
        try:
            bench.environment()
            if bench.bwrap is None:
                print("  bubblewrap is not installed (Debian package 'bubblewrap'): sbx figures only, no ratios")
            WATCHDOG.arm(120 + args.runs * 6, "the latency part")
            times = bench.latency()
            bench.report_latency(times)
            sys.stdout.flush()
            WATCHDOG.arm(120 + args.seconds * 3, "the throughput part")
            totals = bench.throughput()
            bench.report_throughput(totals)
            sys.stdout.flush()
            WATCHDOG.arm(120 + args.breakdown_runs, "the breakdown part")
            bench.breakdown()
            WATCHDOG.arm(120, "cleaning up")
        finally:
            bench.close()
            WATCHDOG.disarm()
    return 0


if __name__ == "__main__":
    sys.exit(main())
