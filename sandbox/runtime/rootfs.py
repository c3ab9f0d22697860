"""The sandbox's root filesystem, built by init inside its own mount namespace.

Layout (all in one size-limited tmpfs, the "disk", so every write the
payload makes counts against --disk):

    STAGING/root           the new /, a bind of itself so it can be pivoted to
    STAGING/layers/N/...   overlay upper and work dirs, unreachable after pivot
    STAGING/layers/kept/   a kept writable layer's (see below)

Host directories of the `host` image are overlay lower layers (copy-on-write,
discarded with the tmpfs).  With `spec.upper` (image builds, `sbx run
--commit`) an imported image's writable layer is kept: its upper and work
dirs are STAGING/layers/kept, whose fd init hands to the saver before the
pivot, so the layer outlives the run yet is bounded by --disk while it is
written.  sbx's own set-up (mount points, /etc/hosts) then goes into a
throw-away layer of its own on the tmpfs, between the image and the kept
upper, so the upper holds only what the payload changed.  Before Linux 6.6
tmpfs has no user.* xattrs, which an overlay in a user namespace needs for
opaque directories and whiteouts; then host directories are read-only binds
instead (correct, size-limited, but not writable) and a kept layer is the
host directory spec.upper, measured only after the run.

Every path inside the new root is resolved from the root's fd with
openat2(RESOLVE_IN_ROOT), or from the fd of a mount sbx just made (/proc, /dev),
never as a host path STAGING/root/...: an image's symlinks (an absolute /dev, a
/proc of `../..`) are then resolved inside the root and can never send a link,
a write or a mount outside it.  Every mount is moved onto a file descriptor
rather than a path.  The top-level directories sbx mounts over (/proc, /dev,
/tmp) are made real directories first, and an /etc that is not one is refused
(see mount_points()).
"""

from __future__ import annotations

import errno
import os
import stat

from ..kernel import linux
from ..errors import SetupError
from ..model.spec import Mount, Spec

HOST_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# /etc entries a toolchain may need; missing ones are skipped.
ETC_SHARED = ("alternatives", "ssl", "ca-certificates", "ld.so.cache", "services", "protocols",
              "mime.types", "localtime", "timezone", "os-release", "debian_version")
ETC_SHARED_PREFIXES = ("java-", "python3")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
PROC_MASKED_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats")
PROC_MASKED_DIRS = ("acpi", "scsi", "asound")
STAGING_CANDIDATES = ("/tmp", "/mnt", "/var/tmp")
RO = linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
PATH_FLAGS = os.O_PATH | os.O_CLOEXEC
# Inside a mount sbx itself just made: one plain name, no symlink, no other mount.
RESOLVE_NO_XDEV, RESOLVE_NO_SYMLINKS, RESOLVE_BENEATH = 0x01, 0x04, 0x08
BENEATH = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV
# Top-level directories sbx covers with a mount of its own: whatever an image has there is hidden
# anyway, so a symlink or a file in their place is replaced by an empty directory in the writable layer.
COVERED = ("proc", "dev", "tmp")
# sbx writes into the image's own /etc (hosts, resolv.conf): one that is not a directory is refused.
KEPT = ("etc",)


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


def clone_tree(path: str, attrs: int, recursive: bool = True, dirfd: int = -100) -> int:
    """A detached recursive bind of a host path (or of `path` under `dirfd`, a symlink there not
    followed) with mount attributes set on every submount."""
    flags = linux.OPEN_TREE_CLONE | (linux.AT_RECURSIVE if recursive else 0)
    if dirfd != -100:  # AT_FDCWD
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
        os.setxattr(path, "user.sbx.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
            return False
        raise
    os.removexattr(path, "user.sbx.probe")
    return True


class Root:
    """Builds the tree for one spec, then pivots into it."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.base = staging_dir()
        self.root = self.base + "/root"
        self.rootfd = -1
        self.layers = 0
        self.cow = False
        self.kept = -1  # the kept writable layer's directory on the --disk tmpfs (see kept_upper)

    # -- paths inside the new root, resolved there: an image's symlinks cannot lead out --------
    # (never self.root + inside: that host path follows the image's symlinks out of the root)

    def target(self, inside: str, is_dir: bool = True) -> int:
        return resolve(self.rootfd, inside, is_dir)

    def mkdir(self, inside: str, mode: int = 0o755) -> None:
        """Create a directory unless the image has one; leave an existing one as it is."""
        how = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
        try:
            os.close(linux.openat2(self.rootfd, inside.lstrip("/"), os.O_PATH, how))
            return
        except FileNotFoundError:
            pass
        fd = resolve(self.rootfd, inside, is_dir=True)
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode)  # umask narrowed it
        finally:
            os.close(fd)

    def write(self, inside: str, text: str) -> None:
        """Write a new file in place of whatever the image has there (a symlink included)."""
        head, _, name = inside.rpartition("/")
        parent = resolve(self.rootfd, head or "/", is_dir=True)
        try:
            try:
                os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise SetupError(f"image {self.spec.image}: {inside} is a directory: sbx cannot set up the "
                                 "sandbox on it") from None
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=parent)
        finally:
            os.close(parent)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def touch(self, inside: str) -> None:
        os.close(resolve(self.rootfd, inside, is_dir=False))

    def build(self) -> None:
        spec = self.spec
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        # Grab the bind sources first: the staging tmpfs may cover them (a source under /tmp).
        sources = [self.open_source(mount) for mount in spec.mounts]
        layers = [os.open(path, PATH_FLAGS | os.O_DIRECTORY) for path in spec.layers]
        if spec.upper is not None and not layers:
            raise SetupError("a kept writable layer needs an imported image (the host image has no root layer)")
        upper = -1 if spec.upper is None else os.open(spec.upper, PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            self.build_tree(sources, layers, upper)
        finally:
            for fd in (*(source[0] for source in sources if source is not None), *layers, upper):
                if fd >= 0:
                    os.close(fd)
            if self.rootfd >= 0:
                os.close(self.rootfd)

    def build_tree(self, sources: list[tuple[int, bool] | None], layers: list[int], upper: int = -1) -> None:
        spec = self.spec
        base_fd = os.open(self.base, PATH_FLAGS | os.O_DIRECTORY)
        attach(tmpfs(spec.disk, "0755", linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV), base_fd)
        self.cow = supports_user_xattrs(self.base)
        os.mkdir(self.root, 0o755)
        os.chmod(self.root, 0o755)
        os.mkdir(self.base + "/layers", 0o700)
        if layers:
            # An imported image: its layers (top first) under the disposable upper, as /.
            lowers = [f"/proc/self/fd/{fd}" for fd in layers]
            attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
            if upper >= 0:
                lowers.insert(0, self.prepare(lowers, sources))
                kept = self.kept_upper(upper)
                mount_fd = overlay(lowers, kept + "/upper", kept + "/work", attrs)
            else:
                mount_fd = self.overlay_of(lowers, attrs)
            attach(mount_fd, os.open(self.root, PATH_FLAGS))
        else:
            attach(clone_tree(self.root, 0, recursive=False), os.open(self.root, PATH_FLAGS))
        self.rootfd = os.open(self.root, PATH_FLAGS | os.O_DIRECTORY)
        if layers:
            # With a kept upper, prepare() fixed them below it; the upper may bring one back: refuse.
            self.mount_points(replace=upper < 0)
        else:
            for name in HOST_DIRS:
                self.host_dir(name)
        if upper < 0:  # else prepare() did this, below the kept upper
            self.etc(image=bool(layers))
        self.skeleton()
        attach(tmpfs(spec.tmp_size, "1777", linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV), self.target("/tmp"))
        self.proc()
        self.dev()
        for index in sorted(range(len(spec.mounts)), key=lambda i: spec.mounts[i].target.count("/")):
            self.user_mount(self.rootfd, spec.mounts[index], sources[index])
        workdir = resolve(self.rootfd, spec.workdir, is_dir=True)
        try:
            if not stat.S_ISDIR(os.fstat(workdir).st_mode):
                raise SetupError(f"workdir {spec.workdir}: not a directory")
        finally:
            os.close(workdir)

    def skeleton(self) -> None:
        """The directories every sandbox has; an image's own are left as they are."""
        for name in ("root", "home", "run", "var", "var/tmp", "tmp", "proc", "dev"):
            self.mkdir("/" + name, {"root": 0o700, "var/tmp": 0o1777}.get(name, 0o755))
        if self.spec.uid != 0:
            self.mkdir("/home/sbx")
            self.give_payload("/home/sbx")
        if self.owned_by_payload():
            # The writable layer's top is the payload's to add to, as /tmp is (sticky: what sbx
            # put there stays); the image's own files keep their owners, as under docker's USER.
            os.chmod(f"/proc/self/fd/{self.rootfd}", 0o1777)

    def owned_by_payload(self) -> bool:
        """Whether the payload is a mapped id of its own (id ranges); in the single mapping
        every file sbx makes is already its own."""
        return self.spec.id_ranges and (self.spec.uid != 0 or self.spec.gid != 0)

    def give_payload(self, inside: str) -> None:
        """Make a directory sbx provides the payload's own (see owned_by_payload)."""
        if not self.owned_by_payload():
            return
        fd = self.target(inside)
        try:
            os.chown(f"/proc/self/fd/{fd}", self.spec.uid, self.spec.gid)
        finally:
            os.close(fd)

    def kept_upper(self, upper: int) -> str:
        """Where the kept writable layer's upper/ and work/ go: on the --disk tmpfs, so every
        write the run makes counts against --disk as it happens, when someone takes it from
        there (Spec.upper_sock); else the host directory `upper`, measured after the run."""
        spec = self.spec
        if spec.upper_sock >= 0 and self.cow:
            kept = self.base + "/layers/kept"
            os.mkdir(kept, 0o700)
            os.mkdir(kept + "/upper", 0o755)
            os.chmod(kept + "/upper", 0o755)  # not narrowed by the umask: it is the layer's root
            os.mkdir(kept + "/work", 0o700)
            self.kept = os.open(kept + "/upper", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            return kept
        if spec.upper_sock >= 0 and spec.limits.strict:
            raise SetupError("--strict: the kept writable layer cannot be bounded while the run writes "
                             "(this kernel's tmpfs has no user xattrs, Linux 6.6+): it would be on the host's disk")
        return f"/proc/self/fd/{upper}"

    def prepare(self, lowers: list[str], sources: list[tuple[int, bool] | None]) -> str:
        """sbx's own writes on an image (/etc, mount points, workdir) into a layer of their own; its path.

        Built on a temporary overlay at the root, unmounted again: the real root stacks the
        result under the kept upper, where only the payload's changes then land.
        """
        spec = self.spec
        attach(self.overlay_of(lowers, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV),
               os.open(self.root, PATH_FLAGS))
        layer = f"{self.base}/layers/{self.layers}/upper"
        self.rootfd = os.open(self.root, PATH_FLAGS | os.O_DIRECTORY)
        try:
            self.mount_points(replace=True)
            self.etc(image=True)
            self.skeleton()
            for inside in ("/tmp", "/proc", "/dev"):
                os.close(self.target(inside))
            for mount, source in zip(spec.mounts, sources):
                if mount.mode == "tmpfs" or source is not None:
                    os.close(resolve(self.rootfd, mount.target, is_dir=source is None or source[1]))
            os.close(resolve(self.rootfd, spec.workdir, is_dir=True))
        finally:
            os.close(self.rootfd)
            self.rootfd = -1
        linux.umount2(self.root, linux.MNT_DETACH)
        return layer

    def mount_points(self, replace: bool) -> None:
        """Make the image's /proc, /dev, /tmp real directories (in the writable layer: the image's
        own lowers stay as they are), or refuse it; refuse an /etc that is not a directory.

        Followed, even inside the root, such a link would put sbx's mounts somewhere else
        than where the payload looks (a /proc whose masks miss, a /tmp under another path).
        """
        for name in (*COVERED, *KEPT):
            try:
                info = os.stat(name, dir_fd=self.rootfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode):
                continue
            if replace and name in COVERED:
                try:
                    os.unlink(name, dir_fd=self.rootfd)
                    os.mkdir(name, 0o755, dir_fd=self.rootfd)
                    continue
                except OSError:
                    pass  # the overlay cannot hide it (no whiteouts here): refuse, below
            if stat.S_ISLNK(info.st_mode):
                what = f"a symlink (to {os.readlink(name, dir_fd=self.rootfd)})"
            else:
                what = "not a directory"
            raise SetupError(f"image {self.spec.image}: /{name} is {what}: sbx cannot set up the sandbox on it")

    def pivot(self) -> None:
        os.chdir(self.root)
        linux.pivot_root(".", ".")
        linux.umount2(".", linux.MNT_DETACH)
        os.chdir("/")

    # -- the host image --------------------------------------------------------

    def host_dir(self, name: str) -> None:
        host = "/" + name
        try:
            if os.path.islink(host):
                os.symlink(os.readlink(host), name, dir_fd=self.rootfd)
                return
            if not os.path.isdir(host):
                return
        except FileNotFoundError:
            return
        self.mkdir(host)
        if self.cow:
            mount_fd = self.overlay_of([host], linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV)
        else:
            mount_fd = clone_tree(host, RO)
        attach(mount_fd, self.target(host))

    def overlay_of(self, lower: list[str], attrs: int) -> int:
        self.layers += 1
        layer = f"{self.base}/layers/{self.layers}"
        os.mkdir(layer, 0o700)
        os.mkdir(layer + "/upper", 0o755)
        os.mkdir(layer + "/work", 0o700)
        return overlay(lower, layer + "/upper", layer + "/work", attrs)

    def etc(self, image: bool) -> None:
        """A synthetic /etc on the host image; on an imported image, its own with our hosts and resolv.conf."""
        spec = self.spec
        self.mkdir("/etc")
        if not image:
            users = "root:x:0:0:root:/root:/bin/sh\n"
            groups = "root:x:0:\n"
            if spec.uid != 0:
                users += f"sbx:x:{spec.uid}:{spec.gid}:sbx:/home/sbx:/bin/sh\n"
            if spec.gid != 0:
                groups += f"sbx:x:{spec.gid}:\n"
            self.write("/etc/passwd", users + "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
            self.write("/etc/group", groups + "nogroup:x:65534:\n")
            self.write("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
        if spec.network == "host":
            for name in ("hosts", "resolv.conf"):  # their contents: resolv.conf is often a link into /run
                try:
                    with open("/etc/" + name) as f:
                        self.write("/etc/" + name, f.read())
                except OSError:
                    pass
        else:
            if spec.network == "pasta" and spec.dns:
                self.write("/etc/resolv.conf", "".join(f"nameserver {server}\n" for server in spec.dns))
            self.write("/etc/hosts", f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                     f"127.0.1.1\t{spec.hostname}\n")
        if image:
            return
        try:
            names = os.listdir("/etc")
        except OSError:
            names = []
        for name in names:
            if name in ETC_SHARED or name.startswith(ETC_SHARED_PREFIXES):
                self.share_etc(name)

    def share_etc(self, name: str) -> None:
        """A read-only bind of host /etc/NAME (a symlink is copied, pointing the same way)."""
        host = "/etc/" + name
        try:
            if os.path.islink(host):
                parent = self.target("/etc")
                try:
                    os.symlink(os.readlink(host), name, dir_fd=parent)
                finally:
                    os.close(parent)
                return
            is_dir = os.path.isdir(host)
        except OSError:
            return
        if is_dir:
            self.mkdir(host)
        else:
            self.touch(host)
        attach(clone_tree(host, RO), self.target(host))

    # -- /proc and /dev --------------------------------------------------------

    def proc(self) -> None:
        fd = linux.fsopen("proc")
        try:
            linux.fsconfig(fd, None)
            mount_fd = linux.fsmount(fd, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_NOEXEC)
        finally:
            os.close(fd)
        # The masks go on the proc just mounted, reached from its own fd: no path the image
        # could redirect (mount_points() made /proc a directory; this holds even if it were not).
        proc = os.dup(mount_fd)
        try:
            attach(mount_fd, self.target("/proc"))
            self.proc_masks(proc)
        finally:
            os.close(proc)

    @staticmethod
    def proc_masks(proc: int) -> None:
        def kind(name: str) -> int:
            try:
                return stat.S_IFMT(os.stat(name, dir_fd=proc, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return 0

        for name in PROC_READONLY:
            if kind(name):
                attach(clone_tree(name, RO | linux.MOUNT_ATTR_NOEXEC, dirfd=proc), beneath(proc, name))
        for name in PROC_MASKED_FILES:
            if kind(name):
                attach(clone_tree("/dev/null", RO | linux.MOUNT_ATTR_NOEXEC, recursive=False), beneath(proc, name))
        for name in PROC_MASKED_DIRS:
            if kind(name) == stat.S_IFDIR:
                attach(tmpfs(4096, "0555", RO | linux.MOUNT_ATTR_NOEXEC, nr_inodes=1), beneath(proc, name))

    def dev(self) -> None:
        mount_fd = tmpfs(65536, "0755", linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_NOEXEC,
                         nr_inodes=DEV_INODES)
        # Everything in /dev is made from the fd of this fresh tmpfs, never by a path.
        dev = os.dup(mount_fd)
        try:
            attach(mount_fd, self.target("/dev"))
            self.dev_tree(dev)
        finally:
            os.close(dev)

    def dev_tree(self, dev: int) -> None:
        for name in DEVICES:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=dev))
            attach(clone_tree("/dev/" + name, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NOEXEC, recursive=False),
                   beneath(dev, name))  # the host's device node
        for link, dest in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                           ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
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
            mount_fd = linux.fsmount(fd, linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NOEXEC)
        finally:
            os.close(fd)
        attach(mount_fd, beneath(dev, "pts"))
        attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV | linux.MOUNT_ATTR_NOEXEC
        attach(tmpfs(self.spec.shm_size, "1777", attrs), beneath(dev, "shm"))

    # -- binds and tmpfs from -v / --tmpfs / profiles ------------------------------

    def open_source(self, mount: Mount) -> tuple[int, bool] | None:
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
            attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
            return clone_tree(mount.source, attrs | (linux.MOUNT_ATTR_RDONLY if mount.mode == "ro" else 0)), is_dir
        if not is_dir:
            raise SetupError(f"{what}:overlay: an overlay needs a directory")
        return os.open(mount.source, PATH_FLAGS | os.O_DIRECTORY), True

    def user_mount(self, rootfd: int, mount: Mount, source: tuple[int, bool] | None) -> None:
        attrs = linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV
        if mount.mode == "tmpfs":
            size = mount.size if mount.size is not None else self.spec.tmp_size
            attach(tmpfs(size, "1777", attrs), self.mount_target(rootfd, mount.target, is_dir=True))
            return
        if source is None:
            return  # an optional source that does not exist
        fd, is_dir = source
        if mount.mode == "overlay":
            if not self.cow:
                raise SetupError(f"{mount.source}:{mount.target}:overlay: this kernel's tmpfs has no user "
                                 "xattrs (Linux < 6.6), so overlays cannot be stacked on it; use :ro or :rw")
            mount_fd = self.overlay_of([f"/proc/self/fd/{fd}"], attrs)
        else:
            mount_fd = os.dup(fd)
        try:
            target = self.mount_target(rootfd, mount.target, is_dir=is_dir)
        except BaseException:
            os.close(mount_fd)
            raise
        attach(mount_fd, target)
        if mount.mode == "overlay":
            self.give_payload(mount.target)  # its top, in the disposable upper; the host's stays as it is


    def mount_target(self, rootfd: int, inside: str, is_dir: bool) -> int:
        """resolve(), refusing the root itself: an image's link there (`/data -> /`) would put the
        mount over the whole tree, and pivot_root into it."""
        fd = resolve(rootfd, inside, is_dir)
        if os.path.samestat(os.fstat(fd), os.fstat(rootfd)):
            os.close(fd)
            raise SetupError(f"image {self.spec.image}: {inside} leads to the sandbox's root: sbx cannot mount on it")
        return fd


def resolve(rootfd: int, inside: str, is_dir: bool) -> int:
    """An O_PATH fd for `inside`, resolved as if rootfd were /, creating what is missing.

    Symlinks (absolute ones and `..` included) are resolved within the root, so
    no component can ever lead outside it.
    """
    parts = [p for p in inside.split("/") if p and p != "."]
    if ".." in parts:
        raise SetupError(f"{inside}: '..' is not allowed in a sandbox path")
    how = linux.RESOLVE_IN_ROOT | linux.RESOLVE_NO_MAGICLINKS
    try:
        return linux.openat2(rootfd, "/".join(parts) or ".", os.O_PATH, how)
    except FileNotFoundError:
        pass
    for i in range(len(parts)):
        sub = "/".join(parts[: i + 1])
        try:
            os.close(linux.openat2(rootfd, sub, os.O_PATH, how))
            continue
        except FileNotFoundError:
            pass
        parent = linux.openat2(rootfd, "/".join(parts[:i]) or ".", os.O_PATH | os.O_DIRECTORY, how)
        try:
            if i == len(parts) - 1 and not is_dir:
                os.close(os.open(parts[i], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                 0o644, dir_fd=parent))
            else:
                os.mkdir(parts[i], 0o755, dir_fd=parent)
        except FileExistsError:
            pass  # a dangling symlink: the open below reports it
        except OSError as exc:
            raise SetupError(f"cannot create {inside} in the sandbox: {exc.strerror}") from None
        finally:
            os.close(parent)
    try:
        return linux.openat2(rootfd, "/".join(parts), os.O_PATH, how)
    except OSError as exc:
        raise SetupError(f"cannot create {inside} in the sandbox: {exc.strerror}") from None
