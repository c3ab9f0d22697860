"""Images: run start time on a 100k-file image against a 10-file one, and import
throughput against `tar -x` of the same layer.

    python bench/image.py [--files 100000] [--runs 30]

Both images are busybox plus N small files in a second layer, built offline
from Debian's busybox-static.  Start: `sbx run --image X -- /bin/true`,
alternating, median (goal: within 10%).  Import: `sbx image import` of the
uncompressed OCI layout against `tar -x` of its big layer into an empty
directory (goal: at least 0.8x).  A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sandbox.image.layout import Layout  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="sbx-bench-image-")
    env = dict(os.environ, PYTHONPATH=REPO, SBX_ROOT=os.path.join(work, "store"))
    try:
        base = busybox_layer()
        big = files_layer(args.files)
        for name, count in (("small", 10), ("big", args.files)):
            layer = big if name == "big" else files_layer(count)
            out = os.path.join(work, name)
            Layout(out).index([Layout(out).image([base, layer], {"Cmd": ["/bin/true"]}, compression=None)],
                              ref_name="latest")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sandbox", "image", "import", "-q", "--name", "big",
                        os.path.join(work, "big")], check=True, env=env)
        sbx_import = time.perf_counter() - start
        subprocess.run([sys.executable, "-m", "sandbox", "image", "import", "-q", "--name", "small",
                        os.path.join(work, "small")], check=True, env=env)
        layer_tar = os.path.join(work, "big.tar")
        with open(layer_tar, "wb") as f:
            f.write(big)
        target = os.path.join(work, "untar")
        os.mkdir(target)
        start = time.perf_counter()
        subprocess.run(["tar", "-x", "-f", layer_tar, "-C", target], check=True)
        tar_time = time.perf_counter() - start
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
        print(f"  {args.files}-file image  {large * 1000:7.2f} ms   ({(large / small - 1) * 100:+.1f}%, goal within 10%)")
        size = len(big) / (1 << 20)
        print(f"import of the {size:.1f} MiB, {args.files}-file layer (plus busybox)")
        print(f"  sbx image import     {sbx_import:7.2f} s")
        print(f"  tar -x               {tar_time:7.2f} s   (sbx at {tar_time / sbx_import:.2f}x tar's speed, goal 0.8x)")
    finally:
        subprocess.run(["chmod", "-R", "u+w", work], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
