"""Join PID's namespaces through /proc/PID/ns/* (user first, then the rest)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import argv, ename, result, sysc  # noqa: E402

pid = argv(1, "1")
joined, refused = [], []
for ns in ("user", "mnt", "pid", "net", "ipc", "uts", "cgroup"):
    try:
        fd = os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        refused.append(f"{ns}: open {ename(exc.errno or 0)}")
        continue
    if os.readlink(f"/proc/self/ns/{ns}") == os.readlink(f"/proc/{pid}/ns/{ns}"):
        refused.append(f"{ns}: already ours")
        os.close(fd)
        continue
    r, e = sysc("setns", fd, 0)
    os.close(fd)
    (joined if r == 0 else refused).append(f"{ns}" if r == 0 else f"{ns}: setns {ename(e)}")
result("setns", bool(joined), ("joined " + ", ".join(joined)) if joined else "; ".join(refused))
