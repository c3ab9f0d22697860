"""The user-mode networking helper's process: pasta (slirp4netns as the fallback).

In `pasta` mode the supervisor starts the helper against the namespace entry
process, which sits in the sandbox's user and network namespaces and stays
dumpable (init does not); the helper creates and configures a tap interface
there (address, default route), and the payload is released only when the
route is in place: link.RouteWatch waits for it by netlink events, in a child
that joins those namespaces.  The helper runs outside the sandbox's pid
namespace, so the payload cannot see or signal it, and dies with the supervisor
(PR_SET_PDEATHSIG, and slirp4netns' exit fd).  Its stderr goes to a bounded
memfd: a helper that fails during set-up is quoted in the error line
(SBX_DEBUG=1 prints all it said).
"""

from __future__ import annotations

import os
import time

from .link import IFNAME, TUN, RouteWatch, kill_and_reap
from .network import NetError, helper_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal

    from ..model.spec import Publish
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

READY_TIMEOUT = 10.0


class UserNet:
    """A running pasta or slirp4netns attached to the sandbox's network namespace."""

    def __init__(self, name: str, pid: int, namespaces: tuple[int, int], log: int, watch: RouteWatch,
                 ready_r: int = -1, exit_w: int = -1, debug: bool = False) -> None:
        self.name = name
        self.pid = pid
        self.namespaces: tuple[int, ...] = namespaces  # the sandbox's user and network namespaces (fds)
        self.log = log  # the helper's stderr (helper_log())
        self.watch = watch
        self.ready_r = ready_r
        self.exit_w = exit_w
        self.route = ""  # what the watch saw once the network is up ("tap0 10.0.2.100/24 via 10.0.2.2")
        self.debug = debug  # SBX_DEBUG (Spec.debug): say the route, and all the helper said

    @classmethod
    def start(cls, namespaces: tuple[int, int], helper: str | None, publish: tuple[Publish, ...],
              dns: tuple[str, ...], host_loopback: bool, debug: bool = False) -> UserNet:
        """Start `helper` (find_helper()) for the sandbox whose user and network namespaces are the
        fds `namespaces` (init sent them: protocol.send_namespaces); they are ours to close, with
        stop() once started, else here."""
        try:
            return cls._start(namespaces, helper, publish, dns, host_loopback, debug)
        except BaseException:
            for fd in namespaces:
                os.close(fd)
            raise

    @classmethod
    def _start(cls, namespaces: tuple[int, int], helper: str | None, publish: tuple[Publish, ...],
               dns: tuple[str, ...], host_loopback: bool, debug: bool) -> UserNet:
        name = helper_name(helper)
        if helper is None or name is None:
            raise NetError("--network pasta needs pasta (Debian package 'passt') or slirp4netns; neither is "
                           "installed")
        check_tun()
        if publish and name != "pasta":
            raise NetError("-p needs pasta (Debian package 'passt'); only slirp4netns is installed")
        # First: the watch imports pyroute2 (~120 ms) while the helper starts.
        watch = RouteWatch.start(namespaces, IFNAME)
        log = -1
        fds: list[int] = []
        # The helper joins them by path: each of its own open fds, as /proc/self/fd/N.
        userns, netns = (f"/proc/self/fd/{fd}" for fd in namespaces)
        try:
            log = helper_log()
            if name == "pasta":
                return cls(name, _spawn(helper, pasta_argv(userns, netns, publish, dns, host_loopback), namespaces,
                                        log), namespaces, log, watch, debug=debug)
            ready_r, ready_w = os.pipe()
            fds += (ready_r, ready_w)
            exit_r, exit_w = os.pipe()
            fds += (exit_r, exit_w)
            argv = ["slirp4netns", "--configure", "--mtu=65520", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
                    *(() if host_loopback else ("--disable-host-loopback",)), "--netns-type=path",
                    f"--userns-path={userns}", netns, IFNAME]
            pid = _spawn(helper, argv, (ready_w, exit_r, *namespaces), log)
        except BaseException:
            watch.stop()
            for fd in (log, *fds):
                if fd >= 0:
                    os.close(fd)
            raise
        os.close(ready_w)
        os.close(exit_r)
        return cls(name, pid, namespaces, log, watch, ready_r, exit_w, debug)

    def wait_ready(self) -> None:
        """Until the sandbox has its default route (the helper configured the tap): the watch's
        word, or the helper's exit, whichever comes first."""
        import select

        helper = os.pidfd_open(self.pid)
        try:
            poller = select.poll()
            poller.register(self.watch.fd, select.POLLIN)
            poller.register(helper, select.POLLIN)
            deadline = time.monotonic() + READY_TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                ready = {fd for fd, _ in poller.poll(left * 1000)}
                if self.watch.fd in ready:
                    self.route = self.watch.result()  # NetError: the watch could not watch
                    if self.debug:
                        os.write(2, f"sbx: {self.name} is up: {self.route}\n".encode())
                    return
                if helper in ready:
                    _, status = os.waitpid(self.pid, 0)
                    self.pid = 0
                    raise NetError(self._failure(f"{self.name} exited before the network was up", status))
        finally:
            os.close(helper)
        raise NetError(self._failure(f"{self.name} did not bring the network up within {READY_TIMEOUT:g} s", None))

    def _failure(self, what: str, status: int | None) -> str:
        """`what`, with the helper's own last words."""
        said = last_words(read_log(self.log))  # all of it: stop(), with SBX_DEBUG
        if said:
            return f"{what}: {said}"
        if status is not None:
            return f"{what} ({exit_words(status)}; it said nothing)"
        return f"{what} (it said nothing)"

    def stop(self) -> None:
        self.watch.stop()
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        kill_and_reap(self.pid)
        self.pid = 0
        if self.log >= 0:
            if self.debug:
                show_all(self.name, read_log(self.log))
            os.close(self.log)
            self.log = -1
        for fd in self.namespaces:
            os.close(fd)
        self.namespaces = ()


def pasta_argv(userns: str, netns: str, publish: tuple[Publish, ...], dns: tuple[str, ...],
               host_loopback: bool) -> list[str]:
    """pasta's command line for the sandbox's namespaces at these paths."""
    from .network import host_gateway

    argv = ["pasta", "--config-net", "--foreground", "--quiet", "--ns-ifname", IFNAME, "--ipv4-only"]
    if os.getuid() == 0:
        argv += ["--runas", "0"]  # as root pasta would switch to nobody, who cannot join our namespaces
    if not host_loopback:
        argv.append("--no-map-gw")  # else the gateway address is the host's 127.0.0.1
    if dns and dns[0] == host_gateway():
        argv += ["--dns-forward", dns[0]]  # the host's resolver is on its loopback: relay to it
    for flag, proto in (("-t", "tcp"), ("-u", "udp")):
        items = [p for p in publish if p.proto == proto]
        for p in items:
            argv += [flag, f"{p.host_ip + '/' if p.host_ip else ''}{p.host_port}:{p.sandbox_port}"]
        if not items:
            argv += [flag, "none"]
    return [*argv, "-T", "none", "-U", "none", "--userns", userns, "--netns", netns]


def check_tun() -> None:
    """The helper opens /dev/net/tun (as we see it: it stays in our mount namespace) to create
    the sandbox's interface.  Where nothing set its mode (no udev: containers, minimal VMs,
    fresh CI machines) it is the kernel's 0600 root:root, and an unprivileged helper fails
    with words that do not say why (pasta: "Failed to open tun socket in namespace")."""
    try:
        os.close(os.open(TUN, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise NetError(_tun_problem(exc)) from None


def _tun_problem(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOENT:
        return (f"--network pasta needs {TUN}, which does not exist (the kernel's tun driver: modprobe tun; "
                f"in a container: docker/podman run --device {TUN})")
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return f"--network pasta cannot open {TUN}: {exc.strerror}"
    try:
        st = os.stat(TUN)
        what = f"it is {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}"
    except OSError as stat_exc:
        what = f"stat: {stat_exc.strerror}"
    return (f"--network pasta needs read-write access to {TUN}, which this user lacks ({what}; udev's "
            f"rules make it 0666, the kernel alone 0600): as root, chmod 0666 {TUN}")


LOG_LIMIT = 64 * 1024


def helper_log() -> int:
    """A file for a helper's stderr: a memfd that cannot grow past LOG_LIMIT bytes.

    Not a pipe: nobody reads a helper's stderr while it runs, and a chatty helper must
    neither block on a full pipe nor fill memory (writes past the limit fail, and the
    helpers ignore failed writes to stderr).  Its file offset, shared with the helper's
    fd 2, is how much it wrote.
    """
    import fcntl

    fd = os.memfd_create("sbx-helper-stderr", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, LOG_LIMIT)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_log(fd: int) -> str:
    """What the helper has written to its helper_log() so far."""
    size = min(os.lseek(fd, 0, os.SEEK_CUR), LOG_LIMIT)
    return os.pread(fd, size, 0).decode(errors="replace")


def show_all(name: str, text: str) -> None:
    """All a helper said, on our stderr (for SBX_DEBUG)."""
    if text:
        end = "" if text.endswith("\n") else "\n"
        os.write(2, f"sbx: {name}'s stderr:\n{text}{end}".encode(errors="replace"))


def exit_words(status: int) -> str:
    """"exit status 3", "killed by signal 9" for a wait status."""
    code = os.waitstatus_to_exitcode(status)
    return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"


# Lines that are no reason: passt's logger when there is no syslog socket (it prints them
# before the message it could not send), slirp4netns' parent after its child's error.
_NOISE = (r"Failed to send \d+ bytes to syslog", r"child failed\(-?\d+\)", r"WARNING: .*")


def last_words(text: str, limit: int = 300) -> str:
    """A helper's last meaningful line: printable, at most `limit` characters."""
    import re

    lines = [" ".join("".join(c if c.isprintable() else " " for c in line).split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    meaningful = [line for line in lines if not any(re.fullmatch(noise, line) for noise in _NOISE)]
    line = (meaningful or lines or [""])[-1]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _spawn(path: str, argv: list[str], keep: tuple[int, ...], log: int) -> int:
    """Fork and exec a helper that dies with us: no stdin or stdout, its stderr to `log`."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            from ..kernel import linux

            linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):  # Python ignores them; exec would keep that
                _signal.signal(signum, _signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log, 2)
            for fd in keep:
                os.set_inheritable(fd, True)
            os.execv(path, argv)  # our other fds are close-on-exec
        finally:
            os._exit(127)
    return pid
