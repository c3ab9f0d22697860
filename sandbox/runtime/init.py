"""Inside the sandbox: pid 1 (init), and how it is started.

The supervisor (or the warm zygote) clones init straight into its new namespaces
(`start`): a user namespace mapping root inside to the caller, plus mount, pid, ipc,
uts, cgroup and usually net, with init pid 1 of the new pid namespace.  Init builds the
root filesystem, starts the payload (pid 2: sbx-waiter, spawned, or a fork of itself; see
payload.py), reaps orphans and forwards signals.  When
the payload exits, init kills everything left, reaps it, reports the payload's status
and the sandbox's rusage, and exits, which ends the pid namespace.

A process with other threads cannot clone a copy of itself safely (linux.clone), so
there the supervisor forks an entry process (`enter`), single-threaded, which clones
init the same way, reports its pid and waits for it.

Each of these processes dies with its parent (PR_SET_PDEATHSIG), so killing
the supervisor, even with SIGKILL, brings the whole sandbox down.

They report to the supervisor on one pipe (protocol.py): init's pid as the supervisor
sees it (Started, from whoever cloned it), the root built (Ready), a failed set-up
(Failed), and the payload's end (Exited).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up
import os
import resource
import sys

from ..errors import EXIT_SBX, SbxError, SetupError
from ..kernel import linux
from ..model.spec import Spec
from .protocol import (FORWARDED, SHM_RMID_FORCED, Exited, Failed, Handoff, Ready, say, say_stamp,
                       send_kept_layer, send_namespaces)


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
    import select  # noqa: F401  (_orphaned)
    import stat  # noqa: F401  (landlock._kind)
    import struct  # noqa: F401  (protocol.Command.decode)

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


def namespace_flags(spec: Spec) -> int:
    flags = (linux.CLONE_NEWUSER | linux.CLONE_NEWNS | linux.CLONE_NEWPID | linux.CLONE_NEWIPC
             | linux.CLONE_NEWUTS | linux.CLONE_NEWCGROUP)
    return flags if spec.network == "host" else flags | linux.CLONE_NEWNET


def start(spec: Spec, handoff: Handoff) -> int:
    """Clone init into the sandbox's new namespaces; its pid.  This process must have no other
    thread (linux.single_threaded).  With handoff.maps, init waits until we have written its
    id maps (spawn.py).  SetupError when the namespaces cannot be made."""
    uid, gid = os.getuid(), os.getgid()  # unmapped in the child until its maps are written
    parent = os.pidfd_open(os.getpid())  # the child's way to tell we died before its PDEATHSIG
    try:
        pid = linux.clone(namespace_flags(spec))
    except OSError as exc:
        os.close(parent)
        raise SetupError(_no_namespaces(exc)) from None
    if pid == 0:
        _cloned(spec, handoff, parent, uid, gid)
    os.close(parent)
    return pid


def _cloned(spec: Spec, handoff: Handoff, parent: int, uid: int, gid: int) -> None:
    """The new init, before its own work: what a fork of the supervisor sheds, and its id maps."""
    report_w = handoff.report_w
    try:
        if spec.stamps:
            say_stamp(report_w, "entry")
        linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
        if _orphaned(parent):
            os._exit(EXIT_SBX)
        os.close(parent)
        _shed(spec, handoff)
        _map(handoff, uid, gid)
        if spec.stamps:
            say_stamp(report_w, "unshared")
    except BaseException as exc:
        _fail(report_w, exc, spec.debug)
    init(spec, handoff)


def _no_namespaces(exc: OSError) -> str:
    return (f"cannot create user namespace: {exc.strerror} (run 'sbx doctor' for the host's "
            "user-namespace settings)")


def _map(handoff: Handoff, uid: int, gid: int) -> None:
    """Map the user namespace just made: our one id ourselves, or id ranges by our parent."""
    if handoff.maps is None:
        linux.map_ids(0, uid, 0, gid)
        return
    from ..kernel import idmap

    if not idmap.announce_unshared(*handoff.maps):
        os._exit(EXIT_SBX)  # the parent could not map them; it says why
    for fd in handoff.maps:
        os.close(fd)


def _orphaned(parent: int) -> bool:
    """Whether the process behind the pidfd `parent` has exited (it cannot be our parent's pid:
    from a new pid namespace, getppid() is 0)."""
    import select

    poller = select.poll()
    poller.register(parent, select.POLLIN)
    return bool(poller.poll(0))


def _shed(spec: Spec, handoff: Handoff, keep: tuple[int, ...] = ()) -> None:
    """What a fork of the supervisor (or of the zygote) holds and must not pass on."""
    # Only this sandbox's own fds: in a supervisor running several sandboxes at once, a copy
    # of another run's pipe held here would keep that run from ever seeing EOF.
    linux.close_fds_but((*handoff.all(), *keep))
    for signum in FORWARDED:
        _signal.signal(signum, _signal.SIG_IGN)  # the supervisor forwards them to init
    if not spec.tty:
        os.setsid()  # keep terminal signals for the supervisor alone


def enter(spec: Spec, handoff: Handoff, supervisor: int, start_init: Callable[[], int],
          keep: tuple[int, ...]) -> None:
    """The supervisor's child where the supervisor has other threads: a single-threaded process
    that starts init (`start_init`: spawn._start, which tells the supervisor its pid and maps
    its ids, with the fds in `keep`), then waits for it.  It stays outside the sandbox's
    namespaces, so RLIMIT_NPROC counts init and the payload's tree alone."""
    report_w = handoff.report_w
    try:
        linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
        linux.set_name("sbx-entry")
        linux.scrub_title("sbx-entry")  # the caller's argv and environment: init is cloned from here
        if os.getppid() != supervisor:
            os._exit(EXIT_SBX)
        _shed(spec, handoff, keep)
        pid = start_init()
        for fd in (*handoff.all(), *keep):  # init's now: the supervisor must see EOF when init closes them
            os.close(fd)
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
        if spec.network == "pasta":
            send_namespaces(handoff.channel_w)  # for the network helper, before the payload exists
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
        payload = payload_mod.spawn_waiter(spec, handoff, last_cap)
        if payload < 0:
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
