"""Read the host's secrets: /etc/shadow, /root, the caller's home, a file of the test's.

host_files.py HOME MARKER_FILE
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

home, marker = sys.argv[1], sys.argv[2]
got, refused = [], []


def read(path: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
        (got if data else refused).append(f"{path}: {len(data)} bytes" if data else f"{path}: empty")
    except OSError as exc:
        refused.append(f"{path}: {ename(exc.errno or 0)}")


def listing(path: str) -> None:
    try:
        names = os.listdir(path)
        (got if names else refused).append(f"{path}: {len(names)} entries" if names else f"{path}: empty")
    except OSError as exc:
        refused.append(f"{path}: {ename(exc.errno or 0)}")


read("/etc/shadow")
read(marker)
listing("/root")
listing(home)
result("host_files", bool(got), "; ".join(got) if got else "; ".join(refused))
