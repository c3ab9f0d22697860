"""Read a /proc file sbx masks (keys, kcore, timer_list, sched_debug...).

With --add-key (the control only) a key is added to our own process keyring
first, so that /proc/keys has something to show.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import buf, ename, result, sysc  # noqa: E402

name = sys.argv[1]
if "--add-key" in sys.argv:
    sysc("add_key", b"user", b"sbx-attack", buf(b"x"), 1, -2)
try:
    fd = os.open(f"/proc/{name}", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
except OSError as exc:
    result(f"proc_{name}", False, ename(exc.errno or 0))
    sys.exit(0)
if data:
    result(f"proc_{name}", True, f"{len(data)} bytes")
else:
    kind = "a character device" if (st.st_mode & 0o170000) == 0o020000 else "a file"
    result(f"proc_{name}", False, f"empty ({kind}: masked)")
