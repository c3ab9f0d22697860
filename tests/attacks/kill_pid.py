"""kill(PID, SIGKILL) of a host process of the same user (the test's sentinel).

Inside the sandbox the host's pids do not exist (own pid namespace): ESRCH.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

pid = int(sys.argv[1])
try:
    os.kill(pid, signal.SIGKILL)
    result("kill_pid", True, f"SIGKILL sent to pid {pid}")
except OSError as exc:
    result("kill_pid", False, ename(exc.errno or 0))
