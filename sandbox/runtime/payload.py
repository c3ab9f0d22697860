"""Pid 2: wait for the supervisor's release, shed every privilege, exec.

Where sbx-waiter was built and the seccomp policy allows (waits_in_waiter),
init starts it as the payload (spawn_waiter) and it does all of this itself
(waiter.c), from the plan init gives it.  Else main() runs in a fork of init
after the root is pivoted, and execs the waiter at the command wait where it
can.  Nothing in main() may return: every path ends in execve or os._exit.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up
import errno
import os
import resource

from . import landlock, waiter
from ..kernel import linux
from ..seccomp import load as seccomp
from ..errors import EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SBX
from . import protocol
from .protocol import RELEASE, Handoff
from ..model.spec import Spec


def _reset_signals() -> None:
    # Python ignores SIGPIPE and SIGXFSZ, sbx ignores or handles a few more, and the caller
    # may have ignored any; exec keeps ignored signals, so undo every disposition but the
    # default.  Python's table knows them all (read at start-up, kept by each signal()), so
    # only those that differ cost a syscall.
    for signum in range(1, _signal.NSIG):
        if signum in (_signal.SIGKILL, _signal.SIGSTOP):
            continue
        try:
            if _signal.getsignal(signum) != _signal.SIG_DFL:
                _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, set())


def _enter_nested_userns(uid: int, gid: int) -> None:
    """Run as uid/gid inside: a child user namespace mapping them to our root, as bwrap does."""
    linux.unshare(linux.CLONE_NEWUSER)
    linux.map_ids(uid, 0, gid, 0)


def _drop_privileges(last_cap: int, ids: tuple[int, int] | None = None) -> None:
    """Every capability gone for good; `ids`: become this uid and gid first (setresuid needs
    CAP_SETUID, which is still effective here; the securebits keep setuid from touching caps)."""
    for cap in range(last_cap + 1):
        linux.prctl(linux.PR_CAPBSET_DROP, cap)
    linux.prctl(linux.PR_SET_SECUREBITS, linux.SECURE_ALL_LOCKED)
    linux.prctl(linux.PR_CAP_AMBIENT, linux.PR_CAP_AMBIENT_CLEAR_ALL)
    if ids is not None:
        os.setgroups([])
        os.setresgid(ids[1], ids[1], ids[1])
        os.setresuid(ids[0], ids[0], ids[0])
    linux.clear_capabilities()
    linux.prctl(linux.PR_SET_NO_NEW_PRIVS, 1)


SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
DEVICE_RW = landlock.FS_READ_FILE | landlock.FS_WRITE_FILE | landlock.FS_TRUNCATE


def _fence(spec: Spec) -> None:
    """Landlock on ourselves (SECURITY.md, "Landlock"): after the pivot, so only the sandbox's own
    tree is named; after no_new_privs, which it needs.  Its failure fails the run (fail closed);
    a kernel without it was noted by the supervisor (landlock.notes)."""
    version = landlock.effective_abi(spec.landlock)
    if version >= 1:
        landlock.apply(_rules(spec), version)


def _rules(spec: Spec) -> landlock.Rules:
    """Read everywhere; execute everywhere but beneath `noexec`; write on the whole (disposable)
    root, or under write = "scratch" only beneath the scratch places, home and writable mounts; device
    ioctls in /dev only; TCP ports as listed; abstract unix sockets and signals scoped (ABI 6)."""
    ls = spec.landlock
    paths: list[tuple[str, int]] = [("/", landlock.FS_READ), ("/dev", landlock.FS_IOCTL_DEV)]
    # Where an image's symlink leads too (its /tmp may be a link to the tmpfs sbx mounted there).
    # /dev is a noexec mount: with exceptions to make, leave it out rather than list its entries.
    noexec = ls.noexec and (*ls.noexec, *(os.path.realpath(p) for p in ls.noexec), "/dev")
    paths += [(path, landlock.FS_EXECUTE) for path in _outside("/", noexec)]
    if ls.write == "root":
        paths.append(("/", landlock.FS_WRITE))
    else:
        # The user's home as sbx makes it (the environment is the command's, not yet known here).
        home = "/root" if spec.uid == 0 else "/home/sbx"
        writable = {*SCRATCH, home, *(m.target for m in spec.mounts if m.mode != "ro")}
        paths += [(path, landlock.FS_WRITE) for path in sorted(writable)]
        paths += [(f"/dev/{name}", DEVICE_RW) for name in landlock.DEVICES]
        paths.append(("/dev/pts", DEVICE_RW))
    net = 0
    allowed: dict[int, int] = {}
    if ls.tcp_bind is not None:
        net |= landlock.NET_BIND_TCP
        published = (p.sandbox_port for p in spec.publish if p.proto == "tcp")
        for port in (*ls.tcp_bind, *published):
            allowed[port] = allowed.get(port, 0) | landlock.NET_BIND_TCP
    if ls.tcp_connect is not None:
        net |= landlock.NET_CONNECT_TCP
        for port in ls.tcp_connect:
            allowed[port] = allowed.get(port, 0) | landlock.NET_CONNECT_TCP
    return landlock.Rules(fs=landlock.FS_ALL_KNOWN, net=net, scoped=landlock.SCOPE_ALL, paths=tuple(paths),
                          ports=tuple(sorted(allowed.items())))


def _outside(path: str, excluded: tuple[str, ...]) -> list[str]:
    """The fewest paths that cover the tree at `path` but nothing at or beneath `excluded`
    (Landlock only adds rights: to keep one subtree out, name its siblings instead)."""
    if path in excluded:
        return []
    prefix = path.rstrip("/") + "/"
    if not any(e.startswith(prefix) for e in excluded):
        return [path]
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return []  # unreadable: no rule, less access
    return [p for name in names for p in _outside(prefix + name, excluded)]


def _redirect(redirects: tuple[tuple[int, str], ...]) -> None:
    """Spec.redirects: each path opened here, inside, as the payload's own uid (so its modes
    mean what they say to it), onto its fd; an empty path copies fd 1."""
    for target, path in redirects:
        if not path:
            os.dup2(1, target)
            continue
        # O_NONBLOCK: a FIFO left in the box never blocks us before the release (a reader
        # sees EOF, a writer without a reader fails); cleared once open.
        flags = os.O_RDONLY if target == 0 else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY, 0o666)
        except OSError as exc:
            raise OSError(f'open("{path}"): {exc.strerror}') from None  # isolate's words for it
        os.set_blocking(fd, True)
        if fd != target:
            os.dup2(fd, target)
            os.close(fd)
        else:
            os.set_inheritable(fd, True)  # os.open's fds close on exec


def _set_rlimits(rlimits: tuple[tuple[int, int, int], ...]) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    for which, soft, hard in rlimits:
        resource.setrlimit(which, (soft, hard))


def _place_fds(fds: list[int], pass_fds: tuple[int, ...], ours: list[int]) -> list[int]:
    """fds[0:3] become 0-2, the rest their --pass-fd numbers; returns `ours` (the handoff's fds),
    moved where a target needed their numbers."""
    targets = [0, 1, 2, *pass_fds]
    if len(fds) != len(targets):
        raise OSError(0, "the supervisor sent the wrong number of descriptors")
    # Lift every fd we hold above all targets first, so no dup2 overwrites one still needed.
    floor = max(targets) + 1
    lifted = []
    for fd in fds:
        lifted.append(_dup_above(fd, floor))
        os.close(fd)
    moved = []
    for fd in ours:
        if fd in targets:
            moved.append(_dup_above(fd, floor))
            os.close(fd)
        else:
            moved.append(fd)
    for high, target in zip(lifted, targets):
        os.dup2(high, target)  # clears close-on-exec on the target (SCM_RIGHTS gave none)
        os.close(high)
    return moved


def _dup_above(fd: int, floor: int) -> int:
    import fcntl  # preloaded by init (init.preload)

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor)


def exec_command(argv: tuple[str, ...], env: dict[str, str]) -> None:
    """os.execvpe, without its PATH lookup's `import warnings` (os.get_exec_path): after the
    pivot the stdlib may be out of reach, and it cost 0.6 ms.  The first error that is not
    ENOENT or ENOTDIR wins, as there."""
    file = argv[0]
    if "/" in file:
        os.execve(file, argv, env)
    last: OSError | None = None
    first: OSError | None = None
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        try:
            os.execve(os.path.join(directory, file), argv, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            last = exc
        except OSError as exc:
            last = exc
            first = first or exc
    raise first or last or FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), file)


# What the payload calls between its command and execve (Python's own allocation and signal
# calls included): a filter that may deny any of these is loaded last, not before the wait.
AFTER_COMMAND = frozenset((
    "read", "recvmsg", "recvfrom", "fcntl", "dup", "dup2", "dup3", "close", "close_range", "open", "openat",
    "openat2", "prlimit64", "setrlimit", "getrlimit", "sendmsg", "sendto", "execve", "execveat", "mmap",
    "munmap", "mremap", "brk", "madvise", "mprotect", "rt_sigprocmask", "rt_sigaction", "getpid", "gettid",
    "fstat", "newfstatat", "statx", "lseek", "ioctl", "futex", "getrandom", "exit", "exit_group"))


def _filter_before_command(spec: Spec) -> bool:
    """Whether the seccomp filter can be loaded before the command wait, off the run's path: the
    default deny-list allows all sbx does after it, unless the profile denies one of those calls;
    with action "kill" a violation would wait on a listener nobody reads yet, so never then."""
    policy = spec.seccomp
    return policy.policy == "default" and policy.action != "kill" and not _denies_any(spec, AFTER_COMMAND)


def _denies_any(spec: Spec, calls: frozenset[str]) -> bool:
    return any(entry.partition("(")[0].strip() in calls for entry in spec.seccomp.deny)


def waits_in_waiter(spec: Spec, program: bytes | None) -> bool:
    """Whether this shape's payload may wait in sbx-waiter (waiter.py): with no filter, or one
    loaded before the command wait that denies nothing the waiter calls (it sends no listener)."""
    return program is None or (_filter_before_command(spec) and not _denies_any(spec, waiter.CALLS))


def spawn_waiter(spec: Spec, handoff: Handoff, last_cap: int) -> int:
    """In init: start the payload as sbx-waiter itself, by posix_spawn (vfork and exec: no copy of
    this interpreter to make, fault in and tear down), with a plan of main()'s set-up before the
    command wait (protocol.Setup), which it carries out in main()'s order.  Its pid; -1 where it
    cannot be (no program, a policy that keeps the payload in Python, the exec refused), and
    init forks main() instead.  The Landlock ruleset is built here (the same rules, from the
    same root), so the waiter only enforces it."""
    program = handoff.seccomp
    if handoff.waiter < 0 or not waits_in_waiter(spec, program):
        return -1
    flags = 0
    if spec.uid != 0 or spec.gid != 0:
        flags = protocol.SETUP_DUMPABLE | (protocol.SETUP_SET_IDS if spec.id_ranges else protocol.SETUP_NESTED_USERNS)
    setup = protocol.Setup(flags, spec.uid, spec.gid, last_cap, spec.workdir, program or b"").encode()
    version = landlock.effective_abi(spec.landlock)
    ruleset = landlock.build(_rules(spec), version) if version >= 1 else -1
    setup_r, setup_w = os.pipe()
    fds = (handoff.command_r, handoff.channel_w, handoff.release_r, handoff.exec_w, setup_r)
    try:
        for fd in (*fds, ruleset):
            if fd >= 0:
                os.set_inheritable(fd, True)
        try:
            pid = os.posix_spawn(f"/proc/self/fd/{handoff.waiter}", ["sbx-waiter", *map(str, fds), str(ruleset)], {},
                                 setsid=not spec.tty, setsigmask=(),
                                 setsigdef=_signal.valid_signals() - {_signal.SIGKILL, _signal.SIGSTOP})
        except OSError:
            for fd in fds:
                os.set_inheritable(fd, False)  # the fork's main() runs with them
            os.close(setup_w)
            return -1
    finally:
        os.close(setup_r)
        if ruleset >= 0:
            os.close(ruleset)
    try:
        view = memoryview(setup)
        while view:
            view = view[os.write(setup_w, view):]
    except BrokenPipeError:
        pass  # it died first: init reports how
    finally:
        os.close(setup_w)
    return pid


def _exec_waiter(handoff: Handoff, fds: tuple[int, int, int, int]) -> None:
    """Become sbx-waiter (waiter.py), which waits for the command and does the rest; returns
    only if its exec failed (a seccomp profile denying execveat, vm.memfd_noexec), with `fds`
    close-on-exec again, so the command does not inherit them."""
    for fd in fds:
        os.set_inheritable(fd, True)  # the waiter makes them close-on-exec again
    try:
        os.execve(handoff.waiter, ["sbx-waiter", *map(str, fds)], {})
    except OSError:
        for fd in fds:
            os.set_inheritable(fd, False)
    os.close(handoff.waiter)


def main(spec: Spec, handoff: Handoff, last_cap: int) -> None:
    """Set up all a run's shape decides, wait for its command, then the rest, all before the
    release, so the run's figures hold none of it.  Only what the command decides (fds,
    rlimits) and, where it could deny what sbx does after the wait, the seccomp filter (last)
    come after the wait."""
    code = EXIT_SBX
    exec_w, release_r, channel_w = handoff.exec_w, handoff.release_r, handoff.channel_w
    try:
        linux.set_name("sbx-payload")  # until execve names it
        _reset_signals()
        if not spec.tty:
            os.setsid()  # no controlling terminal: no TIOCSTI into the caller's
        ids = None
        if spec.uid != 0 or spec.gid != 0:
            # init is not dumpable and we inherited that: our /proc files would belong to the
            # host's root, and the id maps could not be written.  exec resets it anyway.
            linux.prctl(linux.PR_SET_DUMPABLE, 1)
            if spec.id_ranges:
                ids = (spec.uid, spec.gid)  # mapped in this namespace: the image's own users
            else:
                _enter_nested_userns(spec.uid, spec.gid)
        os.chdir(spec.workdir)
        _drop_privileges(last_cap, ids)
        _fence(spec)
        linux.close_fds_but([exec_w, release_r, channel_w, handoff.command_r, handoff.waiter])
        listener = -1
        program = handoff.seccomp  # the shape's: the same whatever the command
        early = program is not None and _filter_before_command(spec)
        if program is not None and early:
            listener = seccomp.load(program)
        if handoff.waiter >= 0:
            if listener < 0 and waits_in_waiter(spec, program):
                _exec_waiter(handoff, (handoff.command_r, channel_w, release_r, exec_w))
            else:
                os.close(handoff.waiter)
        command = protocol.read_command(handoff.command_r)
        if command is None:
            os._exit(EXIT_SBX)  # discarded before use
        os.close(handoff.command_r)
        exec_w, release_r, channel_w = _place_fds(protocol.receive_run_fds(channel_w), command.pass_fds,
                                                  [exec_w, release_r, channel_w])
        _redirect(command.redirects)
        _set_rlimits(command.rlimits)
        if program is not None and not early:
            # Last, so the filter need not allow anything sbx itself does (read, sendmsg and
            # execve are all that follow).
            listener = seccomp.load(program, listener=spec.seccomp.action == "kill")
        # Our pid (the kernel adds our credentials), so the supervisor can put us in the run
        # cgroup, and the seccomp listener, whose copy here closes on exec.
        protocol.send_payload_ready(channel_w, listener)
        if os.read(release_r, 1) != RELEASE:
            os._exit(EXIT_SBX)  # the supervisor is gone: never run unsupervised
        code = EXIT_NOTFOUND
        exec_command(command.argv, dict(command.env))
    except OSError as exc:
        failure: protocol.ExecOutcome
        if code != EXIT_NOTFOUND:
            failure = protocol.SetupFailed(str(exc))
        else:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                code = EXIT_NOEXEC
            failure = protocol.ExecFailed(exc.errno or 0)
        try:
            os.write(exec_w, failure.encode())
        finally:
            os._exit(code)
    except BaseException as exc:
        try:
            os.write(exec_w, protocol.SetupFailed(repr(exc)).encode())
        finally:
            os._exit(code)
