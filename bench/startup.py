"""Cold start: `sbx run -- /bin/true` against bubblewrap with the same isolation.

Both get new user, mount, pid, ipc, uts, net and cgroup namespaces, a fresh
/proc, a minimal /dev, a tmpfs /tmp and the host's /usr; runs alternate so
drift hits both alike.  Prints the medians and the ratio (goal: within 3x).

    python bench/startup.py [--runs 200] [--sbx PATH]

Run it as an unprivileged user for the rootless figure.  A benchmark, not a
test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time


def bwrap_argv(bwrap: str, etc: tuple[str, ...] = (), command: tuple[str, ...] = ("/bin/true",)) -> list[str]:
    """bubblewrap with the view of sbx's host image: /usr and its links, the /etc entries named
    (those that exist), a fresh /proc, /dev and /tmp; bench/warm.py uses it too."""
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


def sbx_command(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    beside = os.path.join(os.path.dirname(sys.executable), "sbx")
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which("sbx")
    if found:
        return [found]
    return [sys.executable, "-m", "sandbox"]


def time_once(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--sbx", help="the sbx command (default: beside this Python, then PATH)")
    args = parser.parse_args()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("bubblewrap is not installed (Debian package 'bubblewrap')", file=sys.stderr)
        return 1
    commands = {
        "bwrap": bwrap_argv(bwrap),
        "sbx": sbx_command(args.sbx) + ["run", "--", "/bin/true"],
        "python -c pass": [sys.executable, "-c", "pass"],
    }
    # The same run in the single id mapping (the payload is the caller): what the id ranges cost.
    single = {**os.environ, "SBX_ID_RANGES": "0"}
    envs = {"sbx single-id": single}
    commands["sbx single-id"] = commands["sbx"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, argv in commands.items():
        time_once(argv, envs.get(name))  # warm the page cache
    for _ in range(args.runs):
        for name, argv in commands.items():
            times[name].append(time_once(argv, envs.get(name)))
    print(f"cold start, median of {args.runs} alternating runs, uid {os.getuid()}")
    for name, samples in times.items():
        print(f"  {name:16} {statistics.median(samples) * 1000:7.2f} ms  (p90 "
              f"{statistics.quantiles(samples, n=10)[-1] * 1000:.2f} ms)")
    ratio = statistics.median(times["sbx"]) / statistics.median(times["bwrap"])
    print(f"  sbx / bwrap      {ratio:7.2f}x  (goal: within 3x)")
    ranges = statistics.median(times["sbx"]) - statistics.median(times["sbx single-id"])
    print(f"  id ranges cost   {ranges * 1000:7.2f} ms per run (sbx minus sbx single-id)")
    print(f"  sbx command: {' '.join(commands['sbx'][:-3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
