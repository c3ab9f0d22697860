"""Where `sbx image import` reads from: a directory, or a tar file indexed in place.

A tar file is only indexed, never extracted: blobs are read where they are.  A
compressed archive or stdin is spooled into the store's tmp/ first (the
manifest may come last), capped like a layer.  Names are looked up beneath the
directory (openat2) or inside the archive (links resolved there, never out).
"""

from __future__ import annotations

import os
import posixpath
import stat
import sys
from collections.abc import Callable

from ..kernel import linux
from ..model.frozen import replace
from . import blob, extract
from .errors import ImageError
from .store import check_digest
from .tar import DIR, FILE, HARDLINK, SYMLINK, TarReader

MAX_JSON = 16 << 20
MAX_BLOB = 1 << 40
MAX_ENTRIES = 1 << 20  # in an archive's index
MAX_LINKS = 16  # links followed to find one name in an archive
INDEX_CHUNK = 1 << 16  # bytes the indexer reads ahead: blobs are skipped by seeking
SPOOL_CHUNK = 1 << 20
ARCHIVE_SLACK = 64 << 20  # a compressed archive's spool: room for its manifests and configs beside the layers
RESOLVE = extract.RESOLVE_BENEATH | extract.RESOLVE_NO_MAGICLINKS

Opened = tuple[Callable[[int], bytes], int, Callable[[], None]]


class Source:
    def open(self, name: str) -> Opened:
        """(read, size, close) of a file in the layout."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        try:
            self.open(name)[2]()
        except ImageError:
            return False
        return True

    def read_all(self, name: str, limit: int = MAX_JSON) -> bytes:
        read, size, close = self.open(name)
        try:
            if size > limit:
                raise ImageError(f"{name} is larger than {limit} bytes")
            data = b""
            while len(data) < size:
                chunk = read(size - len(data))
                if not chunk:
                    raise ImageError(f"{name}: truncated")
                data += chunk
            return data
        finally:
            close()

    def blob(self, digest: str, limit: int = MAX_JSON, size: int | None = None) -> bytes:
        data = self.read_all("blobs/sha256/" + check_digest(digest), limit)
        if size is not None and len(data) != size:
            raise ImageError(f"blob {digest}: {len(data)} bytes, expected {size}")
        verify(data, digest, f"blob {digest}")
        return data


def verify(data: bytes, digest: str, what: str) -> None:
    import hashlib

    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ImageError(f"{what}: digest mismatch (corrupt or tampered)")


def file_reader(fd: int, start: int, size: int) -> Callable[[int], bytes]:
    position = [start, start + size]

    def read(n: int) -> bytes:
        n = min(n, position[1] - position[0])
        if n <= 0:
            return b""
        chunk = os.pread(fd, n, position[0])
        position[0] += len(chunk)
        return chunk

    return read


class DirSource(Source):
    def __init__(self, path: str) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"cannot open {path}: {exc.strerror}") from None

    def open(self, name: str) -> Opened:
        parts = extract.split(name)
        try:
            fd = linux.openat2(self.fd, "/".join(parts), os.O_RDONLY, RESOLVE)
        except OSError:
            raise ImageError(f"{name}: missing from the image layout") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ImageError(f"{name}: not a regular file")
        return file_reader(fd, 0, st.st_size), st.st_size, lambda: os.close(fd)

    def close(self) -> None:
        os.close(self.fd)


class TarSource(Source):
    """A plain tar file, indexed once: name -> (offset, size), links resolved inside the archive."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.entries: dict[tuple[str, ...], tuple[str, int, int, str]] = {}
        tar = TarReader(lambda n: os.read(fd, n), lambda n: None if os.lseek(fd, n, os.SEEK_CUR) else None,
                        chunk=INDEX_CHUNK)
        count = 0
        while (member := tar.next()) is not None:
            count += 1
            if count > MAX_ENTRIES:
                raise ImageError("archive has too many entries")
            try:
                parts = extract.split(member.name)
            except ImageError:
                continue  # never looked up by such a name
            if member.kind in (FILE, SYMLINK, HARDLINK, DIR):
                self.entries[parts] = (member.kind, tar.offset, member.size, member.linkname)

    def lookup(self, parts: tuple[str, ...], depth: int = 0) -> tuple[int, int]:
        entry = self.entries.get(parts)
        if entry is None or depth > MAX_LINKS:
            raise ImageError(f"{'/'.join(parts)}: missing from the archive")
        kind, offset, size, link = entry
        if kind == FILE:
            return offset, size
        if kind == HARDLINK:
            return self.lookup(extract.split(link), depth + 1)
        if kind == SYMLINK and not link.startswith("/"):
            target = posixpath.normpath(posixpath.join(posixpath.dirname("/".join(parts)), link))
            if not target.startswith("../") and target != "..":
                return self.lookup(extract.split(target), depth + 1)
        raise ImageError(f"{'/'.join(parts)}: not a regular file in the archive")

    def open(self, name: str) -> Opened:
        offset, size = self.lookup(extract.split(name))
        return file_reader(self.fd, offset, size), size, lambda: None

    def close(self) -> None:
        os.close(self.fd)


def open_source(path: str, work: str, limits: extract.Limits = extract.Limits()) -> DirSource | TarSource:
    """A directory, a tar file (plain or compressed) or '-' for stdin; compressed/stdin is spooled to `work`.

    The spool is capped like a layer (Limits.cap), by the archive's size, or from a pipe by what
    has come so far; and by the import's --max-size (the layers in it, plus ARCHIVE_SLACK of the rest).
    """
    if path != "-" and os.path.isdir(path):
        return DirSource(path)
    try:
        fd = sys.stdin.buffer.fileno() if path == "-" else os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ImageError(f"cannot open {path}: {exc.strerror}") from None
    head = os.pread(fd, 4, 0) if path != "-" else b""
    if path != "-" and not head.startswith((blob.GZIP_MAGIC, blob.ZSTD_MAGIC)):
        return TarSource(fd)
    st = os.fstat(fd)
    size = st.st_size if stat.S_ISREG(st.st_mode) else None
    raw = blob.Hashing(lambda n: os.read(fd, n), MAX_BLOB, "the archive")
    read, close, compressed = blob.decompress(blob.Peeked(raw.read, 4))
    archive_limits = replace(limits, max_bytes=MAX_BLOB, max_ratio=limits.max_ratio if compressed else 0)
    spool = os.path.join(work, "archive.tar")
    out = os.open(spool, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        written = 0
        while True:
            # spent < 0: the layers' budget plus room for the rest (manifests, configs, tar headers)
            cap = archive_limits.cap(raw.count if size is None else size, spent=-ARCHIVE_SLACK)
            chunk = read(min(SPOOL_CHUNK, cap[0] - written + 1))
            if not chunk:
                break
            written += len(chunk)
            if written > cap[0]:
                raise extract.expansion_error(f"archive {path}", cap)
            os.write(out, chunk)
    except BaseException:
        os.close(out)
        raise
    finally:
        close()
        if path != "-":
            os.close(fd)
    os.lseek(out, 0, os.SEEK_SET)
    return TarSource(out)
