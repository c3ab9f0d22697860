"""Report and output files on the host (issue 12, "Reports").

--result, --meta, --stdout, --stderr, the API's and batch's stdout/stderr paths are opened
before the payload starts, as the caller, with no symlink in any component, only as regular
files of one name, and never blocking; results go through those fds.  Each attack has a
control: the same path opened by name, as a plain program (or sbx before the fix) would,
lands elsewhere, truncates the victim, or blocks.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import errors, sbx
from sandbox import Runner, UsageError
from sandbox.kernel import hostfile

pytestmark = pytest.mark.timeout(60)

FLAGS = ("--result", "--meta", "--stdout", "--stderr")
# The payload of every refused run: it would leave this marker in the rw bind /w.
TOUCH = "touch /w/ran; echo out; echo err >&2"


def one_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 125, (proc.returncode, proc.stderr)
    lines = errors(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("sbx: error: "), proc.stderr
    assert all(word in lines[0] for word in words), lines[0]


def shared(path: Path) -> Path:
    """A directory the payload may write whatever id it runs as (its own, or a subordinate one)."""
    path.mkdir(exist_ok=True)
    path.chmod(0o777)
    return path


@pytest.fixture
def bind(tmp_path: Path) -> Path:
    return shared(tmp_path / "bind")


def refused_run(bind: Path, *options: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = sbx("run", "-v", f"{bind}:/w:rw", *options, "--", "sh", "-c", TOUCH, timeout=timeout)
    assert not (bind / "ran").exists(), "the payload ran although a report path was refused"
    return proc


def what_lands(flag: str, text: str) -> None:
    """The file of `flag` holds what sbx writes there for the run of TOUCH-like payloads."""
    if flag == "--result":
        assert json.loads(text)["verdict"] == "OK", text
    elif flag == "--meta":
        assert "exitcode:0" in text.splitlines(), text
    else:
        assert text == ("out\n" if flag == "--stdout" else "err\n"), text


# -- open_output's decisions, one table, both resolvers --------------------------------------


def _fifo(d: Path) -> str:
    os.mkfifo(d / "fifo")
    return "fifo"


def _fifo_with_reader(d: Path) -> str:
    os.mkfifo(d / "fifo")
    os.open(d / "fifo", os.O_RDONLY | os.O_NONBLOCK)  # closed with the test's fds (see below)
    return "fifo"


def _socket(d: Path) -> str:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    s.close()
    return "sock"


def _link(target: str, name: str = "link") -> Callable[[Path], str]:
    def make(d: Path) -> str:
        (d / "dir").mkdir(exist_ok=True)
        (d / "dir" / "file").write_text("precious\n")
        (d / name).symlink_to(target)
        return name
    return make


def _parent_link(d: Path) -> str:
    (d / "dir").mkdir()
    (d / "dir" / "file").write_text("precious\n")
    (d / "via").symlink_to("dir")
    return "via/file"


def _hard_link(d: Path) -> str:
    (d / "dir").mkdir()
    (d / "dir" / "file").write_text("precious\n")
    os.link(d / "dir" / "file", d / "second")
    return "second"


def _existing(d: Path) -> str:
    (d / "old").write_text("stale contents\n")
    return "old"


def _dir(d: Path) -> str:
    (d / "dir").mkdir()
    return "dir"


# (case, setup returning the path relative to the cwd, None if accepted or words of the refusal)
DECISIONS: list[tuple[str, Callable[[Path], str], tuple[str, ...] | None]] = [
    ("new regular file", lambda d: "new", None),
    ("existing regular file", _existing, None),
    ("absolute path", lambda d: str(d / "abs"), None),
    ("dot-dot without links", lambda d: (d / "sub").mkdir() or "sub/../back", None),
    ("directory", _dir, ("a directory",)),
    ("trailing slash", lambda d: "new/", ("a directory",)),
    ("fifo without a reader", _fifo, ("a FIFO",)),
    ("fifo with a reader", _fifo_with_reader, ("a FIFO",)),
    ("socket", _socket, ("a socket",)),
    ("character device", lambda d: "/dev/null", ("a character device",)),
    ("symlink last, to a file", _link("dir/file"), ("symbolic link",)),
    ("symlink last, dangling", _link("dir/not-yet"), ("symbolic link",)),
    ("symlink in the middle", _parent_link, ("symbolic link",)),
    ("magic link", lambda d: f"/proc/{os.getpid()}/fd/1", ("symbolic link",)),
    ("missing parent", lambda d: "absent/file", ("No such file or directory",)),
    ("file as a parent", lambda d: (d / "f").write_text("") or "f/x", ("Not a directory",)),
    ("hard link", _hard_link, ("2 names",)),
    ("NUL byte", lambda d: "a\0b", ("NUL",)),
    ("empty", lambda d: "", ("empty",)),
]


def _fds() -> set[int]:
    """Open fds, without the one listdir used for the listing."""
    listed = {int(n) for n in os.listdir("/proc/self/fd")}
    return {fd for fd in listed if _is_open(fd)}


def _files() -> list[str]:
    """What our fds to files point at (not pipes, sockets or anon inodes, which a warm Runner's
    pool thread opens and closes at any time)."""
    found = []
    for fd in _fds():
        try:
            found.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return sorted(t for t in found if t.startswith("/"))


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh cwd; fds the setup leaves open (a FIFO's reader) are closed afterwards."""
    monkeypatch.chdir(tmp_path)
    before = _fds()
    yield tmp_path
    for fd in _fds() - before:
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path)):
                os.close(fd)
        except OSError:
            continue


@pytest.mark.parametrize("openat2", [True, False], ids=["openat2", "walk"])
@pytest.mark.parametrize(("case", "setup", "refusal"), DECISIONS, ids=[c[0] for c in DECISIONS])
def test_open_output_decisions(scratch: Path, case: str, setup: Callable[[Path], str],
                               refusal: tuple[str, ...] | None, openat2: bool) -> None:
    path = setup(scratch)
    before = {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file() and not p.is_symlink()}
    raw = os.fsencode(path)
    if refusal is not None:
        files = _files()
        with pytest.raises(UsageError) as caught:
            hostfile._output(hostfile._raw(raw, "--result", "write"), "--result", openat2)
        message = str(caught.value)
        assert message.startswith("cannot write --result") and "\n" not in message, message
        assert all(word in message for word in refusal), message
        assert _files() == files  # nothing left open
        after = {p: p.read_bytes() for p in scratch.rglob("*") if p.is_file() and not p.is_symlink()}
        assert after == before  # nothing created, nothing truncated
        return
    fd = hostfile._output(hostfile._raw(raw, "--result", "write"), "--result", openat2)
    try:
        st = os.fstat(fd)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0  # truncated only now, after the checks
        assert os.get_blocking(fd) and not os.get_inheritable(fd)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        assert os.path.samestat(st, os.stat(path))
    finally:
        os.close(fd)


def test_open_output_refuses_what_open_by_name_would_follow(scratch: Path) -> None:
    """Control for the table: a plain open() by name goes through the same links and truncates the victim."""
    _parent_link(scratch)
    with open("via/file", "w") as f:
        f.write("through the link\n")
    assert (scratch / "dir" / "file").read_text() == "through the link\n"
    (scratch / "victim").write_text("precious\n")
    os.link(scratch / "victim", scratch / "report")
    open(scratch / "report", "w").close()
    assert (scratch / "victim").read_text() == ""


def test_blocking_open_of_a_fifo_hangs(tmp_path: Path) -> None:
    """Control for the FIFO cases: an open(2) for writing, as sbx did, waits for a reader forever."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    flags = "os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW"
    child = subprocess.Popen([sys.executable, "-c", f"import os; os.open({str(fifo)!r}, {flags})"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the only thing that releases it
        assert child.wait(timeout=20) == 0
        os.close(reader)
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(("make", "ok"), [(lambda d: d / "in", True), (lambda d: d / "fifo", True),
                                          (lambda d: d / "link", False), (lambda d: d / "via" / "in", True)],
                         ids=["regular", "fifo-no-writer", "symlink-last", "symlink-middle"])
def test_open_input_decisions(tmp_path: Path, make: Callable[[Path], Path], ok: bool) -> None:
    (tmp_path / "in").write_text("data\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("in")
    (tmp_path / "via").symlink_to(".")  # inputs follow links above the last component (documented)
    path = make(tmp_path)
    if not ok:
        with pytest.raises(UsageError, match="symbolic link"):
            hostfile.open_input(path)
        return
    fd = hostfile.open_input(path)  # a FIFO without a writer: returns at once
    try:
        assert os.get_blocking(fd) and not os.get_inheritable(fd)
        assert os.read(fd, 100) == (b"" if path.name == "fifo" else b"data\n")
    finally:
        os.close(fd)


# -- the attacks through the command line ----------------------------------------------------


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("swap", ["parent-dir", "file", "fifo"])
def test_payload_swaps_the_report_path_during_the_run(tmp_path: Path, bind: Path, flag: str, swap: str) -> None:
    """The payload has an rw bind on an ancestor of the report and replaces, while it runs, the report's
    directory by a symlink to a host directory (or the file by a symlink, or by a FIFO)."""
    elsewhere = shared(tmp_path / "elsewhere")
    sub = shared(bind / "sub")
    report = sub / "report"
    attack = {
        "parent-dir": f"mv /w/sub /w/sub.orig && ln -s {elsewhere} /w/sub",
        "file": f"mv /w/sub/report /w/sub/report.orig && ln -s {elsewhere}/report /w/sub/report",
        "fifo": "mv /w/sub/report /w/sub/report.orig && mkfifo /w/sub/report",
    }[swap]
    proc = sbx("run", "-v", f"{bind}:/w:rw", flag, str(report), "--", "sh", "-c",
               f"echo out; echo err >&2; {attack} && touch /w/swapped", timeout=30)  # sbx never hangs
    assert proc.returncode == 0, proc.stderr
    assert (bind / "swapped").exists(), proc.stderr  # the attack step itself worked
    assert not (elsewhere / "report").exists()  # nothing written outside the bind
    assert list(elsewhere.iterdir()) == []
    original = {"parent-dir": bind / "sub.orig" / "report", "file": sub / "report.orig",
                "fifo": sub / "report.orig"}[swap]
    what_lands(flag, original.read_text())  # written through the fd opened before the run
    if swap == "fifo":
        assert stat.S_ISFIFO(os.lstat(report).st_mode)
        return
    # Control: after such a swap, opening the report path by name (as sbx did for --result and
    # --meta after the run) writes into the other directory.
    with open(report, "w") as f:
        f.write("by name\n")
    assert (elsewhere / "report").read_text() == "by name\n"


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("reader", [False, True], ids=["no-reader", "reader"])
def test_fifo_at_a_report_path_is_refused_before_anything_runs(tmp_path: Path, bind: Path, flag: str,
                                                               reader: bool) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    held = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader else -1
    try:
        proc = refused_run(bind, flag, str(fifo))  # timeout: a blocking open would hang here
        one_error(proc, flag, str(fifo), "FIFO")
        if held >= 0:
            assert os.read(held, 100) == b""  # not a byte was written into it, and the writer is gone
    finally:
        if held >= 0:
            os.close(held)


@pytest.mark.parametrize("flag", FLAGS)
@pytest.mark.parametrize("where", ["middle", "last"])
def test_symlink_in_a_report_path_is_refused(tmp_path: Path, bind: Path, flag: str, where: str) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "report").write_text("precious\n")
    (tmp_path / "link").symlink_to(target if where == "middle" else target / "report")
    path = tmp_path / "link" / "report" if where == "middle" else tmp_path / "link"
    proc = refused_run(bind, flag, str(path))
    one_error(proc, flag, "symbolic link")
    assert (target / "report").read_text() == "precious\n"
    # Control: by name, the same path reaches the file behind the link.
    with open(path, "w") as f:
        f.write("through the link\n")
    assert (target / "report").read_text() == "through the link\n"


@pytest.mark.parametrize("flag", FLAGS)
def test_device_or_directory_as_a_report_path_is_refused(bind: Path, flag: str) -> None:
    one_error(refused_run(bind, flag, "/dev/null"), flag, "/dev/null", "character device")
    one_error(refused_run(bind, flag, str(bind)), flag, "directory")


@pytest.mark.parametrize("flag", FLAGS)
def test_hard_link_at_a_report_path_is_refused(tmp_path: Path, bind: Path, flag: str) -> None:
    """A payload with an rw bind plants, for the next run, a second name of one of the caller's files."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.link(victim, bind / "report")
    one_error(refused_run(bind, flag, str(bind / "report")), flag, "hard links")
    assert victim.read_text() == "precious\n"
    # (the control, truncating the victim by name, is in test_open_output_refuses_what_open_by_name_would_follow)


def test_reports_are_written_and_truncated(tmp_path: Path) -> None:
    paths = {flag: tmp_path / flag.strip("-") for flag in FLAGS}
    for path in paths.values():
        path.write_text("stale contents, longer than anything written here " * 200)
    options = [x for flag, path in paths.items() for x in (flag, str(path))]
    proc = sbx("run", *options, "--", "sh", "-c", "echo out; echo err >&2", timeout=30)
    assert proc.returncode == 0, proc.stderr
    for flag, path in paths.items():
        what_lands(flag, path.read_text())


def test_stdin_fifo_does_not_hang_sbx(tmp_path: Path) -> None:
    """--stdin on a FIFO that nobody writes: the open returns at once, so the run starts and its wall
    time bounds it (the payload sees EOF, or waits for a writer until the wall time)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = sbx("run", "--wall-time", "1s", "--result", "-", "--stdin", str(fifo), "--", "sh", "-c", "cat; echo done",
               timeout=30)
    verdict = json.loads(proc.stdout[proc.stdout.index("{"):])["verdict"]
    assert (verdict, proc.returncode) in (("OK", 0), ("WTLE", 137)), (proc.returncode, proc.stdout, proc.stderr)
    # With a writer, what it wrote reaches the payload.
    writer = os.open(fifo, os.O_RDWR)  # a FIFO opened read-write never blocks: the writer, held by the test
    try:
        os.write(writer, b"through the fifo\n")
        proc = sbx("run", "--stdin", str(fifo), "--", "head", "-n1", timeout=30)
        assert (proc.returncode, proc.stdout) == (0, "through the fifo\n"), proc.stderr
    finally:
        os.close(writer)
    # Control: the open sbx used to make (O_RDONLY, blocking) waits for a writer, before any timer runs.
    child = subprocess.Popen([sys.executable, "-c", f"import os; os.open({str(fifo)!r}, os.O_RDONLY)"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)
    finally:
        child.kill()
        child.wait()


def test_stdin_symlink_last_is_still_refused(tmp_path: Path) -> None:
    (tmp_path / "in").write_text("data\n")
    (tmp_path / "link").symlink_to(tmp_path / "in")
    one_error(sbx("run", "--stdin", str(tmp_path / "link"), "--", "cat", timeout=30), "--stdin", "symbolic link")


@pytest.mark.parametrize("flag", ["--result", "--meta", "--stderr"])
def test_interactor_refuses_a_fifo_report_before_either_side_runs(tmp_path: Path, bind: Path, flag: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = sbx("run", "-v", f"{bind}:/w:rw", "--interactor", "sh -c 'touch /w/interactor-ran'", flag, str(fifo),
               "--", "sh", "-c", "touch /w/ran", timeout=30)
    one_error(proc, flag, "FIFO")
    assert list(bind.iterdir()) == []


def test_interactor_writes_its_reports_through_the_early_fds(tmp_path: Path) -> None:
    result, err = tmp_path / "r.json", tmp_path / "err"
    proc = sbx("run", "--interactor", "sh -c 'read x; echo got-$x >&2'", "--result", str(result), "--stderr",
               str(err), "--", "sh", "-c", "echo hi; echo sol-err >&2", timeout=30)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(result.read_text())
    assert data["verdict"] == "OK" and data["interactor"]["verdict"] == "OK", data
    assert err.read_text() == "sol-err\n"


# -- the API and batch -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    with Runner(root=str(tmp_path_factory.mktemp("store"))) as r:
        yield r


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_api_refuses_fifo_symlink_and_device_paths(runner: Runner, tmp_path: Path, bind: Path, stream: str) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "d").mkdir()
    (tmp_path / "via").symlink_to("d")
    for path, words in ((fifo, "FIFO"), (tmp_path / "via" / "out", "symbolic link"),
                        (Path("/dev/null"), "character device")):
        with pytest.raises(UsageError) as caught:  # the call returns: no hang
            runner.run(["sh", "-c", "touch /w/ran"], volumes=[f"{bind}:/w:rw"], **{stream: str(path)})
        assert str(caught.value).startswith(f"cannot write {stream} {path}: ") and words in str(caught.value)
        # Nothing of the refused path stays open (only ours: the warm pool's thread opens and
        # closes /dev/null and scratch files of its own at any time).
        assert [f for f in _files() if f.startswith(str(tmp_path))] == []
    assert not (bind / "ran").exists()
    assert not (tmp_path / "d" / "out").exists()
    out = tmp_path / "d" / "out"  # the same through no link works
    result = runner.run(["sh", "-c", f"echo to-{stream} >&{1 if stream == 'stdout' else 2}"], **{stream: str(out)})
    assert result.verdict == "OK" and out.read_text() == f"to-{stream}\n"


def test_api_stdin_fifo_returns(runner: Runner, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = runner.run(["sh", "-c", "cat; echo done"], stdin=str(fifo), limits={"wall_time": 1})
    assert result.verdict in ("OK", "WTLE"), result


def test_batch_line_with_a_fifo_path_is_xx_and_the_batch_goes_on(tmp_path: Path, bind: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    store = tmp_path / "store"
    store.mkdir()
    lines = [{"argv": ["sh", "-c", "touch /w/ran"], "volumes": [f"{bind}:/w:rw"], "stdout": str(fifo)},
             {"argv": ["sh", "-c", "touch /w/ran"], "volumes": [f"{bind}:/w:rw"], "stderr": str(fifo)},
             {"argv": ["echo", "after"]}]
    proc = sbx("batch", "--root", str(store), "-", input="".join(json.dumps(x) + "\n" for x in lines), timeout=60,
               env=dict(os.environ, SBX_ROOT=str(store)))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["verdict"] for r in results] == ["XX", "XX", "OK"], results
    for r, stream in zip(results, ("stdout", "stderr")):
        assert f"cannot write {stream} {fifo}: a FIFO" in r["message"], r
    assert results[2]["stdout"] == "after\n"
    assert not (bind / "ran").exists()


def test_this_kernel_has_openat2() -> None:
    """The table runs both resolvers; its "openat2" rows are not the fallback walk in disguise."""
    from sandbox.kernel import linux

    fd = linux.openat2(-100, "/", os.O_PATH, hostfile.RESOLVE_NO_SYMLINKS)
    os.close(fd)
    with pytest.raises(OSError) as caught:
        linux.openat2(-100, f"/proc/{os.getpid()}/cwd", os.O_PATH, hostfile.RESOLVE_NO_SYMLINKS)
    assert caught.value.errno == errno.ELOOP
