"""Seccomp costs: compile, cached lookup, load, per-syscall overhead, imports.

    /opt/sbx-dev/bin/python bench/seccomp.py [--rounds N]

Goals (issue 5): load under 1 ms, getpid overhead under 5 %.  The getpid
figures are the best of N interleaved runs of a C loop (tests/attacks/
getpid_loop.c) exec'd with no filter, a one-instruction ALLOW filter (the
kernel's fixed cost of being filtered at all) and each policy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)  # not bench/: this file would shadow the `seccomp` bindings

from sandbox.seccomp import SeccompSpec  # noqa: E402
from sandbox.seccomp.cache import libseccomp_version, program  # noqa: E402
from sandbox.seccomp.load import load  # noqa: E402

SPECS = {
    "default": SeccompSpec(),
    "default-kill": SeccompSpec(action="kill"),
    "strict": SeccompSpec(policy="strict"),
    "grader": SeccompSpec(policy="strict", action="kill"),
}
ALLOW_ALL = (0x06).to_bytes(2, "little") + b"\0\0" + (0x7FFF0000).to_bytes(4, "little")


def ms(x: float) -> str:
    return f"{x * 1e3:.3f} ms"


def bench_compile() -> None:
    print("== compile (libseccomp, cache off)")
    t = time.perf_counter()
    program(SPECS["default"], cache=False)
    print(f"  first, with importing the bindings: {ms(time.perf_counter() - t)}")
    for name, spec in SPECS.items():
        samples = []
        for _ in range(10):
            t = time.perf_counter()
            prog = program(spec, cache=False)
            samples.append(time.perf_counter() - t)
        assert prog is not None
        print(f"  {name:13s} {len(prog) // 8:4d} insns  median {ms(statistics.median(samples))}")


def bench_cached(cache: str) -> None:
    print("== cached program() in a fresh interpreter (after `import ctypes`, as the supervisor has)")
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    code = (
        "import time, ctypes; t = time.perf_counter(); from sandbox.seccomp import SeccompSpec;"
        "from sandbox.seccomp.cache import program; import sandbox.seccomp.load; t1 = time.perf_counter();"
        f"program(SeccompSpec(policy='strict', action='kill'), environ={{'XDG_CACHE_HOME': {cache!r}}});"
        "t2 = time.perf_counter(); print(t1 - t, t2 - t1)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True)  # warm
    imp, prog = [], []
    for _ in range(10):
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, check=True, capture_output=True, text=True)
        a, b = map(float, out.stdout.split())
        imp.append(a)
        prog.append(b)
    print(f"  import sandbox.seccomp.cache, .load: median {ms(statistics.median(imp))}")
    print(f"  program() cache hit:    median {ms(statistics.median(prog))}")
    for mods in (("sandbox.seccomp.cache", "sandbox.seccomp.load"), ("pyseccomp",)):
        lines = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import ctypes; import {', '.join(mods)}"],
            env=env, cwd=ROOT, capture_output=True, text=True,
        ).stderr.strip().splitlines()
        fields = [line.split("|") for line in lines if line.startswith("import time:")]
        us = sum(int(f[1]) for f in fields if f[2].rstrip() in {f" {m}" for m in mods})  # top-level imports only
        print(f"  -X importtime {', '.join(mods)}: {us} us cumulative")


def bench_load() -> None:
    print("== load() in a forked child (no_new_privs + seccomp(2)), goal < 1 ms")
    # The libc functions load() calls are resolved when its module is imported (sbx imports it
    # before forking the sandbox), so a forked child pays only the calls themselves.
    for name in ("default", "grader"):
        prog = program(SPECS[name], cache=False)
        assert prog is not None
        samples = []
        for _ in range(20):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                t = time.perf_counter()
                load(prog)
                os.write(w, str(time.perf_counter() - t).encode())
                os._exit(0)
            os.close(w)
            os.waitpid(pid, 0)
            samples.append(float(os.read(r, 64)))
            os.close(r)
        print(f"  {name:8s} median {ms(statistics.median(samples))}  max {ms(max(samples))}")


def bench_getpid(rounds: int) -> None:
    print(f"== getpid loop, ns per call, best of {rounds} interleaved runs, goal overhead < 5 %")
    if shutil.which("gcc") is None:
        print("  (gcc missing: skipped)")
        return
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "getpid_loop")
        subprocess.run(["gcc", "-O2", "-o", exe, str(ROOT / "tests/attacks/getpid_loop.c")], check=True)
        progs = {"none": None, "allow-all": ALLOW_ALL}
        progs.update({k: program(SPECS[k], cache=False) for k in ("default", "grader")})
        times: dict[str, list[float]] = {k: [] for k in progs}
        for _ in range(rounds):
            for k, p in progs.items():
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:
                    os.dup2(w, 1)
                    if p is not None:
                        load(p)
                    os.execv(exe, [exe, "500000"])
                os.close(w)
                os.waitpid(pid, 0)
                times[k].append(float(os.read(r, 64)))
                os.close(r)
        best = {k: min(v) for k, v in times.items()}
        for k, v in best.items():
            print(
                f"  {k:9s} {v:7.1f} ns  vs none {100 * (v / best['none'] - 1):+5.1f} %"
                f"  vs allow-all {100 * (v / best['allow-all'] - 1):+5.1f} %"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    print(f"libseccomp {libseccomp_version()}, kernel {os.uname().release}, uid {os.getuid()}")
    bench_compile()
    with tempfile.TemporaryDirectory() as cache:
        program(SPECS["grader"], environ={"XDG_CACHE_HOME": cache})
        bench_cached(cache)
    bench_load()
    bench_getpid(args.rounds)


if __name__ == "__main__":
    main()
