"""Per-run cost of sbx against bubblewrap, both measured in this one process: issue 17's figures.

    python bench/perrun.py [--runs 100] [--lines 200] [--rounds 5] [--idle 100] [--stamps 30]
                           [--only cold,batch,warm,stamps] [--sbx CMD] [--baseline DIR]

Bubblewrap gets the set-up of sbx's host image: new user, pid, mount, ipc, uts, net (and
cgroup) namespaces, --die-with-parent, --new-session, /usr and the /bin /lib* /sbin links
read-only, a fresh /proc and /dev, a tmpfs /tmp.  Every process is started the same way
(posix_spawn, stdio on /dev/null, one environment), variants alternate run by run so the
machine's drift hits all alike, and each figure is a median with its spread [p25 p75].  CPU
is getrusage(RUSAGE_CHILDREN) before and after each waitpid: the process and everything it
reaped (a sandbox's whole tree, since each of its processes reaps its own children), and the
orphans it left, which this process reaps as a child subreaper: bubblewrap's monitor exits as
soon as it has the command's status, and its pid 1 tears the namespaces down as an orphan
(before this counted them, bubblewrap's CPU read 2.0 ms a run where it uses 5.2).

(a) cold: `sbx run -- /bin/true`, bubblewrap's /bin/true, and the interpreter's bare start
    (`python -I -S -c pass`, the interpreter sbx runs on); sbx's own work is sbx less that.
(b) throughput: `sbx batch -j 2` of --lines /bin/true lines against two bubblewrap loops of
    half as many each, both timed whole (sbx's start-up and fork server included).
(c) warm: `sandbox.Runner().run(["/bin/true"])` in this process, after an --idle ms gap (the
    pool has prepared the next sandbox) and back to back (right after the first), against a
    cold bubblewrap run and against /bin/true spawned bare; then sustained: a stream of
    --runs runs with no gap, where the pool's stock is soon used up and each run waits for
    (or competes with) the building of the next: the per-run latency a caller feeding runs
    without pause sees.  CPU per warm run is that stream's: this process's (getrusage
    RUSAGE_SELF) plus its fork server's with the sandboxes it reaped.
stamps: where the time goes, per step (SBX_STAMPS, sandbox/runtime/stamps.py), median of
    --stamps runs: a cold `sbx run` (from its spawn) and a warm API run (from execute()).
--baseline DIR: another checkout of sbx (an earlier commit, say) measured in the same rounds
    of (a), (b) and the cold stamps, alternating with this one: before and after, in one
    machine state.

Run it as an unprivileged user for the rootless figures.  A benchmark, not a test: it asserts
nothing.  The default sbx is this checkout's `bin/sbx`, the command pip installs, run by this
Python with PYTHONPATH set (`python -m sandbox` would add runpy's imports, ~5 ms); the
caller's SBX_* variables reach sbx (SBX_ID_RANGES=0: the single id mapping).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GOAL_COLD = 1.5  # sbx's own work / bubblewrap's whole run, at most
GOAL_THROUGHPUT = 2.0  # sbx batch -j 2 / two bubblewrap loops, at least
GOAL_CPU_MS = 2.0  # CPU per sandbox in a batch, at most
GOAL_WARM = 0.3  # warm per-run overhead / a cold bubblewrap run, at most


def bwrap_argv(bwrap: str, etc: tuple[str, ...] = (), command: tuple[str, ...] = ("/bin/true",)) -> list[str]:
    """bubblewrap with the view of sbx's host image: /usr and its links, the /etc entries named
    (those that exist), a fresh /proc, /dev and /tmp (bench/isolate.py uses it too)."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    for name in etc:
        if os.path.lexists("/etc/" + name):
            argv += ["--ro-bind", "/etc/" + name, "/etc/" + name]
    return argv + ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", *command]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
ORPHAN_WAIT = 2.0  # seconds


def children() -> set[int]:
    """This process's children, whichever of its threads is their parent."""
    found: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found.update(int(pid) for pid in f.read().split())
        except OSError:
            continue
    return found


class Launcher:
    """posix_spawn + waitpid with stdio on /dev/null and one environment; (wall, CPU) seconds.

    The process becomes a child subreaper: bubblewrap's monitor exits as soon as it has the
    command's status and leaves its pid 1, an orphan, to tear the namespaces down, so a parent
    that is not a subreaper never reaps that process and its CPU (more than half of a bwrap run's)
    never reaches RUSAGE_CHILDREN.  run() reaps what its process left behind, after the wall
    time (the caller had its answer) and before the CPU figure."""

    def __init__(self, env: dict[str, str]) -> None:
        import ctypes

        self.env = env
        self.null_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.null_w = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self.lock = threading.Lock()
        self.live: set[int] = set()  # spawned, not yet reaped (threads run() at once)
        self.not_orphans: set[int] = set()

    def spawn(self, argv: list[str], env: dict[str, str] | None = None, stdin: int | None = None,
              stdout: int | None = None, stderr: int | None = None) -> int:
        actions = [(os.POSIX_SPAWN_DUP2, self.null_r if stdin is None else stdin, 0),
                   (os.POSIX_SPAWN_DUP2, self.null_w if stdout is None else stdout, 1),
                   (os.POSIX_SPAWN_DUP2, self.null_w if stderr is None else stderr, 2)]
        with self.lock:
            pid = os.posix_spawn(argv[0], argv, self.env if env is None else env, file_actions=actions)
            self.live.add(pid)
        return pid

    def run(self, argv: list[str], wait_orphans: bool = True, **kwargs: object) -> tuple[float, float]:
        """wait_orphans=False: leave them to a later reap_orphans (a loop whose next run may overlap
        the last one's teardown, as it would without us); the CPU figure then lacks them."""
        cpu = children_cpu()
        before = children()  # not ours to wait for: a Runner's fork server, another thread's orphans
        start = time.perf_counter()
        pid = self.spawn(argv, **kwargs)  # type: ignore[arg-type]
        _, status = os.waitpid(pid, 0)
        wall = time.perf_counter() - start
        with self.lock:
            self.live.discard(pid)
        if wait_orphans:
            self.reap_orphans(before)
        if status != 0:
            raise RuntimeError(f"{' '.join(argv)} exited with status {status:#x}")
        return wall, children_cpu() - cpu

    def reap_orphans(self, before: set[int]) -> None:
        """Wait for the processes reparented to us since `before` was taken (orphans of our runs).
        One still alive after ORPHAN_WAIT seconds is no orphan (a Runner's fork server started
        meanwhile, by its pool's thread): it is left alone from then on."""
        import select

        while True:
            with self.lock:
                orphans = children() - before - self.live - self.not_orphans
            if not orphans:
                return
            for pid in orphans:
                try:
                    pidfd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue  # reaped by another thread's run
                try:
                    if not select.select([pidfd], [], [], ORPHAN_WAIT)[0]:
                        self.not_orphans.add(pid)
                        continue
                finally:
                    os.close(pidfd)
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass  # another thread's run reaped it

    def close(self) -> None:
        os.close(self.null_r)
        os.close(self.null_w)


def spread(samples: list[float], scale: float = 1000.0) -> str:
    """median [p25 p75], in ms by default."""
    if len(samples) < 2:
        return f"{samples[0] * scale:7.2f}" if samples else "    n/a"
    q = statistics.quantiles(samples, n=4)
    return f"{statistics.median(samples) * scale:7.2f} [{q[0] * scale:6.2f} {q[2] * scale:6.2f}]"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


# -- (a) cold ------------------------------------------------------------------------------------


Baseline = tuple[list[str], dict[str, str]]  # another checkout's sbx command and its environment


def cold(launcher: Launcher, bwrap: list[str], sbx: list[str], runs: int, baseline: Baseline | None) -> float:
    """Prints the cold figures; returns bubblewrap's median wall (seconds).  `baseline`: another
    checkout's sbx, measured as one more variant."""
    variants = {"bwrap /bin/true": bwrap, "sbx run -- /bin/true": [*sbx, "run", "--", "/bin/true"],
                "python -I -S -c pass": [sys.executable, "-I", "-S", "-c", "pass"]}
    envs: dict[str, dict[str, str] | None] = {name: None for name in variants}
    if baseline is not None:
        variants["sbx run (baseline)"] = [*baseline[0], "run", "--", "/bin/true"]
        envs["sbx run (baseline)"] = baseline[1]
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for name, argv in variants.items():
        launcher.run(argv, env=envs[name])  # the page cache
    for _ in range(runs):
        for name, argv in variants.items():
            w, c = launcher.run(argv, env=envs[name])
            wall[name].append(w)
            cpu[name].append(c)
    print(f"(a) cold start, {runs} alternating runs each     wall ms median [p25 p75]    CPU ms median")
    for name in variants:
        print(f"    {name:24} {spread(wall[name])}    {spread(cpu[name])}")
    names = ("bwrap /bin/true", "sbx run -- /bin/true", "python -I -S -c pass")
    b, s, bare = (statistics.median(wall[n]) for n in names)
    bc, sc, barec = (statistics.median(cpu[n]) for n in names)
    own = s - bare
    print(f"    sbx's own work (sbx - bare start) {own * 1000:7.2f} ms = {own / b:5.2f}x bwrap's whole run "
          f"(goal <= {GOAL_COLD}x: {verdict(own / b <= GOAL_COLD)}); total sbx/bwrap {s / b:5.2f}x")
    print(f"    in CPU: sbx's own {(sc - barec) * 1000:7.2f} ms = {(sc - barec) / bc:5.2f}x bwrap's CPU; "
          f"total {sc / bc:5.2f}x")
    if baseline is not None:
        was, wasc = statistics.median(wall["sbx run (baseline)"]), statistics.median(cpu["sbx run (baseline)"])
        print(f"    the baseline's own work {(was - bare) * 1000:7.2f} ms = {(was - bare) / b:5.2f}x bwrap's whole run; "
              f"in CPU {(wasc - barec) * 1000:7.2f} ms")
    return b


# -- (b) throughput --------------------------------------------------------------------------------


def batch(launcher: Launcher, bwrap: list[str], sbx: list[str], lines: int, rounds: int, tmp: str,
          baseline: Baseline | None) -> None:
    feed = os.path.join(tmp, "lines.jsonl")
    with open(feed, "w") as f:
        f.write((json.dumps({"argv": ["/bin/true"]}) + "\n") * lines)
    out = os.path.join(tmp, "results.jsonl")

    def sbx_batch(other: Baseline | None = None) -> tuple[float, float]:
        command, env = other if other is not None else (sbx, None)
        fd_in = os.open(feed, os.O_RDONLY | os.O_CLOEXEC)
        fd_out = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            result = launcher.run([*command, "batch", "-j", "2"], env=env, stdin=fd_in, stdout=fd_out)
        finally:
            os.close(fd_in)
            os.close(fd_out)
        with open(out) as f:
            verdicts = [json.loads(line)["verdict"] for line in f]
        if verdicts != ["OK"] * lines:
            raise RuntimeError(f"sbx batch: {len(verdicts)} results, not {lines} OK ones: {set(verdicts)}")
        return result

    def bwrap_loops() -> tuple[float, float]:
        failed: list[BaseException] = []

        def loop(count: int) -> None:
            try:
                for _ in range(count):
                    launcher.run(bwrap, wait_orphans=False)
            except BaseException as exc:  # noqa: BLE001  (re-raised below)
                failed.append(exc)

        cpu = children_cpu()
        before = children()
        start = time.perf_counter()
        threads = [threading.Thread(target=loop, args=(n,)) for n in (lines // 2, lines - lines // 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        launcher.reap_orphans(before)  # their CPU: bubblewrap's teardowns, which ran alongside the loops
        if failed:
            raise failed[0]
        return wall, children_cpu() - cpu

    sbx_batch()  # the page cache, the seccomp cache
    results: dict[str, list[tuple[float, float]]] = {"sbx batch -j 2": [], "2 bwrap loops": []}
    if baseline is not None:
        sbx_batch(baseline)
        results["sbx batch (baseline)"] = []
    for _ in range(rounds):
        results["sbx batch -j 2"].append(sbx_batch())
        results["2 bwrap loops"].append(bwrap_loops())
        if baseline is not None:
            results["sbx batch (baseline)"].append(sbx_batch(baseline))
    print(f"\n(b) throughput, {lines} /bin/true runs, {rounds} alternating rounds   runs/s median [p25 p75]"
          "    CPU ms per run median")
    rates = {}
    for name, samples in results.items():
        rates[name] = [lines / w for w, _ in samples]
        print(f"    {name:24} {spread(rates[name], 1.0)}    {spread([c / lines for _, c in samples])}")
    ratio = statistics.median(rates["sbx batch -j 2"]) / statistics.median(rates["2 bwrap loops"])
    cpu_run = statistics.median(c / lines for _, c in results["sbx batch -j 2"]) * 1000
    print(f"    throughput sbx/bwrap {ratio:5.2f}x (goal >= {GOAL_THROUGHPUT}x: {verdict(ratio >= GOAL_THROUGHPUT)}); "
          f"CPU per sandbox {cpu_run:5.2f} ms (goal <= {GOAL_CPU_MS} ms: {verdict(cpu_run <= GOAL_CPU_MS)}; "
          "sbx's start-up and fork server included)")


# -- (c) warm ----------------------------------------------------------------------------------------


def process_ticks(pid: int) -> float:
    """CPU seconds of process `pid`, of the children it reaped, and of its live descendants
    (the fork server's user-namespace holder and the sandboxes it reaped) (/proc, clock ticks)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(child) for child in f.read().split()]
    except OSError:
        return 0.0
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK") + sum(map(process_ticks, children))


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def warm(launcher: Launcher, bwrap: list[str], runs: int, idle: float, env: dict[str, str]) -> None:
    sys.path.insert(0, str(REPO))
    from sandbox import Runner

    null = launcher.null_w
    times: dict[str, list[float]] = {"bwrap /bin/true (cold)": [], "bare /bin/true": [], "warm after idle": [],
                                     "warm back to back": []}
    with Runner(environ=env) as runner:
        def one() -> float:
            start = time.perf_counter()
            result = runner.run(["/bin/true"], stdout=null, stderr=null)
            wall = time.perf_counter() - start
            if result.verdict != "OK":
                raise RuntimeError(f"warm run: {result}")
            return wall

        for _ in range(3):
            one()
        for _ in range(runs):
            time.sleep(idle)  # the yardsticks too run on a quiet machine, not beside the pool's refill
            times["bwrap /bin/true (cold)"].append(launcher.run(bwrap)[0])
            times["bare /bin/true"].append(launcher.run(["/bin/true"])[0])
            time.sleep(idle)  # the pool's refill and reaping are done
            times["warm after idle"].append(one())
            times["warm back to back"].append(one())
        # Sustained, and its CPU per run: this process and the fork server with the sandboxes it reaped.
        time.sleep(idle)
        zygote = getattr(getattr(getattr(runner.pool, "zygote", None), "process", None), "pid", None)
        before = self_cpu() + (process_ticks(zygote) if zygote else 0.0)
        stream = [one() for _ in range(runs)]
        time.sleep(max(idle, 0.5))  # the fork server reaps its entry processes every 200 ms
        after = self_cpu() + (process_ticks(zygote) if zygote else 0.0)
        times["warm sustained"] = stream[runs // 10:]  # past the stock prepared during the idle gap
    print(f"\n(c) warm latency, {runs} alternating rounds, idle {idle * 1000:g} ms   wall ms median [p25 p75]")
    for name, samples in times.items():
        print(f"    {name:24} {spread(samples)}")
    b = statistics.median(times["bwrap /bin/true (cold)"])
    bare = statistics.median(times["bare /bin/true"])
    for name in ("warm after idle", "warm back to back", "warm sustained"):
        m = statistics.median(times[name])
        over = m - bare
        print(f"    {name:24} total/bwrap {m / b:5.2f}   overhead (less bare) /bwrap {over / b:5.2f} "
              f"(goal <= {GOAL_WARM}: {verdict(over / b <= GOAL_WARM)})")
    cpu_note = "" if zygote else " (fork server not found: this process only)"
    print(f"    CPU per warm run (sustained) {(after - before) / runs * 1000:6.2f} ms{cpu_note}")


# -- stamps ----------------------------------------------------------------------------------------


def stamps(launcher: Launcher, sbx: list[str], runs: int, env: dict[str, str], tmp: str,
           baseline: Baseline | None) -> None:
    sys.path.insert(0, str(REPO))
    from sandbox import Runner
    from sandbox.runtime.stamps import parse

    def table(title: str, per_run: list[list[tuple[str, float]]]) -> None:
        print(title)
        order = [name for name, _ in per_run[0]]
        at = {name: [dict(r)[name] for r in per_run if name in dict(r)] for name in order}
        previous = 0.0
        print(f"    {'step':20} {'at ms':>8} {'step ms':>8}   (medians)")
        for name in order:
            m = statistics.median(at[name])
            print(f"    {name:20} {m:8.2f} {m - previous:8.2f}")
            previous = m

    log = os.path.join(tmp, "stamps.log")

    def cold_run(command: list[str], cold_env: dict[str, str]) -> list[tuple[str, float]]:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            launcher.run([*command, "run", "--", "/bin/true"],
                         env={**cold_env, "SBX_STAMPS": str(time.monotonic_ns())}, stderr=fd)
        finally:
            os.close(fd)
        return parse(Path(log).read_text())

    cold_runs, baseline_runs = [], []
    for _ in range(runs):  # alternating with the baseline's, if any
        cold_runs.append(cold_run(sbx, env))
        if baseline is not None:
            baseline_runs.append(cold_run(*baseline))
    table(f"\nstamps: a cold `sbx run -- /bin/true`, {runs} runs, from its spawn", cold_runs)
    if baseline is not None:
        table(f"stamps: the baseline's cold `sbx run -- /bin/true`, {runs} runs alternating with those", baseline_runs)
    # A warm run's stamps go to this process's stderr: point it at the log meanwhile.
    saved = os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.dup2(fd, 2)
        with Runner(environ={**env, "SBX_STAMPS": "1"}) as runner:
            for _ in range(runs + 3):
                time.sleep(0.1)
                runner.run(["/bin/true"], stdout=launcher.null_w, stderr=launcher.null_w)
                os.write(2, b"sbx: run-end\n")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)
    warm_runs = [parse(chunk) for chunk in Path(log).read_text().split("sbx: run-end\n")[3:-1]]
    table(f"stamps: a warm API run after 100 ms idle, {len(warm_runs)} runs, from supervisor.execute()",
          warm_runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="alternating runs of (a) and (c) (100)")
    parser.add_argument("--lines", type=int, default=200, help="/bin/true lines per batch (200)")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of (b) (5)")
    parser.add_argument("--idle", type=float, default=100.0, help="ms of idle before a warm run (100)")
    parser.add_argument("--stamps", type=int, default=30, help="runs for the per-step stamps (30)")
    parser.add_argument("--only", default="cold,batch,warm,stamps", help="parts to run (all)")
    parser.add_argument("--sbx", help="the sbx command (default: this Python running this checkout's bin/sbx)")
    parser.add_argument("--baseline", help="another sbx checkout to measure alongside (before and after)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    bwrap_path = shutil.which("bwrap")
    if bwrap_path is None:
        print("bubblewrap is not installed (Debian package 'bubblewrap')", file=sys.stderr)
        return 1
    # One environment for every process; the caller's SBX_* settings pass (SBX_ID_RANGES=0, SBX_CGROUP).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
           "LANG": "C.UTF-8", "PYTHONPATH": str(REPO),
           **{k: v for k, v in os.environ.items() if k.startswith("SBX_") and k != "SBX_STAMPS"}}
    sbx = args.sbx.split() if args.sbx else [sys.executable, str(REPO / "bin" / "sbx")]
    sbx[0] = shutil.which(sbx[0]) or sbx[0]
    bwrap = bwrap_argv(bwrap_path)
    # Nothing may find a package in the working directory before PYTHONPATH's: work in "/".
    os.chdir("/")
    launcher = Launcher(env)
    baseline = None
    if args.baseline:
        where = os.path.abspath(args.baseline)
        baseline = ([sys.executable, os.path.join(where, "bin", "sbx")], {**env, "PYTHONPATH": where})
        print(f"baseline: {where}")
    print(f"uid {os.getuid()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; sbx: {' '.join(sbx)}; "
          f"{sys.executable} {sys.version.split()[0]}")
    try:
        with tempfile.TemporaryDirectory(prefix="sbx-bench-perrun-") as tmp:
            if "cold" in parts:
                cold(launcher, bwrap, sbx, args.runs, baseline)
            if "batch" in parts:
                batch(launcher, bwrap, sbx, args.lines, args.rounds, tmp, baseline)
            if "warm" in parts:
                warm(launcher, bwrap, args.runs, args.idle / 1000, env)
            if "stamps" in parts:
                stamps(launcher, sbx, args.stamps, env, tmp, baseline)
    finally:
        launcher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
