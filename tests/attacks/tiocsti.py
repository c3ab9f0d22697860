"""Push a character into the input of the terminal we were started from (TIOCSTI):
/dev/tty if we have a controlling terminal, else whatever terminal stdin is."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result, sysc  # noqa: E402

notes = []
try:
    fd = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
    notes.append("/dev/tty opened")
except OSError as exc:
    notes.append(f"/dev/tty: {ename(exc.errno or 0)}")
    fd = 0
r, e = sysc("ioctl", fd, 0x5412, b"#")
if r == 0:
    result("tiocsti", True, "injected a byte; " + "; ".join(notes))
else:
    result("tiocsti", False, f"TIOCSTI {ename(e)}; " + "; ".join(notes))
