"""Byte streams for blobs: digests checked while reading, bounded decompression.

Layers are plain tar, gzip (zlib, in-process, any number of members) or zstd
(the `zstandard` module when installed, else the `zstd` program through a
pipe).  Every stream counts what it yields and fails past its limit, so a
decompression bomb ends with an error rather than a full disk or memory.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import zlib
from collections.abc import Callable

from .errors import ImageError, TooLarge

Read = Callable[[int], bytes]
CHUNK = 1 << 20  # large reads: per-call overhead, not bytes, is what costs here
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class Hashing:
    """Wraps a read function: sha256 and byte count of everything read through it, bounded by `limit`."""

    def __init__(self, read: Read, limit: int, what: str) -> None:
        self._read = read
        self.limit = limit
        self.what = what
        self.count = 0
        self.hash = hashlib.sha256()

    def read(self, size: int) -> bytes:
        # Never ask for more than one byte past the limit: a decompressor then stops right there.
        if self.count <= self.limit:
            chunk = self._read(min(size, self.limit - self.count + 1))
            self.count += len(chunk)
        if self.count > self.limit:
            raise TooLarge(f"{self.what} is larger than the limit of {self.limit} bytes")
        self.hash.update(chunk)
        return chunk

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class Peeked:
    """A read function with its first bytes looked at already."""

    def __init__(self, read: Read, size: int) -> None:
        self._read = read
        self.head = b""
        while len(self.head) < size:
            chunk = read(size - len(self.head))
            if not chunk:
                break
            self.head += chunk
        self._pending = self.head

    def read(self, size: int) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending[:size], self._pending[size:]
            return chunk
        return self._read(size)


class Gunzip:
    """gzip (one or more members, as pigz and concatenation make) -> plain bytes."""

    def __init__(self, read: Read) -> None:
        self._read = read
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = b""
        self._done = False

    def read(self, size: int) -> bytes:
        size = max(1, min(size, 1 << 20))
        while not self._done:
            if self._z.eof:
                rest = self._z.unused_data + self._input
                self._input = b""
                if not rest:
                    rest = self._read(CHUNK)
                if not rest.strip(b"\0"):
                    if rest:  # trailing zero padding: allowed, but read it all
                        while chunk := self._read(CHUNK):
                            if chunk.strip(b"\0"):
                                raise ImageError("corrupt gzip data: garbage after the end")
                    self._done = True
                    break
                if not rest.startswith(GZIP_MAGIC[:len(rest)]):
                    raise ImageError("corrupt gzip data: garbage after the end")
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._input = rest
            if not self._input:
                self._input = self._z.unconsumed_tail or self._read(CHUNK)
                if not self._input:
                    raise ImageError("truncated gzip data")
            data, self._input = self._input, b""
            try:
                out = self._z.decompress(data, size)
            except zlib.error as exc:
                raise ImageError(f"corrupt gzip data: {exc}") from None
            self._input = self._z.unconsumed_tail
            if out:
                return out
        return b""


class _FileLike:
    def __init__(self, read: Read) -> None:
        self.read = read


class Unzstd:
    """zstd -> plain bytes, through `zstandard` or the `zstd` program."""

    def __init__(self, read: Read) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._error: BaseException | None = None
        try:
            import zstandard  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            zstandard = None
        if zstandard is not None:
            reader = zstandard.ZstdDecompressor().stream_reader(_FileLike(read), read_across_frames=True)
            self._read: Read = reader.read
            self._errors: tuple[type[BaseException], ...] = (zstandard.ZstdError,)
            return
        try:
            proc = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise ImageError("zstd-compressed layer: install the 'zstandard' Python package or the zstd "
                             "program") from None
        self._proc = proc
        self._errors = ()
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout

        def feed() -> None:
            try:
                while chunk := read(CHUNK):
                    stdin.write(chunk)
            except BrokenPipeError:
                pass
            except BaseException as exc:  # reported by read()
                self._error = exc
            finally:
                try:
                    stdin.close()
                except BrokenPipeError:
                    pass

        self._thread = threading.Thread(target=feed, daemon=True)
        self._thread.start()
        out_fd = stdout.fileno()
        self._read = lambda size: os.read(out_fd, size)

    def read(self, size: int) -> bytes:
        try:
            chunk = self._read(max(1, min(size, 1 << 20)))
        except self._errors as exc:
            raise ImageError(f"corrupt zstd data: {exc}") from None
        if not chunk and self._proc is not None:
            self._thread.join()
            if self._error is not None:
                raise self._error
            if self._proc.wait() != 0:
                raise ImageError("corrupt zstd data")
        return chunk

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
            self._thread.join()


def decompressor(read: Read) -> tuple[Read, Callable[[], None]]:
    """Detect the compression by its magic bytes: (read function of the plain data, close)."""
    peeked = Peeked(read, 4)
    plain, close, _compressed = decompress(peeked)
    return plain, close


def decompress(peeked: Peeked) -> tuple[Read, Callable[[], None], bool]:
    """(read function of the plain data, close, whether it was compressed)."""
    if peeked.head.startswith(GZIP_MAGIC):
        return Gunzip(peeked.read).read, lambda: None, True
    if peeked.head.startswith(ZSTD_MAGIC):
        unzstd = Unzstd(peeked.read)
        return unzstd.read, unzstd.close, True
    if peeked.head.startswith((b"BZh", b"\xfd7zXZ")):
        raise ImageError("bzip2/xz-compressed layers are not supported (OCI layers are plain, gzip or zstd)")
    return peeked.read, lambda: None, False


class LayerStream:
    """One pass over a layer blob: digest and size as stored, decompression, digest of the plain tar.

    A plain blob is hashed once: its digest and its diff_id are digests of the same bytes.  `read` gives
    the plain tar; after `drain()`, `raw` and `plain` hold the two digests and counts.  A compressed
    blob's plain tar (headers and padding included) may be `plain_limit` bytes: the decompressor is
    stopped one byte past it, with TooLarge.
    """

    def __init__(self, read: Read, raw_limit: int, plain_limit: int, what: str) -> None:
        self.raw = Hashing(read, raw_limit, what)
        self._close: Callable[[], None] = lambda: None
        plain_read, self._close, self.compressed = decompress(Peeked(self.raw.read, 4))
        self.plain = Hashing(plain_read, plain_limit, what) if self.compressed else self.raw
        self.read: Read = self.plain.read if self.compressed else plain_read

    def drain(self) -> None:
        """Read (and hash) whatever the consumer left: bytes after the tar's end count in both digests."""
        if self.plain is not self.raw:
            self.plain.drain()
        self.raw.drain()

    def raw_intact(self, digest: str, size: int | None) -> bool:
        """After a failure: whether the blob as stored still matches its digest (stops the decompressor)."""
        self.close()
        try:
            self.raw.drain()
        except ImageError:
            return False
        return self.raw.digest == digest and (size is None or self.raw.count == size)

    def close(self) -> None:
        self._close()
