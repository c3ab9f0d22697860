"""kill(-1, SIGKILL): every process the caller may signal, except itself and init.

Only ever run where a pid namespace bounds it: it refuses (and reports an
escape) when it can see more than a handful of processes, so that a broken
sandbox, or a wrong control, cannot take the host down with it.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

visible = [p for p in os.listdir("/proc") if p.isdigit()]
if len(visible) > 8:
    result("kill_all", True, f"sees {len(visible)} processes: not in a pid namespace of its own; refused to kill(-1)")
    sys.exit(0)
try:
    os.kill(-1, signal.SIGKILL)
    result("kill_all", True, f"kill(-1) signalled someone ({len(visible)} processes visible)")
except OSError as exc:
    # init (pid 1) is spared by kill(-1); ESRCH: nobody else was in reach.  Init must still be
    # there: EPERM says it is (it is root's, the payload under id ranges is not).
    try:
        os.kill(1, 0)
    except PermissionError:
        pass
    result("kill_all", False, f"{ename(exc.errno or 0)} ({len(visible)} processes visible)")
