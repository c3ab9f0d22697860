"""sbx-waiter, the compiled payload (waiter.c): where it is, and when it is used.

A payload waits for its command (a warm sandbox is built before it is known).  A payload forked
from init is a copy of the interpreter: the fork, its copy-on-write faults, and the teardown at
the command's execve cost ~2 ms of CPU per sandbox (bench/floor.py), ~0.9 ms of it on every
warm run's path and in the run cgroup's CPU figure.  So where the program was built (setup.py,
where a C compiler is), init starts it directly (payload.spawn_waiter: posix_spawn) and it does
the payload's set-up from init's plan, then the steps after the command wait, from a few pages.
Where init cannot spawn it, the forked Python payload does the set-up and then execs it.

The Runner's zygote copies the program into a sealed memfd once (open_program; `sbx run` once
per run, spawn.Prepared.start), and the sandboxes exec that: the installed file lies outside the sandbox's root, where Landlock would not
let it be executed, and the payload, the caller's own uid without id ranges, could change a file
the caller owns; nobody can change a sealed memfd.  Without the program, or where its exec
fails, the payload goes on in Python: same messages, same results.
"""

from __future__ import annotations

import os

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sbx-waiter")
SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "waiter.c")
# How setup.py compiles it (and tests/test_waiter.py for arm64): freestanding (waiter.c says why),
# so no libc, no start files, no stack protector (it needs libc's canary), a fixed-address static
# program, stripped.
CFLAGS = ("-Os", "-std=gnu11", "-Wall", "-ffreestanding", "-static", "-nostdlib", "-fno-stack-protector", "-fno-pie",
          "-no-pie", "-fno-asynchronous-unwind-tables", "-Wl,--build-id=none", "-s")

# Every system call the waiter makes under the filter: from its exec on where the Python payload
# loaded it (execveat is that payload's, to start it), after its own set-up where it loads it
# itself (it has no libc).  A seccomp filter loaded before the command wait that denies one of
# these keeps the payload in Python (payload.waits_in_waiter).
CALLS = frozenset(("execve", "execveat", "prctl", "fcntl", "read", "write", "close", "mmap", "recvmsg", "dup3",
                   "openat", "prlimit64", "sendmsg", "exit_group"))

_MFD_EXEC = 0x10  # Linux 6.3: says the memfd may be executed (else vm.memfd_noexec may warn or refuse)


def open_program() -> int:
    """A sealed, close-on-exec memfd holding the program; -1 where it was not built, or where it
    cannot be copied (no memfd, no sealing)."""
    import fcntl

    try:
        with open(PROGRAM, "rb") as source:
            data = source.read()
    except OSError:
        return -1
    flags = os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING
    try:
        try:
            fd = os.memfd_create("sbx-waiter", flags | _MFD_EXEC)
        except OSError:
            fd = os.memfd_create("sbx-waiter", flags)  # before 6.3: every memfd may be executed
    except OSError:
        return -1
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    except OSError:
        os.close(fd)
        return -1
    return fd
