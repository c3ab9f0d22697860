"""What privileges the process holds: capability sets, securebits, no_new_privs, seccomp."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import libc, result  # noqa: E402

PR_GET_SECUREBITS, PR_GET_NO_NEW_PRIVS = 27, 39
# SECBIT_NOROOT(_LOCKED), NO_SETUID_FIXUP(_LOCKED), NO_CAP_AMBIENT_RAISE(_LOCKED)
LOCKED = 0x01 | 0x02 | 0x04 | 0x08 | 0x40 | 0x80
status = {}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        status[key] = value.strip()
held = [f"{k}={status[k]}" for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb") if int(status[k], 16)]
bits = libc.prctl(PR_GET_SECUREBITS, 0, 0, 0, 0)
if bits & LOCKED != LOCKED:
    held.append(f"securebits={bits:#x}")
nnp = libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
if nnp != 1:
    held.append(f"no_new_privs={nnp}")
summary = f"caps 0, securebits {bits:#x}, no_new_privs {nnp}, seccomp {status.get('Seccomp')}"
result("privs", bool(held), ", ".join(held) if held else summary)
