"""Inside the sandbox: the namespace entry process and pid 1.

The supervisor forks `enter`, which creates the namespaces (a user namespace
mapping root inside to the caller, plus mount, pid, ipc, uts, cgroup and
usually net) and forks pid 1 (`init`).  Init builds the root filesystem,
forks the payload (pid 2), reaps orphans and forwards signals.  When the
payload exits, init kills everything left, reaps it, reports the payload's
status and the sandbox's rusage, and exits, which ends the pid namespace.

Each of these processes dies with its parent (PR_SET_PDEATHSIG), so killing
the supervisor, even with SIGKILL, brings the whole sandbox down.

Both report to the supervisor on one pipe (protocol.py): init's pid as the supervisor
sees it (Started, from enter), the root built (Ready), a failed set-up (Failed), and the
payload's end (Exited).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up
import os
import resource
import sys

from ..errors import EXIT_SBX, SbxError
from ..kernel import linux
from ..model.spec import Spec
from .protocol import (FORWARDED, SHM_RMID_FORCED, Exited, Failed, Handoff, Ready, Started, say, say_stamp,
                       send_kept_layer)


def preload() -> None:
    """Import everything the sandbox's processes use after pivot_root, and what builds the root.

    The new root need not hold the interpreter's stdlib (an image; a pyenv Python whose stdlib
    is not under /usr failed `--network host` with "No module named 'fcntl'"), so nothing may be
    imported after the pivot: what runs there (payload.py, protocol.py, landlock.py,
    seccomp/load.py) imports the rest at its top, and only these lazily; payload.exec_command
    searches PATH itself (os.execvpe would import warnings).  tests/test_preload.py runs each
    such path in an image, where the host's stdlib is out of reach.

    Called as this module is imported, by the supervisor (spawn.py) or the warm zygote, before
    any fork: imported in the entry process instead, the modules cost more (every page they
    write is a copy-on-write fault after the fork), even where the import would overlap the
    supervisor's writing of the id maps.
    """
    import fcntl  # noqa: F401  (payload._dup_above)
    import stat  # noqa: F401  (landlock._kind)

    from ..seccomp import load  # noqa: F401
    from . import payload, rootfs  # noqa: F401


preload()


def _fail(report_w: int, exc: BaseException, debug: bool) -> None:
    if isinstance(exc, SbxError):
        message = str(exc)
    elif isinstance(exc, OSError):
        message = f"cannot set up the sandbox: {exc.strerror if exc.filename is None else exc}"
        if exc.args and isinstance(exc.args[-1], str) and ":" in exc.args[-1]:
            message = f"cannot set up the sandbox: {exc.args[-1]}"
    else:
        message = f"cannot set up the sandbox: {exc!r}"
    if debug:
        import traceback

        traceback.print_exception(exc)
    try:
        say(report_w, Failed(message))
    finally:
        os._exit(EXIT_SBX)


def enter(spec: Spec, handoff: Handoff, supervisor: int) -> None:
    """The supervisor's child: create the namespaces, fork init, wait for it."""
    report_w = handoff.report_w
    try:
        if spec.stamps:
            say_stamp(report_w, "entry")
        linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
        linux.set_name("sbx-entry")
        linux.scrub_title("sbx-entry")  # the caller's argv and environment: init is forked from here
        if os.getppid() != supervisor:
            os._exit(EXIT_SBX)
        # Only this sandbox's own fds: in a supervisor running several sandboxes at once, a copy
        # of another run's pipe held here would keep that run from ever seeing EOF.
        linux.close_fds_but(handoff.all())
        for signum in FORWARDED:
            _signal.signal(signum, _signal.SIG_IGN)  # the supervisor forwards them to init
        if not spec.tty:
            os.setsid()  # keep terminal signals for the supervisor alone
        uid, gid = os.getuid(), os.getgid()
        flags = (linux.CLONE_NEWUSER | linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC
                 | linux.CLONE_NEWUTS | linux.CLONE_NEWCGROUP)
        if spec.network != "host":
            flags |= linux.CLONE_NEWNET
        try:
            linux.unshare(flags)
        except OSError as exc:
            raise SbxError(f"cannot create user namespace: {exc.strerror} (run 'sbx doctor' for the host's "
                           "user-namespace settings)") from None
        if handoff.maps is None:
            linux.map_ids(0, uid, 0, gid)
        else:  # id ranges: only our parent may write such maps
            from ..kernel import idmap

            if not idmap.announce_unshared(*handoff.maps):
                os._exit(EXIT_SBX)  # the parent could not map them; it says why
            for fd in handoff.maps:
                os.close(fd)
        if spec.stamps:
            say_stamp(report_w, "unshared")
        pid = os.fork()
        if pid == 0:
            init(spec, handoff)
        for fd in (*handoff.payload_only(), *((handoff.keep_w,) if handoff.keep_w >= 0 else ())):
            os.close(fd)
        say(report_w, Started(pid))
        os.close(report_w)
        while True:
            try:
                os.waitpid(pid, 0)
                break
            except ChildProcessError:
                break
        os._exit(0)
    except BaseException as exc:
        _fail(report_w, exc, spec.debug)


SIOCSIFFLAGS = 0x8914  # linux/sockios.h
IFF_UP, IFF_RUNNING = 0x1, 0x40  # linux/if.h


def _loopback_up() -> None:
    import _socket
    import fcntl

    # struct ifreq: char ifr_name[16], short ifr_flags, padding to 40 bytes (no `struct` import)
    ifreq = b"lo".ljust(16, b"\0") + (IFF_UP | IFF_RUNNING).to_bytes(2, sys.byteorder) + bytes(22)
    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, ifreq)
    finally:
        sock.close()


def _open_shm_rmid_forced() -> int:
    """This IPC namespace's shm_rmid_forced, opened through the host's /proc while we still see it
    (ours will have /proc/sys read-only); root of the namespace may write its own IPC sysctls since
    Linux 5.19.  -1 where it cannot be opened."""
    try:
        return os.open("/proc/sys/kernel/shm_rmid_forced", os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return -1


def init(spec: Spec, handoff: Handoff) -> None:
    """Pid 1 of the new pid namespace."""
    report_w = handoff.report_w
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
        linux.prctl(linux.PR_SET_DUMPABLE, 0)  # the payload must not ptrace or read init's memory
        linux.set_name("sbx-init")
        linux.scrub_title("sbx-init")  # /proc/1/cmdline: readable by the payload
        linux.sethostname(spec.hostname)
        if spec.network != "host":
            _loopback_up()
        if handoff.nft is not None:
            from ..net.egress import apply_rules

            apply_rules(handoff.nft, debug=spec.debug)
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            last_cap = int(f.read())
        shm_rmid_forced = _open_shm_rmid_forced()
        from . import payload as payload_mod
        from . import rootfs

        root = rootfs.Root(spec)
        root.build()
        if spec.stamps:
            say_stamp(report_w, "root-built")
        if handoff.keep_w >= 0:
            if root.kept >= 0:  # else the layer is the host directory spec.upper: nothing to send
                send_kept_layer(handoff.keep_w, root.kept)
                os.close(root.kept)
            else:
                os.close(handoff.keep_w)
        root.pivot()
        if spec.stamps:
            say_stamp(report_w, "pivot")
        # Signals are ignored here until init's handlers exist; hold them instead, so one that
        # arrives now is delivered later (to init's forwarder, or to the payload once it resets).
        _signal.pthread_sigmask(_signal.SIG_BLOCK, set(FORWARDED))
        payload = os.fork()
        if payload == 0:
            os.close(report_w)
            payload_mod.main(spec, handoff, last_cap)
        for fd in set(handoff.payload_only()):
            os.close(fd)
        if spec.stamps:
            say_stamp(report_w, "payload-forked")
    except BaseException as exc:
        _fail(report_w, exc, spec.debug)
    _supervise_payload(spec, payload, report_w, shm_rmid_forced)


def _supervise_payload(spec: Spec, payload: int, report_w: int, shm_rmid_forced: int = -1) -> None:
    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(-payload, signum)  # the payload's session, when it has one
        except OSError:
            try:
                os.kill(payload, signum)
            except OSError:
                pass

    def force_shm_removal(_signum: int, _frame: object) -> None:
        try:
            os.write(shm_rmid_forced, b"1")
        except OSError:
            pass

    _signal.signal(SHM_RMID_FORCED, force_shm_removal if shm_rmid_forced >= 0 else _signal.SIG_IGN)
    for signum in FORWARDED:
        if spec.tty and signum in (_signal.SIGINT, _signal.SIGQUIT):
            _signal.signal(signum, _signal.SIG_IGN)  # the terminal sends these to the payload itself
        else:
            _signal.signal(signum, forward)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, set(FORWARDED))
    say(report_w, Ready())
    status = 0
    while True:
        try:
            pid, wstatus = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid == payload:
            status = wstatus
            break
    try:
        os.kill(-1, _signal.SIGKILL)  # from pid 1, everything else in the namespace
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    say(report_w, Exited(status, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, usage.ru_nvcsw, usage.ru_nivcsw))
    os._exit(0)
