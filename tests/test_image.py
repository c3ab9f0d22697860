"""The image store: references, imports (OCI layout, docker archive), hostile archives, the store's commands.

Layers are extracted for real and checked through a real overlay mount in a
user namespace (`unshare -Urm` + `mount -t overlay -o userxattr`), as
`sbx run --image` will stack them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.image import ImageError, ImageInfo, ref, resolve
from sandbox.image.layout import Layout
from sandbox.image.store import Store

from conftest import BUSYBOX, PACKAGE_PARENT, busybox_image, wait_for, waiting_for_lock

REPO = Path(__file__).resolve().parent.parent


# -- helpers --------------------------------------------------------------------------

def tar(*entries: tuple[str, str, object], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """(name, kind, data) entries: kind file (bytes), dir, sym (target), link (target), char, fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as out:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                if name.endswith(".suid"):
                    info.mode = 0o6755
                out.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "link": tarfile.LNKTYPE,
                         "char": tarfile.CHRTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("sym", "link"):
                info.linkname = str(data)
            if kind == "char":
                info.devmajor, info.devminor = 1, 3
            out.addfile(info)
    return buf.getvalue()


def oci(path: Path, layers: list[bytes], config: dict[str, object] | None = None, ref_name: str | None = "t:1",
        compression: str | None = "gzip") -> Path:
    layout = Layout(str(path))
    layout.index([layout.image(layers, config, compression)], ref_name=ref_name)
    return path


def store_state(root: Path) -> tuple[list[str], list[str], list[str]]:
    """(layers, image records, tmp entries)."""
    def names(sub: str) -> list[str]:
        return sorted(os.listdir(root / sub)) if (root / sub).exists() else []
    return names("layers/sha256"), names("images"), names("tmp")


def cli(*args: str, root: Path, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "sandbox.cli.image", "--root", str(root), *args],
                          input=stdin, capture_output=True, env=env, timeout=120)
    return subprocess.CompletedProcess(done.args, done.returncode, done.stdout.decode(errors="replace"),
                                       done.stderr.decode(errors="replace"))


def in_overlay(info: ImageInfo, tmp: Path, script: str, chroot: bool = False) -> str:
    """Mount the image's layers as an overlay in a new user+mount namespace and run `script` (sh) there."""
    mnt, upper, work = tmp / "mnt", tmp / "upper", tmp / "work"
    for d in (mnt, upper, work):
        d.mkdir(exist_ok=True)
    lower = ":".join(info.layer_dirs)
    inner = f"cd {mnt} && {script}" if not chroot else f"chroot {mnt} /bin/sh -c {shlex_quote(script)}"
    command = (f"mount -t overlay overlay -o userxattr,lowerdir={lower},upperdir={upper},workdir={work} {mnt} "
               f"&& {inner}")
    result = subprocess.run(["unshare", "-Urm", "sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def shlex_quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def docker_archive(path: Path, layers: list[bytes], tags: list[str], config: dict[str, object],
                   diff_ids: list[str] | None = None) -> Path:
    """A `docker save` archive (legacy layout: ID/layer.tar, HEX.json, manifest.json); `diff_ids`
    for compressed layers (default: the digests of the layers as given)."""
    files: dict[str, bytes] = {}
    if diff_ids is None:
        diff_ids = ["sha256:" + hashlib.sha256(layer).hexdigest() for layer in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": config,
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    files[cfg_name] = cfg
    paths = []
    for i, layer in enumerate(layers):
        paths.append(f"{i:064x}/layer.tar")
        files[paths[-1]] = layer
    files["manifest.json"] = json.dumps([{"Config": cfg_name, "RepoTags": tags, "Layers": paths}]).encode()
    with tarfile.open(path, "w") as out:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def import_ok(root: Path, source: Path | str, *args: str) -> None:
    result = cli("import", "-q", *args, str(source), root=root)
    assert result.returncode == 0, result.stderr


# -- references ---------------------------------------------------------------------

@pytest.mark.parametrize("text,full", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("user/app", "docker.io/user/app:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox:1", "docker.io/library/busybox:1"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b/c:v1.0-rc_1", "localhost:5000/a/b/c:v1.0-rc_1"),
    ("127.0.0.1:5000/app@sha256:" + "a" * 64, "127.0.0.1:5000/app@sha256:" + "a" * 64),
    ("quay.io/x/y:t@sha256:" + "0" * 64, "quay.io/x/y:t@sha256:" + "0" * 64),
    ("a__b.c--d", "docker.io/library/a__b.c--d:latest"),
    ("[::1]:5000/app", "[::1]:5000/app:latest"),
])
def test_reference_parse(text: str, full: str) -> None:
    assert str(ref.parse(text)) == full


@pytest.mark.parametrize("text", [
    "", "UPPER", "a b", "app:", ":tag", "app:-bad", "app@sha256:abc", "app@md5:" + "a" * 32, "/app", "app/",
    "a//b", "a..b", "a_-b", "-a", "a-", "host:99999/app", "host:x/app", "a" * 300, "app:" + "t" * 200, "app\n",
    "busybox@sha256:" + "A" * 64,
])
def test_reference_invalid(text: str) -> None:
    with pytest.raises(ImageError) as err:
        ref.parse(text)
    assert "\n" not in str(err.value)


def test_reference_parts() -> None:
    r = ref.parse("localhost:5000/team/app:2")
    assert (r.registry, r.repository, r.tag, r.api_host) == ("localhost:5000", "team/app", "2", "localhost:5000")
    hub = ref.parse("busybox")
    assert hub.api_host == "registry-1.docker.io" and hub.familiar == "busybox:latest"


# -- import round trips -------------------------------------------------------------------

LOWER = tar(("etc", "dir", None), ("etc/a", "file", b"a\n"), ("etc/b", "file", b"b\n"),
            ("d", "dir", None), ("d/old", "file", b"old\n"), ("d/sub", "dir", None), ("d/sub/deep", "file", b"x"),
            ("gone", "dir", None), ("gone/f", "file", b"f"), ("bin", "dir", None), ("bin/tool", "file", b"v1\n"))
UPPER = tar(("etc/.wh.a", "file", b""), ("d/.wh..wh..opq", "file", b""), ("d/new", "file", b"new\n"),
            (".wh.gone", "file", b""), ("bin/tool", "file", b"v2\n"), ("bin/alias", "link", "bin/tool"),
            ("s", "sym", "etc/b"), ("abs", "sym", "/etc/b"))
TOP = tar(("gone", "dir", None), ("gone/again", "file", b"back\n"), ("etc/a", "file", b"a2\n"))


@pytest.mark.parametrize("compression", ["gzip", "zstd", None])
def test_import_oci_round_trip(tmp_path: Path, store: Path, compression: str | None) -> None:
    src = oci(tmp_path / "oci", [LOWER, UPPER, TOP], {"Env": ["PATH=/bin", "X=a=b"], "Cmd": ["sh"],
                                                      "Entrypoint": ["/bin/env"], "WorkingDir": "/d", "User": "1:2"},
              compression=compression)
    import_ok(store, src, "--name", "rt:1")
    info = resolve("rt:1", str(store))
    try:
        assert info.name == "docker.io/library/rt:1"
        assert len(info.layer_dirs) == 3 and all(os.path.isabs(d) for d in info.layer_dirs)
        assert info.env == (("PATH", "/bin"), ("X", "a=b"))
        assert (info.cmd, info.entrypoint, info.workdir, info.user) == (("sh",), ("/bin/env",), "/d", "1:2")
        assert info.command([]) == ("/bin/env", "sh") and info.command(["id"]) == ("/bin/env", "id")
        # hard link inside the layer: one inode
        upper_layer = Path(info.layer_dirs[1])
        assert os.stat(upper_layer / "bin/alias").st_ino == os.stat(upper_layer / "bin/tool").st_ino
        out = in_overlay(info, tmp_path, "find . | sort; echo; cat etc/a bin/alias d/new gone/again; "
                                         "readlink s abs; cat s")
    finally:
        os.close(info.lock_fd)
    listing, _, rest = out.partition("\n\n")
    files = set(listing.split())
    assert "./d/old" not in files and "./d/sub" not in files and "./d/sub/deep" not in files  # opaque dir
    assert "./gone/f" not in files and "./gone/again" in files  # whited out, then made again above
    assert "./etc/b" in files and "./d/new" in files
    assert rest.split() == ["a2", "v2", "new", "back", "etc/b", "/etc/b", "b"]


def test_whiteout_and_opaque_forms_in_layer(tmp_path: Path, store: Path) -> None:
    import_ok(store, oci(tmp_path / "oci", [LOWER, UPPER]), "--name", "wh")
    info = resolve("wh", str(store), hold=False)
    upper = Path(info.layer_dirs[0])
    st = os.lstat(upper / "etc/a")
    assert (st.st_mode & 0o170000, st.st_rdev) == (0o020000, 0)  # a 0/0 char device
    assert os.getxattr(upper / "d", "user.overlay.opaque") == b"y"
    assert not (upper / "etc/.wh.a").exists() and not (upper / "d/.wh..wh..opq").exists()


def test_whiteout_and_dir_in_same_layer_is_opaque(tmp_path: Path, store: Path) -> None:
    same = tar((".wh.d", "file", b""), ("d", "dir", None), ("d/only", "file", b"1"))
    import_ok(store, oci(tmp_path / "oci", [LOWER, same]), "--name", "same")
    info = resolve("same", str(store), hold=False)
    assert os.getxattr(Path(info.layer_dirs[0]) / "d", "user.overlay.opaque") == b"y"
    assert in_overlay(info, tmp_path, "ls d").split() == ["only"]


def test_modes_devices_setuid(tmp_path: Path, store: Path) -> None:
    layer = tar(("ro", "dir", None), ("ro/f", "file", b"x"), ("x.suid", "file", b"#!"),
                ("null", "char", None), ("pipe", "fifo", None), ("tmp", "dir", None))
    # tarfile gives every dir 0o755: patch modes through a second tarfile pass
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(layer)) as src, tarfile.open(fileobj=buf, mode="w",
                                                                      format=tarfile.PAX_FORMAT) as out:
        for member in src.getmembers():
            member.mode = {"ro": 0o555, "ro/f": 0o000, "tmp": 0o1777}.get(member.name, member.mode)
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
    import_ok(store, oci(tmp_path / "oci", [buf.getvalue()]), "--name", "modes")
    layer_dir = Path(resolve("modes", str(store), hold=False).layer_dirs[0])
    assert os.lstat(layer_dir / "ro").st_mode & 0o7777 == 0o555
    assert os.lstat(layer_dir / "ro/f").st_mode & 0o7777 == 0
    assert os.lstat(layer_dir / "tmp").st_mode & 0o7777 == 0o1777
    assert os.lstat(layer_dir / "x.suid").st_mode & 0o7777 == 0o755  # setuid/setgid dropped
    assert not os.path.lexists(layer_dir / "null")  # device skipped
    assert os.path.exists(layer_dir / "pipe")
    assert os.lstat(layer_dir / "ro/f").st_uid == os.getuid()  # owned by the caller
    # rm + prune removes even read-only directories and unreadable files
    assert cli("rm", "modes", root=store).returncode == 0
    assert cli("prune", root=store).returncode == 0
    assert store_state(store) == ([], [], [])


def test_docker_archive_file_and_stdin(tmp_path: Path, store: Path) -> None:
    archive = docker_archive(tmp_path / "save.tar", [LOWER, UPPER], ["myapp:2", "other/name:x"],
                             {"Cmd": ["/bin/true"]})
    import_ok(store, archive)
    listed = cli("ls", "-q", root=store).stdout.split()
    assert listed == ["myapp:2", "other/name:x"]
    info = resolve("other/name:x", str(store), hold=False)
    assert info.cmd == ("/bin/true",) and len(info.layer_dirs) == 2
    # stdin, gzip-compressed: same layers, no new extraction
    layers_before = store_state(store)[0]
    result = cli("import", "--name", "fromstdin", "-", root=store,
                 stdin=gzip.compress(archive.read_bytes()))
    assert result.returncode == 0, result.stderr
    assert store_state(store)[0] == layers_before
    assert resolve("fromstdin", str(store), hold=False).layer_dirs == info.layer_dirs


def test_oci_layout_as_tar(tmp_path: Path, store: Path) -> None:
    src = oci(tmp_path / "oci", [LOWER], ref_name="docker.io/team/tool:3")
    archive = tmp_path / "oci.tar"
    with tarfile.open(archive, "w") as out:
        out.add(src, arcname=".")
    import_ok(store, archive)
    assert cli("ls", "-q", root=store).stdout.split() == ["team/tool:3"]


def test_multi_platform_index(tmp_path: Path, store: Path) -> None:
    layout = Layout(str(tmp_path / "oci"))
    amd = layout.image([tar(("arch", "file", b"amd64"))], architecture="amd64")
    arm = layout.image([tar(("arch", "file", b"arm64"))], architecture="arm64", variant="v8")
    layout.index([layout.image_index([amd, arm])], ref_name="multi:1")
    import_ok(store, tmp_path / "oci", "--name", "m-arm", "--platform", "linux/arm64")
    assert (Path(resolve("m-arm", str(store), hold=False).layer_dirs[0]) / "arch").read_bytes() == b"arm64"
    import_ok(store, tmp_path / "oci", "--name", "m-amd", "--platform", "linux/amd64")
    assert (Path(resolve("m-amd", str(store), hold=False).layer_dirs[0]) / "arch").read_bytes() == b"amd64"
    result = cli("import", "--name", "m-s390", "--platform", "linux/s390x", str(tmp_path / "oci"), root=store)
    assert result.returncode == 125 and "no image for linux/s390x" in result.stderr
    assert "linux/arm64/v8" in result.stderr


# -- hostile archives ------------------------------------------------------------------------

def raw_header(name: bytes, size: int, kind: bytes, link: bytes = b"") -> bytes:
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\0"
    block[124:136] = b"%011o\0" % size if size < 8 ** 11 else b"\x80" + size.to_bytes(11, "big")
    block[136:148] = b"00000000000\0"
    block[156:157] = kind
    block[157:157 + len(link)] = link
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


HOSTILE: dict[str, tuple[Callable[[str], bytes], str]] = {
    # builders get the path of a directory outside the store that must stay untouched
    "traversal": (lambda out: tar(("../escaped", "file", b"x")), "'..' in path"),
    "deep traversal": (lambda out: tar(("a/../../escaped", "file", b"x")), "'..' in path"),
    "absolute": (lambda out: tar((out + "/escaped", "file", b"x")), "absolute path"),
    "symlink escape": (lambda out: tar(("link", "sym", out), ("link/escaped", "file", b"x")), "symlink"),
    "symlink dotdot": (lambda out: tar(("up", "sym", ".."), ("up/escaped", "file", b"x")), "symlink"),
    "symlink replaces dir": (lambda out: tar(("d", "dir", None), ("d", "sym", out), ("d/escaped", "file", b"x")),
                             "symlink"),
    # the extractor keeps parent directories open: replacing one must not leave a stale fd to write through
    "symlink replaces open dir": (lambda out: tar(("d", "dir", None), ("d/f", "file", b"1"), ("d", "sym", out),
                                                  ("d/escaped", "file", b"x")), "symlink"),
    "symlink replaces open parent": (lambda out: tar(("a/b/f", "file", b"1"), ("a", "sym", out),
                                                     ("a/b/escaped", "file", b"x")), "symlink"),
    "file replaces open dir": (lambda out: tar(("d/f", "file", b"1"), ("d", "file", b"2"), ("d/g", "file", b"x")),
                               "not a directory"),
    "symlink then overwrite": (lambda out: tar(("victim", "sym", out + "/victim"), ("victim", "file", b"pwned")),
                               ""),  # accepted: the symlink is replaced, never written through
    "hardlink out": (lambda out: tar(("h", "link", "../../escaped")), "'..' in path"),
    "hardlink absolute": (lambda out: tar(("h", "link", out + "/victim")), "absolute path"),
    "hardlink missing": (lambda out: tar(("h", "link", "nothere")), "not in this layer"),
    "hardlink through symlink": (lambda out: tar(("l", "sym", out), ("h", "link", "l/victim")),
                                 "not in this layer"),
    "huge pax header": (lambda out: raw_header(b"PaxHeader", 1 << 34, b"x") + bytes(1024), "too large"),
    "huge long name": (lambda out: raw_header(b"././@LongLink", 1 << 30, b"L") + bytes(1024), "too large"),
    "bad checksum": (lambda out: b"\x01" * 512 + bytes(1024), "checksum"),
    "truncated": (lambda out: tar(("f", "file", b"x" * 5000))[:2048], "truncated"),
    "sparse": (lambda out: raw_header(b"sparse", 0, b"S") + bytes(1024), "unsupported tar entry type"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layer(tmp_path: Path, store: Path, case: str) -> None:
    """Rejected with one clear line and nothing in the store, or (where harmless) accepted; never a write outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("intact")
    build, expected = HOSTILE[case]
    src = oci(tmp_path / "oci", [build(str(outside))], compression="gzip")
    result = cli("import", "-q", "--name", "bad", str(src), root=store)
    if expected:
        assert result.returncode == 125, result
        assert result.stderr.startswith("sbx: error: ") and result.stderr.count("\n") == 1, result.stderr
        assert expected in result.stderr, result.stderr
        assert store_state(store) == ([], [], [])
    else:
        assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(outside)) == ["victim"] and (outside / "victim").read_text() == "intact"
    assert not (tmp_path / "escaped").exists() and not (store / "escaped").exists()


def test_decompression_bomb_bounded(tmp_path: Path, store: Path) -> None:
    from sandbox.image import extract, oci as oci_mod

    big = tar(("zeros", "file", bytes(8 << 20)))
    src = oci(tmp_path / "oci", [big])
    with pytest.raises(ImageError, match="expands past 1.0MiB, the --max-layer-size"):  # more: test_image_bomb.py
        oci_mod.import_images(Store(str(store)), str(src), name="bomb", limits=extract.Limits(max_bytes=1 << 20))
    assert store_state(store) == ([], [], [])


def test_corrupt_blob_and_diff_id_rejected(tmp_path: Path, store: Path) -> None:
    src = oci(tmp_path / "oci", [LOWER])
    manifest = json.loads(json.loads((src / "index.json").read_text())["manifests"][0]["digest"] and
                          (src / "blobs/sha256" / json.loads((src / "index.json").read_text())["manifests"][0]
                           ["digest"].split(":")[1]).read_text())
    layer_path = src / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    data = bytearray(layer_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    layer_path.write_bytes(bytes(data))
    result = cli("import", "--name", "corrupt", str(src), root=store)
    assert result.returncode == 125 and "digest mismatch" in result.stderr, result.stderr
    assert store_state(store) == ([], [], [])
    # a config whose diff_id does not match the layer's content
    archive = docker_archive(tmp_path / "save.tar", [LOWER], ["x:1"], {})
    with tarfile.open(archive) as t:
        members = {m.name: t.extractfile(m).read() for m in t.getmembers()}  # type: ignore[union-attr]
    lie = tar(("evil", "file", b"not what the config says"))
    layer_name = next(n for n in members if n.endswith("layer.tar"))
    members[layer_name] = lie
    with tarfile.open(archive, "w") as out:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            out.addfile(info, io.BytesIO(body))
    result = cli("import", str(archive), root=store)
    assert result.returncode == 125 and "content digest mismatch" in result.stderr
    assert store_state(store) == ([], [], [])


def test_not_an_archive(tmp_path: Path, store: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(4096))
    result = cli("import", "--name", "j", str(junk), root=store)
    assert result.returncode == 125 and result.stderr.startswith("sbx: error: ")
    empty = tmp_path / "emptydir"
    empty.mkdir()
    result = cli("import", "--name", "j", str(empty), root=store)
    assert result.returncode == 125 and "neither a docker archive" in result.stderr
    unnamed = oci(tmp_path / "oci", [LOWER], ref_name="v1")
    result = cli("import", str(unnamed), root=store)
    assert result.returncode == 125 and "--name" in result.stderr and "'v1'" in result.stderr
    assert store_state(store) == ([], [], [])


# -- the store's commands -------------------------------------------------------------------

def test_shared_layers_tag_rm_prune(tmp_path: Path, store: Path) -> None:
    import_ok(store, oci(tmp_path / "a", [LOWER, UPPER]), "--name", "a")
    import_ok(store, oci(tmp_path / "b", [LOWER, TOP]), "--name", "b")
    assert len(store_state(store)[0]) == 3  # LOWER is stored once
    assert cli("tag", "a", "localhost:5000/copy:v2", root=store).returncode == 0
    assert resolve("localhost:5000/copy:v2", str(store), hold=False).layer_dirs == \
        resolve("a", str(store), hold=False).layer_dirs
    inspect = json.loads(cli("inspect", "b", root=store).stdout)
    assert inspect[0]["name"] == "docker.io/library/b:latest" and len(inspect[0]["layers"]) == 2
    image_id = inspect[0]["id"]
    assert resolve(image_id[:19], str(store), hold=False).name == "docker.io/library/b:latest"
    assert cli("rm", "a", root=store).returncode == 0
    assert cli("prune", root=store).stdout.startswith("removed 0 layers")  # the tag still uses a's layers
    assert cli("rm", "localhost:5000/copy:v2", root=store).returncode == 0
    assert cli("prune", root=store).stdout.startswith("removed 1 layer,")
    assert len(store_state(store)[0]) == 2
    assert resolve("b", str(store), hold=False).layer_dirs  # b is intact
    result = cli("rm", "a", root=store)
    assert result.returncode == 125 and "not found" in result.stderr


def test_prune_waits_for_running_sandboxes(tmp_path: Path, store: Path) -> None:
    import_ok(store, oci(tmp_path / "a", [LOWER]), "--name", "a")
    info = resolve("a", str(store))  # holds the use lock like a running sandbox
    assert cli("rm", "a", root=store).returncode == 0  # records are not blocked
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    prune = subprocess.Popen([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), "prune"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert wait_for(lambda: waiting_for_lock(prune.pid) or prune.poll() is not None, 30)
    assert prune.poll() is None and waiting_for_lock(prune.pid)  # waiting for the use lock
    assert all(os.path.isdir(d) for d in info.layer_dirs)
    os.close(info.lock_fd)
    out, err = prune.communicate(timeout=30)
    assert prune.returncode == 0 and "waiting for running sandboxes" in err
    assert out.startswith("removed 1 layer")


def test_concurrent_imports(tmp_path: Path, store: Path) -> None:
    src = oci(tmp_path / "oci", [LOWER, UPPER, TOP])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-m", "sandbox.cli.image", "--root", str(store), "import", "-q",
                               "--name", f"c{i}", str(src)], stderr=subprocess.PIPE, text=True, env=env)
             for i in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    layers, images, tmp = store_state(store)
    assert len(layers) == 3 and len(images) == 8 and tmp == []


def test_resolve_errors(tmp_path: Path, store: Path) -> None:
    with pytest.raises(ImageError, match="no image store"):
        resolve("busybox", str(tmp_path / "nowhere"))
    import_ok(store, oci(tmp_path / "a", [LOWER]), "--name", "a")
    with pytest.raises(ImageError, match="not found"):
        resolve("nothere", str(store))
    with pytest.raises(ImageError, match="invalid image reference"):
        resolve("Bad Name", str(store))
    info = resolve("a", str(store), hold=False)
    os.chmod(info.layer_dirs[0], 0o755)
    shutil.rmtree(info.layer_dirs[0])
    with pytest.raises(ImageError, match="missing from the store"):
        resolve("a", str(store))


def test_cli_usage_errors(store: Path) -> None:
    for args in (["frobnicate"], ["tag", "a"], ["import"], ["ls", "--bogus"], ["import", "--platform", "x", "f"]):
        result = cli(*args, root=store)
        assert result.returncode == 125 and result.stderr.startswith("sbx: error: "), (args, result.stderr)
        assert result.stderr.count("\n") == 1
    assert cli("--help", root=store).returncode == 0


def test_resolve_imports_stay_light(tmp_path: Path, store: Path) -> None:
    import_ok(store, oci(tmp_path / "a", [LOWER]), "--name", "a")
    code = ("import sys; from sandbox import image; image.resolve('a', sys.argv[1]); "
            "print(' '.join(m for m in ('json', 're', 'hashlib', 'dataclasses', 'tempfile', 'tarfile') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(store)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}, check=True).stdout
    assert out.split() == []


# -- the shipped busybox recipe -----------------------------------------------------------------

def test_busybox_image_runs(tmp_path: Path, store: Path) -> None:
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed (apt-get install busybox-static)")
    out = busybox_image(tmp_path / "busybox-oci")
    import_ok(store, out, "--name", "busybox")
    info = resolve("busybox", str(store))
    try:
        assert info.cmd == ("/bin/sh",)
        text = in_overlay(info, tmp_path, "echo hello from $(cat /etc/passwd | head -1 | cut -d: -f1); "
                                          "ls /bin | wc -l; touch /tmp/x && echo writable", chroot=True)
    finally:
        os.close(info.lock_fd)
    lines = text.split("\n")
    assert lines[0] == "hello from root" and int(lines[1]) > 100 and lines[2] == "writable"


# -- the fast paths: tar reader buffering, header numbers, extraction bookkeeping ------------------

def trickle(data: bytes, sizes: list[int]) -> Callable[[int], bytes]:
    """A read function that returns at most sizes[i % len(sizes)] bytes on its i-th call (a decompressor's
    short reads)."""
    state = {"pos": 0, "calls": 0}

    def read(n: int) -> bytes:
        cap = sizes[state["calls"] % len(sizes)]
        state["calls"] += 1
        chunk = data[state["pos"]:state["pos"] + min(n, cap)]
        state["pos"] += len(chunk)
        return chunk

    return read


def members_of(read: Callable[[int], bytes], data_size: int = 1 << 20) -> list[tuple[object, ...]]:
    from sandbox.image.tar import TarReader

    reader = TarReader(read)
    found = []
    while (m := reader.next()) is not None:
        offset = reader.offset
        digest = hashlib.sha256()
        while chunk := reader.read(data_size):
            digest.update(chunk)
        found.append((m.name, m.kind, m.size, m.mode, m.mtime, m.linkname, offset, digest.hexdigest()))
    return found


def test_tar_reader_same_members_whatever_the_read_sizes() -> None:
    long_name = "deep/" + "n" * 150 + "/file"
    big = os.urandom((1 << 20) + 1234)  # more than the reader's chunk: read past its buffer
    entries = [("a", "dir", None), ("a/empty", "file", b""), ("a/block", "file", b"x" * 512),
               ("a/big", "file", big), (long_name, "file", b"long"), ("a/s", "sym", "block"),
               ("a/h", "link", "a/block"), ("a/p", "fifo", None)]
    archives = [tar(*entries), tar(*entries, fmt=tarfile.GNU_FORMAT)]
    # ustar with a prefix field (names of 100..255 bytes)
    archives.append(tar(("p" * 90 + "/" + "q" * 90, "file", b"prefixed"), fmt=tarfile.USTAR_FORMAT))
    for data in archives:
        whole = members_of(io.BytesIO(data).read)
        with tarfile.open(fileobj=io.BytesIO(data)) as reference:
            assert [str(m[0]).rstrip("/") for m in whole] == [m.name for m in reference.getmembers()]
            for got, want in zip(whole, reference.getmembers()):
                if want.isfile():
                    body = reference.extractfile(want).read()  # type: ignore[union-attr]
                    assert got[7] == hashlib.sha256(body).hexdigest() and got[6] == want.offset_data
        for sizes in ([1], [7, 511], [513, 3], [4096], [100000, 1]):
            assert members_of(trickle(data, sizes)) == whole, sizes
        assert members_of(trickle(data, [4096, 1]), data_size=5) == whole


def header(fields: dict[int, bytes], kind: bytes = b"0", signed: bool = False, delta: int = 0) -> bytes:
    block = bytearray(raw_header(b"f", 0, kind))
    for offset, value in fields.items():
        block[offset:offset + len(value)] = value
    block[148:156] = b" " * 8
    total = sum(block) - (256 * sum(1 for b in block if b > 127) if signed else 0) + delta
    block[148:156] = b"%06o\0 " % total
    return bytes(block)


def test_tar_header_numbers_and_checksums() -> None:
    from sandbox.image.tar import TarReader

    def first(block: bytes) -> object:
        return TarReader(io.BytesIO(block + bytes(1024)).read).next()

    # the forms tars write: NUL or space padded, leading spaces, base-256, text after a NUL
    for field, value in ((b"0000644\0", 0o644), (b"  644 \0\0", 0o644), (b"644\0junk", 0o644),
                         (b"\0" * 8, 0), (b"\x80\0\0\0\0\0\x01\xa4", 0o644)):
        member = first(header({100: field}))
        assert member is not None and member.mode == value, field
    member = first(header({124: b"\x80" + (5).to_bytes(11, "big")}) + b"hello".ljust(512, b"\0"))
    assert member is not None and member.size == 5
    for bad in (b"+000644\0", b"0_00644\0", b"0000648\0", b"00006 4\0"):
        with pytest.raises(ImageError, match="bad mode field"):
            first(header({100: bad}))
    # high bytes in the name: both checksum conventions are accepted, anything else is not
    name = {0: "é/ü".encode()}
    assert first(header(name)) is not None and first(header(name, signed=True)) is not None
    for delta in (1, -1, 65521):
        with pytest.raises(ImageError, match="bad checksum"):
            first(header(name, delta=delta))


def test_extract_counts_what_it_leaves(tmp_path: Path) -> None:
    """Stats.size (used for the image's size instead of walking 100k files) equals a walk of the result,
    through replacements of files, directories, symlinks and this layer's whiteouts."""
    from sandbox.image import extract
    from sandbox.image.tar import TarReader

    layer = tar(("d", "dir", None), ("d/f", "file", b"12345"), ("d/sub", "dir", None), ("d/sub/g", "file", b"abc"),
                ("s", "sym", "d/f"), ("h", "link", "d/f"), ("x", "file", b"first"), ("x", "file", b"second!"),
                ("y", "file", b"a file"), ("y", "dir", None), ("y/z", "file", b"zz"),
                ("d", "file", b"d is a file now"), ("s", "sym", "a/much/longer/target"), (".wh.w", "file", b""),
                ("w", "file", b"back"), ("p", "fifo", None), ("p", "sym", "p2"), ("h2", "link", "h"),
                ("n" * 70, "file", b"long name"))
    dest = tmp_path / "layer"
    dest.mkdir()
    stats = extract.extract(TarReader(io.BytesIO(layer).read), str(dest))
    assert stats.size == extract.tree_bytes(str(dest))
    assert sorted(os.listdir(dest)) == sorted(["d", "s", "h", "x", "y", "w", "p", "h2", "n" * 70])
    assert (dest / "d").read_bytes() == b"d is a file now" and (dest / "x").read_bytes() == b"second!"
    assert (dest / "h").read_bytes() == b"12345" and (dest / "y/z").read_bytes() == b"zz"
    assert stats.whiteouts == 0


def test_extract_modes_whatever_the_umask(tmp_path: Path, store: Path) -> None:
    """Modes are given at creation, where the umask applies: the result must not depend on it."""
    modes = {"a": 0o644, "b": 0o600, "c": 0o755, "d": 0o444, "e": 0o000, "f": 0o1755, "g": 0o777, "s.suid": 0o6755}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, mode in modes.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = 1, mode
            out.addfile(info, io.BytesIO(b"x"))
    src = oci(tmp_path / "oci", [buf.getvalue()])
    for umask in ("077", "000", "027"):
        root = tmp_path / f"store-{umask}"
        result = subprocess.run(["sh", "-c", f'umask {umask} && exec "$@"', "sh", sys.executable, "-m",
                                 "sandbox.cli.image", "--root", str(root), "import", "-q", "--name", "m", str(src)],
                                capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stderr
        layer_dir = Path(resolve("m", str(root), hold=False).layer_dirs[0])
        got = {name: os.lstat(layer_dir / name).st_mode & 0o7777 for name in modes}
        assert got == {**modes, "s.suid": 0o755}, umask


def test_corrupt_plain_blob_rejected(tmp_path: Path, store: Path) -> None:
    """An uncompressed layer with one data byte changed still extracts: the one pass must still refuse it."""
    src = oci(tmp_path / "oci", [LOWER], compression=None)
    blobs = src / "blobs/sha256"
    layer_path = next(p for p in blobs.iterdir() if p.read_bytes() == LOWER)
    data = bytearray(LOWER)
    data[data.index(b"old\n")] = ord("O")
    layer_path.write_bytes(bytes(data))
    result = cli("import", "-q", "--name", "corrupt", str(src), root=store)
    assert result.returncode == 125 and "digest mismatch" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1
    assert store_state(store) == ([], [], [])
