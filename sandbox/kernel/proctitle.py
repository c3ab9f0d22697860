"""Hide the caller's command line and environment from /proc/PID/cmdline and /proc/PID/environ.

The entry process and init are forks of the `sbx` process (or of the
zygote), so the memory those two files read, the argv and environment
strings the kernel put at the top of the stack at execve, is the caller's:
`-e` values, host paths, an interactor's arguments (a secret of the
problem).  /proc/1/cmdline is readable by anyone in the pid namespace, dumpable
or not.  `scrub` zeroes both areas in place and writes a short name where
argv[0] was; a fork made after it inherits the scrubbed copy.

prctl(PR_SET_MM_ARG_START...) could point the kernel elsewhere, but needs
CAP_SYS_RESOURCE in the initial user namespace.  Nothing reads those areas
later: CPython copied argv and the environment at start-up (sys.argv,
sys.orig_argv, Py_GetArgcArgv, os.environ are heap copies), and the C
library's `environ`, which pointed into the area, is emptied with
clearenv() (what a child exec'd with the inherited environment, such as
nft, then gets); its `program_invocation_name` is argv[0], now the name.
"""

from __future__ import annotations

import ctypes
import os

from . import linux


def _areas() -> tuple[int, int, int, int]:
    """arg_start, arg_end, env_start, env_end: /proc/self/stat fields 48-51 (Linux 3.5+)."""
    fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        stat = os.read(fd, 4096)
    finally:
        os.close(fd)
    fields = stat[stat.rindex(b")") + 2:].split()  # after comm, which may hold spaces: field 3 on
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    return arg_start, arg_end, env_start, env_end


def scrub(name: str) -> None:
    """Zero this process's argv and environment strings; /proc/PID/cmdline then reads `name`.

    Raises OSError if /proc/self/stat cannot be read or lacks the fields:
    the caller fails closed.
    """
    arg_start, arg_end, env_start, env_end = _areas()
    if not (0 < arg_start <= arg_end and 0 < env_start <= env_end):
        raise OSError(0, "cannot hide the command line: /proc/self/stat has no argument area")
    linux.libc.clearenv()  # its handle: a new CDLL(None) costs 10 us
    ctypes.memset(env_start, 0, env_end - env_start)
    size = arg_end - arg_start
    ctypes.memset(arg_start, 0, size)
    title = name.encode()[: max(size - 2, 0)]
    ctypes.memmove(arg_start, title, len(title))
    if size >= len(title) + 2:
        # A non-NUL last byte is the kernel's sign of a rewritten title (setproctitle): it then
        # reads up to the first NUL, so cmdline is the name alone, not the name and the padding.
        ctypes.memset(arg_end - 1, 0x20, 1)
