"""Pull throughput from a loopback registry: `sbx image pull` against `skopeo copy docker://... oci:DIR`.

Starts Debian's docker-registry on 127.0.0.1 (storage in a temporary
directory), pushes one image of random layers with skopeo (which gzips them,
as registries usually serve them), then alternates cold pulls:

    skopeo copy --src-tls-verify=false docker://HOST/bench:1 oci:DIR:1     download + verify
    sbx image pull HOST/bench:1 (fresh store)                              download + verify + extract
    sbx's download step alone (pull.download on a thread pool)             download + verify

and prints the median MiB/s (compressed bytes over wall time) and ratios.

    apt-get install docker-registry skopeo
    python bench/pull.py [--layers 4] [--mib 12] [--runs 3]

A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox.image import extract, oci, pull, ref  # noqa: E402
from sandbox.image.layout import Layout  # noqa: E402


def random_layer(index: int, size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(f"data-{index}")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def start_registry(work: str) -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = os.path.join(work, "registry.yml")
    with open(config, "w") as file:
        json.dump({"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                   "storage": {"filesystem": {"rootdirectory": os.path.join(work, "storage")}},
                   "http": {"addr": f"127.0.0.1:{port}"}}, file)
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
            return f"127.0.0.1:{port}", proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def sbx_pull(name: str, work: str) -> float:
    store = tempfile.mkdtemp(dir=work)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sandbox", "image", "--root", store, "pull", "-q", name], check=True,
                   stdout=subprocess.DEVNULL,
                   env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    elapsed = time.perf_counter() - start
    extract.remove_tree(store)  # layers are read-only directories
    return elapsed


def sbx_download(name: str, work: str, layers: list[oci.Descriptor]) -> float:
    out = tempfile.mkdtemp(dir=work)
    client = pull.Client(ref.parse(name))
    stop = threading.Event()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=pull.JOBS) as pool:
        for future in [pool.submit(pull.download, client, d, os.path.join(out, d.digest[7:]), None, stop)
                       for d in layers]:
            future.result()
    elapsed = time.perf_counter() - start
    shutil.rmtree(out)
    return elapsed


def skopeo_pull(name: str, work: str) -> float:
    out = os.path.join(tempfile.mkdtemp(dir=work), "oci")
    start = time.perf_counter()
    subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{name}", f"oci:{out}:1"],
                   check=True)
    elapsed = time.perf_counter() - start
    shutil.rmtree(os.path.dirname(out))
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--mib", type=int, default=12, help="MiB of random data per layer")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (Debian package '{tool}')", file=sys.stderr)
            return 1
    work = tempfile.mkdtemp(prefix="sbx-bench-pull-")
    host, proc = start_registry(work)
    try:
        layout = Layout(os.path.join(work, "layout"))
        layout.index([layout.image([random_layer(i, args.mib << 20) for i in range(args.layers)], {},
                                   compression=None)], ref_name="1")
        name = f"{host}/bench:1"
        subprocess.run(["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout.path}:1", f"docker://{name}"],
                       check=True)
        client = pull.Client(ref.parse(name))
        body, _media, _digest = pull.fetch_manifest(client, "1", None)
        layers = [oci.descriptor(d, "layer") for d in json.loads(body)["layers"]]
        total = sum(d.size for d in layers)
        times: dict[str, list[float]] = {"skopeo": [], "sbx": [], "sbx-download": []}
        for _ in range(args.runs):
            times["skopeo"].append(skopeo_pull(name, work))
            times["sbx"].append(sbx_pull(name, work))
            times["sbx-download"].append(sbx_download(name, work, layers))
        rate = {key: total / (1 << 20) / statistics.median(value) for key, value in times.items()}
        print(f"image: {len(layers)} gzip layers, {total / (1 << 20):.1f} MiB from {host}, median of {args.runs}")
        print(f"skopeo copy docker:// oci:  {rate['skopeo']:8.1f} MiB/s  (download + verify)")
        print(f"sbx image pull:             {rate['sbx']:8.1f} MiB/s  (download + verify + extract + commit)")
        print(f"sbx download step only:     {rate['sbx-download']:8.1f} MiB/s  (download + verify)")
        print(f"ratio sbx pull / skopeo: {rate['sbx'] / rate['skopeo']:.2f}x; "
              f"sbx download / skopeo: {rate['sbx-download'] / rate['skopeo']:.2f}x")
    finally:
        proc.terminate()
        proc.wait()
        extract.remove_tree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
