"""isolate's boxes as sbx boxes (warm/box.py): `<root>/boxes/<id>`, which --init prints.

A box holds sbx's `work/` (mounted at /box) and `lock`, plus two entries of isolate's layout:
`box`, a symlink to `work` (judges write into `<printed path>/box`), and `quota`, the -q given
to --init; the judge may keep files of its own there (--cleanup removes them all).  The root is $SBX_ISOLATE_ROOT, else `isolate` in sbx's data directory ($SBX_ROOT,
else $XDG_DATA_HOME/sbx): the caller's own, as nothing here runs as root.  The box's lock is
held for a whole --run, so a box in use is an error (or a wait, with --wait), never a second
run; --cleanup and --init on a box in use are errors too.
"""

from __future__ import annotations

import errno
import os

from ..warm.box import Box, BoxBusy, BoxError, remove_tree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SBX_ENTRIES = ("work", "lock")  # the rest of a box directory is isolate's or the judge's (meta files...)
IN_USE = "This box is currently in use by another process"


class BoxFailure(Exception):
    """A box that cannot be used; str() is isolate's (or sbx's) message, the run is an XX."""


def root(environ: Mapping[str, str]) -> str:
    explicit = environ.get("SBX_ISOLATE_ROOT")
    if explicit:
        return os.path.abspath(explicit)
    from ..image.store import default_root

    return os.path.join(default_root(environ), "isolate")


def box_dir(box_id: int, environ: Mapping[str, str]) -> str:
    return os.path.join(root(environ), "boxes", str(box_id))


def init(box_id: int, environ: Mapping[str, str], wait: bool, quota: tuple[int, int] | None) -> str:
    """Create the box (resetting one that exists, as isolate does); its directory."""
    top = root(environ)
    cleanup(box_id, environ, wait)
    try:
        box = Box.create(str(box_id), top)
    except BoxError as exc:
        raise BoxFailure(str(exc)) from None
    os.symlink("work", os.path.join(box.path, "box"))
    if quota is not None:
        with open(os.path.join(box.path, "quota"), "x", encoding="ascii") as f:
            f.write(f"{quota[0]},{quota[1]}\n")
    return box.path


def open_box(box_id: int, environ: Mapping[str, str], wait: bool, prog: str) -> tuple[Box, int]:
    """The box and an fd holding its lock for the run (close it to release)."""
    try:
        box = Box.open(str(box_id), root(environ))
    except BoxError:
        raise BoxFailure(f"Box not found, did you run `{prog} --init'?") from None
    try:
        return box, box.lock(wait)
    except BoxBusy:
        raise BoxFailure(IN_USE) from None
    except BoxError as exc:
        raise BoxFailure(str(exc)) from None


def quota(box: Box) -> tuple[int, int] | None:
    """The -q given to --init: (1 KiB blocks, inodes), or None."""
    try:
        with open(os.path.join(box.path, "quota"), encoding="ascii") as f:
            blocks, _, inodes = f.read().strip().partition(",")
        return int(blocks), int(inodes)
    except (OSError, ValueError):
        return None


def cleanup(box_id: int, environ: Mapping[str, str], wait: bool) -> bool:
    """Remove the box and everything in it; False when there was none (not an error)."""
    try:
        box = Box.open(str(box_id), root(environ))
    except BoxError:
        return False
    try:
        fd = box.lock(wait)
    except BoxBusy:
        raise BoxFailure(IN_USE) from None
    except BoxError as exc:
        raise BoxFailure(str(exc)) from None
    try:
        _remove_extras(box)
    except OSError as exc:
        raise BoxFailure(f"cannot remove box {box_id}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        box.remove(wait)
    except BoxBusy:
        raise BoxFailure(IN_USE) from None
    except BoxError as exc:
        raise BoxFailure(str(exc)) from None
    return True


def _remove_extras(box: Box) -> None:
    """Everything in the box directory but sbx's own entries, which Box.remove() takes: the
    judge's files there (Judge0 keeps stdin and meta files beside box/) and isolate's.  The
    program never reaches this directory, so these are the caller's; no link is followed."""
    parent = os.open(box.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name in os.listdir(parent):
            if name not in SBX_ENTRIES:
                remove_tree(parent, name)
    finally:
        os.close(parent)


_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_special_files(box: Box) -> None:
    """What isolate does after each run unless --special-files: unlink every entry in the box
    that is neither a regular file nor a directory (symlinks, FIFOs, sockets, devices), so no
    link the program planted leads the judge's own reads or writes out of the box.

    Walked as the caller; where the program's own directories refuse the caller (their modes
    are its to set), again as root of a user namespace mapping the caller's ranges.
    """
    try:
        _scrub(box.work)
    except PermissionError:
        from ..kernel import idmap

        ranges = idmap.for_run()
        if ranges is None:
            raise
        idmap.run_ranged(ranges, lambda: _scrub(box.work))


def _scrub(top: str) -> None:
    """Depth first with one directory fd open at a time (any depth, any width), leaving each
    directory by ".." only after checking it is the one it was entered from."""
    fd = os.open(top, _DIR)
    try:
        frames = [(_identity(fd), _unlink_special(fd))]
        while frames:
            pending = frames[-1][1]
            if pending:
                child = os.open(pending.pop(), _DIR, dir_fd=fd)
                os.close(fd)
                fd = child
                frames.append((_identity(fd), _unlink_special(fd)))
                continue
            frames.pop()
            if not frames:
                break
            up = os.open("..", _DIR, dir_fd=fd)
            os.close(fd)
            fd = up
            if _identity(fd) != frames[-1][0]:
                raise OSError(errno.ESTALE, "the box changed while it was being checked")
    finally:
        os.close(fd)


def _identity(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _unlink_special(fd: int) -> list[str]:
    """Unlink the special entries of the directory `fd`; its subdirectories' names."""
    subdirs = []
    with os.scandir(fd) as entries:
        found = [(entry.name, entry.is_dir(follow_symlinks=False), entry.is_file(follow_symlinks=False))
                 for entry in entries]
    for name, is_dir, is_file in found:
        if is_dir:
            subdirs.append(name)
        elif not is_file:
            os.unlink(name, dir_fd=fd)
    return subdirs
