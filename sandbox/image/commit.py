"""A kept writable layer -> a layer in the store: `sbx run --commit` and each build step.

The upper dir an overlay leaves behind (see `Spec.upper`) is sandboxed code's
work: it may hold symlinks anywhere, hard links, FIFOs, setuid bits, user
xattrs, unreadable modes.  It is walked with directory fds from the top
(openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS, O_NOFOLLOW), never by path,
and normalized in place into the form `extract` gives an imported layer:

- setuid/setgid bits dropped, every xattr removed (the archive form has none)
  except `user.overlay.opaque=y` on opaque directories;
- whiteouts stay 0/0 character devices; other devices and sockets go.

Its diff_id is the sha256 of a canonical tar of the result (sorted, owner
0/0, whiteouts as `.wh.NAME`, opaque directories with `.wh..wh..opq`), so
equal trees get equal ids and `sbx image inspect` names real content.
The directory is then renamed into the store as the layer.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
import time

from ..errors import SbxError, UsageError
from ..kernel import linux
from ..model.frozen import dataclass
from .errors import ImageError
from .extract import OPAQUE, OPAQUE_XATTR, RESOLVE, WHITEOUT, remove_tree, size_text
from .store import Record, Store, check_digest, tree_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..model.result import Result
    from ..model.spec import Spec

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FULL_MARGIN = 64 * 1024  # free bytes on the --disk tmpfs below which the run counts as having filled it
SENDFILE_CHUNK = 1 << 30
FULL = "the run filled its writable layer (--disk {}): its writes past that failed"
UNBOUNDED = ("this kernel's tmpfs has no user xattrs (Linux 6.6+): the writable layer was on the host's disk "
             "while the run wrote, and --disk was checked only after it")


# -- the kept upper --------------------------------------------------------------------

def new_upper(store: Store) -> str:
    """A scratch directory in the store (a real file system: an overlay's upper cannot be on an overlay)."""
    path = store.new_temp("upper-")
    os.mkdir(os.path.join(path, "upper"), 0o755)
    os.chmod(os.path.join(path, "upper"), 0o755)  # not narrowed by the umask: it is the layer's root
    os.mkdir(os.path.join(path, "work"), 0o700)
    return path


class Kept:
    """One run's kept writable layer, from before the run until it is in the store.

    The sandbox keeps the layer on its --disk tmpfs (runtime/rootfs/plan.kept_upper), so the
    run cannot write more than --disk; init sends the layer directory's fd over a socket this end holds,
    and that fd keeps the tmpfs alive after the sandbox is gone.  `scratch` (new_upper) is
    where the layer is copied as it is normalized, or, on a kernel whose tmpfs lacks user
    xattrs, the host directory the sandbox writes the layer to (`bounded` is then False).
    """

    def __init__(self, store: Store) -> None:
        import socket

        self.store = store
        self.scratch = new_upper(store)
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.theirs = theirs.detach()
        self.fd = -1
        self.bounded = True

    def spec(self, spec: Spec) -> Spec:
        from ..model.frozen import replace

        return replace(spec, upper=self.scratch, upper_sock=self.theirs)

    def collect(self) -> None:
        """After the run: take the layer's fd, if the sandbox sent one."""
        self._close_theirs()
        if self.fd < 0:
            self.fd = self._received()
            self.bounded = self.fd >= 0

    def full(self) -> bool:
        """Whether the run filled --disk (its writes past that failed with ENOSPC)."""
        self.collect()
        if self.fd < 0:
            return False
        st = os.fstatvfs(self.fd)
        return st.f_bavail * st.f_frsize < FULL_MARGIN or st.f_favail == 0

    def save(self, limit: int | None) -> tuple[str, int] | None:
        """After the run: its layer into the store; (diff_id, bytes), or None when it is empty."""
        self.collect()
        return save_layer(self.store, self.scratch, limit, self.fd)

    def close(self) -> None:
        self._close_theirs()
        if self.fd >= 0:
            os.close(self.fd)  # the last reference to the sandbox's tmpfs: its memory goes back
            self.fd = -1
        self.sock.close()
        remove_tree(self.scratch)

    def _close_theirs(self) -> None:
        if self.theirs >= 0:
            os.close(self.theirs)
            self.theirs = -1

    def _received(self) -> int:
        """The directory fd init sent, or -1 when it sent none (the layer is in `scratch`)."""
        from ..runtime.protocol import receive_kept_layer

        try:
            return receive_kept_layer(self.sock)
        except ValueError:
            raise ImageError("the sandbox handed over its writable layer wrongly") from None


def save_layer(store: Store, scratch: str, limit: int | None = None, kept: int = -1) -> tuple[str, int] | None:
    """Normalize a run's writable layer, move it into the store; (diff_id, bytes), or None when it is empty.

    The layer is the directory fd `kept` (on the sandbox's tmpfs), copied to `scratch`/upper
    as it is normalized, or else `scratch`/upper itself.  `limit`: the most data bytes the layer
    may hold (the run's --disk); past it, an error and no layer.
    """
    layer = os.path.join(scratch, "upper")
    root = os.open(layer, DIR_FLAGS)
    try:
        if kept >= 0:
            digest, entries, size = normalize(kept, root, limit)
        else:
            digest, entries, size = normalize(root, limit=limit)
    finally:
        os.close(root)
    if not entries:
        return None
    diff_id = "sha256:" + digest
    with store.lock(True):
        store.commit_layer(layer, diff_id)
    return diff_id, tree_size(store.layer_path(diff_id))


# -- normalizing and digesting ---------------------------------------------------------

class _Digest:
    """A write-only file for tarfile: the stream's sha256, nothing stored."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return len(data)


def _sorted(fd: int) -> list[str]:
    """Entries of a directory, last first (popped in byte order)."""
    return sorted(os.listdir(fd), key=os.fsencode, reverse=True)


def _open_path(parent: int, name: str, flags: int) -> int:
    """Open parent/name without following a link; give the owner access first if its mode denies it."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except PermissionError:
        pass
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        mode = stat.S_IMODE(os.fstat(path_fd).st_mode)
        os.chmod(f"/proc/self/fd/{path_fd}", mode | 0o700)  # the final mode is set once it is read
        return os.open(f"/proc/self/fd/{path_fd}", (flags & ~os.O_NOFOLLOW) | os.O_CLOEXEC)  # this very inode
    finally:
        os.close(path_fd)


def _strip_xattrs(fd: int, what: str) -> bool:
    """Remove every xattr of an open file or directory; True if it was an opaque overlay directory."""
    opaque = False
    try:
        for key in os.listxattr(fd):
            if key == OPAQUE_XATTR:
                opaque = os.getxattr(fd, key) == b"y"
            os.removexattr(fd, key)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise ImageError(f"{what}: cannot remove its extended attributes: {exc.strerror}") from None
    return opaque


def normalize(root: int, dest: int = -1, limit: int | None = None) -> tuple[str, int, int]:
    """Normalize the tree under directory fd `root` in place; (sha256 hex of its canonical tar, entries, data bytes).

    `dest`: an empty directory fd that gets a copy of the result (owners that are not ours
    kept, hard links kept).  `limit`: an ImageError as soon as the data bytes pass it, before
    they are read (a sparse file may claim any size).
    """
    out = _Digest()
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
    entries = data = 0
    links: dict[tuple[int, int], str] = {}
    me = (os.geteuid(), os.getegid())
    finished: list[tuple[str, os.stat_result]] = []  # dest's directories, deepest first
    # (path, remaining names, the directory's stat to set when done); one directory fd open at a time.
    stack: list[tuple[tuple[str, ...], list[str], os.stat_result | None]] = [((), _sorted(root), None)]
    cur = os.dup(root)
    dcur = -1 if dest < 0 else os.dup(dest)
    try:
        while stack:
            parts, names, done = stack[-1]
            if not names:
                stack.pop()
                if done is not None:  # deepest first, after its entries: the owner could read it until now
                    os.fchmod(cur, stat.S_IMODE(done.st_mode) & 0o1777)
                    os.utime(cur, ns=(done.st_mtime_ns, done.st_mtime_ns))
                    finished.append(("/".join(parts), done))
                for fd in (cur, dcur):
                    if fd >= 0:
                        os.close(fd)
                cur = dcur = -1
                if stack:
                    above = "/".join(stack[-1][0]) or "."
                    cur = linux.openat2(root, above, DIR_FLAGS, RESOLVE)
                    if dest >= 0:
                        dcur = linux.openat2(dest, above, DIR_FLAGS, RESOLVE)
                continue
            name = names.pop()
            path = "/".join((*parts, name))
            st = os.lstat(name, dir_fd=cur)
            info = tarfile.TarInfo(path)
            info.mtime = int(st.st_mtime)
            info.mode = stat.S_IMODE(st.st_mode) & 0o1777
            entries += 1
            made = True  # whether dest got an entry whose owner and mtime are to be copied
            if stat.S_ISDIR(st.st_mode):
                sub = _open_path(cur, name, DIR_FLAGS)
                opaque = _strip_xattrs(sub, path)
                if opaque:
                    os.setxattr(sub, OPAQUE_XATTR, b"y")
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                if opaque:
                    tar.addfile(_marker(f"{path}/{OPAQUE}"))
                names_below = _sorted(sub)
                os.close(cur)
                cur = sub
                if dcur >= 0:
                    os.mkdir(name, 0o700, dir_fd=dcur)
                    _own(dcur, name, st, me)
                    dsub = os.open(name, DIR_FLAGS, dir_fd=dcur)
                    os.close(dcur)
                    dcur = dsub
                    if opaque:
                        os.setxattr(dcur, OPAQUE_XATTR, b"y")
                stack.append(((*parts, name), names_below, st))
                continue  # its mode and mtime are set once its entries are done
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                tar.addfile(_marker("/".join((*parts, WHITEOUT + name))))
                if dcur >= 0:
                    os.mknod(name, stat.S_IFCHR, 0, dir_fd=dcur)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info.type, info.linkname = tarfile.LNKTYPE, links[key]
                    tar.addfile(info)
                    if dcur >= 0:
                        os.link(links[key], path, src_dir_fd=dest, dst_dir_fd=dest, follow_symlinks=False)
                    continue
                links[key] = path
                data += st.st_size
                if limit is not None and data > limit:
                    raise ImageError(f"the writable layer holds more than the {size_text(limit)} --disk allows")
                fd = _open_path(cur, name, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise ImageError(f"{path}: changed while being read")
                    _strip_xattrs(fd, path)
                    os.fchmod(fd, info.mode)  # no setuid/setgid, and the mode back if _open_path widened it
                    info.size = st.st_size
                    with os.fdopen(fd, "rb", closefd=False) as file:
                        tar.addfile(info, file)
                    if dcur >= 0:
                        _copy_file(fd, dcur, name, info.mode, st.st_size)
                finally:
                    os.close(fd)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.mode = tarfile.SYMTYPE, 0o777
                info.linkname = os.readlink(name, dir_fd=cur)
                tar.addfile(info)
                if dcur >= 0:
                    os.symlink(info.linkname, name, dir_fd=dcur)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
                if dcur >= 0:
                    os.mkfifo(name, info.mode, dir_fd=dcur)
                    os.chmod(name, info.mode, dir_fd=dcur)  # not narrowed by the umask
            else:  # sockets and devices: an imported layer cannot hold them either
                os.unlink(name, dir_fd=cur)
                entries -= 1
                made = False
            if made and dcur >= 0:
                _own(dcur, name, st, me)
                os.utime(name, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=dcur, follow_symlinks=False)
        tar.close()
        if dest >= 0:  # only now: a later hard link may need to pass through any of them
            for where, done in finished:
                fd = linux.openat2(dest, where, DIR_FLAGS, RESOLVE)
                try:
                    os.fchmod(fd, stat.S_IMODE(done.st_mode) & 0o1777)
                    os.utime(fd, ns=(done.st_mtime_ns, done.st_mtime_ns))
                finally:
                    os.close(fd)
    except OSError as exc:
        raise ImageError(f"cannot read the writable layer: {exc.strerror or exc}") from None
    finally:
        for fd in (cur, dcur):
            if fd >= 0:
                os.close(fd)
    return out.hash.hexdigest(), entries, data


def _own(parent: int, name: str, st: os.stat_result, me: tuple[int, int]) -> None:
    """Give a copied entry its original's owner, where that is not us (a ranged layer's other ids)."""
    if (st.st_uid, st.st_gid) != me:
        os.chown(name, st.st_uid, st.st_gid, dir_fd=parent, follow_symlinks=False)


def _copy_file(src: int, parent: int, name: str, mode: int, size: int) -> None:
    """A new file `name` in `parent` with the bytes of the open file `src`."""
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        offset = 0
        while offset < size:
            sent = os.sendfile(out, src, offset, min(size - offset, SENDFILE_CHUNK))
            if sent == 0:
                raise ImageError(f"{name}: changed while being read")
            offset += sent
        os.fchmod(out, mode)
    finally:
        os.close(out)


def _marker(path: str) -> tarfile.TarInfo:
    """An empty entry standing for a whiteout or an opaque directory (the OCI form)."""
    info = tarfile.TarInfo(path)
    info.mode = 0
    return info


# -- image records ---------------------------------------------------------------------

def image_record(name: str, layers: list[str], config: dict[str, object], base: Record | None,
                 store: Store) -> Record:
    """A record for a built or committed image; its id is a digest of its layers and config only."""
    import json

    platform = {key: (base or {}).get(key) for key in ("os", "architecture", "variant")}
    if not platform["os"]:
        from .oci import host_platform

        here = host_platform()
        platform = {"os": here.os, "architecture": here.architecture, "variant": here.variant}
    image = {**platform, "config": config, "rootfs": {"type": "layers", "diff_ids": layers}}
    config_json = json.dumps(image, sort_keys=True, separators=(",", ":")).encode()
    return {
        "schema": 1,
        "name": name,
        "id": "sha256:" + hashlib.sha256(config_json).hexdigest(),
        "digest": None,
        "layers": list(layers),
        "config": config,
        "os": str(platform["os"] or ""),
        "architecture": str(platform["architecture"] or ""),
        "variant": platform["variant"] or None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size": sum(tree_size(store.layer_path(layer)) for layer in layers),
        "imported": int(time.time()),
    }


def write_record(store: Store, record: Record) -> None:
    with store.lock(True):
        layers = record["layers"]
        assert isinstance(layers, list)
        if not all(store.has_layer(str(layer)) for layer in layers):
            raise ImageError("a layer vanished from the store while the image was made")
        store.write_image(record)


# -- sbx run --commit ------------------------------------------------------------------

@dataclass(frozen=True)
class Committed:
    """What `sbx run --commit` did: the run's result, the image it saved (None when the
    sandbox was never set up, so nothing of the run's was saved) and warnings for the caller."""

    result: Result
    image: str | None = None  # the full reference, docker.io/library/NAME:TAG
    id: str = ""  # sha256:HEX
    warnings: tuple[str, ...] = ()


def run_and_commit(spec: Spec, name: str, root: str | None, run_spec: Callable[[Spec], Result],
                   environ: Mapping[str, str] | None = None) -> Committed:
    """Run `spec` keeping its writable layer, then save the image's layers plus that one as `name`
    in the store at `root` (default: the one `environ` names)."""
    from . import find, ref

    try:
        target = str(ref.parse(name))
    except ImageError as exc:
        raise UsageError(f"--commit: {exc}") from None
    if not spec.layers:
        raise UsageError("--commit needs --image: the host image has no single root layer to save")
    store = Store(root, environ=environ)
    with store.lock(False):
        base = find(store, spec.image)
    layers = ["sha256:" + os.path.basename(path) for path in reversed(spec.layers)]  # what ran, base first
    for diff_id in layers:
        check_digest(diff_id)
    warnings: list[str] = []
    hold = store.hold()
    kept = Kept(store)
    try:
        result = run_spec(kept.spec(spec))
        if result.verdict == "XX":
            return Committed(result)  # the sandbox was never set up (or died): nothing of the run's to save
        if kept.full():
            warnings.append(FULL.format(size_text(spec.disk)))
        saved = kept.save(spec.disk)
        if not kept.bounded:
            warnings.append(UNBOUNDED)
        if saved is not None:
            layers.append(saved[0])
        config = base.get("config")
        record = image_record(target, layers, dict(config) if isinstance(config, dict) else {}, base, store)
        write_record(store, record)
    except OSError as exc:
        raise SbxError(f"--commit: {exc.strerror or exc}") from None
    finally:
        kept.close()
        os.close(hold)
    return Committed(result, target, str(record["id"]), tuple(warnings))
