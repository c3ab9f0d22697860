"""The fork server of warm runs: a small single-threaded process that forks sandboxes.

A Runner lives in its caller's process, which may be large and have threads
(a web worker, a judge daemon).  Forking sandboxes from there is slow (page
tables of the whole process are copied, then torn down again by the
payload's execve) and risky (another thread may hold a lock the child
needs).  So the Runner starts this process once, a fresh interpreter with
only sbx imported, and asks it for each sandbox: the zygote forks the
sandbox's entry process and sends back the supervisor's ends of its pipes
and a pidfd; the Runner supervises the run exactly as `sbx run` does.  The
zygote reaps the entry processes.

It dies with the Runner's thread that started it (PR_SET_PDEATHSIG), and its
sandboxes die with it, so nothing outlives the Runner.

Sandboxes that map id ranges are forked, where the ranges need the setuid helpers
newuidmap and newgidmap (an unprivileged caller), by a child of the zygote that holds a user
namespace mapping those ranges, made and mapped by the helpers once.  Root there may write
maps itself (kernel/idmap.available), so each sandbox still gets a user namespace of its own,
nested in that one and mapping the same ids, without two helper processes per sandbox: they
cost 5 ms of CPU and as much latency per run.  The zygote relays those requests and replies.

The zygote copies sbx-waiter into a sealed memfd once (runtime/waiter.py), and every sandbox it
or its holder forks gets a copy of that fd: its payload execs it to wait for the command.

Requests and replies are one SOCK_SEQPACKET message each:
    request: a kind byte (RANGED for a shape with Spec.id_ranges, else PLAIN), then the
             pickle of (shape Spec, seccomp program, nft script)
    reply:   marshal of (entry pid,) with SCM_RIGHTS [report_r, release_w, exec_r,
             command_w, channel, pidfd], or of ("error", message) without fds
"""

from __future__ import annotations

import os
import sys

from ..runtime.protocol import fds_message, fds_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    from collections.abc import Callable

    from ..model.spec import Spec

MAX_REQUEST = 1 << 22
PLAIN, RANGED = b"p", b"r"
REPLY_SPACE = 4096


class Zygote:
    """The Runner's side: a client of one zygote process (callers serialize requests)."""

    def __init__(self) -> None:
        import _socket
        import subprocess

        ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        code = (f"import sys; sys.path.insert(0, {package_parent!r}); from sandbox.warm.zygote import main; "
                f"main({theirs.fileno()}, {os.getpid()})")
        try:
            # -E: the caller's PYTHON* variables must not change what the zygote imports.
            self.process = subprocess.Popen([sys.executable, "-E", "-c", code], pass_fds=[theirs.fileno()],
                                            close_fds=True, stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        self.sock = ours

    def spawn(self, shape: Spec, program: bytes | None, nft: str | None) -> tuple[int, int, tuple[int, ...]]:
        """(entry pid, pidfd, (report_r, release_w, exec_r, command_w, channel))."""
        import _socket
        import marshal
        import pickle

        from ..errors import SetupError

        try:
            self.sock.sendall((RANGED if shape.id_ranges else PLAIN) + pickle.dumps((shape, program, nft)))
            data, ancillary, _, _ = self.sock.recvmsg(REPLY_SPACE, _socket.CMSG_SPACE(4 * 6))
        except OSError as exc:
            raise SetupError(f"the sandbox fork server failed: {exc.strerror or exc}") from None
        fds = fds_of(ancillary)
        if not data:
            raise SetupError("the sandbox fork server exited")
        reply = marshal.loads(data)
        if len(fds) != 6 or reply[0] == "error":
            for fd in fds:
                os.close(fd)
            message = reply[1] if reply[0] == "error" else "the sandbox fork server sent a bad reply"
            raise SetupError(str(message))
        for fd in fds:
            os.set_inheritable(fd, False)
        return int(reply[0]), fds[5], tuple(fds[:5])

    def close(self) -> None:
        self.sock.close()  # the zygote exits at EOF, killing nothing: its sandboxes are ours to end
        self.process.wait()


def main(sock_fd: int, parent: int) -> None:
    """The zygote process: serve the Runner `parent` on the socket `sock_fd`."""
    import signal as _signal

    from ..kernel import linux

    linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
    linux.set_name("sbx-zygote")
    linux.scrub_title("sbx-zygote")  # the Runner's environment; each entry process scrubs its copy too
    if os.getppid() != parent:
        os._exit(1)  # the Runner is already gone
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)  # the Runner decides; we die with it
    import _socket
    import gc

    from ..runtime import spawn  # noqa: F401  (and init, which preloads what every sandbox needs after its pivot)

    # What is imported by now lives as long as we do: out of the collector's reach, a collection
    # in a sandbox's processes (forks of this one) never writes to those objects' headers, a
    # copy-on-write fault per page touched.
    gc.freeze()
    from ..runtime import waiter

    waiter_fd = waiter.open_program()  # once: every sandbox we fork gets a copy (if it waits there)
    holder = _Holder(waiter_fd)

    def answer(request: bytes) -> Reply:
        if request[:1] == RANGED and holder.wanted():
            return holder.relay(request[1:])
        return _spawn(request[1:], waiter_fd)

    _serve(_socket.socket(fileno=sock_fd), answer)
    holder.close()  # it ends at EOF once its sandboxes have
    _wait_all()


Reply = tuple[list[bytes], list[tuple[int, int, bytes]]]


def _serve(sock: _socket.socket, answer: Callable[[bytes], Reply]) -> None:
    """Answer each request on `sock` until EOF (or the asker is gone), reaping our children."""
    import select

    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    while True:
        _reap()
        if not poller.poll(200):
            continue
        request = sock.recv(MAX_REQUEST)
        if not request:
            return
        reply = answer(request)
        try:
            sock.sendmsg(*reply)
        except OSError:
            return  # the asker went away mid-reply
        finally:
            for fd in fds_of(reply[1]):
                os.close(fd)


def _error(message: str) -> Reply:
    import marshal

    return [marshal.dumps(("error", message))], []


def _spawn(request: bytes, waiter: int) -> Reply:
    """Fork the sandbox a request asks for, from this process (in whichever user namespace it is);
    `waiter`: the memfd of sbx-waiter, or -1."""
    import marshal
    import pickle

    from ..errors import SbxError
    from ..runtime import payload, spawn

    try:
        shape, program, nft = pickle.loads(request)
        child, ends = spawn.spawn(shape, program, nft, waiter if payload.waits_in_waiter(shape, program) else -1)
    except (SbxError, OSError) as exc:
        return _error(f"cannot start the sandbox: {exc}")
    return [marshal.dumps((child,))], fds_message((*ends, os.pidfd_open(child)))


class _Holder:
    """The zygote's child in a user namespace mapping the caller's id ranges (started on first
    use), where sandboxes can map them without the setuid helpers."""

    def __init__(self, waiter: int) -> None:
        self.sock: _socket.socket | None = None
        self.needed: bool | None = None
        self.waiter = waiter

    def wanted(self) -> bool:
        """Whether ranged sandboxes go through it: only where the helpers would map them."""
        if self.needed is None:
            from ..kernel import idmap

            ranges = idmap.for_run()
            self.needed = ranges is not None and not ranges.direct
        return self.needed

    def relay(self, request: bytes) -> Reply:
        """Have it fork the sandbox; its reply, fds and all."""
        import _socket

        from ..errors import SbxError

        for _ in range(2):  # once more with a new holder if the one we had has died
            if self.sock is None:
                try:
                    self.sock = _start_holder(self.waiter)
                except (SbxError, OSError) as exc:
                    return _error(f"cannot start the sandbox: {exc}")
            try:
                self.sock.send(request)
                data, ancillary, _, _ = self.sock.recvmsg(REPLY_SPACE, _socket.CMSG_SPACE(4 * 6))
            except OSError:
                data, ancillary = b"", []
            if data:
                return [data], ancillary
            self.close()
        return _error("cannot start the sandbox: the fork server of its user namespace died")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _start_holder(waiter: int) -> _socket.socket:
    """A child of ours in a new user namespace mapping the caller's id ranges, forking sandboxes
    there as asked on the socket returned (`waiter`: the memfd of sbx-waiter, kept, or -1)."""
    import _socket
    import signal as _signal

    from ..errors import SetupError
    from ..kernel import idmap, linux

    ranges = idmap.for_run()
    if ranges is None:
        raise SetupError("the caller's id ranges are gone")
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    asked_r, asked_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    zygote = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            # Only our own fds: the Runner's socket is the zygote's to read.
            linux.close_fds_but((theirs.fileno(), asked_w, mapped_r, *((waiter,) if waiter >= 0 else ())))
            linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
            linux.set_name("sbx-userns")
            if os.getppid() != zygote:
                os._exit(1)
            linux.unshare(linux.CLONE_NEWUSER)
            if not idmap.announce_unshared(asked_w, mapped_r):
                os._exit(1)  # the zygote could not map us; it says why
            os.close(asked_w)
            os.close(mapped_r)
            _serve(theirs, lambda request: _spawn(request, waiter))
            theirs.close()
            _wait_all()
        finally:
            os._exit(0)
    theirs.close()
    os.close(asked_w)
    os.close(mapped_r)
    try:
        if not idmap.map_when_asked(child, ranges, asked_r, mapped_w):
            raise SetupError("the fork server of a user namespace died before it could be mapped")
    except BaseException:
        os.kill(child, _signal.SIGKILL)
        ours.close()
        raise
    finally:
        os.close(asked_r)
        os.close(mapped_w)
    return ours


def _wait_all() -> None:
    """Wait for every child (the Runner ends their sandboxes)."""
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return
        except KeyboardInterrupt:
            continue


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
