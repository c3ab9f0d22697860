"""Take capabilities back: capset, raise an ambient capability, clear securebits."""

import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import ename, libc, result  # noqa: E402

gained, refused = [], []


def prctl(*args: int) -> tuple[int, int]:
    ctypes.set_errno(0)
    r = libc.prctl(*(ctypes.c_ulong(a) for a in args))
    return r, ctypes.get_errno()


# PR_SET_SECUREBITS 0
r, e = prctl(28, 0, 0, 0, 0)
(gained if r == 0 else refused).append("securebits cleared" if r == 0 else f"securebits: {ename(e)}")
# PR_CAP_AMBIENT_RAISE CAP_SYS_ADMIN
r, e = prctl(47, 2, 21, 0, 0)
(gained if r == 0 else refused).append("ambient CAP_SYS_ADMIN" if r == 0 else f"ambient: {ename(e)}")
# capset: every capability in the effective, permitted and inheritable sets
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
data = (ctypes.c_uint32 * 6)(*([0xFFFFFFFF] * 6))
ctypes.set_errno(0)
r = libc.capset(header, data)
(gained if r == 0 else refused).append("capset all" if r == 0 else f"capset: {ename(ctypes.get_errno())}")
result("privs_regain", bool(gained), ", ".join(gained) if gained else ", ".join(refused))
