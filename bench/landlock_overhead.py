"""Per-run cost of Landlock: `sbx run -- true` alternating with and without (SBX_LANDLOCK=0), default and grader.

Usage: python bench/landlock_overhead.py [RUNS]   (default 50 of each)
"""
import os, statistics, subprocess, sys, time
S = [sys.executable, "-m", "sandbox", "run"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
env = dict(os.environ, PYTHONPATH=REPO)
variants = {"default+landlock": ([], {}), "default SBX_LANDLOCK=0": ([], {"SBX_LANDLOCK": "0"}),
            "grader+landlock": (["--profile", "grader"], {}), "grader SBX_LANDLOCK=0": (["--profile", "grader"], {"SBX_LANDLOCK": "0"})}
times: dict[str, list[float]] = {k: [] for k in variants}
N = int(sys.argv[1]) if len(sys.argv) > 1 else 50
for i in range(N):
    for name, (extra, more) in variants.items():
        t = time.perf_counter()
        subprocess.run(S + extra + ["--", "true"], env={**env, **more}, check=True, stderr=subprocess.DEVNULL)
        times[name].append(time.perf_counter() - t)
for name, ts in times.items():
    print(f"{name:24} median {statistics.median(ts)*1000:7.2f} ms  mean {statistics.mean(ts)*1000:7.2f} ms")
