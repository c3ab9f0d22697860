"""The kernel's side of building a root: detached mounts made from file descriptors, and paths
resolved inside the new root.  No policy: what to mount where is plan.py's.

Every mount here is made detached (fsopen/fsmount, open_tree), gets its attributes while
detached (mount_setattr), and is moved onto an O_PATH fd of its target (move_mount), never
onto a path.  Targets inside the new root come from `resolve` (openat2 RESOLVE_IN_ROOT) or,
inside a mount sbx just made, from `beneath`.
"""

from __future__ import annotations

import errno
import os

from ...errors import SetupError
from ...kernel import linux

STAGING_CANDIDATES = ("/tmp", "/mnt", "/var/tmp")
NOSUID_NODEV = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
RO = linux.MOUNT_ATTR_RDONLY | NOSUID_NODEV
PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
AT_FDCWD = -100
# Inside the new root: symlinks resolved as if its root were /, never /proc's magic links.
IN_ROOT = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
# Inside a mount sbx itself just made: one plain name, no symlink, no other mount.
RESOLVE_NO_XDEV, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x01, 0x04, 0x08
BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
XATTR_PROBE = "user.sbx.probe"


def staging_dir() -> str:
    for path in STAGING_CANDIDATES:
        if os.path.isdir(path) and not os.path.islink(path):
            return path
    raise SetupError("no directory to build the sandbox in (tried /tmp, /mnt, /var/tmp)")


# Inodes of a tmpfs: without nr_inodes the kernel allows about one per two pages of RAM (millions),
# each ~1 KiB of kernel memory (inode, dentry; since 6.6 user xattrs too) that no byte limit and, without
# cgroups, nothing else counts, and empty files take no data pages.  So every tmpfs sbx mounts gets
# one inode per INODE_BYTES of its size (slab at most about a quarter of the byte limit), never fewer
# than MIN_INODES (an overlay's upper and work dirs, whiteouts, a small --tmpfs) nor more than
# MAX_INODES (size 0, "unlimited", included).  Fixed small mounts (/dev) pass their own count.
INODE_BYTES = 4096
MIN_INODES = 1024
MAX_INODES = 1 << 20
DEV_INODES = 64  # /dev: a dozen device binds and links, pts and shm mount points


def inode_cap(size: int) -> int:
    """nr_inodes for a tmpfs of `size` bytes (0: no byte limit)."""
    if size <= 0:
        return MAX_INODES
    return max(MIN_INODES, min(MAX_INODES, size // INODE_BYTES))


def tmpfs(size: int, mode: str, attrs: int, nr_inodes: int | None = None) -> int:
    """A detached tmpfs mount; returns its mount fd.  Inodes: `nr_inodes`, else inode_cap(size)."""
    fd = linux.fsopen("tmpfs")
    try:
        linux.fsconfig(fd, "size", str(size))
        linux.fsconfig(fd, "mode", mode)
        linux.fsconfig(fd, "nr_inodes", str(inode_cap(size) if nr_inodes is None else nr_inodes))
        linux.fsconfig(fd, None)
        return linux.fsmount(fd, attrs)
    finally:
        os.close(fd)


def overlay(lowers: list[str], upper: str, work: str, attrs: int) -> int:
    """A detached overlay mount; `lowers` top first."""
    for path in (*lowers, upper):
        if "," in path:
            raise SetupError(f"cannot use {path!r} as an overlay layer: the path contains a comma")
    escaped = [path.replace("\\", "\\\\").replace(":", "\\:") for path in lowers]
    fd = linux.fsopen("overlay")
    try:
        if len(":".join(escaped)) < 256:
            linux.fsconfig(fd, "lowerdir", ":".join(escaped))
        else:  # fsconfig takes at most 256 bytes a value: one layer at a time (Linux >= 6.8)
            for path in escaped:
                linux.fsconfig(fd, "lowerdir+", path)
        linux.fsconfig(fd, "upperdir", upper)
        linux.fsconfig(fd, "workdir", work)
        linux.fsconfig(fd, "userxattr")
        linux.fsconfig(fd, None)
        return linux.fsmount(fd, attrs)
    finally:
        os.close(fd)


def clone_tree(path: str, attrs: int, recursive: bool = True, dirfd: int = AT_FDCWD) -> int:
    """A detached recursive bind of a host path (or of `path` under `dirfd`, a symlink there not
    followed) with mount attributes set on every submount."""
    flags = linux.OPEN_TREE_CLONE | (linux.AT_RECURSIVE if recursive else 0)
    if dirfd != AT_FDCWD:
        flags |= linux.AT_SYMLINK_NOFOLLOW
    fd = linux.open_tree(dirfd, path, flags)
    try:
        if attrs:
            linux.mount_setattr(fd, attrs, recursive)
    except BaseException:
        os.close(fd)
        raise
    return fd


def attach(mount_fd: int, target_fd: int) -> None:
    try:
        linux.move_mount(mount_fd, target_fd)
    finally:
        os.close(mount_fd)
        os.close(target_fd)


def beneath(dirfd: int, name: str) -> int:
    """An O_PATH fd for `name` in the mount whose root is `dirfd` (no symlink, no other mount)."""
    return linux.openat2(dirfd, name, os.O_PATH, BENEATH)


def supports_user_xattrs(path: str) -> bool:
    try:
        os.setxattr(path, XATTR_PROBE, b"1")
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
            return False
        raise
    os.removexattr(path, XATTR_PROBE)
    return True


def resolve(rootfd: int, inside: str, is_dir: bool) -> int:
    """An O_PATH fd for `inside`, resolved as if rootfd were /, creating what is missing.

    Symlinks (absolute ones and `..` included) are resolved within the root, so
    no component can ever lead outside it.
    """
    parts = [p for p in inside.split("/") if p and p != "."]
    if ".." in parts:
        raise SetupError(f"{inside}: '..' is not allowed in a sandbox path")
    how = IN_ROOT
    try:
        return linux.openat2(rootfd, "/".join(parts) or ".", os.O_PATH, how)
    except FileNotFoundError:
        pass
    # Most often only the last component is missing (a mount point in a directory that exists).
    try:
        parent = linux.openat2(rootfd, "/".join(parts[:-1]) or ".", os.O_PATH | os.O_DIRECTORY, how)
    except FileNotFoundError:
        start = 0  # more is missing: component by component
    else:
        _create(parent, parts[-1], is_dir, inside)
        start = len(parts)
    for i in range(start, len(parts)):
        sub = "/".join(parts[: i + 1])
        try:
            os.close(linux.openat2(rootfd, sub, os.O_PATH, how))
            continue
        except FileNotFoundError:
            pass
        parent = linux.openat2(rootfd, "/".join(parts[:i]) or ".", os.O_PATH | os.O_DIRECTORY, how)
        _create(parent, parts[i], is_dir or i < len(parts) - 1, inside)
    try:
        return linux.openat2(rootfd, "/".join(parts), os.O_PATH, how)
    except OSError as exc:
        raise SetupError(f"cannot create {inside} in the sandbox: {exc.strerror}") from None


def _create(parent: int, name: str, is_dir: bool, inside: str) -> None:
    """Make `name` (a directory, else an empty file) in the directory `parent` (closed here)."""
    try:
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            os.close(os.open(name, NEW_FILE, 0o644, dir_fd=parent))
    except FileExistsError:
        pass  # a dangling symlink: the open after reports it
    except OSError as exc:
        raise SetupError(f"cannot create {inside} in the sandbox: {exc.strerror}") from None
    finally:
        os.close(parent)
