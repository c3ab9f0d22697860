"""The steps a root is built from: frozen values, each with `execute(ctx)` and `describe()`.

An op carries what the plan decided (a path in the new root, a size, a mode, a slot of
Spec.mounts); what it needs from the kernel at that moment (the new root's fd, a bind
source's detached clone, the staging tmpfs's paths) it takes from the Context the executor
made.  Every path inside the new root is resolved from ctx.rootfd (mount.resolve,
openat2 RESOLVE_IN_ROOT) or, inside a mount the op just made, from that mount's own fd
(mount.beneath): never as the host path STAGING/root/..., which would follow an image's
symlinks out of the root.  `target` is the path an op acts on ("/" for the root itself);
`phase` places it in the plan (plan.order).
"""

from __future__ import annotations

import os
import stat

from ...errors import SetupError
from ...kernel import linux
from ...model.frozen import dataclass
from .mount import (DEV_INODES, IN_ROOT, NEW_FILE, NOSUID_NODEV, PATH_FLAGS, RO, attach, beneath,
                    clone_tree, overlay, resolve, tmpfs)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

# Phases, in the order they run within a pass (plan.order).
ROOT = 0  # the root mount itself
SHAPE = 1  # the image's top-level mount points, fixed or refused
TREE = 2  # sbx's directories, files and links in the root's writable layer
TARGETS = 3  # every mount point, made before anything is mounted
SEAL = 4  # a kept upper's set-up pass ends
MOUNT = 5  # mounts onto the tree, parents before what is under them
CHECK = 6  # the finished tree

# Where an imported image's writable layer lives (ImageRoot.upper).
DISPOSABLE = "disposable"  # a layer of its own on the staging tmpfs, gone with it
KEPT_ON_DISK = "disk"  # kept, on the --disk tmpfs: its fd is handed over (Root.kept)
KEPT_ON_HOST = "host"  # kept, in the host directory Spec.upper (Linux < 6.6: no user xattrs on tmpfs)

NOEXEC = linux.MOUNT_ATTR_NOEXEC
NOSUID_NODEV_NOEXEC = NOSUID_NODEV | NOEXEC
DEV_SIZE = 65536  # bytes for /dev: device binds, links and two mount points
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
MASKED_DIR_SIZE = 4096  # an empty read-only tmpfs over a /proc directory


class Context:
    """What the ops act on: the staging tmpfs's paths and the fds the executor opened."""

    def __init__(self, base: str, image: str, sources: list[tuple[int, bool] | None]) -> None:
        self.base = base
        self.root = base + "/root"
        self.image = image  # named in refusals
        self.sources = sources  # per Spec.mounts: a bind's detached clone or overlay lower (fd, is_dir)
        self.layers: list[int] = []  # O_PATH fds of an imported image's layer dirs, top first
        self.upper = -1  # O_PATH fd of Spec.upper (a kept layer on the host)
        self.rootfd = -1
        self.root_stat: os.stat_result | None = None  # of rootfd, once open
        self.count = 0  # overlay layer dirs made on the staging tmpfs
        self.root_layer = ""  # the layer dir holding the root's disposable upper
        self.setup = ""  # the sealed set-up layer (a kept upper's plan)
        self.kept = -1  # the kept layer's directory on the --disk tmpfs, for init to hand over

    def open_root(self) -> None:
        self.rootfd = os.open(self.root, PATH_FLAGS | os.O_DIRECTORY)
        self.root_stat = os.fstat(self.rootfd)

    def close_root(self) -> None:
        if self.rootfd >= 0:
            os.close(self.rootfd)
            self.rootfd = -1
            self.root_stat = None

    def new_layer(self) -> str:
        """upper/ and work/ for one more overlay, on the staging tmpfs (counted by --disk)."""
        self.count += 1
        layer = f"{self.base}/layers/{self.count}"
        os.mkdir(layer, 0o700)
        os.mkdir(layer + "/upper", 0o755)
        os.mkdir(layer + "/work", 0o700)
        return layer

    def layered(self, lowers: list[str]) -> int:
        """A detached overlay of `lowers` (top first) under a new disposable layer."""
        layer = self.new_layer()
        return overlay(lowers, layer + "/upper", layer + "/work", NOSUID_NODEV)

    def target(self, inside: str, is_dir: bool = True) -> int:
        return resolve(self.rootfd, inside, is_dir)

    def parent(self, inside: str) -> tuple[int, str]:
        """The directory holding `inside` (resolved in the root) and the name in it."""
        head, _, name = inside.rpartition("/")
        return self.target(head or "/"), name

    def mount_target(self, inside: str, is_dir: bool = True) -> int:
        """target(), refusing the root itself: an image's link there (`/data -> /`) would put the
        mount over the whole tree, and pivot_root into it."""
        fd = resolve(self.rootfd, inside, is_dir)
        root = os.fstat(self.rootfd) if self.root_stat is None else self.root_stat
        if os.path.samestat(os.fstat(fd), root):
            os.close(fd)
            raise SetupError(f"image {self.image}: {inside} leads to the sandbox's root: sbx cannot mount on it")
        return fd

    def chown(self, inside: str, owner: tuple[int, int]) -> None:
        fd = self.target(inside)
        try:
            os.chown(f"/proc/self/fd/{fd}", *owner)
        finally:
            os.close(fd)

    def close(self) -> None:
        for fd in (*(source[0] for source in self.sources if source is not None), *self.layers, self.upper):
            if fd >= 0:
                os.close(fd)
        self.close_root()


class Op:
    """One step of building the root (see the module docstring)."""

    phase: ClassVar[int] = TREE
    target: str

    def execute(self, ctx: Context) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        rest = " ".join(f"{name}={oct(value) if name == 'mode' and isinstance(value, int) else repr(value)}"
                        for name, value in vars(self).items() if name != "target" and not name.startswith("__"))
        return f"{type(self).__name__} {self.target} {rest}".rstrip()


# -- the root ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRoot(Op):
    """The host image's root: the empty STAGING/root, bound onto itself (pivot_root needs a mount)."""

    target: str = "/"
    phase = ROOT

    def execute(self, ctx: Context) -> None:
        attach(clone_tree(ctx.root, 0, recursive=False), os.open(ctx.root, PATH_FLAGS))
        ctx.open_root()


@dataclass(frozen=True)
class ImageRoot(Op):
    """An imported image's layers under a writable upper (`upper`: DISPOSABLE, KEPT_ON_DISK or
    KEPT_ON_HOST), as /; `over_setup`: the sealed set-up layer goes on top of the image's."""

    target: str = "/"
    upper: str = DISPOSABLE
    over_setup: bool = False
    phase = ROOT

    def execute(self, ctx: Context) -> None:
        lowers = [f"/proc/self/fd/{fd}" for fd in ctx.layers]
        if self.over_setup:
            lowers.insert(0, ctx.setup)
        if self.upper == DISPOSABLE:
            ctx.root_layer = ctx.new_layer()
            layer = ctx.root_layer
            mount_fd = overlay(lowers, layer + "/upper", layer + "/work", NOSUID_NODEV)
        elif self.upper == KEPT_ON_DISK:
            # On the --disk tmpfs: every write the run makes counts against --disk as it happens.
            layer = ctx.base + "/layers/kept"
            os.mkdir(layer, 0o700)
            os.mkdir(layer + "/upper", 0o755)
            os.chmod(layer + "/upper", 0o755)  # not narrowed by the umask: it is the layer's root
            os.mkdir(layer + "/work", 0o700)
            ctx.kept = os.open(layer + "/upper", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            mount_fd = overlay(lowers, layer + "/upper", layer + "/work", NOSUID_NODEV)
        else:  # the host directory Spec.upper, measured only after the run
            layer = f"/proc/self/fd/{ctx.upper}"
            mount_fd = overlay(lowers, layer + "/upper", layer + "/work", NOSUID_NODEV)
        attach(mount_fd, os.open(ctx.root, PATH_FLAGS))
        ctx.open_root()


@dataclass(frozen=True)
class Seal(Op):
    """End the set-up pass: unmount its root; its upper, holding only sbx's own writes, becomes
    the set-up layer the kept upper goes over (ImageRoot.over_setup)."""

    target: str = "/"
    phase = SEAL

    def execute(self, ctx: Context) -> None:
        ctx.setup = ctx.root_layer + "/upper"
        ctx.close_root()
        linux.umount2(ctx.root, linux.MNT_DETACH)


@dataclass(frozen=True)
class MountPoints(Op):
    """Make the image's `covered` top-level entries real directories (in the writable layer: the
    image's own lowers stay as they are) when `replace`, or refuse them; refuse `kept` entries
    that are not directories.

    Followed, even inside the root, such a link would put sbx's mounts somewhere else than
    where the payload looks (a /proc whose masks miss, a /tmp under another path).
    """

    target: str = "/"
    replace: bool = True
    covered: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    phase = SHAPE

    def execute(self, ctx: Context) -> None:
        for name in (*self.covered, *self.kept):
            try:
                info = os.stat(name, dir_fd=ctx.rootfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                continue
            if self.replace and name in self.covered:
                try:
                    os.unlink(name, dir_fd=ctx.rootfd)
                    os.mkdir(name, 0o755, dir_fd=ctx.rootfd)
                    continue
                except OSError:
                    pass  # the overlay cannot hide it (no whiteouts here): refuse, below
            if stat.S_ISLNK(info.st_mode):
                what = f"a symlink (to {os.readlink(name, dir_fd=ctx.rootfd)})"
            else:
                what = "not a directory"
            raise SetupError(f"image {ctx.image}: /{name} is {what}: sbx cannot set up the sandbox on it")


# -- sbx's own entries in the root's writable layer -----------------------------------------------


@dataclass(frozen=True)
class Mkdir(Op):
    """A directory unless the image has one (left as it is); then given to `owner`, if any."""

    target: str
    mode: int = 0o755
    owner: tuple[int, int] | None = None

    def execute(self, ctx: Context) -> None:
        try:
            os.close(linux.openat2(ctx.rootfd, self.target.lstrip("/"), os.O_PATH, IN_ROOT))
        except FileNotFoundError:
            fd = ctx.target(self.target)
            try:
                os.chmod(f"/proc/self/fd/{fd}", self.mode)  # umask narrowed it
            finally:
                os.close(fd)
        if self.owner is not None:
            ctx.chown(self.target, self.owner)


@dataclass(frozen=True)
class Chmod(Op):
    """A mode for what is at `target` (the root's top, which the image has)."""

    target: str
    mode: int

    def execute(self, ctx: Context) -> None:
        fd = ctx.target(self.target)
        try:
            os.chmod(f"/proc/self/fd/{fd}", self.mode)
        finally:
            os.close(fd)


@dataclass(frozen=True)
class Write(Op):
    """A new file in place of whatever the image has there (a symlink included)."""

    target: str
    text: str

    def execute(self, ctx: Context) -> None:
        parent, name = ctx.parent(self.target)
        try:
            try:
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise SetupError(f"image {ctx.image}: {self.target} is a directory: sbx cannot set up the "
                                 "sandbox on it") from None
            fd = os.open(name, NEW_FILE, 0o644, dir_fd=parent)
        finally:
            os.close(parent)
        try:
            os.write(fd, self.text.encode())
        finally:
            os.close(fd)

    def describe(self) -> str:
        return f"Write {self.target} ({len(self.text)} characters)"


@dataclass(frozen=True)
class Symlink(Op):
    """A symlink to `dest` at `target` (a host image's /bin -> usr/bin, a shared /etc link)."""

    target: str
    dest: str

    def execute(self, ctx: Context) -> None:
        parent, name = ctx.parent(self.target)
        try:
            os.symlink(self.dest, name, dir_fd=parent)
        finally:
            os.close(parent)


@dataclass(frozen=True)
class Targets(Op):
    """Every mount point (`points`: path and whether it is a directory, parents first) and the
    working directory, made before anything is mounted: one list, taken from the mounts."""

    target: str = "/"
    points: tuple[tuple[str, bool], ...] = ()
    phase = TARGETS

    def execute(self, ctx: Context) -> None:
        for path, is_dir in self.points:
            os.close(ctx.target(path, is_dir))


# -- mounts ---------------------------------------------------------------------------------------


class Mounting(Op):
    """A mount onto the tree; the plan makes its mount point first (Targets)."""

    phase = MOUNT

    def dir_target(self) -> bool:
        """Whether the mount point is a directory (else a file)."""
        return True


@dataclass(frozen=True)
class Tmpfs(Mounting):
    target: str
    size: int
    mode: str = "1777"

    def execute(self, ctx: Context) -> None:
        attach(tmpfs(self.size, self.mode, NOSUID_NODEV), ctx.mount_target(self.target))


@dataclass(frozen=True)
class HostBind(Mounting):
    """A read-only recursive bind of the host's `host` (a host image directory without user
    xattrs on tmpfs, or a shared /etc entry)."""

    target: str
    host: str
    is_dir: bool = True

    def dir_target(self) -> bool:
        return self.is_dir

    def execute(self, ctx: Context) -> None:
        attach(clone_tree(self.host, RO), ctx.mount_target(self.target, self.is_dir))


@dataclass(frozen=True)
class HostOverlay(Mounting):
    """The host's `host` directory under a disposable layer (copy-on-write)."""

    target: str
    host: str

    def execute(self, ctx: Context) -> None:
        mount_fd = ctx.layered([self.host])
        try:
            target = ctx.mount_target(self.target)
        except BaseException:
            os.close(mount_fd)
            raise
        attach(mount_fd, target)


@dataclass(frozen=True)
class Bind(Mounting):
    """A -v bind (`mode` ro or rw): the clone of Spec.mounts[slot]'s source the executor made,
    with its attributes already set."""

    target: str
    slot: int
    is_dir: bool = True
    mode: str = "ro"

    def dir_target(self) -> bool:
        return self.is_dir

    def execute(self, ctx: Context) -> None:
        source = ctx.sources[self.slot]
        assert source is not None, "the plan binds only sources the executor opened"
        mount_fd = os.dup(source[0])
        try:
            target = ctx.mount_target(self.target, self.is_dir)
        except BaseException:
            os.close(mount_fd)
            raise
        attach(mount_fd, target)


@dataclass(frozen=True)
class Overlay(Mounting):
    """A -v SRC:DST:overlay: Spec.mounts[slot]'s source directory under a disposable layer,
    whose top is then given to `owner` (the host's directory stays as it is)."""

    target: str
    slot: int
    owner: tuple[int, int] | None = None

    def execute(self, ctx: Context) -> None:
        source = ctx.sources[self.slot]
        assert source is not None, "the plan binds only sources the executor opened"
        mount_fd = ctx.layered([f"/proc/self/fd/{source[0]}"])
        try:
            target = ctx.mount_target(self.target)
        except BaseException:
            os.close(mount_fd)
            raise
        attach(mount_fd, target)
        if self.owner is not None:
            ctx.chown(self.target, self.owner)


@dataclass(frozen=True)
class Proc(Mounting):
    """A fresh proc for the pid namespace, with `readonly` entries bound read-only and `masked_files`,
    `masked_dirs` covered; those that this kernel lacks are skipped."""

    target: str = "/proc"
    readonly: tuple[str, ...] = ()
    masked_files: tuple[str, ...] = ()
    masked_dirs: tuple[str, ...] = ()

    def execute(self, ctx: Context) -> None:
        fd = linux.fsopen("proc")
        try:
            linux.fsconfig(fd, None)
            mount_fd = linux.fsmount(fd, NOSUID_NODEV_NOEXEC)
        finally:
            os.close(fd)
        # The masks go on the proc just mounted, reached from its own fd: no path the image
        # could redirect (MountPoints made /proc a directory; this holds even if it were not).
        proc = os.dup(mount_fd)
        try:
            attach(mount_fd, ctx.mount_target(self.target))
            self.mask(proc)
        finally:
            os.close(proc)

    def mask(self, proc: int) -> None:
        def kind(name: str) -> int:
            try:
                return stat.S_IFMT(os.stat(name, dir_fd=proc, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return 0

        for name in self.readonly:
            if kind(name):
                attach(clone_tree(name, RO | NOEXEC, dirfd=proc), beneath(proc, name))
        for name in self.masked_files:
            if kind(name):
                attach(clone_tree("/dev/null", RO | NOEXEC, recursive=False), beneath(proc, name))
        for name in self.masked_dirs:
            if kind(name) == stat.S_IFDIR:
                attach(tmpfs(MASKED_DIR_SIZE, "0555", RO | NOEXEC, nr_inodes=1), beneath(proc, name))


@dataclass(frozen=True)
class Dev(Mounting):
    """A small tmpfs /dev: binds of the host's `devices`, the standard links, a new devpts
    instance and a /dev/shm of `shm_size` bytes, all made from the fd of the fresh tmpfs."""

    target: str = "/dev"
    shm_size: int = 0
    devices: tuple[str, ...] = ()

    def execute(self, ctx: Context) -> None:
        mount_fd = tmpfs(DEV_SIZE, "0755", NOSUID_NODEV_NOEXEC, nr_inodes=DEV_INODES)
        dev = os.dup(mount_fd)
        try:
            attach(mount_fd, ctx.mount_target(self.target))
            self.fill(dev)
        finally:
            os.close(dev)

    def fill(self, dev: int) -> None:
        for name in self.devices:
            os.close(os.open(name, NEW_FILE, 0o644, dir_fd=dev))
            attach(clone_tree("/dev/" + name, linux.MOUNT_ATTR_NOSUID | NOEXEC, recursive=False),
                   beneath(dev, name))  # the host's device node
        for link, dest in DEV_LINKS:
            os.symlink(dest, link, dir_fd=dev)
        os.mkdir("pts", 0o755, dir_fd=dev)
        os.mkdir("shm", 0o755, dir_fd=dev)
        os.chmod("shm", 0o1777, dir_fd=dev)  # umask narrowed it
        fd = linux.fsopen("devpts")
        try:
            linux.fsconfig(fd, "newinstance")
            linux.fsconfig(fd, "ptmxmode", "0666")
            linux.fsconfig(fd, "mode", "0620")
            linux.fsconfig(fd, None)
            mount_fd = linux.fsmount(fd, linux.MOUNT_ATTR_NOSUID | NOEXEC)
        finally:
            os.close(fd)
        attach(mount_fd, beneath(dev, "pts"))
        attach(tmpfs(self.shm_size, "1777", NOSUID_NODEV_NOEXEC), beneath(dev, "shm"))


# -- the finished tree ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workdir(Op):
    """The working directory must be a directory (Targets made it if it was missing)."""

    target: str
    phase = CHECK

    def execute(self, ctx: Context) -> None:
        fd = ctx.target(self.target)
        try:
            if not stat.S_ISDIR(os.fstat(fd).st_mode):
                raise SetupError(f"workdir {self.target}: not a directory")
        finally:
            os.close(fd)
