"""Fuzz image inputs: layer tar extraction (through decompression) and image references.

The first byte picks the target; the rest is the input.  A layer must
extract or fail with a one-line ImageError, and whatever it extracted must
stay inside its directory: no device other than a 0/0 whiteout, no
setuid/setgid bit, nothing written next to it; the size the extractor
counted must be what a walk of the result finds; decompression must stop at
the first byte past the expansion cap (extract.Limits.cap) and the data
written stay within it.  A plain tar must read the
same (members, offsets, data, or the same error) whether the stream comes
whole or in short reads, as from a decompressor.  A reference must parse to a
normalized form that parses to itself, or fail with a one-line ImageError.

    python fuzz/fuzz_image.py -max_total_time=20 /tmp/image-corpus fuzz/corpus/image
"""

from __future__ import annotations

import os
import stat
import sys
import tempfile
from collections.abc import Callable

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with atheris.instrument_imports():
    from sandbox.image import blob, extract, ref, tar
    from sandbox.model.frozen import replace
    from sandbox.image.errors import ImageError

# libFuzzer ends the process without atexit handlers: point TMPDIR somewhere disposable (the test does).
ROOT = tempfile.mkdtemp(prefix="sbx-fuzz-image-")
SENTINEL = os.path.join(ROOT, "sentinel")
os.mkdir(SENTINEL)
# Small caps, so that inputs of -max_len reach them: 20:1 past 256 KiB, 4 MiB a layer.
LIMITS = extract.Limits(max_bytes=4 << 20, max_entries=2000, max_ratio=20, ratio_floor=256 << 10)


def one_line(error: ImageError) -> None:
    message = str(error)
    assert message and "\n" not in message, repr(message)


def check_tree(dest: str) -> None:
    for top, dirs, files in os.walk(dest):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(top, name))
            except PermissionError:
                continue  # below a directory the layer made unsearchable (mode 0): rootless cannot look
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (top, name, oct(st.st_mode))
            if stat.S_ISCHR(st.st_mode):
                assert st.st_rdev == 0, (top, name)
            assert not stat.S_ISBLK(st.st_mode), (top, name)


def open_up(dest: str) -> None:
    """u+rwx on every directory (top-down, so a mode-0 directory can still be entered)."""
    for top, dirs, _files in os.walk(dest):
        for name in dirs:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)


def chunked(data: bytes, sizes: tuple[int, ...]) -> Callable[[int], bytes]:
    state = [0, 0]  # position, calls

    def read(n: int) -> bytes:
        cap = sizes[state[1] % len(sizes)]
        state[1] += 1
        chunk = data[state[0]:state[0] + min(n, cap)]
        state[0] += len(chunk)
        return chunk

    return read


def listing(read: Callable[[int], bytes]) -> list[object]:
    reader = tar.TarReader(read)
    found: list[object] = []
    try:
        while (member := reader.next()) is not None:
            offset = reader.offset
            body = b""
            if len(found) % 2:  # every other member's data is skipped, not read
                while chunk := reader.read(3 + len(found)):
                    body += chunk
            found.append((member, offset, body))
    except ImageError as error:
        found.append(str(error))
    return found


def fuzz_layer(data: bytes) -> None:
    if not data.startswith((blob.GZIP_MAGIC, blob.ZSTD_MAGIC)):
        whole = listing(chunked(data, (len(data) + 1,)))
        short = listing(chunked(data, (1 + len(data) % 13, 511, 4096)))
        assert whole == short, (whole, short)
    dest = os.path.join(ROOT, "layer")
    os.mkdir(dest)
    try:
        chunks = iter([data])
        pending = [b""]

        def read(n: int) -> bytes:
            if not pending[0]:
                pending[0] = next(chunks, b"")
            chunk, pending[0] = pending[0][:n], pending[0][n:]
            return chunk

        cap = LIMITS.cap(len(data))[0]
        stream = blob.LayerStream(read, len(data), cap, "layer")
        try:
            stats = extract.extract(tar.TarReader(stream.read), dest, replace(LIMITS, max_bytes=cap))
            stream.drain()
        finally:
            stream.close()
            # Decompression stops at the first byte past the cap; the data written stays within it.
            assert stream.plain.count <= cap + 1, (stream.plain.count, cap)
            check_tree(dest)
            open_up(dest)
            assert extract.tree_bytes(dest) <= cap, (extract.tree_bytes(dest), cap)
        assert stats.size == extract.tree_bytes(dest), (stats, extract.tree_bytes(dest))
    except ImageError as error:
        one_line(error)
    finally:
        extract.remove_tree(dest)
    assert os.listdir(ROOT) == ["sentinel"] and os.listdir(SENTINEL) == [], os.listdir(ROOT)


def fuzz_ref(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        parsed = ref.parse(text)
    except ImageError as error:
        one_line(error)
        return
    again = ref.parse(str(parsed))
    assert again == parsed, (text, parsed, again)
    assert ref.parse(parsed.familiar) == parsed, (text, parsed)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    if data[0] & 1:
        fuzz_ref(data[1:])
    else:
        fuzz_layer(data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
