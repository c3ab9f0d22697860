"""Binds, tmpfs, the disposable root, the working directory, and symlink escapes.

Every test runs real sandboxes through the real CLI on the real kernel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, errors, sbx, sh

pytestmark = pytest.mark.timeout(60)

TAG = f"sbx-test-{os.getpid()}"

# Root inside, which is the caller on the host: these tests are about what binds do with the
# caller's own files (tests/test_identity.py covers the payload's default id under id ranges).
AS_CALLER = ("--uid", "0", "--gid", "0")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root (symlinks not followed) with its type and, for files, contents."""
    tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                tree[path] = "link:" + os.readlink(path)
            elif os.path.isdir(path):
                tree[path] = "dir"
            else:
                with open(path, "rb") as f:
                    tree[path] = "file:" + f.read().hex()
    return tree


def mount_options(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.strip().split(",")


MOUNT_OPTIONS_OF = "awk -v t={} '$5 == t {{o = $6}} END {{print o}}' /proc/self/mountinfo"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    (path / "f").write_text("host\n")
    return path


# -- -v SRC:DST[:MODE] -----------------------------------------------------------------------------------


def test_bind_is_read_only_by_default(src: Path) -> None:
    before = snapshot(src)
    result = sh("cat /data/f; touch /data/new; echo touch=$?; echo x >> /data/f; echo append=$?; "
                "rm /data/f; echo rm=$?", "-v", f"{src}:/data", timeout=20)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "host"
    assert "touch=0" not in lines and "append=0" not in lines and "rm=0" not in lines, result.stdout
    assert "Read-only file system" in result.stderr
    assert snapshot(src) == before


def test_explicit_ro_bind_is_read_only(src: Path) -> None:
    result = sh("touch /data/new", "-v", f"{src}:/data:ro", timeout=20)
    assert result.returncode != 0
    assert "Read-only file system" in result.stderr
    assert not (src / "new").exists()


def test_read_only_bind_is_mounted_ro(src: Path) -> None:
    ro = sh(MOUNT_OPTIONS_OF.format("/data"), "-v", f"{src}:/data", timeout=20)
    assert ro.returncode == 0, ro.stderr
    assert "ro" in mount_options(ro), ro.stdout
    assert "nosuid" in mount_options(ro) and "nodev" in mount_options(ro)
    rw = sh(MOUNT_OPTIONS_OF.format("/data"), "-v", f"{src}:/data:rw", timeout=20)
    assert "rw" in mount_options(rw), rw.stdout  # the check above can tell them apart


def test_read_only_bind_cannot_be_remounted_rw(src: Path) -> None:
    result = sh("mount -o remount,rw /data 2>/dev/null || mount -o remount,bind,rw /data 2>/dev/null; "
                "touch /data/new", "-v", f"{src}:/data", timeout=20)
    assert result.returncode != 0
    assert not (src / "new").exists()


def _submount_runner() -> list[str]:
    """A command prefix giving a private mount namespace in which this user may mount."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    if os.getuid() == 0:
        return ["unshare", "-m", "--propagation", "private"]
    return ["unshare", "-r", "-m", "--propagation", "private"]


def test_read_only_bind_is_recursive(src: Path) -> None:
    # A submount under the bind source, made in a private mount namespace (the host's table is untouched).
    (src / "sub").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for mode, writable in (("ro", False), ("rw", True)):
        script = (f'mount -t tmpfs -o size=1M none "$1/sub" || exit 99; '
                  f'"{sys.executable}" -m sandbox run -v "$1:/data:{mode}" -- '
                  "sh -c 'touch /data/sub/x && echo wrote; grep -c \" /data/sub \" /proc/self/mountinfo'")
        result = subprocess.run([*_submount_runner(), "sh", "-c", script, "sh", str(src)], capture_output=True,
                                text=True, timeout=30, env=env)
        if result.returncode == 99:
            pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {result.stderr}")
        lines = result.stdout.splitlines()
        assert lines and lines[-1] == "1", (result.stdout, result.stderr)  # the submount is there
        if writable:
            assert "wrote" in result.stdout, result.stderr
        else:
            assert "wrote" not in result.stdout
            assert "Read-only file system" in result.stderr
    assert list((src / "sub").iterdir()) == []


def test_rw_bind_writes_reach_the_host(src: Path) -> None:
    result = sh("echo inside > /data/new && echo more >> /data/f && mkdir /data/d", "-v", f"{src}:/data:rw",
                *AS_CALLER, timeout=20)
    assert result.returncode == 0, result.stderr
    assert (src / "new").read_text() == "inside\n"
    assert (src / "f").read_text() == "host\nmore\n"
    assert (src / "d").is_dir()
    assert (src / "new").stat().st_uid == os.getuid()  # root inside is the caller outside


def test_rw_bind_deletes_reach_the_host(src: Path) -> None:
    result = sh("rm /data/f", "-v", f"{src}:/data:rw", *AS_CALLER, timeout=20)
    assert result.returncode == 0, result.stderr
    assert not (src / "f").exists()


def test_overlay_bind_is_writable_but_discarded(src: Path) -> None:
    before = snapshot(src)
    result = sh("echo inside > /data/new && echo more >> /data/f && rm -f /data/f2 && cat /data/f /data/new",
                "-v", f"{src}:/data:overlay", *AS_CALLER, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "host\nmore\ninside\n"
    assert snapshot(src) == before
    again = sh("cat /data/f; ls /data", "-v", f"{src}:/data:overlay", timeout=20)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "host\nf\n"


def test_overlay_bind_hides_deletes_from_the_host(src: Path) -> None:
    result = sh("rm /data/f && ls -A /data", "-v", f"{src}:/data:overlay", timeout=20)
    assert (result.returncode, result.stdout) == (0, ""), result.stderr
    assert (src / "f").read_text() == "host\n"


def test_file_bind(tmp_path: Path) -> None:
    conf = tmp_path / "app.conf"
    conf.write_text("setting=1\n")
    result = sh("cat /etc/app.conf; test -f /etc/app.conf && echo is-file; echo x >> /etc/app.conf",
                "-v", f"{conf}:/etc/app.conf", *AS_CALLER, timeout=20)
    assert result.stdout == "setting=1\nis-file\n", result.stderr
    assert result.returncode != 0 and "Read-only file system" in result.stderr
    assert conf.read_text() == "setting=1\n"

    result = sh("echo setting=2 > /opt/deep/app.conf", "-v", f"{conf}:/opt/deep/app.conf:rw", *AS_CALLER,
                timeout=20)
    assert result.returncode == 0, result.stderr
    assert conf.read_text() == "setting=2\n"


def test_bind_source_relative_to_cwd(src: Path) -> None:
    result = sbx("run", "-v", "src:/data", "--", "cat", "/data/f", cwd=src.parent, timeout=20)
    assert (result.returncode, result.stdout) == (0, "host\n"), result.stderr


def test_bind_over_an_existing_sandbox_dir(src: Path) -> None:
    result = sh("cat /etc/f; ls /etc/passwd 2>&1", "-v", f"{src}:/etc", timeout=20)
    lines = result.stdout.splitlines()
    assert lines and lines[0] == "host", result.stderr
    assert "No such file" in lines[-1]  # the bind hides the sandbox's /etc


# -- --tmpfs --------------------------------------------------------------------------------------


def test_tmpfs_size_is_enforced() -> None:
    result = sh("dd if=/dev/zero of=/scratch/f bs=1M count=2", "--tmpfs", "/scratch:size=1M", timeout=20)
    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    kind = sh("awk '$5 == \"/scratch\" {print $(NF-2)}' /proc/self/mountinfo", "--tmpfs", "/scratch:size=1M",
              timeout=20)
    assert kind.stdout == "tmpfs\n", kind.stderr


def test_tmpfs_default_size_works() -> None:
    result = sh("dd if=/dev/zero of=/scratch/f bs=1M count=2 2>/dev/null && stat -c %s /scratch/f",
                "--tmpfs", "/scratch", timeout=20)
    assert (result.returncode, result.stdout) == (0, f"{2 << 20}\n"), result.stderr


def test_tmpfs_is_fresh_each_run() -> None:
    first = sh("echo x > /scratch/f && ls /scratch", "--tmpfs", "/scratch", timeout=20)
    assert first.stdout == "f\n", first.stderr
    second = sh("ls -A /scratch", "--tmpfs", "/scratch", timeout=20)
    assert (second.returncode, second.stdout) == (0, ""), second.stderr


# -- symlinks in bind destinations never lead outside the sandbox ------------------------------------------


@pytest.fixture
def escape(tmp_path: Path) -> dict[str, Path]:
    """A writable bind source `w` (links go in it), a source `o` to bind through them, a host dir `outside`."""
    dirs = {name: tmp_path / name for name in ("w", "o", "outside")}
    for path in dirs.values():
        path.mkdir()
    (dirs["o"] / "marker").write_text("marker\n")
    # Control: without a link the same two binds work, so a failure below is about the link.
    plain = sh("cat /work/plain/marker", "-v", f"{dirs['w']}:/work:rw", "-v", f"{dirs['o']}:/work/plain",
               timeout=20)
    assert (plain.returncode, plain.stdout) == (0, "marker\n"), plain.stderr
    (dirs["w"] / "plain").rmdir()
    return dirs


def _host_state(tmp_path: Path) -> tuple[object, ...]:
    return sorted(os.listdir("/etc")), snapshot(tmp_path), os.path.lexists("/etc/evil")


@pytest.mark.parametrize("link", ["/etc", "../../../../../../../../etc"], ids=["absolute", "relative"])
def test_symlinked_destination_lands_inside(tmp_path: Path, escape: dict[str, Path], link: str) -> None:
    (escape["w"] / "link").symlink_to(link)
    before = _host_state(tmp_path)
    result = sh("cat /etc/evil/deeper/marker && cat /work/link/evil/deeper/marker && echo inside",
                "-v", f"{escape['w']}:/work:rw", "-v", f"{escape['o']}:/work/link/evil/deeper", timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "marker\nmarker\ninside\n"
    assert _host_state(tmp_path) == before
    assert not os.path.lexists("/etc/evil")


def test_symlink_to_host_path_cannot_create_on_host(tmp_path: Path, escape: dict[str, Path]) -> None:
    # `outside` is writable on the host (also for an unprivileged caller): a mkdir that followed the
    # link on the host instead of inside the sandbox would show up there.
    (escape["w"] / "link").symlink_to(escape["outside"])
    before = _host_state(tmp_path)
    result = sh("cat /work/link/evil/marker", "-v", f"{escape['w']}:/work:rw",
                "-v", f"{escape['o']}:/work/link/evil", timeout=20)
    if result.returncode == 0:
        assert result.stdout == "marker\n"
    else:
        assert result.returncode == 125, result.stderr
        lines = errors(result.stderr)
        assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr
    assert _host_state(tmp_path) == before
    assert list(escape["outside"].iterdir()) == []


@pytest.mark.parametrize("target", ["/proc/self/root/etc", "/proc/self/root{outside}", "/proc/1/root{outside}",
                                    "/proc/self/cwd", "/proc/self/fd/0"])
def test_magic_link_destination_fails_cleanly(tmp_path: Path, escape: dict[str, Path], target: str) -> None:
    (escape["w"] / "link").symlink_to(target.format(outside=escape["outside"]))
    before = _host_state(tmp_path)
    result = sh("ls /work/link/evil/marker", "-v", f"{escape['w']}:/work:rw",
                "-v", f"{escape['o']}:/work/link/evil", timeout=20)
    assert "Traceback" not in result.stderr
    if result.returncode != 0:
        assert result.returncode == 125, result.stderr
        lines = errors(result.stderr)
        assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr
    assert _host_state(tmp_path) == before
    assert list(escape["outside"].iterdir()) == []


def test_symlinked_tmpfs_destination_stays_inside(tmp_path: Path, escape: dict[str, Path]) -> None:
    (escape["w"] / "link").symlink_to(escape["outside"])
    (escape["w"] / "etclink").symlink_to("/etc")
    before = _host_state(tmp_path)
    result = sh("echo x > /etc/evil/f && echo ok", "-v", f"{escape['w']}:/work:rw",
                "--tmpfs", "/work/etclink/evil", timeout=20)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    result = sh("true", "-v", f"{escape['w']}:/work:rw", "--tmpfs", "/work/link/evil", timeout=20)
    assert result.returncode in (0, 125), result.stderr
    assert _host_state(tmp_path) == before


# -- working directory -----------------------------------------------------------------------------------


def test_workdir_is_created_if_missing() -> None:
    result = sbx("run", "-w", "/new/work/dir", "--", "sh", "-c", "pwd; test -d /new/work/dir", timeout=20)
    assert (result.returncode, result.stdout) == (0, "/new/work/dir\n"), result.stderr


def test_workdir_existing() -> None:
    result = sbx("run", "-w", "/etc", "--", "pwd", timeout=20)
    assert (result.returncode, result.stdout) == (0, "/etc\n"), result.stderr


def test_default_workdir_is_root(tmp_path: Path) -> None:
    result = sbx("run", "--", "pwd", cwd=tmp_path, timeout=20)
    assert (result.returncode, result.stdout) == (0, "/\n"), result.stderr


def test_cwd_inside_a_bind_is_mapped(src: Path) -> None:
    sub = src / "sub" / "dir"
    sub.mkdir(parents=True)
    result = sbx("run", "-v", f"{src}:/work", "--", "sh", "-c", "pwd; cat ../../f", cwd=sub, timeout=20)
    assert (result.returncode, result.stdout) == (0, "/work/sub/dir\nhost\n"), result.stderr
    at_root = sbx("run", "-v", f"{src}:/work", "--", "pwd", cwd=src, timeout=20)
    assert (at_root.returncode, at_root.stdout) == (0, "/work\n"), at_root.stderr


def test_explicit_workdir_beats_cwd_mapping(src: Path) -> None:
    result = sbx("run", "-v", f"{src}:/work", "-w", "/tmp", "--", "pwd", cwd=src, timeout=20)
    assert (result.returncode, result.stdout) == (0, "/tmp\n"), result.stderr


# -- the writable layer is disposable ---------------------------------------------------------------------

DIRS = ("/", "/tmp", "/etc", "/root", "/var/tmp", "/home", "/dev/shm")


def test_writes_are_discarded() -> None:
    write = "; ".join(f"echo x > {d.rstrip('/')}/{TAG} && echo ok" for d in DIRS)
    first = sh(write, *AS_CALLER, timeout=20)
    assert (first.returncode, first.stdout) == (0, "ok\n" * len(DIRS)), first.stderr
    check = "; ".join(f"test -e {d.rstrip('/')}/{TAG} && echo still-there {d}" for d in DIRS) + "; true"
    second = sh(check, timeout=20)
    assert (second.returncode, second.stdout) == (0, ""), second.stderr
    for d in DIRS:
        assert not os.path.lexists(os.path.join(d, TAG)), f"{d}/{TAG} appeared on the host"


def test_disk_limit_gives_enospc() -> None:
    result = sbx("run", "--disk", "8M", "--", "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=16", timeout=30)
    assert result.returncode == 1, result.stderr  # dd's own status
    assert "No space left on device" in result.stderr
    assert not os.path.exists("/big")


def test_disk_limit_applies_to_the_host_image_layer() -> None:
    # Copy-up into /usr also lands in the size-limited layer (when /usr is writable at all).
    script = ("python3 -c \"import sys\n"
              "try:\n open('/usr/bin/" + TAG + "', 'wb').write(bytes(16 << 20))\n"
              "except OSError as e:\n print(e.strerror); sys.exit(3)\""
              )
    result = sbx("run", "--disk", "8M", "--", "sh", "-c", script, timeout=30)
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert result.stdout.strip() in ("No space left on device", "Permission denied", "Read-only file system")
    assert not os.path.exists("/usr/bin/" + TAG)


def test_disk_limit_is_per_run() -> None:
    fill = sbx("run", "--disk", "8M", "--", "sh", "-c",
               "dd if=/dev/zero of=/big bs=1M count=16 2>/dev/null; exit 42", timeout=30)
    assert fill.returncode == 42, fill.stderr
    after = sbx("run", "--disk", "8M", "--", "dd", "if=/dev/zero", "of=/big", "bs=1M", "count=4", timeout=30)
    assert after.returncode == 0, after.stderr


# -- the host's files stay the host's ---------------------------------------------------------------------


def test_usr_bin_write_depends_on_privilege() -> None:
    path = f"/usr/bin/{TAG}"
    result = sh(f"echo x > {path} && cat {path}", *AS_CALLER, timeout=20)
    if os.getuid() != 0:
        # root inside is the caller outside: the host root's files and dirs are not writable
        assert result.returncode != 0
        assert "Permission denied" in result.stderr or "Operation not permitted" in result.stderr, result.stderr
        assert result.stdout == ""
        existing = sh("echo x >> /usr/bin/env", timeout=20)
        assert existing.returncode != 0
        assert "Permission denied" in existing.stderr or "Operation not permitted" in existing.stderr
    else:
        # real root: the write goes to the disposable layer, never to the host
        assert (result.returncode, result.stdout) == (0, "x\n"), result.stderr
        again = sh(f"test -e {path} && echo still-there; true", timeout=20)
        assert again.stdout == ""
    assert not os.path.lexists(path)


def test_host_etc_is_not_shared() -> None:
    # The sandbox has its own /etc: host secrets such as /etc/shadow are not in it.
    result = sh("cat /etc/shadow", timeout=20)
    assert result.returncode != 0
    assert "root:" not in result.stdout
