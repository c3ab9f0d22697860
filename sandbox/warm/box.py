"""Boxes: a work directory that outlives single runs (compile once, run per test case).

A box is `ROOT/boxes/NAME/` holding `work/` (mounted at /box inside) and
`lock`.  A run in a box holds the lock exclusively for as long as it runs,
and removing a box takes it too, so two runs never share a box at once and
a box is never removed under a run.  What runs make in `work/` belongs to the
caller, or with subordinate ids to the ids the payload ran as: removal then
runs as root of a user namespace mapping the caller's ranges (idmap.run_ranged).
"""

from __future__ import annotations

import errno
import os

from ..errors import SbxError, SetupError
from ..model.frozen import dataclass

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


def boxes_dir(root: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """ROOT/boxes; ROOT as `environ` (default: this process's) says when not given (store.default_root)."""
    from ..image.store import default_root

    return os.path.join(root or default_root(environ), "boxes")


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
    def create(cls, name: str | None = None, root: str | None = None,
               environ: Mapping[str, str] | None = None) -> Box:
        """A new, empty box (a generated name when none is given); an existing name is an error."""
        parent = boxes_dir(root, environ)
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
        # 0777: the payload, a subordinate id with id ranges, writes here as "other", and so does
        # the caller; the 0700 box directory keeps everyone else out (SECURITY.md, "Identity").
        os.mkdir(path + "/work")
        os.chmod(path + "/work", 0o777)
        os.close(os.open(path + "/lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        return cls(name, path)

    @classmethod
    def open(cls, name: str, root: str | None = None, environ: Mapping[str, str] | None = None) -> Box:
        path = os.path.join(boxes_dir(root, environ), check_name(name))
        if not os.path.isdir(path + "/work") or os.path.islink(path):
            raise BoxError(f"box {name!r} does not exist (create it with 'sbx box create {name}')")
        return cls(name, path)

    @classmethod
    def all(cls, root: str | None = None, environ: Mapping[str, str] | None = None) -> list[Box]:
        parent = boxes_dir(root, environ)
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
        from ..model.spec import Mount

        if mode not in MODES:
            raise BoxError(f"box mode {mode!r}: choose one of {', '.join(MODES)}")
        mounts = tuple(m for m in settings.get("mounts", ()) if m.target != MOUNT_POINT)  # type: ignore[attr-defined]
        out = dict(settings)
        out["mounts"] = (*mounts, Mount(target=MOUNT_POINT, mode=mode, source=self.work))
        if not workdir:
            out["sandbox.workdir"] = MOUNT_POINT
        return out

    def remove(self, wait: bool = False) -> None:
        """Delete the box and everything in it, never following a link the runs made.

        With subordinate ids (a payload's files belong to them) the tree is removed as root
        of a user namespace that maps the caller's ranges; else as the caller.
        """
        fd = self.lock(wait)
        try:
            parent = os.open(self.path, _DIR_FLAGS)
            try:
                _remove_ranged(parent, "work")
            finally:
                os.close(parent)
            os.unlink(self.path + "/lock")
            os.rmdir(self.path)
        except OSError as exc:
            raise BoxError(f"cannot remove box {self.name!r}: {exc.strerror}") from None
        finally:
            os.close(fd)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _remove_ranged(parent_fd: int, name: str) -> None:
    """remove_tree(), from inside the caller's id ranges where it has them."""
    from ..kernel import idmap

    ranges = idmap.available()
    if ranges is not None:
        try:
            idmap.run_ranged(ranges, lambda: remove_tree(parent_fd, name))
            return
        except SetupError:
            pass  # no namespace after all: as the caller, which suffices for the caller's own files
    remove_tree(parent_fd, name)


def remove_tree(parent_fd: int, name: str) -> None:
    """Remove `name` in the directory `parent_fd` and everything under it; never follows a link.

    Each directory is opened relative to its parent with O_NOFOLLOW, and left through ".."
    only after checking that ".." is the directory it was entered from.  One directory is
    open at a time and the walk is a loop, so no depth exhausts fds or the stack.  What a
    run made unsearchable or unwritable (chmod 000, 0500) is made 0700 first.
    """
    import stat

    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent_fd)
        return
    fd = _open_dir(parent_fd, name)
    try:
        # One frame per directory from `name` down to the current one: its identity, its
        # name in its parent, the subdirectories still to remove.
        frames = [(_identity(fd), name, _clear(fd))]
        while len(frames) > 1 or frames[0][2]:
            _, own, pending = frames[-1]
            if pending:
                sub = pending.pop()
                child = _open_dir(fd, sub)
                os.close(fd)
                fd = child
                frames.append((_identity(fd), sub, _clear(fd)))
                continue
            frames.pop()
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if _identity(fd) != frames[-1][0]:
                raise OSError(errno.ESTALE, f"{own} moved while it was being removed")
            os.rmdir(own, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent_fd)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _open_dir(parent_fd: int, name: str) -> int:
    """The directory `name` opened for reading, made searchable and writable by its owner."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        # chmod 000: chmod it through an O_PATH fd of the directory itself (never a link).
        path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd)
        try:
            os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
            fd = os.open(".", _DIR_FLAGS, dir_fd=path_fd)
        finally:
            os.close(path_fd)
    if os.fstat(fd).st_mode & 0o700 != 0o700:
        try:
            os.fchmod(fd, 0o700)  # to unlink its entries and open its subdirectories
        except PermissionError:
            pass  # root of a ranged namespace needs no permission bits; an unlink says what failed
    return fd


def _clear(fd: int) -> list[str]:
    """Unlink every entry of the directory `fd` but subdirectories; return their names."""
    with os.scandir(fd) as scan:
        entries = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in scan]
    subdirs = []
    for name, is_dir in entries:
        if is_dir:
            subdirs.append(name)
        else:
            os.unlink(name, dir_fd=fd)
    return subdirs
