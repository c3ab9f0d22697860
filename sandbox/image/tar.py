"""A strict, streaming tar reader for hostile archives.

Python's `tarfile` reads a pax or GNU long-name header of any declared size
into memory in one go and has had parser CVEs; this reader is small enough
to fuzz and bounds everything: header extensions (pax, GNU long names) to
MAX_EXTENSION bytes, names and link targets to MAX_PATH.  It never seeks
backwards, so it reads straight from a decompressor.

Formats: v7, ustar (with prefix), GNU (base-256 numbers, 'L'/'K' long names)
and pax ('x' per-file records; 'g' global records are read and ignored).
GNU sparse files, multi-volume archives and unknown entry types are refused.

Speed: a layer of small files is one 512-byte header per file, so the reader
takes the stream in large chunks and slices headers and small file data out
of its buffer (one read call per chunk, not three per member); data of large
files bypasses the buffer.
"""

from __future__ import annotations

import sys
import zlib
from collections.abc import Callable
from typing import NamedTuple

from .errors import ImageError

BLOCK = 512
CHUNK = 1 << 20
MAX_EXTENSION = 1 << 20
MAX_PATH = 4096
MAX_SIZE = 1 << 46  # 64 TiB: bigger declared sizes are hostile

FILE, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = "file", "hardlink", "symlink", "char", "block", "dir", "fifo"
TYPES = {b"0": FILE, b"\0": FILE, b"7": FILE, b"1": HARDLINK, b"2": SYMLINK, b"3": CHAR, b"4": BLOCKDEV,
         b"5": DIR, b"6": FIFO}
ZERO_BLOCK = bytes(BLOCK)
OCTAL = b"01234567"
NUMERIC = b"01234567 \0"
HIGH = bytes(range(128, 256))
_ENCODING, _ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


class Member(NamedTuple):
    """One archive entry.  A NamedTuple rather than the package's frozen dataclass: one is made per file of
    a layer, and a tuple is built about ten times faster (immutable and typed all the same)."""

    name: str  # as in the archive (not yet checked for '..' or absolute paths)
    kind: str
    size: int  # bytes of data that follow (0 for links, dirs, devices)
    mode: int
    mtime: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    uid: int = 0  # -1: unreadable
    gid: int = 0


def number(field: bytes, what: str) -> int:
    if field and field[0] & 0x80:  # GNU base-256
        value = int.from_bytes(field, "big") & ~(0x80 << (8 * (len(field) - 1)))
        if field[0] & 0x40:  # negative
            value -= 1 << (8 * len(field) - 1)
        return value
    text = field.rstrip(b"\0 ")
    if text and not text.translate(None, OCTAL):  # the usual "0000644\0": digits, then padding
        return int(text, 8)
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if text.translate(None, OCTAL):  # int() alone would also take '+', '_' and whitespace
        raise ImageError(f"corrupt tar header: bad {what} field")
    return int(text, 8)


def decode(raw: bytes) -> str:
    return raw.decode(_ENCODING, _ERRORS)  # os.fsdecode without its per-call type checks


def byte_sum(block: bytes) -> int:
    """sum(block) of a 512-byte header, which alone would cost more than the rest of its parsing: the low
    16 bits of Adler-32 are 1 + the byte sum mod 65521, and 256 bytes sum to at most 65280, so per half
    that is the exact sum."""
    return (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2


def checksum_ok(block: bytes, stored: int) -> bool:
    """POSIX: the sum of the header's bytes with the checksum field as spaces; some old tars sum signed bytes."""
    field = block[148:156]
    unsigned = byte_sum(block) - sum(field) + 8 * 0x20
    if stored == unsigned:
        return True
    high = len(block) - len(block.translate(None, HIGH)) - (len(field) - len(field.translate(None, HIGH)))
    return stored == unsigned - 256 * high


def header_numbers(block: bytes) -> tuple[int, int, int, int, int]:
    """(mode, uid, gid, size, mtime) of a header, after checking its checksum."""
    if not block[100:156].translate(None, NUMERIC):
        # Only digits, spaces and NULs: int() takes exactly what number() would, or fails.
        try:
            mode = int(block[100:108].rstrip(b"\0 ") or b"0", 8)
            uid = gid = 0
            if block[108:124].strip(b"0 \0"):  # most layers: everything owned by 0:0
                uid = int(block[108:116].rstrip(b"\0 ") or b"0", 8)
                gid = int(block[116:124].rstrip(b"\0 ") or b"0", 8)
            size = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
            mtime = int(block[136:148].rstrip(b"\0 ") or b"0", 8)
            stored = int(block[148:156].rstrip(b"\0 ") or b"0", 8)
        except ValueError:
            pass
        else:
            if stored == byte_sum(block) - sum(block[148:156]) + 8 * 0x20 or checksum_ok(block, stored):
                return mode, uid, gid, size, mtime
            raise ImageError("corrupt tar header: bad checksum (not a tar archive?)")
    # base-256 numbers, stray bytes: field by field, the checksum first (junk is "not a tar archive")
    if not checksum_ok(block, number(block[148:156], "checksum")):
        raise ImageError("corrupt tar header: bad checksum (not a tar archive?)")
    return (number(block[100:108], "mode"), owner(block[108:116]), owner(block[116:124]),
            number(block[124:136], "size"), number(block[136:148], "mtime"))


def owner(field: bytes) -> int:
    """A uid or gid field; -1 if unreadable (ownership is information here, never a reason to refuse)."""
    try:
        return number(field, "owner")
    except ImageError:
        return -1


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
    """Iterates over members of a tar stream; read each member's data (or not) before the next.

    `read(n)` returns up to n bytes (b'' at the end); `skip(n)`, when given, skips n bytes without reading
    them (a seekable file); `chunk` is how much to read ahead (small when skipping is cheaper than reading).
    """

    def __init__(self, read: Callable[[int], bytes], skip: Callable[[int], None] | None = None,
                 chunk: int = CHUNK) -> None:
        self._read = read
        self._skip = skip
        self._chunk = chunk
        self._buf = b""
        self._pos = 0  # next unread byte of _buf
        self._base = 0  # stream offset of _buf[0]
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0

    @property
    def offset(self) -> int:
        """Bytes consumed from the stream (after next(): where the member's data starts)."""
        return self._base + self._pos

    def _more(self, need: int) -> bool:
        """Buffer at least `need` unread bytes; False if the stream ends first."""
        rest = self._buf[self._pos:]
        self._base += self._pos
        parts = [rest]
        have = len(rest)
        while have < need:
            chunk = self._read(max(self._chunk, need - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self._buf = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pos = 0
        return have >= need

    def _drop_buffer(self) -> None:
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0

    def _exact(self, size: int) -> bytes:
        if len(self._buf) - self._pos < size and not self._more(size):
            raise ImageError("truncated tar archive")
        pos = self._pos
        self._pos = pos + size
        return self._buf[pos:pos + size]

    def read(self, size: int = CHUNK) -> bytes:
        """Up to `size` (at most CHUNK) bytes of the current member's data; b'' at its end."""
        size = min(size, self._left, CHUNK)
        if size <= 0:
            return b""
        pos = self._pos
        avail = len(self._buf) - pos
        if not avail:
            if size >= self._chunk:  # large data: straight from the stream, not copied through the buffer
                self._drop_buffer()
                chunk = self._read(size)
                if not chunk:
                    raise ImageError("truncated tar archive")
                self._base += len(chunk)
                self._left -= len(chunk)
                return chunk
            if not self._more(1):
                raise ImageError("truncated tar archive")
            pos = 0
            avail = len(self._buf)
        if size > avail:
            size = avail
        self._pos = pos + size
        self._left -= size
        return self._buf[pos:pos + size]

    def _finish_member(self) -> None:
        """Skip what is left of the current member's data and padding."""
        todo = self._left + self._pad
        self._left = self._pad = 0
        if not todo:
            return
        avail = len(self._buf) - self._pos
        if todo <= avail:
            self._pos += todo
            return
        todo -= avail
        self._drop_buffer()
        if self._skip is not None:
            self._skip(todo)
            self._base += todo
            return
        while todo:
            chunk = self._read(min(todo, CHUNK))
            if not chunk:
                raise ImageError("truncated tar archive")
            todo -= len(chunk)
            self._base += len(chunk)

    def _extension(self, size: int, what: str) -> bytes:
        if size > MAX_EXTENSION:
            raise ImageError(f"tar {what} header of {size} bytes is too large (limit {MAX_EXTENSION})")
        data = self._exact(size)
        self._exact(-size % BLOCK)
        return data

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        if self._left + self._pad:
            self._finish_member()
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        for _ in range(64):  # extension headers before one member
            pos = self._pos
            if len(self._buf) - pos >= BLOCK:
                self._pos = pos + BLOCK
                block = self._buf[pos:pos + BLOCK]
                if block == ZERO_BLOCK:
                    return None
            else:
                found = self._read_block()
                if found is None:
                    return None
                block = found
            mode, uid, gid, size, mtime = header_numbers(block)
            if size < 0 or size > MAX_SIZE:
                raise ImageError(f"corrupt tar header: size {size}")
            kind = block[156:157]
            what = TYPES.get(kind)
            if what is not None:
                return self._member(block, what, mode, uid, gid, size, mtime, pax, long_name, long_link)
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
                shown = kind.decode("latin-1") if kind.isascii() and kind.isalnum() else repr(kind)
                raise ImageError(f"unsupported tar entry type {shown!r}")
        raise ImageError("corrupt tar archive: too many extension headers")

    def _read_block(self) -> bytes | None:
        pos = self._pos
        if len(self._buf) - pos < BLOCK:
            if not self._more(BLOCK):
                if len(self._buf):
                    raise ImageError("truncated tar archive")
                return None  # no end-of-archive marker: accepted, as GNU tar does
            pos = 0
        self._pos = pos + BLOCK
        block = self._buf[pos:pos + BLOCK]
        return None if block == ZERO_BLOCK else block

    def _member(self, block: bytes, what: str, mode: int, uid: int, gid: int, size: int, mtime: int,
                pax: dict[str, str], long_name: str | None, long_link: str | None) -> Member:
        if pax:
            if any(key.startswith("GNU.sparse") for key in pax):
                raise ImageError("sparse files in tar archives are not supported")
            if "size" in pax:
                if not pax["size"].isdigit() or len(pax["size"]) > 20:
                    raise ImageError("corrupt tar archive: bad pax size")
                size = int(pax["size"])
                if size > MAX_SIZE:
                    raise ImageError(f"corrupt tar header: size {size}")
            if "mtime" in pax:
                whole = pax["mtime"].partition(".")[0]
                if whole.lstrip("-").isdigit() and len(whole) < 20:
                    mtime = int(whole)
            for key in ("uid", "gid"):
                if key in pax:
                    value = int(pax[key]) if pax[key].isdigit() and len(pax[key]) < 20 else -1
                    uid, gid = (value, gid) if key == "uid" else (uid, value)
        if pax and "path" in pax:
            name = pax["path"]
        elif long_name is not None:
            name = long_name
        else:
            name = decode(block[:100].split(b"\0", 1)[0])
            if block[257:263] == b"ustar\0":  # POSIX: a prefix field; GNU's "ustar  " uses it for other things
                prefix = block[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = decode(prefix) + "/" + name
        if pax and "linkpath" in pax:
            link = pax["linkpath"]
        elif long_link is not None:
            link = long_link
        elif block[157]:
            link = decode(block[157:257].split(b"\0", 1)[0])
        else:
            link = ""
        if len(name) > MAX_PATH or len(link) > MAX_PATH:
            raise ImageError(f"tar entry name longer than {MAX_PATH} characters")
        if "\0" in name or "\0" in link:
            raise ImageError("tar entry name contains a NUL byte")
        devmajor = devminor = 0
        if what != FILE:
            size = 0  # as tarfile and GNU tar read it: only regular files carry data
            if what in (CHAR, BLOCKDEV):
                devmajor = number(block[329:337], "devmajor")
                devminor = number(block[337:345], "devminor")
        self._left = size
        self._pad = -size % BLOCK
        return Member(name, what, size, mode & 0o7777, mtime, link, devmajor, devminor, uid, gid)
