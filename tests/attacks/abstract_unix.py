"""Connect to the abstract unix socket @NAME the test listens on, on the host."""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

name = sys.argv[1]
try:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
except OSError as exc:
    result("abstract_unix", False, f"socket: {ename(exc.errno or 0)}")
    sys.exit(0)
try:
    s.settimeout(5)
    s.connect("\0" + name)
    result("abstract_unix", True, f"connected to @{name}: {s.recv(64).decode(errors='replace')}")
except OSError as exc:
    result("abstract_unix", False, f"connect: {ename(exc.errno or 0)}")
