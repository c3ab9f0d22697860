"""One layer tar -> one directory an overlay can use as a lower layer.

Hostile input is the normal case.  Every path is split and checked (no
absolute paths, no '..', no NUL, bounded length), and every file system call
is relative to a directory fd opened with openat2(RESOLVE_BENEATH |
RESOLVE_NO_SYMLINKS), so nothing is ever written through a symlink or outside
the destination.  Regular files are created with O_EXCL|O_NOFOLLOW after
unlinking what was there (never written through an earlier hard link); hard
links must name a file already extracted from this layer; device nodes are
skipped; setuid/setgid bits are dropped; ownership is applied only when sbx
runs in a ranged user namespace (idmap.py: `owners` = N, ids 0..N kept);
otherwise the caller owns everything, which maps to root inside the sandbox,
and Stats.other_owners counts the entries whose owner was not kept; xattrs in the
archive are ignored (so an archive cannot plant `user.overlay.*` ones); total
size and entry counts are bounded.

OCI whiteouts become overlay whiteouts that work rootless: `.wh.NAME` is a
0/0 character device NAME (unprivileged mknod of a whiteout is allowed since
Linux 5.8), `.wh..wh..opq` sets `user.overlay.opaque=y` on its directory (read
by overlays mounted with `userxattr`; needs user xattrs on the store's file
system).  A whiteout and a real entry of the same name in one layer: the real
entry wins and, if it is a directory, becomes opaque (the whiteout still hides
the lower layers' content, as the OCI spec requires).

Speed (a layer is often 100k small files): each entry is created first and
only on EEXIST is the old one looked at and removed; parent directories stay
open in a small cache of fds (dropped whenever a directory is removed, so a
cached fd never stands for a path that now names something else); modes are
given at creation (fchmod only where the umask would cut them); the bytes the
layer takes are counted as it is written rather than by walking it after.
"""

from __future__ import annotations

import errno
import os
import stat

from ..kernel import linux
from ..model.frozen import dataclass
from .errors import ImageError, TooLarge
from .tar import BLOCKDEV, CHAR, DIR, FIFO, FILE, HARDLINK, SYMLINK, Member, TarReader

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "user.overlay.opaque"
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV
MAX_COMPONENT = 255
MAX_OPEN_DIRS = 32
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Limits:
    """How far an import may expand (SECURITY.md, decompression bombs).

    A layer may expand to `max_ratio` times its compressed size, or to `ratio_floor` if that is more
    (small layers never trip it; 0: no ratio cap), and never past `max_bytes`; all the layers one
    import extracts, to `max_image` together.  Checked while extracting, on what the decompressor
    yields (tar headers and padding included) and on the file data written; the extractor itself
    checks `max_bytes` and `max_entries` only.
    """

    max_bytes: int = 8 << 30  # expanded bytes of one layer
    max_entries: int = 1 << 20
    max_ratio: int = 100
    ratio_floor: int = 16 << 20
    max_image: int = 16 << 30

    def cap(self, compressed: int, spent: int = 0) -> tuple[int, str]:
        """(the most a blob of `compressed` bytes may expand to, which limit that is), when the import's
        layers so far expanded to `spent` bytes."""
        caps = [(self.max_bytes, "the --max-layer-size"),
                (max(0, self.max_image - spent), f"the --max-size of {size_text(self.max_image)} for the import")]
        if self.max_ratio > 0:
            caps.append((max(self.ratio_floor, self.max_ratio * compressed),
                         f"over --max-ratio {self.max_ratio}:1 of its {size_text(compressed)} compressed"))
        return min(caps, key=lambda cap: cap[0])


def size_text(size: int) -> str:
    """1536 -> '1.5KiB'."""
    if size < 1024:
        return f"{size}B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            break
    else:
        unit = "TiB"
        value /= 1024
    return f"{value:.1f}{unit}"


def expansion_error(what: str, cap: tuple[int, str]) -> ImageError:
    """The one line for a stream stopped at Limits.cap()."""
    return ImageError(f"{what}: expands past {size_text(cap[0])}, {cap[1]} (a decompression bomb?)")


@dataclass(frozen=True)
class Stats:
    entries: int
    bytes: int
    skipped: int  # device nodes
    whiteouts: int
    opaque: int
    size: int = 0  # apparent bytes of everything but directories, as tree_bytes() measures the result
    other_owners: int = 0  # entries whose owner (other than 0:0) could not be kept: now the caller's
    expanded: int = 0  # bytes of the plain tar (set by oci.extract_layer)


def split(name: str) -> tuple[str, ...]:
    """Checked components of an archive path; () for the root itself."""
    if name.startswith("/"):
        raise ImageError(f"layer entry {name!r}: absolute path")
    parts = name.split("/")
    if "" in parts or "." in parts:
        parts = [p for p in parts if p and p != "."]
    if ".." in parts:
        raise ImageError(f"layer entry {name!r}: '..' in path")
    for part in parts:  # 63 characters encode to at most 252 bytes: only longer ones need encoding
        if len(part) > MAX_COMPONENT // 4 and len(os.fsencode(part)) > MAX_COMPONENT:
            raise ImageError(f"layer entry {name[:80]!r}...: a name longer than {MAX_COMPONENT} bytes")
    return tuple(parts)


def current_umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, for every thread)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def link_size(target: str) -> int:
    """st_size of a symlink: the bytes of its target."""
    return len(target) if target.isascii() else len(os.fsencode(target))


class Extractor:
    def __init__(self, dest: str, limits: Limits, owners: int = 0) -> None:
        self.owners = owners  # keep uids and gids up to this (0: keep none)
        self.root = os.open(dest, DIR_FLAGS)
        self.limits = limits
        self.dirs: dict[tuple[str, ...], tuple[int, int]] = {}  # path -> (mode, mtime), applied at the end
        self.whiteouts: set[tuple[str, ...]] = set()
        self.opaque: set[tuple[str, ...]] = set()
        self.fds: dict[tuple[str, ...], int] = {}  # open parent directories
        self.entries = self.bytes = self.skipped = self.size = self.other_owners = 0
        self.umask = current_umask()

    def close(self) -> None:
        self.forget_dirs(())
        os.close(self.root)

    # -- directories ------------------------------------------------------------

    def parent(self, parts: tuple[str, ...], what: str) -> int:
        """A cached fd of directory `parts` (created if missing); the cache owns it."""
        fd = self.fds.get(parts)
        if fd is None:
            if len(self.fds) >= MAX_OPEN_DIRS:
                self.forget_dirs(())
            fd = self.fds[parts] = self.open_dir(parts, what)
        return fd

    def forget_dirs(self, under: tuple[str, ...]) -> None:
        """Close the cached fds of `under` and everything below it (before it is removed)."""
        for path in [p for p in self.fds if p[:len(under)] == under]:
            os.close(self.fds.pop(path))

    def open_dir(self, parts: tuple[str, ...], what: str) -> int:
        """An fd of directory `parts`, creating missing ones (mode fixed later); never follows a symlink."""
        flags = os.O_RDONLY | os.O_DIRECTORY
        try:
            return linux.openat2(self.root, "/".join(parts) or ".", flags, RESOLVE)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                raise
            # A whiteout of this layer in the way is replaced by a directory; anything else is refused.
            for i in range(1, len(parts) + 1):
                if parts[:i] in self.whiteouts:
                    return self.open_dir_slow(parts, what)
            raise ImageError(f"layer entry {what!r}: a parent is a symlink or not a directory") from None
        return self.open_dir_slow(parts, what)

    def open_dir_slow(self, parts: tuple[str, ...], what: str) -> int:
        fd = os.dup(self.root)
        try:
            for i, part in enumerate(parts):
                path = parts[: i + 1]
                if path in self.whiteouts:
                    os.unlink(part, dir_fd=fd)
                    self.whiteouts.discard(path)
                    self.mkdir(fd, part, path)
                    self.set_opaque(fd, part, path)
                try:
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    self.mkdir(fd, part, path)
                    child = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise ImageError(f"layer entry {what!r}: a parent is a symlink or not a directory") from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def mkdir(self, parent: int, name: str, path: tuple[str, ...]) -> None:
        """A directory the archive did not list (yet): counted as an entry, mode 755 unless listed later."""
        self.count(0)
        os.mkdir(name, 0o700, dir_fd=parent)
        self.dirs.setdefault(path, (0o755, -1))

    def set_opaque(self, parent: int, name: str, path: tuple[str, ...]) -> None:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        except OSError as exc:
            if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise ImageError("the image store's file system has no user xattrs, which opaque directories "
                                 "need (tmpfs before Linux 6.6?): use --root on a disk-backed directory") from None
            raise
        finally:
            os.close(fd)
        self.opaque.add(path)

    # -- entries ----------------------------------------------------------------

    def count(self, size: int) -> None:
        self.entries += 1
        self.bytes += size
        if self.entries > self.limits.max_entries:
            raise ImageError(f"layer has more than {self.limits.max_entries} entries")
        if self.bytes > self.limits.max_bytes:  # checked at the header, before the data is read
            raise TooLarge(f"layer is larger than the limit of {self.limits.max_bytes} bytes")

    def member(self, member: Member, tar: TarReader) -> None:
        parts = split(member.name)
        self.entries += 1
        self.bytes += member.size
        if self.entries > self.limits.max_entries or self.bytes > self.limits.max_bytes:
            self.count(0)  # raises
        if not parts:
            return  # the layer's root: its mode is the overlay's business, not the archive's
        owner = None
        if member.uid or member.gid:
            if 0 <= member.uid <= self.owners and 0 <= member.gid <= self.owners:
                owner = (member.uid, member.gid)
            else:
                self.other_owners += 1
        base = parts[-1]
        if base.startswith(WHITEOUT):
            self.whiteout(parts)
            return
        kind = member.kind
        if kind == CHAR or kind == BLOCKDEV:
            self.skipped += 1
            return
        parent = self.parent(parts[:-1], member.name)
        if kind == FILE:
            self.regular(parent, base, parts, member, tar)
            if owner is not None:
                self.chown(parent, base, owner)
        elif kind == DIR:
            self.directory(parent, base, parts, member)
            if owner is not None:
                self.chown(parent, base, owner)
        elif kind == SYMLINK:
            try:
                os.symlink(member.linkname, base, dir_fd=parent)
            except FileExistsError:
                self.clear(parent, base, parts, False)
                os.symlink(member.linkname, base, dir_fd=parent)
            self.size += link_size(member.linkname)
            if owner is not None:
                self.chown(parent, base, owner)
            self.utime(parent, base, member.mtime)
        elif kind == HARDLINK:
            self.clear(parent, base, parts, False)
            self.hardlink(parent, base, member)
        elif kind == FIFO:
            try:
                os.mkfifo(base, member.mode & 0o777, dir_fd=parent)
            except FileExistsError:
                self.clear(parent, base, parts, False)
                os.mkfifo(base, member.mode & 0o777, dir_fd=parent)
            if owner is not None:
                self.chown(parent, base, owner)
            self.utime(parent, base, member.mtime)

    @staticmethod
    def chown(parent: int, name: str, owner: tuple[int, int]) -> None:
        """Never through a link; modes stay as set (chown clears setuid bits, which we drop anyway)."""
        os.chown(name, owner[0], owner[1], dir_fd=parent, follow_symlinks=False)

    @staticmethod
    def exists(parent: int, name: str) -> bool:
        try:
            os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return False
        return True

    def clear(self, parent: int, name: str, parts: tuple[str, ...], keep_dir: bool) -> bool:
        """Make room for a new entry; True if a whiteout of this layer was there."""
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            return False
        if parts in self.whiteouts:
            os.unlink(name, dir_fd=parent)
            self.whiteouts.discard(parts)
            return True
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return False
            self.forget_dirs(parts)
            self.size -= remove_tree_at(parent, name)
            below = len(parts)
            for path in [p for p in self.dirs if p[:below] == parts]:
                del self.dirs[path]
            self.whiteouts = {p for p in self.whiteouts if p[:below] != parts}
            self.opaque = {p for p in self.opaque if p[:below] != parts}
            return False
        os.unlink(name, dir_fd=parent)
        self.size -= st.st_size
        return False

    def directory(self, parent: int, name: str, parts: tuple[str, ...], member: Member) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)  # modes are applied by finish(): it must stay writable till then
        except FileExistsError:
            if self.clear(parent, name, parts, True):
                os.mkdir(name, 0o700, dir_fd=parent)
                self.set_opaque(parent, name, parts)  # replaced this layer's whiteout: hide what is below
            elif not self.exists(parent, name):
                os.mkdir(name, 0o700, dir_fd=parent)
        self.dirs[parts] = (member.mode & 0o1777, member.mtime)

    def regular(self, parent: int, name: str, parts: tuple[str, ...], member: Member, tar: TarReader) -> None:
        mode = member.mode & 0o1777  # never setuid/setgid
        try:
            fd = os.open(name, CREATE, mode, dir_fd=parent)
        except FileExistsError:  # never written through: what was there (a symlink, a link) goes first
            self.clear(parent, name, parts, False)
            fd = os.open(name, CREATE, mode, dir_fd=parent)
        try:
            left = member.size
            while left:
                chunk = tar.read(left)  # a small file: all of it, straight from the reader's buffer
                left -= len(chunk)
                written = os.write(fd, chunk)
                if written < len(chunk):
                    view = memoryview(chunk)[written:]
                    while view:
                        view = view[os.write(fd, view):]
            if mode & self.umask:
                os.fchmod(fd, mode)
            try:
                os.utime(fd, (member.mtime, member.mtime))
            except (OSError, OverflowError, ValueError):
                pass  # out-of-range times: keep the extraction time
        finally:
            os.close(fd)
        self.size += member.size

    def hardlink(self, parent: int, name: str, member: Member) -> None:
        target = split(member.linkname)
        if not target:
            raise ImageError(f"layer entry {member.name!r}: hard link to the root")
        if target in self.whiteouts:
            raise ImageError(f"layer entry {member.name!r}: hard link to a whiteout")
        try:
            source = linux.openat2(self.root, "/".join(target[:-1]) or ".", os.O_PATH | os.O_DIRECTORY, RESOLVE)
        except OSError:
            raise ImageError(f"layer entry {member.name!r}: hard link to {member.linkname!r}, "
                             "which is not in this layer") from None
        try:
            try:
                st = os.lstat(target[-1], dir_fd=source)
            except FileNotFoundError:
                raise ImageError(f"layer entry {member.name!r}: hard link to {member.linkname!r}, "
                                 "which is not in this layer") from None
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                raise ImageError(f"layer entry {member.name!r}: hard link to a directory or device")
            os.link(target[-1], name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            self.size += st.st_size
        finally:
            os.close(source)

    def whiteout(self, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        parent = self.parent(parts[:-1], "/".join(parts))
        if base == OPAQUE:
            if parts[:-1]:
                grand = self.parent(parts[:-2], "/".join(parts))
                self.set_opaque(grand, parts[-2], parts[:-1])
            # else: an opaque root hides nothing the layers below could add back; ignore
            return
        if base.startswith(WHITEOUT + WHITEOUT):
            return  # other aufs metadata (.wh..wh.plnk, ...): not content
        name = base[len(WHITEOUT):]
        if name in ("", ".", ".."):
            raise ImageError(f"layer entry {'/'.join(parts)!r}: bad whiteout")
        path = parts[:-1] + (name,)
        try:
            st = os.lstat(name, dir_fd=parent)
        except FileNotFoundError:
            os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=parent)
            self.whiteouts.add(path)
            return
        if stat.S_ISDIR(st.st_mode) and path not in self.opaque:
            self.set_opaque(parent, name, path)  # same-layer dir: keep it, hide what is below

    @staticmethod
    def utime(where: int, name: str | None, mtime: int) -> None:
        try:
            if name is None:
                os.utime(where, (mtime, mtime))
            else:
                os.utime(name, (mtime, mtime), dir_fd=where, follow_symlinks=False)
        except (OSError, OverflowError, ValueError):
            pass  # out-of-range times: keep the extraction time

    def finish(self) -> None:
        """Directory modes and times, deepest first (so parents stay writable until then)."""
        self.forget_dirs(())
        for path in sorted(self.dirs, key=len, reverse=True):
            mode, mtime = self.dirs[path]
            fd = linux.openat2(self.root, "/".join(path), os.O_RDONLY | os.O_DIRECTORY, RESOLVE)
            try:
                os.fchmod(fd, mode)
                if mtime >= 0:
                    self.utime(fd, None, mtime)
            finally:
                os.close(fd)

    def stats(self) -> Stats:
        return Stats(self.entries, self.bytes, self.skipped, len(self.whiteouts), len(self.opaque), self.size,
                     self.other_owners)


def extract(tar: TarReader, dest: str, limits: Limits = Limits(), owners: int = 0) -> Stats:
    """Extract every member of `tar` into the empty directory `dest`; `owners`: keep owners up to this id."""
    ex = Extractor(dest, limits, owners)
    try:
        while (member := tar.next()) is not None:
            try:
                ex.member(member, tar)
            except OSError as exc:
                raise ImageError(f"layer entry {member.name[:200]!r}: {exc.strerror}") from None
        ex.finish()
        return ex.stats()
    finally:
        ex.close()


def tree_bytes(path: str) -> int:
    """Apparent bytes of everything but directories under `path`, never following a symlink: what an
    extraction's Stats.size says of the layer it made (so stored and new layers are measured alike)."""
    total = 0
    stack = [path]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue  # a directory the layer made unreadable
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    pass
    return total


def remove_tree_at(parent: int, name: str) -> int:
    """rm -rf parent/name: never follows a symlink, makes read-only directories writable first.

    Iterative (a layer may nest thousands of directories deep), one open fd at a time.  Returns the
    apparent bytes of the non-directories removed (as tree_bytes() counts them).
    """
    try:
        st = os.lstat(name, dir_fd=parent)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return st.st_size
    freed = 0
    top = _open_writable(parent, name)
    try:
        stack: list[tuple[str, ...]] = [()]
        while stack:
            rel = stack[-1]
            fd = linux.openat2(top, "/".join(rel) or ".", os.O_RDONLY | os.O_DIRECTORY, RESOLVE)
            try:
                subdirs = []
                for entry in os.listdir(fd):
                    st = os.lstat(entry, dir_fd=fd)
                    if stat.S_ISDIR(st.st_mode):
                        os.close(_open_writable(fd, entry))
                        subdirs.append(entry)
                    else:
                        os.unlink(entry, dir_fd=fd)
                        freed += st.st_size
                if subdirs:
                    stack.extend(rel + (entry,) for entry in subdirs)
                    continue
            finally:
                os.close(fd)
            stack.pop()
            if rel:
                up = linux.openat2(top, "/".join(rel[:-1]) or ".", os.O_PATH | os.O_DIRECTORY, RESOLVE)
                try:
                    os.rmdir(rel[-1], dir_fd=up)
                finally:
                    os.close(up)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=parent)
    return freed


def _open_writable(parent: int, name: str) -> int:
    """An fd of directory parent/name after giving its owner rwx on it."""
    fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) & 0o700 != 0o700:
            os.chmod(f"/proc/self/fd/{fd}", 0o700)
        return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def remove_tree(path: str) -> None:
    head, tail = os.path.split(path.rstrip("/"))
    fd = os.open(head or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        remove_tree_at(fd, tail)
    finally:
        os.close(fd)
