"""The image store: extracted layers shared by digest, images as small JSON records.

    ROOT/                      $SBX_ROOT, else $XDG_DATA_HOME/sbx (~/.local/share/sbx)
      lock                     flock: shared to read records, exclusive to change them
      use.lock                 flock: shared by runs and imports for their whole life,
                               exclusive by prune (so it never removes a layer in use)
      layers/sha256/HEX/       one extracted layer, keyed by its diff_id (digest of the
                               uncompressed tar), used as an overlay lower dir as is
      images/NAME.json         one image: ordered diff_ids (base first) and its config
      images/NAME.run          the same record in `marshal` form: `resolve()` reads it
                               on the run path without importing json (~8 ms)
      tmp/                     imports, builds and commits in progress; prune empties it
      cache/build/KEY          `sbx image build`'s cache: a step's key -> the layer it made

NAME is the full reference (docker.io/library/busybox:latest) with '/'
written as '%' (which no reference contains).  Locks are always taken in
the order use.lock, lock, so they cannot deadlock.  Records are written to a
temporary file and renamed, so a reader sees the old or the new one whole.
"""

from __future__ import annotations

import errno
import fcntl
import marshal
import os

from .errors import ImageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from contextlib import AbstractContextManager

Record = dict[str, object]
HEX = frozenset("0123456789abcdef")
SCHEMA = 1


def default_root(environ: Mapping[str, str] | None = None) -> str:
    """$SBX_ROOT, else $XDG_DATA_HOME/sbx, else ~/.local/share/sbx, in `environ` (default: os.environ)."""
    env = os.environ if environ is None else environ
    if env.get("SBX_ROOT"):
        return os.path.abspath(env["SBX_ROOT"])
    data = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "share")
    return os.path.join(os.path.abspath(data), "sbx")


def check_digest(digest: str) -> str:
    """The hex part of a sha256 digest, or ImageError."""
    algorithm, _, value = digest.partition(":")
    if algorithm != "sha256" or len(value) != 64 or not set(value) <= HEX:
        raise ImageError(f"bad digest {digest[:80]!r} (expected sha256:<64 hex digits>)")
    return value


def encode_name(name: str) -> str:
    if not name or "%" in name or "\0" in name or name.startswith("."):
        raise ImageError(f"bad image name {name!r}")
    encoded = name.replace("/", "%")
    if len(encoded) > 240:
        raise ImageError(f"image name {name[:60]!r}... is too long for the store")
    return encoded


class _Flock:
    def __init__(self, path: str, exclusive: bool, wait_note: str | None = None) -> None:
        self.path = path
        self.exclusive = exclusive
        self.wait_note = wait_note
        self.fd = -1

    def __enter__(self) -> int:
        self.fd = lock_file(self.path, self.exclusive, self.wait_note)
        return self.fd

    def __exit__(self, *_exc: object) -> None:
        os.close(self.fd)


def lock_file(path: str, exclusive: bool, wait_note: str | None = None) -> int:
    """An O_CLOEXEC fd holding a flock on `path` (created if missing)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        how = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait_note:
                import sys

                sys.stderr.write(f"sbx: {wait_note}\n")
            fcntl.flock(fd, how)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Store:
    def __init__(self, root: str | None = None, create: bool = True, environ: Mapping[str, str] | None = None) -> None:
        """The store at `root`, else where `environ` (default: this process's) says: default_root()."""
        self.root = os.path.abspath(root if root is not None else default_root(environ))
        self.layers = os.path.join(self.root, "layers", "sha256")
        self.images = os.path.join(self.root, "images")
        self.tmp = os.path.join(self.root, "tmp")
        self.cache = os.path.join(self.root, "cache", "build")  # made by the first build
        if create:
            self.create()

    def create(self) -> None:
        try:
            os.makedirs(self.root, 0o700, exist_ok=True)
            for path in (os.path.dirname(self.layers), self.layers, self.images, self.tmp):
                try:
                    os.mkdir(path, 0o700)
                except FileExistsError:
                    pass
        except OSError as exc:
            raise ImageError(f"cannot create the image store {self.root}: {exc.strerror}") from None

    # -- locks -------------------------------------------------------------------

    def lock(self, exclusive: bool) -> AbstractContextManager[int]:
        """The record lock, held briefly."""
        return _Flock(os.path.join(self.root, "lock"), exclusive)

    def hold(self) -> int:
        """A shared use lock, for a run or an import: keep the fd open while the layers are in use."""
        return lock_file(os.path.join(self.root, "use.lock"), False)

    def exclusive_use(self) -> AbstractContextManager[int]:
        return _Flock(os.path.join(self.root, "use.lock"), True,
                      "waiting for running sandboxes and imports to finish...")

    # -- layers ------------------------------------------------------------------

    def layer_path(self, diff_id: str) -> str:
        return os.path.join(self.layers, check_digest(diff_id))

    def has_layer(self, diff_id: str) -> bool:
        return os.path.isdir(self.layer_path(diff_id))

    def new_temp(self, prefix: str) -> str:
        import tempfile

        return tempfile.mkdtemp(prefix=prefix, dir=self.tmp)

    def commit_layer(self, extracted: str, diff_id: str) -> None:
        """Move an extracted layer into place (read-only root); a concurrent import may have won."""
        from .extract import remove_tree

        final = self.layer_path(diff_id)
        try:
            os.rename(extracted, final)  # before the chmod: moving a directory needs write access to it
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            remove_tree(extracted)
            return
        os.chmod(final, 0o555)

    def layer_names(self) -> list[str]:
        return ["sha256:" + name for name in os.listdir(self.layers) if len(name) == 64 and set(name) <= HEX]

    # -- image records -----------------------------------------------------------

    def record_path(self, name: str, suffix: str = ".json") -> str:
        return os.path.join(self.images, encode_name(name) + suffix)

    def write_image(self, record: Record) -> None:
        """Write (or replace) a record; the caller holds the exclusive record lock."""
        import json

        from ..kernel import idmap

        # "ranges": written in a ranged user namespace (idmap.py), so its layers may hold other ids'
        # files and runs must map the same ranges; else what the record says ("caller" if nothing).
        ranged = os.geteuid() == 0 and idmap.inside_count() > 0
        record = {**record, "ownership": "ranges" if ranged else record.get("ownership", "caller")}
        name = str(record["name"])
        for suffix, data in ((".json", (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()),
                             (".run", marshal.dumps(record))):
            path = self.record_path(name, suffix)
            temp = f"{path}.{os.getpid()}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, path)

    def read_image(self, name: str) -> Record | None:
        """The record of `name` (a full reference), or None."""
        try:
            with open(self.record_path(name, ".run"), "rb") as file:
                record = marshal.load(file)
            if isinstance(record, dict) and record.get("schema") == SCHEMA:
                return record
        except (OSError, ValueError, EOFError, TypeError):
            pass
        return self._read_json(self.record_path(name))

    @staticmethod
    def _read_json(path: str) -> Record | None:
        import json

        try:
            with open(path, "rb") as file:
                record = json.load(file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ImageError(f"corrupt image record {path}: {exc}") from None
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            raise ImageError(f"corrupt image record {path}: unknown format")
        return record

    def all_images(self) -> Iterator[Record]:
        for entry in sorted(os.listdir(self.images)):
            if entry.endswith(".json") and not entry.startswith("."):
                record = self._read_json(os.path.join(self.images, entry))
                if record is not None:
                    yield record

    def remove_image(self, name: str) -> bool:
        """Forget one name; its layers stay until prune.  The caller holds the exclusive record lock."""
        found = False
        for suffix in (".json", ".run"):
            try:
                os.unlink(self.record_path(name, suffix))
                found = True
            except FileNotFoundError:
                pass
        return found

    def prune(self) -> tuple[list[str], int]:
        """Remove layers no image uses and leftovers of failed imports: (removed diff_ids, bytes freed)."""
        from .extract import remove_tree

        with self.exclusive_use(), self.lock(True):
            used: set[str] = set()
            for record in self.all_images():
                layers = record.get("layers")
                if isinstance(layers, list):
                    used.update(str(layer) for layer in layers)
            removed = []
            freed = 0
            for diff_id in self.layer_names():
                if diff_id not in used:
                    path = self.layer_path(diff_id)
                    freed += tree_size(path)
                    remove_tree(path)
                    removed.append(diff_id)
            for entry in os.listdir(self.tmp):
                path = os.path.join(self.tmp, entry)
                freed += tree_size(path)
                remove_tree(path)
            for entry in os.listdir(self.images):
                if entry.endswith(".tmp"):
                    os.unlink(os.path.join(self.images, entry))
            self._prune_cache()
        return removed, freed

    def _prune_cache(self) -> None:
        """Forget build steps whose layer is gone (a step that made no layer stays)."""
        import json

        try:
            entries = os.listdir(self.cache)
        except FileNotFoundError:
            return
        for entry in entries:
            path = os.path.join(self.cache, entry)
            try:
                with open(path, "rb") as file:
                    layer = json.loads(file.read(4096)).get("layer")
                if layer is None or self.has_layer(str(layer)):
                    continue
            except (OSError, ValueError, AttributeError, ImageError):
                pass
            os.unlink(path)


def tree_size(path: str) -> int:
    total = 0
    for top, dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                pass
    return total
