"""Network modes: start-up cost against `none`, and bulk TCP throughput through
pasta against host networking.

    python bench/network.py [--runs 40] [--megabytes 256]

Start-up: `sbx run --network MODE -- /bin/true`, modes alternating, median.
Throughput: a sink on the host's loopback; the payload sends N MiB to it,
through pasta's gateway mapping (pasta --host-loopback) or straight to
127.0.0.1 (host).
Only loopback is used.  A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sandbox.net import network as net  # noqa: E402

SBX = [sys.executable, "-m", "sandbox", "run"]
SEND = ("import socket, sys, time\nn = int(sys.argv[3]) << 20\nbuf = b'x' * (1 << 20)\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\nt = time.perf_counter()\n"
        "for _ in range(n >> 20):\n    s.sendall(buf)\ns.shutdown(socket.SHUT_WR)\ns.recv(1)\n"
        "print(time.perf_counter() - t)")


def sink() -> int:
    """A loopback server that swallows each connection's bytes, then answers one byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            with conn:
                while conn.recv(1 << 20):
                    pass
                conn.sendall(b"k")

    threading.Thread(target=serve, daemon=True).start()
    return int(server.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--megabytes", type=int, default=256)
    args = parser.parse_args()
    env = dict(os.environ, PYTHONPATH=REPO)
    modes = ("none", "host", "pasta")
    times: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(args.runs):
        for mode in modes:
            start = time.perf_counter()
            subprocess.run([*SBX, "--network", mode, "--", "/bin/true"], check=True, env=env,
                           stderr=subprocess.DEVNULL)
            times[mode].append(time.perf_counter() - start)
    base = statistics.median(times["none"])
    helper = net.helper_name(net.find_helper(os.environ))
    print(f"start-up, median of {args.runs} alternating runs (uid {os.getuid()}, helper: {helper})")
    for mode in modes:
        median = statistics.median(times[mode])
        print(f"  {mode:6} {median * 1000:7.2f} ms  (+{(median - base) * 1000:.2f} ms against none)")
    port = sink()
    gateway = net.host_gateway()
    rates = {}
    for mode, address in (("host", "127.0.0.1"), ("pasta", gateway)):
        extra = ["--host-loopback"] if mode == "pasta" else []  # the sink is on the host's loopback
        result = subprocess.run([*SBX, "--network", mode, *extra, "--", "python3", "-c", SEND, str(address), str(port),
                                 str(args.megabytes)], check=True, env=env, capture_output=True, text=True)
        rates[mode] = args.megabytes / float(result.stdout.strip())
    print(f"bulk TCP, {args.megabytes} MiB from the sandbox to a host loopback sink")
    for mode, rate in rates.items():
        print(f"  {mode:6} {rate:8.0f} MiB/s")
    print(f"  pasta / host {rates['pasta'] / rates['host']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
