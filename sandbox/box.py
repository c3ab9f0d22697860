"""Boxes: a work directory that outlives single runs (compile once, run per test case).

A box is `ROOT/boxes/NAME/` holding `work/` (mounted at /box inside) and
`lock`.  A run in a box holds the lock exclusively for as long as it runs,
and removing a box takes it too, so two runs never share a box at once and
a box is never removed under a run.  Everything in `work/` belongs to the
caller: root inside maps to the caller outside.
"""

from __future__ import annotations

import os

from .errors import SbxError
from .frozen import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

MOUNT_POINT = "/box"
MODES = ("rw", "ro", "overlay")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class BoxError(SbxError):
    """A box that cannot be created, found, locked or removed."""


class BoxBusy(BoxError):
    """Another run holds the box."""


def boxes_dir(root: str | None = None) -> str:
    from .image.store import default_root

    return os.path.join(root or default_root(os.environ), "boxes")


def check_name(name: str) -> str:
    if not name or len(name) > 64 or name.startswith(".") or not set(name) <= _NAME_CHARS:
        raise BoxError(f"box name {name!r} is not valid (1 to 64 of A-Z a-z 0-9 _ . -, not starting with '.')")
    return name


@dataclass(frozen=True)
class Box:
    """A box on disk; `work` is the directory runs see at /box."""

    name: str
    path: str

    @property
    def work(self) -> str:
        return self.path + "/work"

    @classmethod
    def create(cls, name: str | None = None, root: str | None = None) -> Box:
        """A new, empty box (a generated name when none is given); an existing name is an error."""
        parent = boxes_dir(root)
        os.makedirs(parent, mode=0o700, exist_ok=True)
        if name is None:
            import secrets

            name = "box-" + secrets.token_hex(6)
        path = os.path.join(parent, check_name(name))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise BoxError(f"box {name!r} already exists") from None
        except OSError as exc:
            raise BoxError(f"cannot create box {name!r} in {parent}: {exc.strerror}") from None
        os.mkdir(path + "/work", 0o755)
        os.close(os.open(path + "/lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        return cls(name, path)

    @classmethod
    def open(cls, name: str, root: str | None = None) -> Box:
        path = os.path.join(boxes_dir(root), check_name(name))
        if not os.path.isdir(path + "/work") or os.path.islink(path):
            raise BoxError(f"box {name!r} does not exist (create it with 'sbx box create {name}')")
        return cls(name, path)

    @classmethod
    def all(cls, root: str | None = None) -> list[Box]:
        parent = boxes_dir(root)
        try:
            names = sorted(os.listdir(parent))
        except FileNotFoundError:
            return []
        return [cls(n, os.path.join(parent, n)) for n in names if os.path.isdir(os.path.join(parent, n, "work"))]

    def lock(self, wait: bool = False) -> int:
        """An fd holding the box's lock (close it to release); BoxBusy when another run has it."""
        import fcntl

        try:
            fd = os.open(self.path + "/lock", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            raise BoxError(f"box {self.name!r}: cannot open its lock: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise BoxBusy(f"box {self.name!r} is in use by another run") from None
        return fd

    def settings(self, settings: Mapping[str, object], mode: str, workdir: bool) -> dict[str, object]:
        """Run settings with this box at /box (replacing any mount there) and, unless
        `workdir` says one was given, /box as the working directory."""
        from .spec import Mount

        if mode not in MODES:
            raise BoxError(f"box mode {mode!r}: choose one of {', '.join(MODES)}")
        mounts = tuple(m for m in settings.get("mounts", ()) if m.target != MOUNT_POINT)  # type: ignore[attr-defined]
        out = dict(settings)
        out["mounts"] = (*mounts, Mount(target=MOUNT_POINT, mode=mode, source=self.work))
        if not workdir:
            out["sandbox.workdir"] = MOUNT_POINT
        return out

    def identity(self) -> tuple[int, int]:
        """The work directory's (st_dev, st_ino): a prepared sandbox is only good for the same one."""
        st = os.stat(self.work, follow_symlinks=False)
        return st.st_dev, st.st_ino

    def remove(self, wait: bool = False) -> None:
        """Delete the box and everything in it (never following links the runs made)."""
        fd = self.lock(wait)
        try:
            _remove_tree(self.work)
            os.unlink(self.path + "/lock")
            os.rmdir(self.path)
        except OSError as exc:
            raise BoxError(f"cannot remove box {self.name!r}: {exc.strerror}") from None
        finally:
            os.close(fd)


def _remove_tree(path: str) -> None:
    """rmtree that also removes what a run made unwritable (chmod 0 directories)."""
    import shutil
    import stat

    def retry(function: object, failed: str, _exc: object) -> None:
        # Make the parent (and a directory itself) writable and searchable, never through a link.
        for target in (os.path.dirname(failed), failed):
            try:
                st = os.lstat(target)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                os.chmod(target, 0o700)
        if function in (os.rmdir, os.unlink, os.remove):
            function(failed)
        else:
            shutil.rmtree(failed, onerror=retry)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=retry)
