"""A strict, streaming tar reader for hostile archives.

Python's `tarfile` reads a pax or GNU long-name header of any declared size
into memory in one go and has had parser CVEs; this reader is small enough
to fuzz and bounds everything: header extensions (pax, GNU long names) to
MAX_EXTENSION bytes, names and link targets to MAX_PATH.  It never seeks, so
it reads straight from a decompressor.

Formats: v7, ustar (with prefix), GNU (base-256 numbers, 'L'/'K' long names)
and pax ('x' per-file records; 'g' global records are read and ignored).
GNU sparse files, multi-volume archives and unknown entry types are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..frozen import dataclass
from .errors import ImageError

BLOCK = 512
MAX_EXTENSION = 1 << 20
MAX_PATH = 4096
MAX_SIZE = 1 << 46  # 64 TiB: bigger declared sizes are hostile

FILE, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = "file", "hardlink", "symlink", "char", "block", "dir", "fifo"
TYPES = {b"0": FILE, b"\0": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK, b"3": CHAR, b"4": BLOCKDEV,
         b"5": DIR, b"6": FIFO}


@dataclass(frozen=True)
class Member:
    name: str  # as in the archive (not yet checked for '..' or absolute paths)
    kind: str
    size: int  # bytes of data that follow (0 for links, dirs, devices)
    mode: int
    mtime: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0


def number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        if field[0] & 0x40:  # negative
            value -= 1 << (8 * len(field) - 1)
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not all(0x30 <= c <= 0x37 for c in text):
        raise ImageError(f"corrupt tar header: bad {what} field")
    return int(text, 8)


def decode(raw: bytes) -> str:
    return os.fsdecode(raw)


def parse_pax(data: bytes) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos, pos + 20)
        if space < 0 or not data[pos:space].isdigit():
            raise ImageError("corrupt tar archive: bad pax record")
        length = int(data[pos:space])
        end = pos + length
        if length <= space - pos + 2 or end > len(data) or data[end - 1] != 0x0A:
            raise ImageError("corrupt tar archive: bad pax record length")
        key, eq, value = data[space + 1: end - 1].partition(b"=")
        if not eq or not key:
            raise ImageError("corrupt tar archive: bad pax record")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


class TarReader:
    """Iterates over members of a tar stream; read each member's data (or not) before the next."""

    def __init__(self, read: Callable[[int], bytes], skip: Callable[[int], None] | None = None) -> None:
        self._read = read
        self._skip = skip  # skips n bytes without reading them (a seekable file)
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0
        self.offset = 0  # bytes consumed from the stream

    def _exact(self, size: int) -> bytes:
        chunks = []
        want = size
        while want:
            chunk = self._read(min(want, 1 << 20))
            if not chunk:
                raise ImageError("truncated tar archive")
            chunks.append(chunk)
            want -= len(chunk)
        self.offset += size
        return b"".join(chunks)

    def read(self, size: int = 1 << 20) -> bytes:
        """Up to `size` bytes of the current member's data; b'' at its end."""
        size = min(size, self._left)
        if size <= 0:
            return b""
        chunk = self._read(size)
        if not chunk:
            raise ImageError("truncated tar archive")
        self._left -= len(chunk)
        self.offset += len(chunk)
        return chunk

    def _finish_member(self) -> None:
        if self._skip is not None and self._left + self._pad:
            self._skip(self._left + self._pad)
            self.offset += self._left + self._pad
            self._left = self._pad = 0
        while self._left:
            self.read()
        if self._pad:
            self._exact(self._pad)
            self._pad = 0

    def _extension(self, size: int, what: str) -> bytes:
        if size > MAX_EXTENSION:
            raise ImageError(f"tar {what} header of {size} bytes is too large (limit {MAX_EXTENSION})")
        data = self._exact(size)
        self._exact(-size % BLOCK)
        return data

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        self._finish_member()
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        for _ in range(64):  # extension headers before one member
            block = self._read_block()
            if block is None:
                return None
            kind = block[156:157]
            size = number(block[124:136], "size")
            if size < 0 or size > MAX_SIZE:
                raise ImageError(f"corrupt tar header: size {size}")
            if kind == b"x":
                pax.update(parse_pax(self._extension(size, "pax")))
            elif kind == b"g":
                self._extension(size, "pax")  # global records: nothing we use
            elif kind in (b"L", b"K"):
                text = decode(self._extension(size, "long name").split(b"\0", 1)[0])
                if kind == b"L":
                    long_name = text
                else:
                    long_link = text
            else:
                return self._member(block, kind, size, pax, long_name, long_link)
        raise ImageError("corrupt tar archive: too many extension headers")

    def _read_block(self) -> bytes | None:
        first = self._read(BLOCK)
        if not first:
            return None  # no end-of-archive marker: accepted, as GNU tar does
        block = first if len(first) == BLOCK else first + self._exact(BLOCK - len(first))
        if len(first) == BLOCK:
            self.offset += BLOCK
        else:
            self.offset += len(first)
        if block == bytes(BLOCK):
            return None
        stored = number(block[148:156], "checksum")
        unsigned = sum(block[:148]) + 256 + sum(block[156:])
        signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
        if stored not in (unsigned, signed):
            raise ImageError("corrupt tar header: bad checksum (not a tar archive?)")
        return block

    def _member(self, block: bytes, kind: bytes, size: int, pax: dict[str, str], long_name: str | None,
                long_link: str | None) -> Member:
        what = TYPES.get(kind)
        if what is None:
            shown = kind.decode("latin-1") if kind.isascii() and kind.isalnum() else repr(kind)
            raise ImageError(f"unsupported tar entry type {shown!r}")
        if any(key.startswith("GNU.sparse") for key in pax):
            raise ImageError("sparse files in tar archives are not supported")
        name = decode(block[:100].split(b"\0", 1)[0])
        if block[257:263] == b"ustar\0":  # POSIX: a prefix field; GNU's "ustar  " uses it for other things
            prefix = decode(block[345:500].split(b"\0", 1)[0])
            if prefix:
                name = prefix + "/" + name
        name = pax.get("path", long_name if long_name is not None else name)
        link = pax.get("linkpath", long_link if long_link is not None else decode(block[157:257].split(b"\0", 1)[0]))
        if "size" in pax:
            if not pax["size"].isdigit() or len(pax["size"]) > 20:
                raise ImageError("corrupt tar archive: bad pax size")
            size = int(pax["size"])
            if size > MAX_SIZE:
                raise ImageError(f"corrupt tar header: size {size}")
        mtime = number(block[136:148], "mtime")
        if "mtime" in pax:
            whole = pax["mtime"].partition(".")[0]
            if whole.lstrip("-").isdigit() and len(whole) < 20:
                mtime = int(whole)
        if len(name) > MAX_PATH or len(link) > MAX_PATH:
            raise ImageError(f"tar entry name longer than {MAX_PATH} characters")
        if "\0" in name or "\0" in link:
            raise ImageError("tar entry name contains a NUL byte")
        mode = number(block[100:108], "mode") & 0o7777
        devmajor = devminor = 0
        if what in (CHAR, BLOCKDEV):
            devmajor = number(block[329:337], "devmajor")
            devminor = number(block[337:345], "devminor")
        if what != FILE:
            size = 0  # as tarfile and GNU tar read it: only regular files carry data
        self._left = size
        self._pad = -size % BLOCK
        return Member(name, what, size, mode, mtime, link, devmajor, devminor)
