"""The sandbox's root filesystem, built by init inside its own mount namespace.

Planned, then executed (as bubblewrap and mkosi build a flat list of setup operations):
plan.py decides, purely, what the root is made of (`plan(spec, probes) -> ops`); ops.py
holds the ops, frozen values each with `execute(ctx)` and `describe()`; mount.py holds the
kernel calls they make (detached mounts, paths resolved inside the root).  This module is
the executor init runs: `Root(spec).build()` opens the host objects the plan needs (the bind
sources and the image's layers first: the staging tmpfs may cover them, a source under
/tmp), mounts the staging tmpfs, probes (`probe`), plans and runs the ops; init then hands
`root.kept` over (the kept layer's directory on the --disk tmpfs, or -1) and calls
`root.pivot()`.

Layout (all in one size-limited tmpfs, the "disk", so every write the payload makes counts
against --disk):

    STAGING/root           the new /, a bind of itself so it can be pivoted to
    STAGING/layers/N/...   overlay upper and work dirs, unreachable after pivot
    STAGING/layers/kept/   a kept writable layer's (see below)

Host directories of the `host` image are overlay lower layers (copy-on-write, discarded
with the tmpfs).  With `spec.upper` (image builds, `sbx run --commit`) an imported image's
writable layer is kept: its upper and work dirs are STAGING/layers/kept, whose fd init hands
to the saver before the pivot, so the layer outlives the run yet is bounded by --disk while
it is written.  sbx's own set-up (mount points, /etc/hosts) then goes into a throw-away layer
of its own on the tmpfs, between the image and the kept upper, so the upper holds only what
the payload changed.  Before Linux 6.6 tmpfs has no user.* xattrs, which an overlay in a user
namespace needs for opaque directories and whiteouts; then host directories are read-only
binds instead (correct, size-limited, but not writable) and a kept layer is the host
directory spec.upper, measured only after the run.

Every path inside the new root is resolved from the root's fd with openat2(RESOLVE_IN_ROOT),
or from the fd of a mount sbx just made (/proc, /dev), never as a host path STAGING/root/...:
an image's symlinks (an absolute /dev, a /proc of `../..`) are then resolved inside the root
and can never send a link, a write or a mount outside it.  Every mount is moved onto a file
descriptor rather than a path.  The top-level directories sbx mounts over (/proc, /dev, /tmp)
are made real directories first, and an /etc that is not one is refused (ops.MountPoints).
"""

from __future__ import annotations

import os
import stat

from ...errors import SetupError
from ...kernel import linux
from ...model.spec import Mount, Spec
from .mount import (DEV_INODES, MAX_INODES, MIN_INODES, NOSUID_NODEV, PATH_FLAGS, attach, clone_tree, inode_cap,
                    overlay, staging_dir, supports_user_xattrs, tmpfs)
from .ops import Context, Op
from .plan import (DEVICES, DIR, ETC_FROM_HOST, FILE, HOST_DIRS, LINK, PROC_MASKED_FILES, PROC_READONLY, HostPath,
                   Probes, plan, shared_etc)

__all__ = ["DEVICES", "DEV_INODES", "MAX_INODES", "MIN_INODES", "PROC_MASKED_FILES", "PROC_READONLY", "Probes",
           "Root", "attach", "inode_cap", "overlay", "plan", "probe", "staging_dir", "supports_user_xattrs", "tmpfs"]


class Root:
    """Builds the tree for one spec, then pivots into it."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.base = staging_dir()
        self.root = self.base + "/root"
        self.kept = -1  # the kept writable layer's directory on the --disk tmpfs (ops.ImageRoot)
        self.ops: tuple[Op, ...] = ()  # the plan, once built

    def build(self) -> None:
        spec = self.spec
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        # Grab the bind sources first: the staging tmpfs may cover them (a source under /tmp).
        ctx = Context(self.base, spec.image, [open_source(mount) for mount in spec.mounts])
        try:
            ctx.layers = [os.open(path, PATH_FLAGS | os.O_DIRECTORY) for path in spec.layers]
            if spec.upper is not None and spec.layers:
                ctx.upper = os.open(spec.upper, PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW)
            attach(tmpfs(spec.disk, "0755", NOSUID_NODEV), os.open(self.base, PATH_FLAGS | os.O_DIRECTORY))
            self.ops = plan(spec, probe(spec, self.base, ctx.sources))
            os.mkdir(self.root, 0o755)
            os.chmod(self.root, 0o755)
            os.mkdir(self.base + "/layers", 0o700)
            for op in self.ops:
                op.execute(ctx)
            self.kept = ctx.kept
        finally:
            ctx.close()

    def describe(self) -> str:
        """The plan, one op a line (for debugging)."""
        return "\n".join(op.describe() for op in self.ops)

    def pivot(self) -> None:
        os.chdir(self.root)
        linux.pivot_root(".", ".")
        linux.umount2(".", linux.MNT_DETACH)
        os.chdir("/")


def probe(spec: Spec, base: str, sources: list[tuple[int, bool] | None]) -> Probes:
    """What plan() needs to know of this kernel and host, asked only where the spec uses it."""
    return Probes(cow=supports_user_xattrs(base), sources=tuple(None if s is None else s[1] for s in sources),
                  host=() if spec.layers else host_paths(),
                  host_files=host_files() if spec.network == "host" else ())


def host_paths() -> tuple[HostPath, ...]:
    """The host image's HOST_DIRS (directories and symlinks) and shared /etc entries that exist."""
    found = []
    for name in HOST_DIRS:
        entry = host_path("/" + name)
        if entry is not None and entry.kind != FILE:
            found.append(entry)
    try:
        names = os.listdir("/etc")
    except OSError:
        names = []
    for name in names:
        if shared_etc(name):
            entry = host_path("/etc/" + name)
            if entry is not None:
                found.append(entry)
    return tuple(found)


def host_path(path: str) -> HostPath | None:
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return HostPath(path, LINK, os.readlink(path))
        # A link is copied, pointing the same way; anything else is bound as the host has it.
        return HostPath(path, DIR if stat.S_ISDIR(mode) else FILE)
    except OSError:
        return None


def host_files() -> tuple[tuple[str, str], ...]:
    """The host's ETC_FROM_HOST files, by their contents (resolv.conf is often a link into /run)."""
    found = []
    for name in ETC_FROM_HOST:
        try:
            with open("/etc/" + name) as f:
                found.append((name, f.read()))
        except OSError:
            pass
    return tuple(found)


def open_source(mount: Mount) -> tuple[int, bool] | None:
    """(fd, is_dir) for a bind's source: a detached clone, or for an overlay an O_PATH fd of the lower dir."""
    if mount.mode == "tmpfs" or mount.source is None:
        return None
    what = f"{mount.source}:{mount.target}"
    try:
        is_dir = stat.S_ISDIR(os.stat(mount.source).st_mode)
    except FileNotFoundError:
        if mount.optional:
            return None
        raise SetupError(f"{what}: {mount.source} does not exist") from None
    if mount.mode != "overlay":
        attrs = NOSUID_NODEV | (linux.MOUNT_ATTR_RDONLY if mount.mode == "ro" else 0)
        return clone_tree(mount.source, attrs), is_dir
    if not is_dir:
        raise SetupError(f"{what}:overlay: an overlay needs a directory")
    return os.open(mount.source, PATH_FLAGS | os.O_DIRECTORY), True
