"""What a sandbox's root is made of, decided before anything is mounted: `plan(spec, probes)`.

Pure: what needs the kernel (does the staging tmpfs take user xattrs, which host directories
exist, is a bind's source a directory) comes in as Probes, which the executor gathers
(execute.probe).  The result is a flat tuple of ops (ops.py), run front to back.

The ordering rule (`order`), one for every op: a stable sort by (phase, number of path
components of the target).  So the root comes first, then the fixes of its top-level mount
points, then sbx's own directories and files (a parent before what is in it), then every
mount point is made, then the mounts, a parent always before anything under it whatever
order the mounts were given in, then the working directory is checked.  Among mounts sbx's
own come first and the user's after, in their order; the last entry for a target wins
(the earlier ones would be hidden: they are left out), and sbx's own mounts at or under a
user mount's target are left out too (`-v DIR:/etc` hides the /etc sbx shares; binding
into the user's directory instead would write there).

A kept writable layer (Spec.upper: image builds, --commit) makes two passes: the set-up pass
writes sbx's own changes (mount points, /etc, the skeleton, every mount point and the
working directory) on a scratch root and seals them into a layer of their own; the second
pass puts the image, that layer and the kept upper together as /, so the kept upper holds
only what the payload changes.  Each pass is ordered by the same rule.
"""

from __future__ import annotations

from ...errors import SetupError
from ...model.frozen import dataclass
from ...model.spec import Spec
from .ops import (DISPOSABLE, KEPT_ON_DISK, KEPT_ON_HOST, Bind, Chmod, Dev, HostBind, HostOverlay, HostRoot,
                  ImageRoot, Mkdir, Mounting, MountPoints, Op, Overlay, Proc, Seal, Symlink, Targets, Tmpfs,
                  Workdir, Write)

HOST_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# /etc entries a toolchain may need; missing ones are skipped.
ETC_SHARED = ("alternatives", "ssl", "ca-certificates", "ld.so.cache", "services", "protocols",
              "mime.types", "localtime", "timezone", "os-release", "debian_version")
ETC_SHARED_PREFIXES = ("java-", "python3")
# The host's files copied into /etc with --network host (resolv.conf is often a link into /run).
ETC_FROM_HOST = ("hosts", "resolv.conf")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
PROC_MASKED_FILES = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats")
PROC_MASKED_DIRS = ("acpi", "scsi", "asound")
# Top-level directories sbx covers with a mount of its own: whatever an image has there is hidden
# anyway, so a symlink or a file in their place is replaced by an empty directory in the writable layer.
COVERED = ("proc", "dev", "tmp")
# sbx writes into the image's own /etc (hosts, resolv.conf): one that is not a directory is refused.
KEPT = ("etc",)
# The directories every sandbox has (an image's own are left as they are), with their modes.
SKELETON = (("root", 0o700), ("home", 0o755), ("run", 0o755), ("var", 0o755), ("var/tmp", 0o1777),
            ("tmp", 0o755), ("proc", 0o755), ("dev", 0o755))
PAYLOAD_HOME = "/home/sbx"  # a payload uid other than 0
OPEN_ROOT_MODE = 0o1777  # the root's top when the payload has an id of its own (see skeleton)

# HostPath.kind
DIR, FILE, LINK = "dir", "file", "link"


@dataclass(frozen=True)
class HostPath:
    """A host path the host image shows at the same place: a directory, a file or a symlink
    (`link`: where it points)."""

    path: str
    kind: str
    link: str = ""


@dataclass(frozen=True)
class Probes:
    """The kernel's and the host's answers the plan depends on.

    `cow`: the staging tmpfs takes user.* xattrs (Linux >= 6.6), so overlays can have their upper
    there; else host directories are read-only binds and a kept layer stays on the host.
    `sources`: per Spec.mounts, whether a bind's source is a directory; None for a tmpfs or an
    optional source that does not exist.  `host`: the host image's HOST_DIRS and shared /etc
    entries that exist.  `host_files`: (name, text) of the ETC_FROM_HOST files read for
    --network host.
    """

    cow: bool = True
    sources: tuple[bool | None, ...] = ()
    host: tuple[HostPath, ...] = ()
    host_files: tuple[tuple[str, str], ...] = ()


def parts(path: str) -> tuple[str, ...]:
    return tuple([part for part in path.split("/") if part and part != "."])


def depth(op: Op) -> int:
    return len(parts(op.target))


def order(ops: list[Op]) -> list[Op]:
    """The one ordering rule (see the module docstring)."""
    return sorted(ops, key=lambda op: (op.phase, depth(op)))


def shared_etc(name: str) -> bool:
    """Whether the host image shares the host's /etc/NAME."""
    return name in ETC_SHARED or name.startswith(ETC_SHARED_PREFIXES)


def owned_by_payload(spec: Spec) -> bool:
    """Whether the payload is a mapped id of its own (id ranges); in the single mapping every
    file sbx makes is already its own."""
    return spec.id_ranges and (spec.uid != 0 or spec.gid != 0)


def plan(spec: Spec, probes: Probes) -> tuple[Op, ...]:
    """The ops that build `spec`'s root, in the order they run; SetupError for a spec that
    cannot be set up whatever the image holds."""
    if spec.upper is not None and not spec.layers:
        raise SetupError("a kept writable layer needs an imported image (the host image has no root layer)")
    for path in (spec.workdir, *(mount.target for mount in spec.mounts)):
        if ".." in path.split("/"):
            raise SetupError(f"{path}: '..' is not allowed in a sandbox path")
    mounts = combine(default_mounts(spec, probes), user_mounts(spec, probes))
    points = [(op.target, op.dir_target()) for op in sorted(mounts, key=depth)]
    targets = Targets(points=(*points, (spec.workdir, True)))
    skeleton = skeleton_ops(spec)
    if not spec.layers:
        links = [Symlink(entry.path, entry.link) for entry in probes.host if entry.kind == LINK]
        return tuple(order([HostRoot(), *links, *etc(spec, probes, image=False), *skeleton, targets, *mounts,
                            Workdir(spec.workdir)]))
    shape = MountPoints(replace=True, covered=COVERED, kept=KEPT)
    if spec.upper is None:
        return tuple(order([ImageRoot(upper=DISPOSABLE), shape, *etc(spec, probes, image=True), *skeleton,
                            targets, *mounts, Workdir(spec.workdir)]))
    setup = order([ImageRoot(upper=DISPOSABLE), shape, *etc(spec, probes, image=True), *skeleton, targets, Seal()])
    # The kept upper may bring a replaced mount point back: check again, refusing this time.  The
    # skeleton again: its directories are there (below), but an overlay's root takes the upper's mode.
    final = order([ImageRoot(upper=kept_upper(spec, probes), over_setup=True),
                   MountPoints(replace=False, covered=COVERED, kept=KEPT), *skeleton, *mounts,
                   Workdir(spec.workdir)])
    return (*setup, *final)


def kept_upper(spec: Spec, probes: Probes) -> str:
    """Where the kept writable layer goes: on the --disk tmpfs, so every write the run makes
    counts against --disk as it happens, when someone takes it from there (Spec.upper_sock);
    else the host directory Spec.upper, measured after the run."""
    if spec.upper_sock >= 0 and probes.cow:
        return KEPT_ON_DISK
    if spec.upper_sock >= 0 and spec.limits.strict:
        raise SetupError("--strict: the kept writable layer cannot be bounded while the run writes "
                         "(this kernel's tmpfs has no user xattrs, Linux 6.6+): it would be on the host's disk")
    return KEPT_ON_HOST


def skeleton_ops(spec: Spec) -> list[Op]:
    ops: list[Op] = [Mkdir("/" + name, mode) for name, mode in SKELETON]
    owned = owned_by_payload(spec)
    if spec.uid != 0:
        ops.append(Mkdir(PAYLOAD_HOME, owner=(spec.uid, spec.gid) if owned else None))
    if owned:
        # The writable layer's top is the payload's to add to, as /tmp is (sticky: what sbx
        # put there stays); the image's own files keep their owners, as under docker's USER.
        ops.append(Chmod("/", OPEN_ROOT_MODE))
    return ops


def etc(spec: Spec, probes: Probes, image: bool) -> list[Op]:
    """A synthetic /etc on the host image; on an imported image, its own with our hosts and resolv.conf."""
    ops: list[Op] = [Mkdir("/etc")]
    if not image:
        users = "root:x:0:0:root:/root:/bin/sh\n"
        groups = "root:x:0:\n"
        if spec.uid != 0:
            users += f"sbx:x:{spec.uid}:{spec.gid}:sbx:/home/sbx:/bin/sh\n"
        if spec.gid != 0:
            groups += f"sbx:x:{spec.gid}:\n"
        ops.append(Write("/etc/passwd", users + "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"))
        ops.append(Write("/etc/group", groups + "nogroup:x:65534:\n"))
        ops.append(Write("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"))
    if spec.network == "host":
        ops += [Write("/etc/" + name, text) for name, text in probes.host_files]
    else:
        if spec.network == "pasta" and spec.dns:
            ops.append(Write("/etc/resolv.conf", "".join(f"nameserver {server}\n" for server in spec.dns)))
        ops.append(Write("/etc/hosts", f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                                       f"127.0.1.1\t{spec.hostname}\n"))
    return ops


def default_mounts(spec: Spec, probes: Probes) -> list[Mounting]:
    """sbx's own mounts: the host image's directories and shared /etc entries, /tmp, /proc, /dev."""
    ops: list[Mounting] = []
    if not spec.layers:
        for entry in probes.host:
            if entry.kind == LINK:
                continue  # a Symlink in the tree
            if entry.path.startswith("/etc/"):
                ops.append(HostBind(entry.path, entry.path, is_dir=entry.kind == DIR))
            elif probes.cow:
                ops.append(HostOverlay(entry.path, entry.path))
            else:  # correct, size-limited, but not writable
                ops.append(HostBind(entry.path, entry.path))
    return [*ops, Tmpfs("/tmp", spec.tmp_size),
            Proc("/proc", PROC_READONLY, PROC_MASKED_FILES, PROC_MASKED_DIRS),
            Dev("/dev", spec.shm_size, DEVICES)]


def user_mounts(spec: Spec, probes: Probes) -> list[Mounting]:
    """-v, --tmpfs and profile mounts, in their order; an optional source that is missing is skipped."""
    owner = (spec.uid, spec.gid) if owned_by_payload(spec) else None
    ops: list[Mounting] = []
    for slot, mount in enumerate(spec.mounts):
        if not parts(mount.target):
            raise SetupError(f"image {spec.image}: {mount.target} leads to the sandbox's root: "
                             "sbx cannot mount on it")
        if mount.mode == "tmpfs":
            ops.append(Tmpfs(mount.target, spec.tmp_size if mount.size is None else mount.size))
            continue
        is_dir = probes.sources[slot]
        if is_dir is None:
            continue
        if mount.mode == "overlay":
            if not probes.cow:
                raise SetupError(f"{mount.source}:{mount.target}:overlay: this kernel's tmpfs has no user "
                                 "xattrs (Linux < 6.6), so overlays cannot be stacked on it; use :ro or :rw")
            ops.append(Overlay(mount.target, slot, owner))
        else:
            ops.append(Bind(mount.target, slot, is_dir, mount.mode))
    return ops


def combine(defaults: list[Mounting], user: list[Mounting]) -> list[Mounting]:
    """sbx's mounts then the user's, without those a later one hides (see the module docstring)."""
    kept: list[Mounting] = []
    seen: set[tuple[str, ...]] = set()
    for op in reversed(user):
        if parts(op.target) not in seen:
            seen.add(parts(op.target))
            kept.append(op)
    kept.reverse()

    def hidden(op: Mounting) -> bool:
        mine = parts(op.target)
        return any(mine[: len(theirs)] == theirs for theirs in seen)

    return [*(op for op in defaults if not hidden(op)), *kept]
