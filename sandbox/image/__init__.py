"""Images: a local store of extracted layers, OCI/docker imports, registry pulls.

The run path needs only `resolve()`, which reads one small record (no json,
no hashlib) and returns what `sbx run --image` stacks and applies:

    info = image.resolve("busybox")           # docker.io/library/busybox:latest
    lowerdir = ":".join(info.layer_dirs)      # top layer first
    argv = info.command(user_argv)            # Entrypoint + (argv or Cmd)
    ...                                       # keep info.lock_fd open while the sandbox runs

Modules: `ref` (references), `store` (layout, locks, records), `tar` and
`extract` (hostile-input-safe layer extraction), `blob` (digests,
decompression), `source` and `oci` (import), `pull` (registries), `build`,
`copy` and `containerfile` (`sbx image build`), `commit` (kept writable
layers), `layout` (writing OCI layouts).  `sbx image ...` is cli/image.py.
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass
from .errors import ImageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .store import Store

__all__ = ["ImageError", "ImageInfo", "resolve", "find"]


@dataclass(frozen=True)
class ImageInfo:
    """What a run needs from an image.

    `layer_dirs` are absolute paths, top layer first (the order of overlay's
    lowerdir).  `env` holds (NAME, VALUE) pairs in the image's order.  `lock_fd`
    is an O_CLOEXEC fd holding the store's shared use lock: keep it open until
    the sandbox has exited (so `sbx image prune` cannot remove a layer under
    it), then close it; -1 when resolved with hold=False.
    """

    name: str
    id: str
    layer_dirs: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    workdir: str = "/"
    user: str = ""
    lock_fd: int = -1
    ranges: bool = False  # its files keep their owners: runs map the caller's id ranges (idmap.py)

    def command(self, argv: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """docker's rule: Entrypoint + the given command, or Entrypoint + Cmd when none is given."""
        return (*self.entrypoint, *(argv if argv else self.cmd))


def _strings(value: object) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


def find(store: Store, text: str) -> dict[str, object]:
    """The record for a name (`busybox`, `localhost:5000/app:1`) or an image id (`sha256:...` or a hex prefix)."""
    from . import ref

    try:
        name = str(ref.parse(text))
    except ImageError:
        name = None
    if name is not None:
        record = store.read_image(name)
        if record is not None:
            return record
    hex_part = text.removeprefix("sha256:")
    if len(hex_part) >= 4 and set(hex_part) <= set("0123456789abcdef"):
        hits = {str(r["id"]): r for r in store.all_images() if str(r.get("id", "")).startswith("sha256:" + hex_part)}
        if len(hits) == 1:
            return next(iter(hits.values()))
        if len(hits) > 1:
            raise ImageError(f"image id {text!r} is ambiguous")
    if name is None:
        ref.parse(text)  # raises the reference error
    raise ImageError(f"image {text!r} not found in {store.root} (see 'sbx image ls', 'sbx image import')")


def resolve(name: str, root: str | None = None, hold: bool = True,
            environ: Mapping[str, str] | None = None) -> ImageInfo:
    """The image `name` from the store at `root` (default: $SBX_ROOT, else $XDG_DATA_HOME/sbx, as
    `environ` says; default: this process's environment)."""
    from .store import Store

    store = Store(root, create=False, environ=environ)
    if not os.path.isdir(store.images):
        raise ImageError(f"image {name!r} not found: no image store at {store.root} (see 'sbx image import')")
    lock_fd = store.hold() if hold else -1
    try:
        with store.lock(False):
            record = find(store, name)
            layers = record.get("layers")
            if not isinstance(layers, list) or not all(isinstance(layer, str) for layer in layers):
                raise ImageError(f"image {name!r}: corrupt record")
            dirs = tuple(store.layer_path(layer) for layer in reversed(layers))
            for path in dirs:
                if not os.path.isdir(path):
                    raise ImageError(f"image {name!r}: layer {os.path.basename(path)[:12]} is missing from the "
                                     "store; import the image again")
        config = record.get("config")
        config = config if isinstance(config, dict) else {}
        env = []
        for item in _strings(config.get("Env")):
            key, _, value = item.partition("=")
            if key:
                env.append((key, value))
        workdir = config.get("WorkingDir")
        user = config.get("User")
        return ImageInfo(
            name=str(record.get("name")),
            id=str(record.get("id")),
            layer_dirs=dirs,
            env=tuple(env),
            cmd=_strings(config.get("Cmd")),
            entrypoint=_strings(config.get("Entrypoint")),
            workdir="/" + workdir.lstrip("/") if isinstance(workdir, str) else "/",
            user=user if isinstance(user, str) else "",
            lock_fd=lock_fd,
            ranges=record.get("ownership") == "ranges",
        )
    except BaseException:
        if lock_fd >= 0:
            os.close(lock_fd)
        raise
