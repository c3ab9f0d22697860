"""Pid 2: wait for the supervisor's release, shed every privilege, exec.

Runs in a fork of init after the root is pivoted.  Nothing here may return:
every path ends in execve or os._exit.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up
import os
import resource

from . import linux
from . import seccomp
from .errors import EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SBX
from .handoff import RELEASE, Handoff
from .spec import Spec


def _reset_signals() -> None:
    # Python ignores SIGPIPE and SIGXFSZ; exec keeps ignored signals, so undo that.
    for signum in range(1, _signal.NSIG):
        if signum in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())


def _enter_nested_userns(uid: int, gid: int) -> None:
    """Run as uid/gid inside: a child user namespace mapping them to our root, as bwrap does."""
    linux.unshare(linux.CLONE_NEWUSER)
    linux.map_ids(uid, 0, gid, 0)


def _drop_privileges(last_cap: int) -> None:
    for cap in range(last_cap + 1):
        linux.prctl(linux.PR_CAPBSET_DROP, cap)
    linux.prctl(linux.PR_SET_SECUREBITS, linux.SECURE_ALL_LOCKED)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    linux.clear_capabilities()
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)


def _set_rlimits(spec: Spec) -> None:
    limits = spec.limits
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if limits.time is not None:
        seconds = max(1, int(limits.time + 0.999))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    for which, value in ((resource.RLIMIT_FSIZE, limits.file_size), (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_STACK, limits.stack), (resource.RLIMIT_AS, limits.memory)):
        if value is not None:
            resource.setrlimit(which, (value, value))


def _close_fds(keep: list[int]) -> None:
    low = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 20)


def _send(sock_fd: int, data: bytes, fd: int = -1) -> None:
    """A message to the supervisor; the kernel adds our credentials (it set SO_PASSCRED)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM, 0, sock_fd)  # no probing syscalls
    try:
        ancillary = [] if fd < 0 else [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, "little"))]
        sock.sendmsg([data], ancillary)
    finally:
        sock.detach()


def main(spec: Spec, handoff: Handoff, last_cap: int) -> None:
    """Everything but execve happens before the release, so the run's figures hold none of it."""
    code = EXIT_SBX
    exec_w = handoff.exec_w
    try:
        _reset_signals()
        for target, fd in enumerate(handoff.stdio):
            if fd != target:
                os.dup2(fd, target)
        if not spec.tty:
            os.setsid()  # no controlling terminal: no TIOCSTI into the caller's
        _set_rlimits(spec)
        if spec.uid != 0 or spec.gid != 0:
            # init is not dumpable and we inherited that: our /proc files would belong to the
            # host's root, and the id maps could not be written.  exec resets it anyway.
            linux.prctl(linux.PR_SET_DUMPABLE, 1)
            _enter_nested_userns(spec.uid, spec.gid)
        os.chdir(spec.workdir)
        _drop_privileges(last_cap)
        _close_fds([exec_w, handoff.release_r, handoff.channel_w, *spec.pass_fds])
        for fd in spec.pass_fds:
            os.set_inheritable(fd, True)
        listener = -1
        if handoff.seccomp is not None:
            # Last, so the filter need not allow anything sbx itself does (read, sendmsg and
            # execve are all that follow).
            listener = seccomp.load(handoff.seccomp, listener=spec.seccomp.action == "kill")
        # Our pid (the kernel adds our credentials), so the supervisor can put us in the run
        # cgroup, and the seccomp listener, whose copy here closes on exec.
        _send(handoff.channel_w, b"P", listener)
        if os.read(handoff.release_r, 1) != RELEASE:
            os._exit(EXIT_SBX)  # the supervisor is gone: never run unsupervised
        code = EXIT_NOTFOUND
        os.execvpe(spec.argv[0], list(spec.argv), dict(spec.env))
    except OSError as exc:
        if code != EXIT_NOTFOUND:
            message = f"E {exc}"
        else:
            if exc.errno not in (2, 20):  # ENOENT, ENOTDIR
                code = EXIT_NOEXEC
            message = f"X {exc.errno}"
        try:
            os.write(exec_w, message.encode(errors="replace")[:4000])
        finally:
            os._exit(code)
    except BaseException as exc:
        try:
            os.write(exec_w, f"E {exc!r}".encode(errors="replace")[:4000])
        finally:
            os._exit(code)
