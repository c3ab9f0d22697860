"""runtime/protocol.py: every message decodes to what was encoded, over real pipes and sockets."""

from __future__ import annotations

import _socket
import errno
import os

import pytest

from sandbox.model.frozen import fields
from sandbox.model.spec import Limits, Mount, Spec
from sandbox.runtime import protocol
from sandbox.runtime.protocol import (Command, ExecFailed, Exited, Failed, Ready, ReportReader, SetupFailed,
                                      Started)
from sandbox.runtime.supervisor import shape_of

REPORTS = [Started(4242), Ready(), Failed("cannot mount /proc: EPERM"), Exited(9, 0.25, 0.125, 2048),
           Exited(3 << 8, 0.0, 0.0, 0)]


@pytest.mark.parametrize("report", REPORTS, ids=[type(r).__name__ for r in REPORTS])
def test_report_round_trip(report: protocol.Report) -> None:
    line = report.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode_report(line[:-1]) == report


def test_failed_message_stays_one_line() -> None:
    assert protocol.decode_report(Failed("two\nlines").encode()[:-1]) == Failed("two lines")


@pytest.mark.parametrize("line", [b"", b"Q 1", b"P notapid", b"X 1 2"])
def test_unknown_report(line: bytes) -> None:
    assert protocol.decode_report(line) is None


def test_reader_over_a_pipe() -> None:
    """Two writers (entry and init) on one pipe, split anywhere: whole reports, in order."""
    r, w = os.pipe()
    try:
        reader = ReportReader(r)
        data = b"".join(report.encode() for report in REPORTS)
        os.write(w, data[:5])
        assert reader.fill() and reader.pop() is None
        os.write(w, data[5:])
        os.close(w)
        w = -1
        got = []
        while (report := reader.next()) is not None:
            got.append(report)
        assert got == REPORTS
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_reader_sees_exit_pending() -> None:
    r, w = os.pipe()
    try:
        reader = ReportReader(r)
        os.write(w, Exited(0, 0, 0, 0).encode())
        reader.fill()
        assert reader.exit_pending()
    finally:
        os.close(r)
        os.close(w)


EXEC = [(ExecFailed(errno.ENOENT), ExecFailed(errno.ENOENT)), (SetupFailed("no such dir"), SetupFailed("no such dir")),
        (SetupFailed("x" * 10_000), SetupFailed("x" * (protocol.EXEC_MESSAGE_MAX - 2)))]


@pytest.mark.parametrize("sent, received", EXEC, ids=["exec", "setup", "long"])
def test_exec_pipe(sent: protocol.ExecOutcome, received: protocol.ExecOutcome) -> None:
    assert protocol.decode_exec(sent.encode()) == received


def test_exec_pipe_eof_means_exec() -> None:
    assert protocol.decode_exec(b"") is None


def test_command_over_a_pipe() -> None:
    command = Command(("sh", "-c", "echo hé"), (("PATH", "/bin"), ("LANG", "C.UTF-8")), ((7, 64, 64),), (5, 9),
                      ((0, "/box/in"), (2, "")))
    r, w = os.pipe()
    try:
        protocol.write_command(w, command)
        os.close(w)
        w = -1
        assert protocol.read_command(r) == command
        assert protocol.read_command(r) is None  # EOF: a prepared sandbox discarded unused
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_channel() -> None:
    """The run's fds one way; the payload's pid (credentials) and listener fd the other."""
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    ours.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
    r, w = os.pipe()
    received: list[int] = []
    try:
        protocol.send_run_fds(ours, (r, w, r))
        received = protocol.receive_run_fds(theirs.fileno())
        assert len(received) == 3
        assert [os.fstat(fd).st_ino for fd in received] == [os.fstat(fd).st_ino for fd in (r, w, r)]
        protocol.send_payload_ready(theirs.fileno(), received[0])
        pid, listener = protocol.receive_payload_ready(ours)
        assert pid == os.getpid()
        assert os.fstat(listener).st_ino == os.fstat(r).st_ino
        received.append(listener)
        protocol.send_payload_ready(theirs.fileno(), -1)
        assert protocol.receive_payload_ready(ours) == (os.getpid(), -1)
    finally:
        for fd in (r, w, *received):
            os.close(fd)
        ours.close()
        theirs.close()


def test_kept_layer(tmp_path: object) -> None:
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        assert protocol.receive_kept_layer(ours) == -1  # nothing sent: the layer is on the host
        directory = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
        protocol.send_kept_layer(theirs.detach(), directory)  # closes its end
        got = protocol.receive_kept_layer(ours)
        try:
            assert os.path.samestat(os.fstat(got), os.fstat(directory))
        finally:
            os.close(got)
            os.close(directory)
    finally:
        ours.close()
    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    try:
        theirs.send(b"K")  # no fd: refused, never taken for a layer
        with pytest.raises(ValueError):
            protocol.receive_kept_layer(ours)
    finally:
        ours.close()
        theirs.close()


def test_shape_strips_exactly_the_per_run_fields() -> None:
    run = Spec(argv=("true",), env=(("A", "1"),), image_lock=5, pass_fds=(3,), limits=Limits(time=1.0),
               stdin="/in", stdout="/out", stderr="/err", result="/r", meta="/m", hostname="h", redirects=((1, "o"),),
               mounts=(Mount("/x"),), uid=1000, cgroup="/sys/fs/cgroup/x")
    shape = shape_of(run)
    per_run = {f.name for f in fields(Spec) if f.metadata.get("run")}
    assert per_run == {"argv", "env", "image_lock", "pass_fds", "limits", "stdin", "stdout", "stderr", "result",
                       "meta", "redirects"}
    assert shape == Spec(argv=(), hostname="h", mounts=(Mount("/x"),), uid=1000, cgroup="/sys/fs/cgroup/x")
    assert shape_of(shape) == shape


def test_command_round_trip_keeps_what_the_payload_execs_with() -> None:
    """The layout C reads too (runtime/waiter.c): unlimited rlimits, undecodable bytes in argv,
    and an environment naming a variable twice (the last wins, as in the dict execve gets)."""
    import resource

    command = Command(("prog", os.fsdecode(b"\xff\xfe"), ""), (("A", "1"), ("B", "x=y"), ("A", "2")),
                      ((resource.RLIMIT_FSIZE, resource.RLIM_INFINITY, resource.RLIM_INFINITY),), (3, 200))
    decoded = Command.decode(command.encode()[8:])
    assert decoded == Command(command.argv, (("A", "2"), ("B", "x=y")), command.rlimits, command.pass_fds)


@pytest.mark.parametrize("cut", [0, 3, 4, 9, -1])
def test_command_truncated_or_padded_is_refused(cut: int) -> None:
    body = Command(("sh", "-c", "true"), (("PATH", "/bin"),), ((7, 64, 64),), (5,), ((0, "/x"),)).encode()[8:]
    with pytest.raises(ValueError):
        Command.decode(body[:cut] if cut else body + b"\0")


def test_exec_pipe_errno_and_what() -> None:
    """sbx-waiter has no strerror: it sends the errno, and the supervisor words it."""
    assert protocol.decode_exec(b'F 2 open("/x")') == SetupFailed('open("/x"): No such file or directory')
    assert protocol.decode_exec(b"F x y") == SetupFailed("x y")
