"""What a run's stdin costs per byte: the caller's file itself, a sealed memfd copy, a pipe sbx feeds.

The payload must not hold the caller's file (it could chmod and rewrite it: sandbox/runtime/stdio.py),
so a regular stdin file becomes either a sealed memfd copy or a pipe sbx pumps.  Part 1 times
the three mechanisms with a plain child process (`cat >/dev/null`, `wc -c`) and sandbox.stdio's
own code; part 2 times whole warm runs (`Runner.run(..., stdin=path)`) of this tree and, with
--baseline DIR, of another checkout (`git archive HEAD | tar -x -C DIR`), alternating, both in
the single id mapping.

    python bench/stdio.py [--runs 21] [--sizes 1,64] [--baseline DIR]

Prints the median per run, and per MiB above the direct fd.  A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOADS = {"cat": ["sh", "-c", "exec cat >/dev/null"], "wc -c": ["wc", "-c"]}


def _direct(path: str, argv: list[str]) -> float:
    start = time.perf_counter()
    with open(path, "rb") as f:
        subprocess.run(argv, stdin=f, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def sealed_copy(source: int) -> int:
    """What sbx would give the payload instead of a regular file with a memfd: a read-only fd of a
    sealed copy (pread/write of 64 KiB: faster here than sendfile, 1 MiB writes, or mmap)."""
    from sandbox.runtime import stdio

    fd = stdio._memfd()
    offset = os.lseek(source, 0, os.SEEK_CUR)
    while True:
        data = os.pread(source, 1 << 16, offset)
        if not data:
            break
        offset += len(data)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    return stdio._seal(fd)


def _memfd(path: str, argv: list[str]) -> float:
    start = time.perf_counter()
    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = sealed_copy(source)
    finally:
        os.close(source)
    try:
        subprocess.run(argv, stdin=fd, stdout=subprocess.DEVNULL, check=True)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def _pumped(path: str, argv: list[str]) -> float:
    """The payload reads a pipe that sbx's Feed fills from the file, in a poll loop as _Watch runs it."""
    from sandbox.runtime import stdio

    start = time.perf_counter()
    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    feed = stdio.Feed(source, regular=True)
    try:
        child = subprocess.Popen(argv, stdin=feed.read_end, stdout=subprocess.DEVNULL)
        os.close(feed.read_end)
        pidfd = os.pidfd_open(child.pid)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        done = False
        while not done:
            wanted = feed.interest()
            for fd, events in wanted.items():
                poller.register(fd, events)
            for fd, revents in poller.poll():
                if fd == pidfd:
                    done = True
                elif fd in feed.interest():
                    feed.on(fd, revents)
            for fd in wanted:
                poller.unregister(fd)
        os.close(pidfd)
        child.wait()
    finally:
        feed.stop()
        os.close(source)
    return time.perf_counter() - start


MECHANISMS = {"direct fd": _direct, "memfd copy": _memfd, "pumped pipe": _pumped}


def _out_direct(path: str, argv: list[str]) -> float:
    start = time.perf_counter()
    with open(path, "wb") as f:
        subprocess.run(argv, stdout=f, check=True)
    return time.perf_counter() - start


def _out_drained(path: str, argv: list[str]) -> float:
    """The payload writes a pipe that sbx's Drain splices into the file, in a poll loop."""
    from sandbox.runtime import stdio

    start = time.perf_counter()
    destination = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    pumps = stdio.Pumps(None, 0)
    stdin = _empty_stdin()
    try:
        given = pumps.wire(stdin, destination, destination, tty=False)
        child = subprocess.Popen(argv, stdin=given[0], stdout=given[1])
        pumps.sent()
        poller = select.poll()
        while True:
            wanted = pumps.interest()
            if not wanted:
                break
            for fd, events in wanted.items():
                poller.register(fd, events)
            for fd, revents in poller.poll():
                pumps.on(fd, revents)
            for fd in wanted:
                poller.unregister(fd)
        child.wait()
    finally:
        pumps.close()
        os.close(destination)
        os.close(stdin)
    return time.perf_counter() - start


def _empty_stdin() -> int:
    r, w = os.pipe()
    os.close(w)
    return r


OUTPUTS = {"direct fd": _out_direct, "drained pipe": _out_drained}


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _table(title: str, modes: Mapping[str, Callable[[str, list[str]], float]], cases: list[tuple[str, list[str], int, str]],
           runs: int) -> None:
    print(title)
    for label, argv, mib, path in cases:
        wall: dict[str, list[float]] = {name: [] for name in modes}
        cpu: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(runs):
            for name, measure in modes.items():
                before = _cpu()
                wall[name].append(measure(path, argv))
                cpu[name].append(_cpu() - before)
        base = _median_ms(wall["direct fd"])
        cells = []
        for name in modes:
            ms = _median_ms(wall[name])
            per = "" if name == "direct fd" else f" {(ms - base) / mib:+.3f}/MiB"
            cells.append(f"{name} {ms:7.2f}{per} (its cpu {_median_ms(cpu[name]):6.2f})")
        print(f"   {label:<8} {mib:>3} MiB: " + "   ".join(cells))


def mechanisms(files: dict[int, str], runs: int, tmp: str) -> None:
    _table("1. stdin, a plain child process (median ms per run, per MiB above the direct fd; the child's cpu ms)",
           MECHANISMS, [(label, argv, mib, path) for label, argv in PAYLOADS.items() for mib, path in files.items()],
           runs)
    out = os.path.join(tmp, "out")
    _table("   stdout to a file", OUTPUTS,
           [("head -c", ["head", "-c", f"{mib}M", "/dev/zero"], mib, out) for mib in files], runs)


def _warm_runs(tree: str, files: dict[int, str], runs: int) -> dict[int, list[float]]:
    """Times of `Runner.run(["sh", "-c", "cat >/dev/null"], stdin=path)` in a child importing `tree`."""
    code = f"""
import json, sys, time
sys.path.insert(0, {tree!r})
from sandbox import Runner
files = {{int(k): v for k, v in json.loads(sys.argv[1]).items()}}
out = {{}}
with Runner() as runner:
    runner.run(["true"])
    for mib, path in files.items():
        times = []
        for _ in range({runs}):
            start = time.perf_counter()
            result = runner.run(["sh", "-c", "exec cat >/dev/null"], stdin=path)
            times.append(time.perf_counter() - start)
            assert result.verdict == "OK", result
        out[mib] = times
print(json.dumps(out))
"""
    # The single id mapping in both trees, so that only the stdio path differs.
    done = subprocess.run([sys.executable, "-c", code, json.dumps(files)], capture_output=True, text=True,
                          check=True, cwd="/", env={**os.environ, "SBX_ID_RANGES": "0"})
    return {int(k): v for k, v in json.loads(done.stdout).items()}


def whole_runs(files: dict[int, str], runs: int, baseline: str | None) -> None:
    print("2. whole warm runs, Runner.run(['sh', '-c', 'cat >/dev/null'], stdin=path) (median ms per run)")
    trees = {"this tree": REPO, **({"baseline": baseline} if baseline else {})}
    times: dict[str, dict[int, list[float]]] = {name: {mib: [] for mib in files} for name in trees}
    for _ in range(3):  # alternate the trees so drift hits both alike
        for name, tree in trees.items():
            for mib, values in _warm_runs(tree, files, max(runs // 3, 1)).items():
                times[name][mib] += values
    for mib in files:
        cells = [f"{name} {_median_ms(times[name][mib]):7.2f}" for name in trees]
        if baseline:
            delta = _median_ms(times["this tree"][mib]) - _median_ms(times["baseline"][mib])
            cells.append(f"difference {delta:+.2f} ({delta / mib:+.3f}/MiB)")
        print(f"   {mib:>3} MiB: " + "   ".join(cells))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--sizes", default="1,64", help="input sizes in MiB, comma-separated")
    parser.add_argument("--baseline", help="another checkout of sbx to compare whole runs with")
    parser.add_argument("--skip-runs", action="store_true", help="only the mechanisms")
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    with tempfile.TemporaryDirectory(prefix="sbx-bench-stdio-") as tmp:
        files = {}
        for mib in (int(s) for s in args.sizes.split(",")):
            path = os.path.join(tmp, f"{mib}M")
            with open(path, "wb") as f:
                for _ in range(mib):
                    f.write(os.urandom(1 << 20))
            os.chmod(tmp, 0o755)
            os.chmod(path, 0o444)
            files[mib] = path
        mechanisms(files, args.runs, tmp)
        if not args.skip_runs:
            whole_runs(files, args.runs, args.baseline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
