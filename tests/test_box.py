"""Boxes: a work directory that survives between runs (issue #8), from the CLI and the API.

Compile once with generous limits, run the binary per test case with tight
ones; modes rw, ro and overlay; a lock against concurrent use; removal that
never follows a link a run planted.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from sandbox import BoxBusy, BoxError, Result, Runner, SbxError
from sandbox.kernel import idmap

from conftest import REPO, SBX, sbx

pytestmark = pytest.mark.timeout(60)

SOLUTION_C = r"""
#include <stdio.h>
int main(void) {
    long n, sum = 0;
    if (scanf("%ld", &n) != 1) return 2;
    if (n < 0) for (;;) sum++;          /* the "slow" test case */
    for (long i = 1; i <= n; i++) sum += i;
    printf("%ld\n", sum);
    return 0;
}
"""


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def env_for(store: Path) -> dict[str, str]:
    """The caller's environment with SBX_ROOT pointing at the test's store (nothing lands in $HOME)."""
    return dict(os.environ, SBX_ROOT=str(store))


def box(store: Path, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`sbx box ARGS` with the store in SBX_ROOT (and --root where the test passes it)."""
    return sbx("box", *args, env=env_for(store), **kwargs)  # type: ignore[arg-type]


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def create(store: Path, name: str) -> Path:
    made = box(store, "create", "--root", str(store), name, check=True)
    listed_name, work = made.stdout.rstrip("\n").split("\t")
    assert listed_name == name
    assert Path(work) == store / "boxes" / name / "work" and Path(work).is_dir()
    return Path(work)


# -- compile, then run per test case -----------------------------------------------------------


@pytest.mark.timeout(90)
def test_compile_then_run_per_test_case(store: Path, tmp_path: Path) -> None:
    work = create(store, "sub-1")
    (work / "sol.c").write_text(SOLUTION_C)
    built = box(store, "run", "--root", str(store), "sub-1", "--time", "20", "--wall-time", "60", "--memory", "512M",
                "--", "gcc", "-O1", "-o", "sol", "sol.c")
    assert built.returncode == 0, built.stderr
    assert (work / "sol").is_file() and os.access(work / "sol", os.X_OK)
    cases = {"1": ("10\n", "55\n"), "2": ("1000\n", "500500\n"), "3": ("-1\n", None), "4": ("oops\n", None)}
    for name, (given, _) in cases.items():
        (tmp_path / f"{name}.in").write_text(given)
    verdicts = {}
    for name, (_, expected) in cases.items():
        proc = box(store, "run", "sub-1", "--time", "0.3", "--wall-time", "3", "--stdin", f"{name}.in",
                   "--stdout", f"{name}.out", "--result", f"{name}.json", "--", "./sol", cwd=str(tmp_path))
        result = json.loads((tmp_path / f"{name}.json").read_text())
        verdicts[name] = result["verdict"]
        if expected is not None:
            assert proc.returncode == 0, proc.stderr
            assert (tmp_path / f"{name}.out").read_text() == expected
    assert verdicts == {"1": "OK", "2": "OK", "3": "TLE", "4": "RE"}, verdicts
    # the tight limit was this run's, not the compile's
    slow = json.loads((tmp_path / "3.json").read_text())
    assert 0.3 <= slow["cpu_time"] < 1.5, slow


def test_files_persist_between_runs(store: Path) -> None:
    work = create(store, "keep")
    first = box(store, "run", "--root", str(store), "keep", "--", "sh", "-c",
                "pwd; echo one > a.txt; mkdir -p d/e; echo two > d/e/b.txt")
    assert first.returncode == 0 and first.stdout == "/box\n", first.stderr
    assert (work / "a.txt").read_text() == "one\n"
    # The payload's files: a subordinate id under id ranges, else the caller (root inside)
    from sandbox.kernel import idmap

    ranges = idmap.for_payload(os.environ)
    owner = os.getuid() if ranges is None else ranges.uid_start + idmap.PAYLOAD_ID - 1
    assert (work / "d" / "e" / "b.txt").stat().st_uid == owner
    second = box(store, "run", "keep", "--", "sh", "-c", "cat a.txt d/e/b.txt; rm a.txt")
    assert second.returncode == 0 and second.stdout == "one\ntwo\n", second.stderr
    assert not (work / "a.txt").exists()
    elsewhere = box(store, "run", "keep", "-w", "/tmp", "--", "sh", "-c", "pwd; cat /box/d/e/b.txt")
    assert elsewhere.stdout == "/tmp\ntwo\n", elsewhere.stderr


def test_overlay_mode_discards_changes(store: Path) -> None:
    work = create(store, "ov")
    (work / "keep.txt").write_text("original\n")
    run = box(store, "run", "--mode", "overlay", "ov", "--", "sh", "-c",
              "cat keep.txt; echo changed > keep.txt; echo new > new.txt; rm -f keep.txt; ls -A; echo ok")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "original\nnew.txt\nok\n"
    assert (work / "keep.txt").read_text() == "original\n"
    assert sorted(p.name for p in work.iterdir()) == ["keep.txt"]
    again = box(store, "run", "--mode=overlay", "ov", "--", "ls", "-A")
    assert again.stdout == "keep.txt\n"


def test_ro_mode_is_read_only(store: Path) -> None:
    work = create(store, "ro")
    (work / "data").write_text("data\n")
    run = box(store, "run", "--mode", "ro", "ro", "--", "sh", "-c",
              "cat data; echo x > data || echo REFUSED1; touch new || echo REFUSED2; rm data || echo REFUSED3")
    assert run.stdout == "data\nREFUSED1\nREFUSED2\nREFUSED3\n", (run.stdout, run.stderr)
    assert "Read-only file system" in run.stderr
    assert (work / "data").read_text() == "data\n"
    assert sorted(p.name for p in work.iterdir()) == ["data"]


def test_bad_mode(store: Path) -> None:
    create(store, "m")
    one_error_line(box(store, "run", "--mode", "rwx", "m", "--", "true"), "rwx")


# -- the lock ---------------------------------------------------------------------------------


def start_holder(store: Path, name: str, seconds: float) -> subprocess.Popen[str]:
    """`sbx box run NAME` that says 'started' once it holds the box, then sleeps."""
    holder = subprocess.Popen([*SBX, "box", "run", name, "--", "sh", "-c", f"echo started; sleep {seconds}"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(env_for(store), PYTHONPATH=str(REPO)))
    assert holder.stdout is not None
    assert holder.stdout.readline() == "started\n"
    return holder


def test_a_busy_box_fails_fast_or_waits(store: Path) -> None:
    create(store, "busy")
    holder = start_holder(store, "busy", 2)
    started = time.monotonic()
    try:
        start = time.monotonic()
        second = box(store, "run", "busy", "--", "echo", "ran")
        elapsed = time.monotonic() - start
        one_error_line(second, "busy", "in use")
        assert second.stdout == ""
        assert elapsed < 1.5, elapsed  # failed fast, not after the holder
        assert holder.poll() is None  # the holder is still running
        removed = box(store, "rm", "busy")
        one_error_line(removed, "busy", "in use")
        assert (store / "boxes" / "busy" / "work").is_dir()
        waited = box(store, "run", "--wait", "busy", "--", "echo", "ran")
        assert time.monotonic() - started >= 1.9, "--wait ran while the holder still held the box"
        assert waited.returncode == 0 and waited.stdout == "ran\n", waited.stderr
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate()
    assert holder.returncode == 0


def test_rm_wait_waits_for_the_run(store: Path) -> None:
    create(store, "rmw")
    holder = start_holder(store, "rmw", 1)
    started = time.monotonic()
    try:
        removed = box(store, "rm", "--wait", "rmw")
        assert time.monotonic() - started >= 0.9, "removed while the holder still held the box"
        assert removed.returncode == 0, removed.stderr
        assert not (store / "boxes" / "rmw").exists()
    finally:
        holder.communicate()
    assert holder.returncode == 0


# -- removal ---------------------------------------------------------------------------------


def test_rm_removes_unwritable_dirs_and_never_follows_links(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep\n")
    work = create(store, "messy")
    script = (f"mkdir -p locked/inner && echo x > locked/inner/f && ln -s {outside} locked/inner/out && "
              f"ln -s {outside} out-dir && ln -s {outside}/precious out-file && "
              "mkdir -p ro-dir && echo y > ro-dir/g && chmod 500 ro-dir && "
              "chmod 000 locked/inner && chmod 000 locked && echo done")
    made = box(store, "run", "messy", "-v", f"{outside}:{outside}:ro", "--", "sh", "-c", script)
    assert made.stdout == "done\n", made.stderr
    assert os.lstat(work / "out-dir").st_mode & 0o170000 == 0o120000
    listed = box(store, "ls", "--root", str(store))
    assert listed.stdout == f"messy\t{work}\n"
    removed = box(store, "rm", "--root", str(store), "messy")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout == "" and removed.stderr == ""
    assert not (store / "boxes" / "messy").exists()
    assert (outside / "precious").read_text() == "keep\n"
    assert sorted(p.name for p in outside.iterdir()) == ["precious"]
    assert box(store, "ls").stdout == ""
    one_error_line(box(store, "rm", "messy"), "messy", "does not exist")


def test_ls_and_rm_several(store: Path) -> None:
    assert box(store, "ls").stdout == ""
    for name in ("b", "a", "c"):
        create(store, name)
    assert [line.split("\t")[0] for line in box(store, "ls").stdout.splitlines()] == ["a", "b", "c"]
    assert box(store, "rm", "a", "c").returncode == 0
    assert [line.split("\t")[0] for line in box(store, "ls").stdout.splitlines()] == ["b"]
    one_error_line(box(store, "create", "b"), "already exists")
    generated = box(store, "create", check=True).stdout.split("\t")[0]
    assert generated.startswith("box-") and (store / "boxes" / generated / "work").is_dir()


# -- names --------------------------------------------------------------------------------------

BAD_NAMES = ["../x", ".hidden", "", "a" * 65, "a/b", "..", "-x", "sp ace", "new\nline", "é"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_one_line_errors(store: Path, name: str) -> None:
    for command in (["create", name], ["run", name, "--", "true"], ["rm", name]):
        result = box(store, *command)
        assert result.returncode == 125, (command, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sbx: error: "), (command, result.stderr)
    assert not (store / "x").exists() and not (store / "boxes" / "x").exists()
    assert not (store / "boxes").exists() or list((store / "boxes").iterdir()) == []


def test_a_64_character_name_is_fine(store: Path) -> None:
    create(store, "a" * 64)


def test_usage_errors(store: Path) -> None:
    one_error_line(box(store, "frobnicate"), "frobnicate")
    one_error_line(box(store, "run"))
    one_error_line(box(store, "create", "a", "b"))
    one_error_line(box(store, "ls", "extra"))
    one_error_line(box(store, "rm"))
    one_error_line(box(store, "run", "--root"))
    helped = box(store, "--help")
    assert helped.returncode == 0 and "sbx box" in helped.stdout


# -- the API -----------------------------------------------------------------------------------


def test_api_boxes(store: Path) -> None:
    with Runner(root=str(store)) as runner:
        made = runner.create_box("api")
        assert made.name == "api" and Path(made.work) == store / "boxes" / "api" / "work"
        (Path(made.work) / "sol.c").write_text(SOLUTION_C)
        built = runner.run(["gcc", "-O1", "-o", "sol", "sol.c"], box=made, limits={"time": 20, "wall_time": 60})
        assert built.verdict == "OK", built
        ok = runner.run(["./sol"], box="api", stdin=b"100\n", limits={"time": "300ms"})
        assert (ok.verdict, ok.stdout) == ("OK", b"5050\n"), ok
        slow = runner.run(["./sol"], box=made, box_mode="overlay", stdin=b"-1\n", limits={"time": "300ms"})
        assert slow.verdict == "TLE", slow
        ro = runner.run(["sh", "-c", "touch x"], box=made, box_mode="ro")
        assert ro.verdict == "RE" and b"Read-only" in (ro.stderr or b""), ro
        over = runner.run(["sh", "-c", "rm sol && echo gone"], box="api", box_mode="overlay")
        assert over.stdout == b"gone\n" and (Path(made.work) / "sol").exists()
        with pytest.raises(BoxError):
            runner.run(["true"], box=made, box_mode="rwx")
        assert runner.open_box("api") == made
        assert [b.name for b in type(made).all(str(store))] == ["api"]
        runner.remove_box(made)
        assert not Path(made.path).exists()
        with pytest.raises(BoxError):
            runner.open_box("api")
        with pytest.raises(BoxError):
            runner.run(["true"], box="api")
        with pytest.raises(BoxError):
            runner.create_box("../escape")
        with pytest.raises(BoxError):
            runner.create_box(".hidden")
        generated = runner.create_box()
        assert generated.name.startswith("box-")
        with pytest.raises(BoxError):
            runner.create_box(generated.name)


def test_api_busy_box(store: Path) -> None:
    with Runner(root=str(store)) as runner:
        made = runner.create_box("held")
        r, w = os.pipe()
        outcome: list[object] = []

        def hold() -> None:
            try:
                outcome.append(runner.run(["sh", "-c", "echo started; sleep 1"], box=made, stdout=w))
            except BaseException as exc:  # noqa: BLE001 - reported below
                outcome.append(exc)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            assert os.read(r, 100) == b"started\n"
            start = time.monotonic()
            with pytest.raises(BoxBusy) as caught:
                runner.run(["true"], box=made, box_wait=False)
            assert isinstance(caught.value, BoxError) and isinstance(caught.value, SbxError)
            assert "in use" in str(caught.value)
            with pytest.raises(BoxBusy):
                runner.remove_box("held")
            assert time.monotonic() - start < 0.8
            waited = runner.run(["echo", "after"], box="held")  # box_wait=True: waits for the holder
            assert time.monotonic() - start >= 0.9, "ran while the holder still held the box"
            assert waited.stdout == b"after\n"
            runner.remove_box("held", wait=True)
        finally:
            thread.join(10)
            os.close(r)
            os.close(w)
        assert len(outcome) == 1 and isinstance(outcome[0], Result) and outcome[0].verdict == "OK", outcome
        assert not Path(made.path).exists()


# -- removal of what subordinate ids own (issue #12) ------------------------------------------

RANGES = idmap.available()
PAYLOAD_UID = 1000  # an inside id: with ranges, subordinate id uid_start + 999 outside


def outside_dir(tmp_path: Path) -> Path:
    """A directory of the caller's that links in a box point at: removal must leave it as it is."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "precious").write_text("keep\n")
    (outside / "sub" / "also").write_text("keep too\n")
    (outside / "sub").chmod(0o500)
    return outside


def outside_state(outside: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p.relative_to(outside)), p.lstat().st_mode, p.lstat().st_uid) for p in outside.rglob("*"))


def payload_tree(work: Path, outside: Path) -> None:
    """What a payload leaves: nested dirs with files, links pointing outside, a 0755 dir it owns with files
    in it, dirs it made unsearchable (000) or read-only (0500)."""
    (work / "a" / "b" / "c").mkdir(parents=True)
    (work / "a" / "b" / "c" / "f").write_text("f\n")
    (work / "a" / "g").write_text("g\n")
    (work / "locked" / "inner").mkdir(parents=True)
    (work / "locked" / "inner" / "h").write_text("h\n")
    (work / "locked" / "inner" / "out").symlink_to(outside)
    (work / "a" / "out").symlink_to(outside)
    (work / "a" / "b" / "sub").symlink_to(outside / "sub")
    (work / "a" / "b" / "precious").symlink_to(outside / "precious")
    (work / "out").symlink_to(outside)


def own_as_payload(work: Path) -> int:
    """Give the tree to the payload's id (what a run does once the payload runs as a subordinate id)
    and make some of it unsearchable or read-only; the owner's host uid.  With ranges the chown
    happens as root of a ranged namespace (idmap.run_ranged); as real root directly."""
    def chown_all(uid: int) -> None:
        for path in work.rglob("*"):  # lists links but never walks through them; work/ stays the caller's
            os.chown(path, uid, uid, follow_symlinks=False)
        (work / "a").chmod(0o755)
        (work / "a" / "b").chmod(0o500)
        (work / "locked" / "inner").chmod(0)
        (work / "locked").chmod(0)

    if RANGES is not None:
        idmap.run_ranged(RANGES, lambda: chown_all(PAYLOAD_UID))
        return RANGES.uid_start + PAYLOAD_UID - 1
    assert os.getuid() == 0, "needs subordinate ids or root"
    chown_all(54321)
    return 54321


ranged_or_root = pytest.mark.skipif(RANGES is None and os.getuid() != 0,
                                    reason="needs subordinate ids (/etc/subuid, as sbxtest) or root")


@ranged_or_root
@pytest.mark.parametrize("how", ["cli", "api"])
def test_rm_removes_what_the_payload_owns_and_never_follows_links(store: Path, tmp_path: Path, how: str) -> None:
    outside = outside_dir(tmp_path)
    before = outside_state(outside)
    work = create(store, "owned")
    payload_tree(work, outside)
    owner = own_as_payload(work)
    assert owner != os.getuid()
    assert (work / "a").lstat().st_uid == owner and (work / "a" / "out").lstat().st_uid == owner
    if os.getuid() != 0:
        # the control: as the caller, the payload's files cannot be removed (the EPERM of issue #12)
        with pytest.raises(PermissionError):
            os.unlink(work / "a" / "g")
        with pytest.raises(PermissionError):
            os.rmdir(work / "locked" / "inner")
    else:
        assert RANGES is None  # real root: today's path, as the caller (root's capabilities suffice)
    if how == "cli":
        removed = box(store, "rm", "owned")
        assert (removed.returncode, removed.stdout, removed.stderr) == (0, "", "")
    else:
        with Runner(root=str(store)) as runner:
            runner.remove_box("owned")
    assert not (store / "boxes" / "owned").exists()
    assert outside_state(outside) == before
    assert (outside / "precious").read_text() == "keep\n" and (outside / "sub" / "also").read_text() == "keep too\n"
    assert box(store, "ls").stdout == ""


@pytest.mark.timeout(120)
def test_rm_a_deep_tree(store: Path) -> None:
    """Deeper than Python's recursion limit and than the fds a process may hold: still removed."""
    work = create(store, "deep")
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(1200):
            os.mkdir("d", dir_fd=fd)
            if level % 400 == 0:
                os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
            deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        os.fchmod(fd, 0)
    finally:
        os.close(fd)
    removed = box(store, "rm", "deep")
    assert removed.returncode == 0, removed.stderr
    assert not (store / "boxes" / "deep").exists()


@pytest.mark.skipif(RANGES is None, reason="needs subordinate ids (/etc/subuid, as sbxtest)")
def test_run_ranged_runs_as_root_of_the_ranges_and_reports_errors(tmp_path: Path) -> None:
    assert RANGES is not None
    r, w = os.pipe()
    try:
        def report() -> None:
            with open("/proc/self/uid_map") as f:
                os.write(w, f"{os.getuid()} {f.read().split()}".encode())

        idmap.run_ranged(RANGES, report)
        assert os.read(r, 4096).decode() == f"0 {RANGES.uid_map().split()}"
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(FileNotFoundError):
        idmap.run_ranged(RANGES, lambda: os.unlink(tmp_path / "missing"))
    with pytest.raises(SbxError, match="ValueError: bad"):
        idmap.run_ranged(RANGES, lambda: (_ for _ in ()).throw(ValueError("bad")))
