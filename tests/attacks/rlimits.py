"""Raise hard resource limits above what the sandbox set (RLIMIT_CORE is always 0)."""

import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, result  # noqa: E402

raised, refused = [], []
for name in ("CORE", "CPU", "FSIZE", "NOFILE", "STACK", "AS", "NPROC"):
    which = getattr(resource, "RLIMIT_" + name)
    soft, hard = resource.getrlimit(which)
    if hard == resource.RLIM_INFINITY:
        continue
    want = resource.RLIM_INFINITY if name != "NOFILE" else hard + 1
    try:
        resource.setrlimit(which, (soft, want))
        raised.append(f"{name} {hard} -> {resource.getrlimit(which)[1]}")
    except (OSError, ValueError) as exc:
        refused.append(f"{name}: {ename(getattr(exc, 'errno', None) or 1)}")
if not raised and not refused:
    result("rlimits", False, "no finite hard limit to raise")
else:
    result("rlimits", bool(raised), "; ".join(raised) if raised else "; ".join(refused))
