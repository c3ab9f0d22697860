"""Write to /proc/sysrq-trigger ('h' only prints the help to the kernel log)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

try:
    fd = os.open("/proc/sysrq-trigger", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, b"h")
    finally:
        os.close(fd)
    result("sysrq", True, "wrote to /proc/sysrq-trigger")
except OSError as exc:
    result("sysrq", False, ename(exc.errno or 0))
