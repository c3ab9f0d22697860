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

Requests and replies are one SOCK_SEQPACKET message each:
    request: pickle of (shape Spec, seccomp program, nft script)
    reply:   marshal of (entry pid,) with SCM_RIGHTS [report_r, release_w, exec_r,
             command_w, channel, pidfd], or of ("error", message) without fds
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..model.spec import Spec

MAX_REQUEST = 1 << 22


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
            self.sock.sendall(pickle.dumps((shape, program, nft)))
            data, ancillary, _, _ = self.sock.recvmsg(4096, _socket.CMSG_SPACE(4 * 6))
        except OSError as exc:
            raise SetupError(f"the sandbox fork server failed: {exc.strerror or exc}") from None
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += [int.from_bytes(payload[i:i + 4], "little") for i in range(0, len(payload) - 3, 4)]
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
    import marshal
    import pickle
    import select

    from ..runtime import spawn  # and init, which preloads what every sandbox needs after its pivot
    from ..errors import SbxError

    # What is imported by now lives as long as we do: out of the collector's reach, a collection
    # in a sandbox's processes (forks of this one) never writes to those objects' headers, a
    # copy-on-write fault per page touched.
    gc.freeze()
    sock = _socket.socket(fileno=sock_fd)
    poller = select.poll()
    poller.register(sock_fd, select.POLLIN)
    while True:
        _reap()
        if not poller.poll(200):
            continue
        request = sock.recv(MAX_REQUEST)
        if not request:
            break
        try:
            shape, program, nft = pickle.loads(request)
            child, ends = spawn.spawn(shape, program, nft)
        except (SbxError, OSError) as exc:
            sock.send(marshal.dumps(("error", f"cannot start the sandbox: {exc}")))
            continue
        try:
            pidfd = os.pidfd_open(child)
            fds = (*ends, pidfd)
            sock.sendmsg([marshal.dumps((child,))],
                         [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(fd.to_bytes(4, "little") for fd in fds))])
            for fd in fds:
                os.close(fd)
        except OSError:
            break  # the Runner went away mid-reply
    while True:  # let the entry processes finish (the Runner ends its sandboxes)
        try:
            os.wait()
        except ChildProcessError:
            break
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
