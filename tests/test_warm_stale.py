"""Warm runs never see a stale bind (issue #12).

The pool builds the next sandbox of a shape ahead of its run, binding the
volume sources, the box's directory and the image's layers as they are then.
A judge that replaces such a directory between two submissions (renames it
away and makes a new one, rm -rf and mkdir, repoints a symlink, removes and
re-creates a box) must have the next run see the new one: the pool hands a
prepared sandbox out only while every path it bound still names the object
it bound (pool.identity_of), else it builds the run afresh.

Each test first has the pool hold prepared sandboxes bound to the old
objects (wait_stock), replaces the object, and then:
  control: one of those sandboxes, its recorded identity overwritten with
           today's as if nothing were checked, serves a run through the
           normal path: that run sees the previous submission's files (the
           attack, had the check been missing);
  run:     the next run sees the new files, and the pool counts the stale
           sandbox it discarded.
Changes made inside a bound directory (new files, rewritten files) keep it
warm: the bind shows them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, wait_stock
from sandbox import Result, Runner
from sandbox.image import ImageError
from sandbox.warm.pool import bound_paths, identity_of
from sandbox.model.spec import Spec
from sandbox.runtime.supervisor import shape_of

pytestmark = pytest.mark.timeout(60)

READ = ["sh", "-c", "cat /data/f 2>/dev/null || echo missing"]


@pytest.fixture
def runner(tmp_path: Path) -> object:
    with Runner(root=str(tmp_path / "store")) as r:
        yield r


def shape(runner: Runner, argv: list[str], **spec_args: object) -> Spec:
    return shape_of(runner.spec(argv, **spec_args))  # type: ignore[arg-type]


def lines(result: Result) -> list[str]:
    assert result.verdict == "OK", result
    assert result.stdout is not None
    return result.stdout.decode().splitlines()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    path.write_text(text)
    path.chmod(0o644)


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, mode=0o755)
    path.chmod(0o755)  # readable by a payload that runs as a subordinate id
    return path


def replaced(runner: Runner, replace: Callable[[], None], argv: list[str], old: list[str], new: list[str],
             control: list[str] | None = None, **spec_args: object) -> None:
    """Run 1 sees `old`; the pool holds sandboxes bound to it; replace(); a stale sandbox would
    show `control` (default `old`); the next run shows `new`, from a freshly bound sandbox."""
    assert runner.pool is not None
    assert lines(runner.run(argv, **spec_args)) == old  # type: ignore[arg-type]
    of = shape(runner, argv, **spec_args)
    wait_stock(runner, of, 2)  # both bound to the old objects
    replace()
    now = identity_of(bound_paths(of))
    with runner.pool.cond:
        stale = runner.pool.ready[of][0]
        assert stale.identity is not None and now is not None
        assert stale.identity != now  # the check below sees the change
        stale.identity = now  # the control: as if nothing were checked
    seen = lines(runner.run(argv, **spec_args))  # type: ignore[arg-type]
    assert seen == (old if control is None else control), "the control run did not use the stale sandbox"
    discarded = runner.pool.stale
    assert lines(runner.run(argv, **spec_args)) == new  # type: ignore[arg-type]
    assert runner.pool.stale > discarded  # the other stale sandbox was there, and thrown away
    # From now on the pool prepares on the new objects and serves them warm.
    wait_stock(runner, of, 1)
    assert lines(runner.run(argv, **spec_args)) == new  # type: ignore[arg-type]


# -- (a) a volume directory renamed away and made again ------------------------------------------


@pytest.mark.parametrize("mode", ["ro", "rw", "overlay"])
def test_volume_renamed_and_made_again(runner: Runner, tmp_path: Path, mode: str) -> None:
    vol = mkdir(tmp_path / "vol")
    write(vol / "f", "old\n")

    def replace() -> None:
        vol.rename(tmp_path / "vol.previous")
        mkdir(vol)
        write(vol / "f", "new\n")

    replaced(runner, replace, READ, ["old"], ["new"], volumes=[f"{vol}:/data:{mode}"])


def test_writes_land_in_the_new_directory(runner: Runner, tmp_path: Path) -> None:
    """An rw volume the judge collects output from: the run's files go to today's directory."""
    vol = mkdir(tmp_path / "out")
    vol.chmod(0o777)  # writable by a payload that runs as a subordinate id
    argv = ["sh", "-c", "echo written > /data/result && ls /data"]
    volumes = [f"{vol}:/data:rw"]
    assert lines(runner.run(argv, volumes=volumes)) == ["result"]
    of = shape(runner, argv, volumes=volumes)
    wait_stock(runner, of, 1)
    vol.rename(tmp_path / "out.previous")
    mkdir(vol).chmod(0o777)
    assert lines(runner.run(argv, volumes=volumes)) == ["result"]
    assert (vol / "result").read_text() == "written\n"
    assert runner.pool is not None and runner.pool.stale >= 1


def test_bound_file_replaced_by_rename(runner: Runner, tmp_path: Path) -> None:
    """A single file bound (the test's input), replaced atomically (write a temporary, rename)."""
    data = mkdir(tmp_path / "case")
    write(data / "input", "old\n")

    def replace() -> None:
        write(data / "input.tmp", "new\n")
        os.replace(data / "input.tmp", data / "input")

    replaced(runner, replace, ["cat", "/data/f"], ["old"], ["new"], volumes=[f"{data / 'input'}:/data/f"])


# -- (b) an ancestor renamed, a new tree at the same path ---------------------------------------


def test_ancestor_renamed_and_tree_made_again(runner: Runner, tmp_path: Path) -> None:
    base = tmp_path / "judge"
    vol = mkdir(base / "problem" / "tests")
    write(vol / "f", "old\n")

    def replace() -> None:
        base.rename(tmp_path / "judge.previous")
        mkdir(vol)
        write(vol / "f", "new\n")

    replaced(runner, replace, READ, ["old"], ["new"], volumes=[f"{vol}:/data"])


def test_ancestor_swapped_with_another_tree(runner: Runner, tmp_path: Path) -> None:
    """Two trees exchanged under the same names (rename a -> tmp, b -> a, tmp -> b)."""
    a, b = tmp_path / "a", tmp_path / "b"
    write(a / "tests" / "f", "old\n")
    write(b / "tests" / "f", "new\n")
    for d in (a, b, a / "tests", b / "tests"):
        d.chmod(0o755)

    def replace() -> None:
        a.rename(tmp_path / "swap")
        b.rename(a)
        (tmp_path / "swap").rename(b)

    replaced(runner, replace, READ, ["old"], ["new"], volumes=[f"{a / 'tests'}:/data"])


# -- (c) symlinks repointed -------------------------------------------------------------------


def versions(tmp_path: Path, inner: str = "") -> tuple[Path, Path]:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    for version, text in ((v1, "old\n"), (v2, "new\n")):
        mkdir(version / inner if inner else version)
        write((version / inner if inner else version) / "f", text)
        version.chmod(0o755)
    return v1, v2


def repoint(link: Path, target: str) -> None:
    """ln -sfn: a new link renamed over the old one."""
    temp = link.with_name(link.name + ".new")
    os.symlink(target, temp)
    os.replace(temp, link)


def test_source_symlink_repointed(runner: Runner, tmp_path: Path) -> None:
    versions(tmp_path)
    link = tmp_path / "current"
    os.symlink("v1", link)
    replaced(runner, lambda: repoint(link, "v2"), READ, ["old"], ["new"], volumes=[f"{link}:/data"])


def test_ancestor_symlink_repointed(runner: Runner, tmp_path: Path) -> None:
    versions(tmp_path, inner="tests")
    link = tmp_path / "current"
    os.symlink(str(tmp_path / "v1"), link)  # absolute, this time
    replaced(runner, lambda: repoint(link, str(tmp_path / "v2")), READ, ["old"], ["new"],
             volumes=[f"{link / 'tests'}:/data"])


def test_directory_replaced_by_a_symlink(runner: Runner, tmp_path: Path) -> None:
    vol = mkdir(tmp_path / "vol")
    write(vol / "f", "old\n")
    _, v2 = versions(tmp_path)

    def replace() -> None:
        vol.rename(tmp_path / "vol.previous")
        os.symlink(v2, vol)

    replaced(runner, replace, READ, ["old"], ["new"], volumes=[f"{vol}:/data"])


# -- (d) rm -rf and mkdir of the same path ------------------------------------------------------


def test_volume_removed_and_made_again(runner: Runner, tmp_path: Path) -> None:
    """The stale sandbox holds the removed directory (empty now): the new files are not there."""
    vol = mkdir(tmp_path / "vol")
    write(vol / "f", "old\n")

    def replace() -> None:
        shutil.rmtree(vol)
        mkdir(vol)
        write(vol / "f", "new\n")

    replaced(runner, replace, READ, ["old"], ["new"], control=["missing"], volumes=[f"{vol}:/data"])


# -- (e) a box removed and made again under its name ---------------------------------------------


def test_box_removed_and_made_again(runner: Runner) -> None:
    box = runner.create_box("again")
    write(Path(box.work) / "f", "old\n")
    Path(box.work).chmod(0o755)

    def replace() -> None:
        runner.remove_box("again")
        made = runner.create_box("again")
        write(Path(made.work) / "f", "new\n")
        Path(made.work).chmod(0o755)

    # The old box's files went with it: the stale sandbox holds an empty, removed directory.
    replaced(runner, replace, ["sh", "-c", "cat f 2>/dev/null || echo missing"], ["old"], ["new"],
             control=["missing"], box=box)


# -- what must stay warm --------------------------------------------------------------------------


def test_changes_inside_a_bound_directory_keep_it_warm(runner: Runner, tmp_path: Path) -> None:
    """New files and files rewritten in place: the same directory, so the prepared sandbox serves
    (it shows them through its bind) and nothing is discarded."""
    vol = mkdir(tmp_path / "vol")
    write(vol / "f", "old\n")
    volumes = [f"{vol}:/data"]
    argv = ["sh", "-c", "cat /data/f; ls /data"]
    assert lines(runner.run(argv, volumes=volumes)) == ["old", "f"]
    of = shape(runner, argv, volumes=volumes)
    assert runner.pool is not None
    for step in range(3):
        wait_stock(runner, of, 1)
        with runner.pool.cond:
            first = runner.pool.ready[of][0]
        with open(vol / "f", "w") as f:  # the same inode, new content
            f.write(f"step {step}\n")
        write(vol / f"extra{step}", "")
        result = lines(runner.run(argv, volumes=volumes))
        assert result == [f"step {step}", *sorted(["f", *(f"extra{i}" for i in range(step + 1))])], result
        with runner.pool.cond:
            assert first not in runner.pool.ready.get(of, [])  # it served this run
    assert runner.pool.stale == 0


def test_identity_covers_each_replacement(tmp_path: Path) -> None:
    """identity_of itself: unchanged by writes inside, changed by every way of replacing a path."""
    vol = mkdir(tmp_path / "a" / "b" / "vol")
    link = tmp_path / "link"
    os.symlink(vol, link)
    paths = (str(vol), str(link), str(tmp_path / "missing"))
    before = identity_of(paths)
    assert before is not None
    write(vol / "new-file", "x")
    (tmp_path / "a" / "b" / "sibling").mkdir()
    assert identity_of(paths) == before
    def rename_and_make() -> None:
        vol.rename(tmp_path / "old1")
        vol.mkdir()

    def remove_and_make() -> None:
        shutil.rmtree(vol)
        vol.mkdir()

    def ancestor_renamed() -> None:
        (tmp_path / "a").rename(tmp_path / "old2")
        vol.mkdir(parents=True)

    def link_repointed() -> None:
        repoint(link, str(tmp_path / "old1"))

    def missing_made() -> None:
        write(tmp_path / "missing", "now here")

    steps = [rename_and_make, remove_and_make, ancestor_renamed, link_repointed, missing_made]
    for step in steps:
        previous = identity_of(paths)
        # Held as a sandbox's binds hold them: a removed directory's inode number is not reused.
        pins = [os.open(path, os.O_PATH) for path in paths if os.path.exists(path)]
        try:
            step()
            assert identity_of(paths) != previous, step
        finally:
            for fd in pins:
                os.close(fd)
    assert identity_of(("relative/path",)) is None  # cannot tell: never matches


# -- (f) an image imported again under its name ------------------------------------------------


def import_image(store: Path, source: Path, name: str, marker: str) -> None:
    """A one-layer image of busybox and /marker, imported into `store` as `name`."""
    from sandbox.image.layout import Layout

    with open("/bin/busybox", "rb") as f:
        busybox = f.read()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry, data in (("bin/busybox", busybox), ("marker", marker.encode())):
            info = tarfile.TarInfo(entry)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    layout = Layout(str(source))
    layout.index([layout.image([buf.getvalue()], {"Cmd": ["/bin/busybox", "cat", "/marker"]}, compression=None)],
                 ref_name="latest")
    subprocess.run([sys.executable, "-m", "sandbox", "image", "import", "--name", name, str(source)], check=True,
                   capture_output=True, env=dict(os.environ, SBX_ROOT=str(store), PYTHONPATH=str(REPO)))


def test_image_imported_again_under_its_name(runner: Runner, tmp_path: Path) -> None:
    assert os.path.exists("/bin/busybox"), "busybox-static is not installed (the test command installs it)"
    store = tmp_path / "store"
    import_image(store, tmp_path / "one", "judge-env", "old\n")
    assert lines(runner.run([], image="judge-env")) == ["old"]
    old = shape(runner, [], image="judge-env")
    wait_stock(runner, old, 2)
    import_image(store, tmp_path / "two", "judge-env", "new\n")
    # Control: the record as if unchanged, the Runner keeps its Spec, whose layers are the old image's.
    key = next(k for k in runner.records if k[0] == "judge-env")
    held = runner.records[key]
    st = os.stat(held[0])
    runner.records[key] = (held[0], held[1], (st.st_dev, st.st_ino))
    assert lines(runner.run([], image="judge-env")) == ["old"]
    runner.records[key] = held
    assert lines(runner.run([], image="judge-env")) == ["new"]
    new = shape(runner, [], image="judge-env")
    assert new.layers != old.layers and new != old
    wait_stock(runner, new, 1)
    assert lines(runner.run([], image="judge-env")) == ["new"]  # and warm again
    for marker in ("third\n", "fourth\n"):
        import_image(store, tmp_path / marker.strip(), "judge-env", marker)
        assert lines(runner.run([], image="judge-env")) == [marker.strip()]
    # What the Runner holds does not pile up with each import: one record, one use lock.
    held_files = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                  if os.path.exists(f"/proc/self/fd/{fd}")]
    assert len([path for path in held_files if path.startswith(str(store / "images"))]) == 1, held_files
    assert len([path for path in held_files if path == str(store / "use.lock")]) == 1, held_files
    # Removed: the name is gone for the Runner too, warm or not.
    subprocess.run([sys.executable, "-m", "sandbox", "image", "rm", "judge-env"], check=True, capture_output=True,
                   env=dict(os.environ, SBX_ROOT=str(store), PYTHONPATH=str(REPO)))
    with pytest.raises(ImageError, match="not found"):
        runner.run([], image="judge-env")


def test_a_path_replaced_while_a_sandbox_is_built(tmp_path: Path) -> None:
    """The pool's check around a build (_Pins): the paths' objects held from before the sandbox
    starts until it is ready; any replacement meanwhile discards it, writes inside do not."""
    from sandbox.warm.pool import _Pins

    vol = mkdir(tmp_path / "vol")
    missing = str(tmp_path / "later")
    paths = (str(vol), missing)
    pins = _Pins(paths)
    try:
        write(vol / "f", "written while it was built\n")
        assert pins.verify() == identity_of(paths)  # the same objects: stocked
        vol.rename(tmp_path / "vol.previous")
        mkdir(vol)
        assert pins.verify() is None  # replaced meanwhile: discarded
    finally:
        pins.close()
    pins = _Pins(paths)
    try:
        mkdir(Path(missing))  # a source that did not exist (an optional bind) now does
        assert pins.verify() is None
    finally:
        pins.close()
    with pytest.raises(OSError):
        _Pins(("relative/path",))  # cannot be checked: the shape is not prepared ahead
