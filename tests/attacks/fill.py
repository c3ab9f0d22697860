"""Fill DIR with up to MAX MiB; report where the writes stopped."""

import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

where, limit = sys.argv[1], int(sys.argv[2])
path = os.path.join(where, sys.argv[3] if len(sys.argv) > 3 else "sbx-fill")
chunk = b"\xa5" * (1 << 20)
written = 0
try:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        while written < limit << 20:
            written += os.write(fd, chunk)
        result("fill", True, f"wrote {written} bytes ({limit} MiB) to {where}")
    finally:
        os.close(fd)
except OSError as exc:
    st = os.statvfs(where)
    result("fill", False, f"{ename(exc.errno or 0)} after {written} bytes (a filesystem of {st.f_blocks * st.f_frsize} bytes)")
finally:
    try:
        os.unlink(path)
    except OSError:
        pass
