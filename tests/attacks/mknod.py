"""mknod a block device for the host's disk (MAJOR MINOR) and read its first sector."""

import os
import stat
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import argv, ename, result  # noqa: E402

major, minor = int(sys.argv[1]), int(sys.argv[2])
where = argv(3, "") or tempfile.mkdtemp(prefix="sbx-mknod-")
node = os.path.join(where, "disk")
try:
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(major, minor))
except OSError as exc:
    result("mknod", False, f"mknod: {ename(exc.errno or 0)}")
    sys.exit(0)
try:
    fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 512)
    finally:
        os.close(fd)
    result("mknod", True, f"read {len(data)} bytes of block device {major}:{minor}")
except OSError as exc:
    result("mknod", False, f"mknod worked but open: {ename(exc.errno or 0)}")
finally:
    os.unlink(node)
