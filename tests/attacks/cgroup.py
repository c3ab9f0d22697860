"""Reach cgroupfs: through /sys/fs/cgroup, or by mounting cgroup2 ourselves.

A mounted cgroup2 is only listed (cgroup.controllers), never written, and
unmounted again.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result, sysc  # noqa: E402

notes = []
if os.path.isdir("/sys/fs/cgroup"):
    writable = os.access("/sys/fs/cgroup", os.W_OK)
    notes.append(f"/sys/fs/cgroup exists ({'writable' if writable else 'read-only'})")
else:
    notes.append("no /sys/fs/cgroup")
where = tempfile.mkdtemp(prefix="sbx-cg-")
try:
    r, e = sysc("mount", b"none", where.encode(), b"cgroup2", 0, 0)
    if r == 0:
        try:
            n = len(os.listdir(where))
        finally:
            sysc("umount2", where.encode(), 2)
        result("cgroup", True, f"mounted cgroup2 ({n} entries); " + "; ".join(notes))
    else:
        result("cgroup", False, f"mount cgroup2: {ename(e)}; " + "; ".join(notes))
finally:
    os.rmdir(where)
