"""Hostile images: symlinks where sbx sets up (/dev, /proc, /tmp, /etc, /etc/hosts) never lead it out of the root.

Each image is built here on a busybox layer and run through the CLI (plain, as root inside,
and with --commit, whose set-up goes through a layer of its own).  Every link points into
OUTSIDE, a directory under /var/tmp (setup runs with a fresh tmpfs over /tmp, so a link into
the host's /tmp could not land anyway).  A run must leave OUTSIDE exactly as it was and give
the payload a sane tree (sbx's own /proc with its masks, /dev, /tmp; no sysfs or cgroupfs),
or refuse the image with one line and exit 125.  The control of each case extracts the same
layer into a directory as deep as sbx's staging root and shows with plain Python that
following the paths from the host side, as set-up once did, does land outside.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BUSYBOX, REPO, layer, sbx
from sandbox.runtime import rootfs
from sandbox.image.layout import Layout

UP = "../" * 8  # from the root (STAGING/root) up to /, and more: extra '..' stop at /
Entry = tuple[str, str, str]  # (name, kind, data): "f" file, "d" dir, "l" symlink to data


@dataclass(frozen=True)
class Case:
    name: str
    entries: tuple[Entry, ...]  # the hostile layer, over busybox
    control: Callable[[Path, Path], None]  # (extracted root, OUTSIDE): following from the host lands outside
    refused: str = ""  # the refusal's text, when the image cannot be set up


def lands_link(rel: str, out: str) -> Callable[[Path, Path], None]:
    """Control: sbx's old os.symlink(dest, root + rel) creates the link in OUTSIDE/out."""
    def control(root: Path, outside: Path) -> None:
        os.symlink("/proc/self/fd", str(root) + rel)
        assert os.path.islink(outside / out / os.path.basename(rel))
        os.unlink(outside / out / os.path.basename(rel))
    return control


def reaches(rel: str, host: str) -> Callable[[Path, Path], None]:
    """Control: root + rel, as the old code bound and probed it, is the host's `host`."""
    def control(root: Path, _outside: Path) -> None:
        assert os.path.realpath(str(root) + rel) == host
        assert not os.path.lexists(str(root) + "/proc/keys")  # so the masks were skipped
    return control


def writes(rel: str, out: str) -> Callable[[Path, Path], None]:
    def control(root: Path, outside: Path) -> None:
        before = (outside / out).read_text() if (outside / out).exists() else None
        with open(str(root) + rel, "w") as f:
            f.write("127.0.0.1 x\n")
        assert (outside / out).read_text() == "127.0.0.1 x\n"
        if before is None:
            (outside / out).unlink()
        else:
            (outside / out).write_text(before)
    return control


def fails(rel: str) -> Callable[[Path, Path], None]:
    """Control: no escape, but the old set-up failed with a stray errno instead of one clear line."""
    def control(root: Path, _outside: Path) -> None:
        with pytest.raises(NotADirectoryError):
            os.symlink("/proc/self/fd", str(root) + rel)
    return control


def anchor(path: str) -> tuple[Entry, ...]:
    """Directories making `path` exist inside the image too: resolved in the root the link then works,
    so the old set-up went on to follow it from the host side (the attack needs both)."""
    parts = path.strip("/").split("/")
    return tuple(("/".join(parts[: i + 1]), "d", "") for i in range(len(parts)))


def unlink_fails(rel: str) -> Callable[[Path, Path], None]:
    """Control: the old Root.write's unlink met a directory: a stray errno, not a clear line."""
    def control(root: Path, _outside: Path) -> None:
        with pytest.raises(IsADirectoryError):
            os.unlink(str(root) + rel)
    return control


def cases(outside: Path) -> list[Case]:
    out = str(outside)
    rel = UP + out.lstrip("/")
    return [
        Case("dev-relative", (*anchor(out + "/devdir"), ("dev", "l", rel + "/devdir")),
             lands_link("/dev/fd", "devdir")),
        Case("dev-home", (*anchor(out + "/home/user"), ("dev", "l", out + "/home/user")),
             lands_link("/dev/stdin", "home/user")),
        Case("dev-file", (("dev", "f", "not a dir"),), fails("/dev/fd")),
        Case("proc-cgroupfs", (*anchor("/sys/fs/cgroup"), ("proc", "l", "/sys/fs/cgroup")),
             reaches("/proc", "/sys/fs/cgroup")),
        Case("proc-updir", (("proc", "l", UP),), reaches("/proc/sys", "/sys")),
        Case("proc-via-usr", (("usr", "l", UP), ("proc", "l", "usr")), reaches("/proc/sys", "/sys")),
        Case("proc-usr-sys", (*anchor(out + "/fakeusr/x/sys"), ("usr", "l", rel + "/fakeusr"), ("proc", "l", "usr/x")),
             reaches("/proc/sys", out + "/fakeusr/x/sys")),
        Case("tmp-relative", (*anchor(out + "/tmpdir"), ("tmp", "l", rel + "/tmpdir")),
             writes("/tmp/probe", "tmpdir/probe")),
        Case("dev-pts-shm", (("dev", "d", ""), ("dev/pts", "l", rel + "/devdir"), ("dev/shm", "l", out + "/devdir")),
             lands_link("/dev/pts/ptmx", "devdir")),
        Case("etc-hosts", (("etc", "d", ""), ("etc/hosts", "l", out + "/hosts"),
                           ("etc/resolv.conf", "l", rel + "/resolv.conf")), writes("/etc/hosts", "hosts")),
        Case("etc-outside", (*anchor(out + "/etcdir"), ("etc", "l", out + "/etcdir")), writes("/etc/hosts", "etcdir/hosts"),
             refused=f"/etc is a symlink (to {out}/etcdir): sbx cannot set up the sandbox on it"),
        Case("etc-file", (("etc", "f", "x"),), fails("/etc/hosts"),
             refused="/etc is not a directory: sbx cannot set up the sandbox on it"),
        Case("etc-hosts-dir", (("etc", "d", ""), ("etc/hosts", "d", "")), unlink_fails("/etc/hosts"),
             refused="/etc/hosts is a directory: sbx cannot set up the sandbox on it"),
        Case("data-root", (("data", "l", UP),), reaches("/data", "/")),  # runs as it is; see the mount test
    ]


CASE_NAMES = [case.name for case in cases(Path("/x"))]


@pytest.fixture(scope="module")
def outside() -> Iterator[Path]:
    """The victim: files and directories the links aim at, outside any sandbox and outside /tmp."""
    assert rootfs.staging_dir() == "/tmp", "the relative links assume sbx builds its root at /tmp/root"
    path = Path(tempfile.mkdtemp(prefix="sbx-hostile-", dir="/var/tmp"))
    for sub in ("devdir", "home/user", "tmpdir", "etcdir", "fakeusr/x/sys"):
        (path / sub).mkdir(parents=True)
    (path / "hosts").write_text("victim hosts\n")
    (path / "resolv.conf").write_text("victim resolv\n")
    (path / "etcdir" / "hosts").write_text("victim etc hosts\n")
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, outside: Path) -> Path:
    assert os.path.exists(BUSYBOX), "busybox-static is not installed (the test command installs it)"
    base = tmp_path_factory.mktemp("hostile")
    with open(BUSYBOX, "rb") as f:
        busybox = layer(("bin", "d", ""), ("bin/busybox", "f", f.read()), ("bin/sh", "l", "busybox"))
    for case in cases(outside):
        out = base / case.name
        Layout(str(out)).index([Layout(str(out)).image([busybox, layer(*case.entries)], {"Env": ["PATH=/bin"]},
                                                       compression=None)], ref_name="latest")
        subprocess.run([sys.executable, "-m", "sandbox", "image", "import", "--name", case.name, str(out)],
                       check=True, capture_output=True,
                       env=dict(os.environ, SBX_ROOT=str(base / "store"), PYTHONPATH=str(REPO)))
    return base / "store"


def snapshot(path: Path) -> list[tuple[str, int, int, int, str]]:
    found = []
    for top, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            st = os.lstat(os.path.join(top, name))
            link = os.readlink(os.path.join(top, name)) if os.path.islink(os.path.join(top, name)) else ""
            found.append((os.path.relpath(os.path.join(top, name), path), st.st_mode, st.st_size, st.st_mtime_ns, link))
    return sorted(found)


PROBE = """B=/bin/busybox
$B cat /proc/self/mountinfo
echo ===
$B readlink /dev/fd
$B readlink /dev/ptmx
$B stat -c %t:%T /proc/keys
echo x > /tmp/probe && $B cat /tmp/probe
$B head -1 /etc/hosts
"""


def mounts(mountinfo: str) -> dict[str, tuple[set[str], str]]:
    """mount point -> (its per-mount options, fstype); the last mount on a point wins."""
    found = {}
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        found[fields[4]] = (set(fields[5].split(",")), right.split()[0])
    return found


def check_tree(stdout: str) -> None:
    mountinfo, _, rest = stdout.partition("===\n")
    points = mounts(mountinfo)
    assert {fstype for _, fstype in points.values()}.isdisjoint({"sysfs", "cgroup", "cgroup2"}), mountinfo
    assert points["/proc"][1] == "proc"
    masked = [name for name in rootfs.PROC_MASKED_FILES if os.path.exists("/proc/" + name)]  # no kcore here
    assert "keys" in masked and all("/proc/" + name in points for name in masked), mountinfo
    readonly = [name for name in rootfs.PROC_READONLY if os.path.exists("/proc/" + name)]
    assert "sys" in readonly and all("ro" in points["/proc/" + name][0] and points["/proc/" + name][1] == "proc"
                                     for name in readonly), mountinfo  # read-only binds of the sandbox's own proc
    assert points["/dev"][1] == "tmpfs" and points["/dev/pts"][1] == "devpts" and points["/dev/shm"][1] == "tmpfs"
    assert points["/tmp"][1] == "tmpfs"
    assert rest.split("\n") == ["/proc/self/fd", "pts/ptmx", "1:3", "x", "127.0.0.1\tlocalhost", ""], rest


MODES = {"plain": (), "uid0": ("--uid", "0", "--gid", "0"), "commit": ("--commit", "kept")}


@pytest.mark.parametrize("option", [("--tmpfs", "/data"), ("-v", "/var/tmp:/data:ro")])
def test_user_mount_redirected_to_the_root_is_refused(store: Path, tmp_path: Path, option: tuple[str, str]) -> None:
    """The image's /data -> / would put a --tmpfs or -v on the whole tree (and pivot into it)."""
    result = sbx("run", "--root", str(store), "--image", "data-root", *option, "--", "/bin/busybox", "true",
                 env=dict(os.environ, HOME=str(tmp_path)))
    assert result.returncode == 125, result.stdout + result.stderr
    assert result.stderr == ("sbx: error: image data-root: /data leads to the sandbox's root: "
                             "sbx cannot mount on it\n")


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", CASE_NAMES)
def test_hostile_image_stays_inside(store: Path, outside: Path, tmp_path: Path, name: str, mode: str) -> None:
    case = next(case for case in cases(outside) if case.name == name)
    before = snapshot(outside)
    env = dict(os.environ, HOME=str(tmp_path))  # sbx keeps a cache there; the "home" the links aim at is OUTSIDE's
    result = sbx("run", "--root", str(store), "--image", name, *MODES[mode], "--", "/bin/busybox", "sh", "-c", PROBE,
                 env=env)
    assert snapshot(outside) == before  # nothing created, written, or mounted on (mtimes too)
    if case.refused:
        assert result.returncode == 125, result.stdout + result.stderr
        lines = result.stderr.splitlines()
        assert lines == [f"sbx: error: image {name}: {case.refused}"]  # --commit saves nothing then
    else:
        assert result.returncode == 0, result.stderr
        check_tree(result.stdout)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_control_following_from_the_host_lands_outside(outside: Path, name: str) -> None:
    """Without resolving in the root: the same layer extracted at sbx's depth, followed from the host."""
    case = next(case for case in cases(outside) if case.name == name)
    before = snapshot(outside)
    root = Path(tempfile.mkdtemp(dir="/tmp"))  # /tmp/XXX: as deep as /tmp/root
    try:
        with tarfile.open(fileobj=io.BytesIO(layer(*case.entries))) as tar:
            tar.extractall(root)  # our own tar: symlinks as they are
        case.control(root, outside)
    finally:
        shutil.rmtree(root)
    assert [entry[0] for entry in snapshot(outside)] == [entry[0] for entry in before]  # the control cleaned up
