"""Decompression bombs in `sbx image import` and `pull`: expansion capped by ratio and by size, while extracting.

Each bomb is built here, small: deflate and zstd output for a MiB of zeros is the same bytes every
time once the compressor's state is reset (a full flush, a new frame or gzip member), so one piece
repeated N times is N MiB of zeros, as one stream (gzip) or as concatenated frames (zstd), the way a
real bomb is made.  Every refusal must be the one line `sbx: error: layer sha256:...: expands past
... (a decompression bomb?)`, exit 125, and leave the store exactly as it was (no layer, no tmp
entry, no record).  Controls: the same archive imports once the limit that stopped it is raised, and
layers just under the defaults import as they are.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import sbx
from test_image import cli, docker_archive, tar
from test_image_pull import Registry, assert_nothing_left, registry  # noqa: F401  (registry: a fixture)

from sandbox.image import extract
from sandbox.image.extract import Limits
from sandbox.image.layout import LAYER_TYPES, OCI_CONFIG, OCI_MANIFEST, Layout

MiB = 1 << 20
FAKE_DIFF_ID = "sha256:" + "ab" * 32  # for bombs too big to hash here: the import stops long before checking it


# -- building bombs -------------------------------------------------------------------------------

def member_header(name: str, size: int, pax: dict[str, str] | None = None) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 1700000000
    if pax:
        info.pax_headers = pax
    return info.tobuf(format=tarfile.PAX_FORMAT)


def gzip_repeated(head: bytes, piece: bytes, count: int, tail: bytes) -> bytes:
    """One gzip member: head, `piece` `count` times, tail (full flushes make each piece's output equal)."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = z.compress(head) + z.flush(zlib.Z_FULL_FLUSH)
    once = z.compress(piece) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(piece) + z.flush(zlib.Z_FULL_FLUSH)
    assert once == again
    last = z.compress(tail) + z.flush()
    crc = zlib.crc32(head)
    for _ in range(count):
        crc = zlib.crc32(piece, crc)
    crc = zlib.crc32(tail, crc)
    size = len(head) + len(piece) * count + len(tail)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return (header + first + once + again * (count - 1) + last
            + struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))


def zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c", "-19"], input=data, capture_output=True, check=True).stdout


def compressed(head: bytes, piece: bytes, count: int, tail: bytes, how: str) -> bytes:
    if how == "gzip":
        return gzip_repeated(head, piece, count, tail)
    frame = zstd(piece)
    return zstd(head) + frame * count + zstd(tail)


def plain_digest(head: bytes, piece: bytes, count: int, tail: bytes) -> str:
    h = hashlib.sha256(head)
    for _ in range(count):
        h.update(piece)
    h.update(tail)
    return "sha256:" + h.hexdigest()


def zeros_layer(mib: int, how: str = "gzip") -> tuple[bytes, str]:
    """(blob, diff_id) of a layer holding one file of `mib` MiB of zeros."""
    head, tail = member_header("zeros", mib * MiB), bytes(1024)
    return compressed(head, bytes(MiB), mib, tail, how), plain_digest(head, bytes(MiB), mib, tail)


def oci_layout(path: Path, layers: list[tuple[bytes, str]], how: str = "gzip") -> Path:
    """An OCI layout of already compressed layers (blob, diff_id), tagged bomb:1."""
    out = Layout(str(path))
    descs = [out.blob(blob, LAYER_TYPES[how]) for blob, _ in layers]
    config = out.blob(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                                  "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]}}).encode(),
                      OCI_CONFIG)
    manifest = out.blob(json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                                    "layers": descs}).encode(), OCI_MANIFEST)
    out.index([manifest], ref_name="bomb:1")
    return path


def docker_save(path: Path, layers: list[tuple[bytes, str]]) -> Path:
    """A `docker save` archive of layers (blob, diff_id), tagged bomb:1."""
    return docker_archive(path, [blob for blob, _ in layers], ["bomb:1"], {}, [diff for _, diff in layers])


def tree(root: Path) -> list[str]:
    """Every path in the store but its lock files, with each file's size."""
    found = []
    for top, dirs, files in os.walk(root):
        for name in sorted(dirs) + sorted(files):
            path = Path(top, name)
            if name not in ("lock", "use.lock"):
                found.append(f"{path.relative_to(root)} {path.stat().st_size if path.is_file() else ''}")
    return sorted(found)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    """A store holding one small image already, so that 'nothing left behind' is about a store in use."""
    root = tmp_path / "store"
    small = Layout(str(tmp_path / "small"))
    small.index([small.image([tar(("hello", "file", b"hi\n"))])], ref_name="small:1")
    done = cli("import", "-q", str(tmp_path / "small"), root=root)
    assert done.returncode == 0, done.stderr
    yield root


def refused(root: Path, *args: str, what: str, reason: str, stdin: bytes | None = None) -> None:
    """The import fails with the one bomb line naming `what` and `reason`, and the store is as it was."""
    before = tree(root)
    result = cli("import", "-q", *args, root=root, stdin=stdin)
    assert result.returncode == 125, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sbx: error: {what}: expands past "), result.stderr
    assert lines[0].endswith(" (a decompression bomb?)") and reason in lines[0], result.stderr
    assert tree(root) == before


# -- the tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_one_big_file_of_zeros(tmp_path: Path, store: Path, how: str) -> None:
    blob, diff_id = zeros_layer(64, how)
    assert len(blob) < 70 << 10  # 64 MiB in: 1000:1 for gzip, more for zstd
    src = oci_layout(tmp_path / "oci", [(blob, diff_id)], how)
    refused(store, str(src), what=f"layer {diff_id}", reason="over --max-ratio 100:1 of its")
    # control: the limit that stopped it, raised
    result = cli("import", "-q", "--max-ratio", "0", "--name", "ok", str(src), root=store)
    assert result.returncode == 0, result.stderr
    assert (store / "layers/sha256" / diff_id[7:] / "zeros").stat().st_size == 64 * MiB


def test_docker_archive_layer(tmp_path: Path, store: Path) -> None:
    blob, diff_id = zeros_layer(100)
    archive = docker_save(tmp_path / "save.tar", [(blob, diff_id)])
    refused(store, str(archive), what=f"layer {diff_id}", reason="over --max-ratio 100:1")
    refused(store, "-", what=f"layer {diff_id}", reason="over --max-ratio 100:1", stdin=archive.read_bytes())


def test_headers_alone_are_counted(tmp_path: Path, store: Path) -> None:
    """Nothing written to disk, everything in tar headers: 200 members with 1 MiB pax records each."""
    member = member_header("f", 0, {"comment": "a" * (MiB - 100)})
    assert len(member) > MiB - 100
    blob = gzip_repeated(b"", member, 200, bytes(1024))
    diff_id = plain_digest(b"", member, 200, bytes(1024))
    refused(store, str(oci_layout(tmp_path / "oci", [(blob, diff_id)])), what=f"layer {diff_id}",
            reason="over --max-ratio 100:1")


def test_never_decompressed_whole(tmp_path: Path, store: Path) -> None:
    """64 GiB of zeros after a small tar's end: refused at the cap, never decompressed to the end (that would
    take minutes, past the cli helper's timeout); bytes after the archive's end count like the rest."""
    head = tar(("small", "file", b"x"))
    piece = gzip.compress(bytes(MiB), mtime=0)  # gzip members, as pigz writes them
    blob = gzip.compress(head, mtime=0) + piece * (64 << 10)
    src = oci_layout(tmp_path / "oci", [(blob, FAKE_DIFF_ID)])
    refused(store, "--max-layer-size", "32M", str(src), what=f"layer {FAKE_DIFF_ID}",
            reason="expands past 32.0MiB, the --max-layer-size")


def test_layer_and_import_size_caps(tmp_path: Path, store: Path) -> None:
    random = [tar((f"r{i}", "file", os.urandom(1536 << 10))) for i in range(2)]  # 1.5 MiB each, incompressible
    layers = [(gzip.compress(layer, mtime=0), "sha256:" + hashlib.sha256(layer).hexdigest()) for layer in random]
    src = oci_layout(tmp_path / "oci", layers)
    refused(store, "--max-layer-size", "1M", str(src), what=f"layer {layers[0][1]}",
            reason="expands past 1.0MiB, the --max-layer-size")
    refused(store, "--max-size", "2M", str(src), what=f"layer {layers[1][1]}",  # the first fit: nothing kept
            reason="the --max-size of 2.0MiB for the import")
    result = cli("import", "-q", "--max-layer-size", "2M", "--max-size", "4M", str(src), root=store)
    assert result.returncode == 0, result.stderr


def test_just_under_the_defaults_imports(tmp_path: Path, store: Path) -> None:
    """A small layer may expand past 100:1 (the 16 MiB floor); the ratio cap applies above it."""
    floor = Limits().ratio_floor
    under = zeros_layer(floor // MiB - 1)  # 15 MiB of zeros, about 15 KiB compressed: 1000:1
    result = cli("import", "-q", str(oci_layout(tmp_path / "under", [under])), root=store)
    assert result.returncode == 0, result.stderr
    over = zeros_layer(floor // MiB + 8)
    refused(store, str(oci_layout(tmp_path / "over", [over])), what=f"layer {over[1]}", reason="--max-ratio")
    result = cli("import", "-q", "--max-ratio", "2000", str(tmp_path / "over"), root=store)
    assert result.returncode == 0, result.stderr


def test_compressed_archive_is_capped_too(tmp_path: Path, store: Path) -> None:
    """`docker save | gzip`: the outer archive is spooled to the store's tmp/, under the same caps."""
    plain_layer = tar(("zeros", "file", bytes(32 * MiB)))
    archive = docker_save(tmp_path / "save.tar", [(plain_layer, "sha256:" + hashlib.sha256(plain_layer).hexdigest())])
    packed = tmp_path / "save.tar.gz"
    packed.write_bytes(gzip.compress(archive.read_bytes(), compresslevel=9, mtime=0))
    refused(store, str(packed), what=f"archive {packed}", reason="over --max-ratio 100:1")
    refused(store, "-", what="archive -", reason="over --max-ratio 100:1", stdin=packed.read_bytes())
    result = cli("import", "-q", "--max-ratio", "0", str(packed), root=store)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args,message", [
    (("--max-ratio", "x"), "--max-ratio 'x': expected a whole number"),
    (("--max-ratio", "-1"), "--max-ratio '-1': expected a whole number"),
    (("--max-size", "0"), "--max-size: must be more than 0"),
    (("--max-layer-size", "lots"), "--max-layer-size: 'lots' is not a size"),
])
def test_limit_flags_checked(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    for command in ("import", "pull"):
        result = cli(command, *args, "x", root=tmp_path / "store")
        assert result.returncode == 125 and result.stderr.startswith(f"sbx: error: {message}"), result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_pull_is_capped_the_same(tmp_path: Path, registry: Registry) -> None:
    """`sbx image pull` extracts through the same import: the same line, nothing left; oversized layers
    are refused before their download."""
    blob, diff_id = zeros_layer(64)
    oci_layout(tmp_path / "oci", [(blob, diff_id)])
    target = registry.push(tmp_path / "oci", "bomb:1", "bomb:1")
    root = tmp_path / "store"
    result = sbx("image", "--root", str(root), "pull", "-q", target)
    assert result.returncode == 125, result.stderr
    assert result.stderr == f"sbx: error: layer {diff_id}: expands past 16.0MiB, over --max-ratio 100:1 of its " \
                            f"{extract.size_text(len(blob))} compressed (a decompression bomb?)\n"
    assert_nothing_left(root)
    random = tar(("r", "file", os.urandom(3 * MiB)))
    oci_layout(tmp_path / "big", [(gzip.compress(random, mtime=0), "sha256:" + hashlib.sha256(random).hexdigest())])
    big = registry.push(tmp_path / "big", "bomb:1", "big:1")
    result = sbx("image", "--root", str(root), "pull", "-q", "--max-layer-size", "1M", big)
    assert result.returncode == 125 and "compressed, past the --max-layer-size of 1.0MiB" in result.stderr, \
        result.stderr
    assert_nothing_left(root)
    for args in (("--max-ratio", "2000", target), ("--max-layer-size", "4M", big)):  # controls: the limits raised
        result = sbx("image", "--root", str(root), "pull", "-q", *args)
        assert result.returncode == 0, result.stderr


def test_build_add_is_capped(tmp_path: Path, store: Path) -> None:
    """ADD of a compressed archive in `sbx image build` extracts under the same caps."""
    context = tmp_path / "context"
    context.mkdir()
    (context / "bomb.tar.gz").write_bytes(zeros_layer(64)[0])
    (context / "Containerfile").write_text("FROM small:1\nADD bomb.tar.gz /unpacked\n")
    before = tree(store)
    result = cli("build", "-q", "-t", "added", str(context), root=store)
    assert result.returncode == 125, result.stderr
    assert result.stderr.startswith("sbx: error: Containerfile:2: ADD: expands past 16.0MiB, over --max-ratio 100:1")
    assert result.stderr.endswith(" (a decompression bomb?)\n") and len(result.stderr.splitlines()) == 1
    assert tree(store) == before
    result = cli("build", "-q", "-t", "added", "--max-ratio", "0", str(context), root=store)  # control
    assert result.returncode == 0, result.stderr
