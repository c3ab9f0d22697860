"""Images: run start time on a 100k-file image against a 10-file one, and import
throughput against `tar -x` of the same layer.

    python bench/image.py [--files 100000] [--runs 30] [--import-runs 5] [--only run|import] [--dir DIR]

Both images are busybox plus N small files in a second layer, built offline
from Debian's busybox-static.  Start: `sbx run --image X -- /bin/true`,
alternating, median (goal: within 10%).  Import: `sbx image import` of the
uncompressed OCI layout (both layers) against `tar -x` of its big layer into
an empty directory, and the same again gzip-compressed against `tar -xzf`
(goal: at least 0.8x).  Imports and tars alternate, each into a fresh
directory after `sync` (so neither pays for the other's writeback); the
figures are medians of wall time and of CPU time (user + system of the
command and its children: steadier than wall time on a shared machine).
--dir puts the work directory on another file system (default: the system's
temporary directory).  A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sandbox.image.layout import Layout, compress  # noqa: E402


def files_layer(count: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in range(max(1, count // 1000)):
            info = tarfile.TarInfo(f"data/{d:03d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for i in range(count):
            data = f"file {i}\n".encode()
            info = tarfile.TarInfo(f"data/{i // 1000:03d}/f{i}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def busybox_layer() -> bytes:
    sys.path.insert(0, os.path.join(REPO, "images", "busybox"))
    from build import layer  # type: ignore[import-not-found]

    return bytes(layer("/bin/busybox"))


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one command, its children included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def fresh(path: str) -> None:
    """An empty directory at `path`, with the removal of the old one written back before the next timing."""
    if os.path.exists(path):
        subprocess.run(["chmod", "-R", "u+w", path], check=False)
        shutil.rmtree(path)
    os.mkdir(path)
    os.sync()


def compare_import(work: str, env: dict[str, str], layout: str, layer_tar: str, tar_flags: str, runs: int
                   ) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    sbx: list[tuple[float, float]] = []
    tar: list[tuple[float, float]] = []
    store, target = os.path.join(work, "import-store"), os.path.join(work, "untar")
    for i in range(runs):
        for which in ("sbx", "tar") if i % 2 == 0 else ("tar", "sbx"):
            if which == "sbx":
                fresh(store)
                sbx.append(timed([sys.executable, "-m", "sandbox", "image", "--root", store, "import", "-q",
                                  "--name", "big", layout], env))
            else:
                fresh(target)
                tar.append(timed(["tar", tar_flags, layer_tar, "-C", target]))
    fresh(store)
    fresh(target)
    return sbx, tar


def report(title: str, sbx: list[tuple[float, float]], tar: list[tuple[float, float]], peer: str) -> None:
    print(title)
    for i, what in enumerate(("wall", "CPU ")):
        mine, theirs = statistics.median(t[i] for t in sbx), statistics.median(t[i] for t in tar)
        print(f"  {what}  sbx image import {mine:6.2f} s   {peer:8s} {theirs:6.2f} s   "
              f"(sbx at {theirs / mine:.2f}x {peer.split()[0]}'s speed, goal 0.8x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--import-runs", type=int, default=5)
    parser.add_argument("--only", choices=("run", "import"))
    parser.add_argument("--dir", help="work directory's parent (default: the system's temporary directory)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sbx-bench-image-", dir=args.dir)
    env = dict(os.environ, PYTHONPATH=REPO, SBX_ROOT=os.path.join(work, "store"))
    try:
        base = busybox_layer()
        big = files_layer(args.files)
        for name, count in (("small", 10), ("big", args.files)):
            layer = big if name == "big" else files_layer(count)
            out = os.path.join(work, name)
            Layout(out).index([Layout(out).image([base, layer], {"Cmd": ["/bin/true"]}, compression=None)],
                              ref_name="latest")
        if args.only != "import":
            for name in ("big", "small"):
                subprocess.run([sys.executable, "-m", "sandbox", "image", "import", "-q", "--name", name,
                                os.path.join(work, name)], check=True, env=env, stdout=subprocess.DEVNULL)
            times: dict[str, list[float]] = {"small": [], "big": []}
            for _ in range(args.runs):
                for name in times:
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "sandbox", "run", "--image", name, "--", "/bin/true"],
                                   check=True, env=env, stderr=subprocess.DEVNULL)
                    times[name].append(time.perf_counter() - start)
            small, large = statistics.median(times["small"]), statistics.median(times["big"])
            print(f"run start, median of {args.runs} alternating runs (uid {os.getuid()})")
            print(f"  10-file image        {small * 1000:7.2f} ms")
            print(f"  {args.files}-file image  {large * 1000:7.2f} ms   ({(large / small - 1) * 100:+.1f}%, "
                  "goal within 10%)")
        if args.only != "run":
            gz = os.path.join(work, "big-gz")
            Layout(gz).index([Layout(gz).image([base, big], {"Cmd": ["/bin/true"]}, compression="gzip")],
                             ref_name="latest")
            layer_tar, layer_gz = os.path.join(work, "big.tar"), os.path.join(work, "big.tar.gz")
            with open(layer_tar, "wb") as f:
                f.write(big)
            with open(layer_gz, "wb") as f:
                f.write(compress(big, "gzip"))
            fs = subprocess.run(["stat", "-f", "-c", "%T", work], capture_output=True, text=True).stdout.strip()
            size = len(big) / (1 << 20)
            print(f"import of the {size:.1f} MiB, {args.files}-file layer (plus busybox) into {fs}, "
                  f"median of {args.import_runs} alternating runs (uid {os.getuid()})")
            sbx, tar = compare_import(work, env, os.path.join(work, "big"), layer_tar, "-xf", args.import_runs)
            report(" uncompressed", sbx, tar, "tar -x")
            sbx, tar = compare_import(work, env, gz, layer_gz, "-xzf", args.import_runs)
            report(" gzip", sbx, tar, "tar -xz")
    finally:
        subprocess.run(["chmod", "-R", "u+w", work], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
