"""Find a victim's secret by reading its memory through /proc/PID/mem.

mem_scan.py PID: the victim's pid as the host sees it.  Also scans every
process visible in /proc, in case another sandbox's were there.
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

PATTERN = re.compile(rb"SBXSECRET-[0-9a-f]{32}")


def scan(pid: str) -> bytes | None:
    with open(f"/proc/{pid}/maps") as maps:
        regions = [line.split() for line in maps]
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for region in regions:
            if not region[1].startswith("rw"):
                continue
            start, end = (int(x, 16) for x in region[0].split("-"))
            if end - start > 64 << 20:
                continue
            try:
                found = PATTERN.search(os.pread(fd, end - start, start))
            except OSError:
                continue
            if found:
                return found.group()
    finally:
        os.close(fd)
    return None


target = sys.argv[1]
refused = []
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (os.getpid(), 1)]
for pid in [target, *others]:
    try:
        secret = scan(pid)
    except OSError as exc:
        refused.append(f"{pid}: {ename(exc.errno or 0)}")
        continue
    if secret:
        result("mem_scan", True, f"found {secret.decode()} in pid {pid}")
        sys.exit(0)
    refused.append(f"{pid}: no secret")
result("mem_scan", False, "; ".join(refused))
