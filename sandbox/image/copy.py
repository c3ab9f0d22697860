"""COPY and ADD: files from the build context into a new layer (see build.py).

Sources are resolved beneath the context (a symlink leading out of it is an
error, `..` is refused) and copied without following links; ADD extracts local
tar archives with the import's hardened extractor.  `digest` hashes what a
copy would copy (names, modes, bytes, link targets) for the build cache's key.
Created directories get 0755 and time 0, so equal copies give equal layers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat

from ..kernel import linux
from ..model.frozen import replace
from .containerfile import ContainerfileError
from .errors import ImageError
from .extract import RESOLVE, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, Limits, remove_tree, remove_tree_at

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from .store import Store

BENEATH = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS  # symlinks followed, but only while they stay beneath
MAX_DEPTH = 256
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd")
CHUNK = 1 << 20  # bytes read and hashed or copied at a time
TAR_BLOCK = 512  # a tar header
TAR_MAGIC = slice(257, 262)  # where a POSIX tar header says "ustar"
UNLIMITED = 1 << 40  # the archive as read: its expansion is what is capped
Sources = list[tuple[str, int]]  # (the source as written, an O_PATH fd of it)


def open_source(context: int, source: str, keyword: str, where: str) -> int:
    """An O_PATH fd of a source, resolved beneath the context (in-context symlinks are followed)."""
    if "://" in source or source.startswith("git@"):
        raise ContainerfileError(f"{where}: {keyword} {source[:80]}: only local files can be copied")
    if any(c in source for c in "*?["):
        raise ContainerfileError(f"{where}: {keyword} {source[:80]}: wildcards are not supported")
    parts = [p for p in source.split("/") if p not in ("", ".")]
    if ".." in parts or "\0" in source:
        raise ContainerfileError(f"{where}: {keyword} {source[:80]}: '..' is not allowed")
    try:
        return linux.openat2(context, "/".join(parts) or ".", os.O_PATH | os.O_CLOEXEC, BENEATH)
    except FileNotFoundError:
        raise ContainerfileError(f"{where}: {keyword} {source[:80]}: not found in the build context") from None
    except OSError as exc:
        if exc.errno in (errno.EXDEV, errno.ELOOP):
            raise ContainerfileError(f"{where}: {keyword} {source[:80]}: a symlink leads outside "
                                     "the build context") from None
        raise ContainerfileError(f"{where}: {keyword} {source[:80]}: {exc.strerror}") from None


def digest(sources: Sources, where: str) -> str:
    """sha256 hex of the sources' names, kinds, modes, bytes and link targets."""
    hashed = hashlib.sha256()
    for source, top in sources:
        hashed.update(json.dumps(["source", source]).encode())
        for entry in _tree(top, where):
            _hash_entry(hashed, entry)
    return hashed.hexdigest()


def copy_layer(store: Store, sources: Sources, dest: str, into: bool, keyword: str, where: str,
               limits: Limits) -> tuple[str, int] | None:
    """The sources copied to `dest` (into it when `into`) as a new layer in the store; (diff_id, bytes),
    or None when it is empty.  ADD extracts archives, under `limits`."""
    from .commit import save_layer

    work = store.new_temp("copy-")
    try:
        root = os.path.join(work, "upper")  # where save_layer takes it from
        os.mkdir(root, 0o755)
        os.chmod(root, 0o755)
        dirs: dict[tuple[str, ...], tuple[int, int]] = {}
        for source, top in sources:
            _copy_one(root, source, top, dest, into, keyword == "ADD", dirs, where, limits)
        _finish_dirs(root, dirs)
        return save_layer(store, work)
    except OSError as exc:
        raise ImageError(f"{where}: {keyword}: {exc.strerror or exc}") from None
    finally:
        remove_tree(work)


def _copy_one(root: str, source: str, top: int, dest: str, into: bool, add: bool,
              dirs: dict[tuple[str, ...], tuple[int, int]], where: str, limits: Limits) -> None:
    """Copy one source into the layer at `root`; `dirs` collects the directory modes and times to set last."""
    st = os.fstat(top)
    dest_parts = tuple(p for p in dest.split("/") if p)
    if stat.S_ISDIR(st.st_mode):
        target = _make_dirs(root, dest_parts, where, dirs)
        try:
            for rel, entry_st, parent, name in _tree(top, where):
                _copy_entry(target, rel, entry_st, parent, name, where)
                if stat.S_ISDIR(entry_st.st_mode):
                    dirs[dest_parts + rel] = (stat.S_IMODE(entry_st.st_mode) & 0o1777, entry_st.st_mtime_ns)
        finally:
            os.close(target)
        return
    base = os.path.basename(source.rstrip("/")) or "file"
    if add and _is_archive(top, source):
        os.close(_make_dirs(root, dest_parts, where, dirs))
        _extract(top, os.path.join(root, *dest_parts), where, limits)
        return
    if into:
        parent_parts, name = dest_parts, base
    else:
        if not dest_parts:
            raise ContainerfileError(f"{where}: cannot copy a file onto /")
        parent_parts, name = dest_parts[:-1], dest_parts[-1]
    parent = _make_dirs(root, parent_parts, where, dirs)
    try:
        _copy_entry(parent, (name,), st, top, None, where)
    finally:
        os.close(parent)


# -- walking a source in the context ----------------------------------------------------------

Entry = tuple[tuple[str, ...], os.stat_result, int, "str | None"]


def _tree(top: int, where: str) -> Iterator[Entry]:
    """(path below the source, lstat, parent dir fd, name) in sorted pre-order; the source itself if a file.

    Symlinks inside are entries, never followed; fds are valid during the yield only.
    """
    st = os.fstat(top)
    if not stat.S_ISDIR(st.st_mode):
        yield (), st, top, None
        return
    fd = os.open(f"/proc/self/fd/{top}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from _below(fd, (), where)
    finally:
        os.close(fd)


def _below(fd: int, rel: tuple[str, ...], where: str) -> Iterator[Entry]:
    if len(rel) > MAX_DEPTH:
        raise ContainerfileError(f"{where}: the source nests deeper than {MAX_DEPTH} directories")
    for name in sorted(os.listdir(fd), key=os.fsencode):
        st = os.lstat(name, dir_fd=fd)
        yield (*rel, name), st, fd, name
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                yield from _below(sub, (*rel, name), where)
            finally:
                os.close(sub)


def _open_file(parent: int, name: str | None) -> int:
    if name is None:  # the source itself: an O_PATH fd of a regular file
        return os.open(f"/proc/self/fd/{parent}", os.O_RDONLY | os.O_CLOEXEC)
    return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)


def _hash_entry(hashed: hashlib._Hash, entry: Entry) -> None:
    rel, st, parent, name = entry
    kind = stat.S_IFMT(st.st_mode)
    hashed.update(json.dumps(["/".join(rel), kind, stat.S_IMODE(st.st_mode) & 0o1777]).encode())
    if stat.S_ISLNK(st.st_mode) and name is not None:
        hashed.update(os.fsencode(os.readlink(name, dir_fd=parent)))
    elif stat.S_ISREG(st.st_mode):
        fd = _open_file(parent, name)
        try:
            hashed.update(str(st.st_size).encode() + b"\n")
            while chunk := os.read(fd, CHUNK):
                hashed.update(chunk)
        finally:
            os.close(fd)


def _make_dirs(root: str, parts: tuple[str, ...], where: str, dirs: dict[tuple[str, ...], tuple[int, int]]) -> int:
    """An fd of root/parts, created as needed in the new layer; never through a symlink.

    Created directories get 0755 and time 0, so equal copies give equal layers.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                dirs.setdefault(parts[: i + 1], (0o755, 0))
            except FileExistsError:
                pass
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                raise ContainerfileError(f"{where}: /{'/'.join(parts)}: a copied file or symlink is in the way") from None
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def _copy_entry(target: int, rel: tuple[str, ...], st: os.stat_result, parent: int, name: str | None,
                where: str) -> None:
    """Copy one entry to target/rel (its parent directories exist): no setuid/setgid, mtime kept."""
    dir_fd = linux.openat2(target, "/".join(rel[:-1]) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, RESOLVE)
    base = rel[-1]
    mode = stat.S_IMODE(st.st_mode) & 0o1777
    try:
        try:
            existing = os.lstat(base, dir_fd=dir_fd)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (stat.S_ISDIR(existing.st_mode) and stat.S_ISDIR(st.st_mode)):
            remove_tree_at(dir_fd, base)  # a later source replaces an earlier one
        if stat.S_ISDIR(st.st_mode):
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=dir_fd)
            os.chmod(base, mode | 0o700, dir_fd=dir_fd)  # writable until its entries are in: see _finish_dirs
        elif stat.S_ISLNK(st.st_mode):
            assert name is not None
            os.symlink(os.readlink(name, dir_fd=parent), base, dir_fd=dir_fd)
            os.utime(base, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        elif stat.S_ISREG(st.st_mode):
            source = _open_file(parent, name)
            try:
                out = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dir_fd)
                try:
                    while chunk := os.read(source, CHUNK):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(out, view):]
                    os.fchmod(out, mode)
                    os.utime(out, ns=(st.st_mtime_ns, st.st_mtime_ns))
                finally:
                    os.close(out)
            finally:
                os.close(source)
        else:
            raise ContainerfileError(f"{where}: {'/'.join(rel)[:80]}: only files, directories and symlinks "
                                     "can be copied")
    finally:
        os.close(dir_fd)


def _finish_dirs(root: str, dirs: dict[tuple[str, ...], tuple[int, int]]) -> None:
    """Directory modes and times, deepest first, once nothing more is added below them."""
    top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for parts in sorted(dirs, key=len, reverse=True):
            mode, mtime_ns = dirs[parts]
            fd = linux.openat2(top, "/".join(parts), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, RESOLVE)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
    finally:
        os.close(top)


def _is_archive(top: int, source: str) -> bool:
    from .blob import GZIP_MAGIC, ZSTD_MAGIC

    fd = os.open(f"/proc/self/fd/{top}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, TAR_BLOCK, 0)
    finally:
        os.close(fd)
    if head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
        return True
    return source.endswith(ARCHIVE_SUFFIXES) or head[TAR_MAGIC] == b"ustar"


def _extract(top: int, dest: str, where: str, limits: Limits) -> None:
    """ADD of a local archive, under the expansion caps of an import (one layer's)."""
    from . import blob, extract, tar
    from .errors import TooLarge

    fd = os.open(f"/proc/self/fd/{top}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        cap = limits.cap(os.fstat(fd).st_size)
        stream = blob.LayerStream(lambda n: os.read(fd, n), UNLIMITED, cap[0], "archive")
        try:
            extract.extract(tar.TarReader(stream.read), dest, replace(limits, max_bytes=cap[0]))
        except TooLarge:
            raise extract.expansion_error(f"{where}: ADD", cap) from None
        except ImageError as exc:
            raise ImageError(f"{where}: ADD: {exc}") from None
        finally:
            stream.close()
    finally:
        os.close(fd)


