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

from .. import linux
from ..errors import SbxError, UsageError
from .errors import ImageError
from .extract import OPAQUE, OPAQUE_XATTR, RESOLVE, WHITEOUT, remove_tree
from .store import Record, Store, check_digest, tree_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..result import Result
    from ..spec import Spec

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


# -- the kept upper --------------------------------------------------------------------

def new_upper(store: Store) -> str:
    """A scratch directory in the store (a real file system: an overlay's upper cannot be on an overlay)."""
    path = store.new_temp("upper-")
    os.mkdir(os.path.join(path, "upper"), 0o755)
    os.chmod(os.path.join(path, "upper"), 0o755)  # not narrowed by the umask: it is the layer's root
    os.mkdir(os.path.join(path, "work"), 0o700)
    return path


def save_layer(store: Store, layer: str, limit: int | None = None) -> tuple[str, int] | None:
    """Normalize directory `layer`, move it into the store; (diff_id, bytes), or None when it is empty.

    `limit`: the most data bytes the layer may hold (the run's --disk); past it, an error and no layer.
    """
    root = os.open(layer, DIR_FLAGS)
    try:
        digest, entries, size = normalize(root)
    finally:
        os.close(root)
    if limit is not None and size > limit:
        raise ImageError(f"the writable layer holds {size} bytes, more than the {limit} bytes --disk allows")
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


def normalize(root: int) -> tuple[str, int, int]:
    """Normalize the tree under directory fd `root` in place; (sha256 hex of its canonical tar, entries, data bytes)."""
    out = _Digest()
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]
    entries = data = 0
    links: dict[tuple[int, int], str] = {}
    # (path, remaining names, mode and mtime to set when done); one directory fd open at a time.
    stack: list[tuple[tuple[str, ...], list[str], int, int]] = [((), _sorted(root), -1, 0)]
    cur = os.dup(root)
    try:
        while stack:
            parts, names, mode, mtime_ns = stack[-1]
            if not names:
                stack.pop()
                if mode >= 0:  # deepest first, after its entries: the owner could read it until now
                    os.fchmod(cur, mode)
                    os.utime(cur, ns=(mtime_ns, mtime_ns))
                os.close(cur)
                cur = -1
                if stack:
                    cur = linux.openat2(root, "/".join(stack[-1][0]) or ".", DIR_FLAGS, RESOLVE)
                continue
            name = names.pop()
            path = "/".join((*parts, name))
            st = os.lstat(name, dir_fd=cur)
            info = tarfile.TarInfo(path)
            info.mtime = int(st.st_mtime)
            info.mode = stat.S_IMODE(st.st_mode) & 0o1777
            entries += 1
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
                stack.append(((*parts, name), names_below, info.mode, st.st_mtime_ns))
            elif stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                tar.addfile(_marker("/".join((*parts, WHITEOUT + name))))
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info.type, info.linkname = tarfile.LNKTYPE, links[key]
                    tar.addfile(info)
                    continue
                links[key] = path
                fd = _open_path(cur, name, os.O_RDONLY | os.O_NONBLOCK)
                try:
                    if not stat.S_ISREG(os.fstat(fd).st_mode):
                        raise ImageError(f"{path}: changed while being read")
                    _strip_xattrs(fd, path)
                    os.fchmod(fd, info.mode)  # no setuid/setgid, and the mode back if _open_path widened it
                    info.size = st.st_size
                    with os.fdopen(fd, "rb", closefd=False) as file:
                        tar.addfile(info, file)
                finally:
                    os.close(fd)
                data += st.st_size
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.mode = tarfile.SYMTYPE, 0o777
                info.linkname = os.readlink(name, dir_fd=cur)
                tar.addfile(info)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:  # sockets and devices: an imported layer cannot hold them either
                os.unlink(name, dir_fd=cur)
                entries -= 1
        tar.close()
    except OSError as exc:
        raise ImageError(f"cannot read the writable layer: {exc.strerror or exc}") from None
    finally:
        if cur >= 0:
            os.close(cur)
    return out.hash.hexdigest(), entries, data


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

def run(spec: Spec, name: str, root: str | None, run_spec: Callable[[Spec], Result]) -> Result:
    """Run `spec` keeping its writable layer, then save the image's layers plus that one as `name`."""
    from ..frozen import replace
    from . import find, ref

    try:
        target = str(ref.parse(name))
    except ImageError as exc:
        raise UsageError(f"--commit: {exc}") from None
    if not spec.layers:
        raise UsageError("--commit needs --image: the host image has no single root layer to save")
    store = Store(root)
    with store.lock(False):
        base = find(store, spec.image)
    layers = ["sha256:" + os.path.basename(path) for path in reversed(spec.layers)]  # what ran, base first
    for diff_id in layers:
        check_digest(diff_id)
    hold = store.hold()
    scratch = new_upper(store)
    try:
        result = run_spec(replace(spec, upper=scratch))
        if result.verdict == "XX":
            return result  # the sandbox was never set up (or died): nothing of the run's to save
        saved = save_layer(store, os.path.join(scratch, "upper"), spec.disk)
        if saved is not None:
            layers.append(saved[0])
        config = base.get("config")
        record = image_record(target, layers, dict(config) if isinstance(config, dict) else {}, base, store)
        write_record(store, record)
    except OSError as exc:
        raise SbxError(f"--commit: {exc.strerror or exc}") from None
    finally:
        remove_tree(scratch)
        os.close(hold)
    import sys

    from .cli import short_name

    sys.stderr.write(f"sbx: saved image {short_name(target)} ({str(record['id'])[7:19]})\n")
    return result
