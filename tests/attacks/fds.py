"""Descriptors inherited from whoever started us, beyond stdin/stdout/stderr."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import result  # noqa: E402

fd_dir = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
extra = []
for name in os.listdir(fd_dir):
    fd = int(name)
    if fd > 2 and fd != fd_dir:
        try:
            extra.append(f"{fd}->{os.readlink(name, dir_fd=fd_dir)}")
        except OSError:
            pass
os.close(fd_dir)
result("fds", bool(extra), ", ".join(sorted(extra)) if extra else "only 0, 1, 2")
