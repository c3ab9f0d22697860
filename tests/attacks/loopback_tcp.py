"""Reach a TCP service that listens on the host's loopback only (127.0.0.1:PORT),
directly and through the default gateway (where user-mode networking may map
the host's loopback)."""

import os
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

port = int(sys.argv[1])
targets = ["127.0.0.1"]
try:
    with open("/proc/net/route") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                targets.append(socket.inet_ntoa(struct.pack("<I", int(fields[2], 16))))
except OSError:
    pass
refused = []
for host in targets:
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            greeting = s.recv(64).decode(errors="replace")
        result("loopback_tcp", True, f"{host}:{port} answered {greeting!r}")
        sys.exit(0)
    except OSError as exc:
        refused.append(f"{host}: {ename(exc.errno) if exc.errno else type(exc).__name__}")
result("loopback_tcp", False, "; ".join(refused))
