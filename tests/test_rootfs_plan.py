"""The root's plan (sandbox/runtime/rootfs/plan.py), a pure function: tables of specs and probes
against the ops they must give, without namespaces or mounts.  The executed plans are tested by
test_mounts, test_hostile_images, test_kept_layer, test_image_run and test_isolation.
"""

from __future__ import annotations

import pytest

from sandbox.errors import SetupError
from sandbox.model.spec import Limits, Mount, Spec
from sandbox.runtime.rootfs.ops import (CHECK, DISPOSABLE, KEPT_ON_DISK, KEPT_ON_HOST, MOUNT, ROOT, SEAL, SHAPE,
                                        TARGETS, TREE, Bind, Chmod, Dev, HostBind, HostOverlay, HostRoot, ImageRoot,
                                        Mkdir, Mounting, MountPoints, Op, Overlay, Proc, Seal, Symlink, Targets,
                                        Tmpfs, Workdir, Write)
from sandbox.runtime.rootfs.plan import (COVERED, DEVICES, KEPT, PROC_MASKED_DIRS, PROC_MASKED_FILES, PROC_READONLY,
                                         HostPath, Probes, order, parts, plan)

MiB = 1 << 20
HOST = (HostPath("/usr", "dir"), HostPath("/bin", "link", "usr/bin"), HostPath("/etc/ssl", "dir"),
        HostPath("/etc/ld.so.cache", "file"), HostPath("/etc/localtime", "link", "/usr/share/zoneinfo/UTC"))
HOSTS = Write("/etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tsbx\n")
SKELETON = [Mkdir("/root", 0o700), Mkdir("/home"), Mkdir("/run"), Mkdir("/var"), Mkdir("/tmp"), Mkdir("/proc"),
            Mkdir("/dev"), Mkdir("/var/tmp", 0o1777)]
PROC = Proc("/proc", PROC_READONLY, PROC_MASKED_FILES, PROC_MASKED_DIRS)
DEV = Dev("/dev", 64 * MiB, DEVICES)


def spec(**fields: object) -> Spec:
    return Spec(argv=("true",), **fields)  # type: ignore[arg-type]


def image(**fields: object) -> Spec:
    return spec(image="img", layers=("/store/l2", "/store/l1"), **fields)


def mounts(ops: tuple[Op, ...]) -> list[Op]:
    return [op for op in ops if isinstance(op, Mounting)]


def test_host_image() -> None:
    ops = plan(spec(), Probes(cow=True, host=HOST))
    assert list(ops) == [
        HostRoot(),
        Symlink("/bin", "usr/bin"), Mkdir("/etc"), *SKELETON[:-1],
        Symlink("/etc/localtime", "/usr/share/zoneinfo/UTC"),
        Write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                             "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"),
        Write("/etc/group", "root:x:0:\nnogroup:x:65534:\n"),
        Write("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n"),
        HOSTS, SKELETON[-1],
        Targets(points=(("/usr", True), ("/tmp", True), ("/proc", True), ("/dev", True), ("/etc/ssl", True),
                        ("/etc/ld.so.cache", False), ("/", True))),  # the mount points, then the working directory
        HostOverlay("/usr", "/usr"), Tmpfs("/tmp", 64 * MiB), PROC, DEV,
        HostBind("/etc/ssl", "/etc/ssl"), HostBind("/etc/ld.so.cache", "/etc/ld.so.cache", is_dir=False),
        Workdir("/"),
    ]


def test_host_image_without_user_xattrs_binds_host_dirs_read_only() -> None:
    ops = plan(spec(), Probes(cow=False, host=HOST))
    assert HostBind("/usr", "/usr") in ops and not any(isinstance(op, HostOverlay) for op in ops)


def test_imported_image() -> None:
    ops = plan(image(workdir="/work"), Probes(cow=True))
    assert list(ops) == [
        ImageRoot(upper=DISPOSABLE), MountPoints(replace=True, covered=COVERED, kept=KEPT),
        Mkdir("/etc"), *SKELETON[:-1], HOSTS, SKELETON[-1],
        Targets(points=(("/tmp", True), ("/proc", True), ("/dev", True), ("/work", True))),
        Tmpfs("/tmp", 64 * MiB), PROC, DEV, Workdir("/work"),
    ]


@pytest.mark.parametrize("cow, sock, upper", [(True, 5, KEPT_ON_DISK), (False, 5, KEPT_ON_HOST),
                                              (True, -1, KEPT_ON_HOST)])
def test_kept_upper_sets_up_in_a_layer_of_its_own(cow: bool, sock: int, upper: str) -> None:
    ops = plan(image(upper="/store/tmp/up", upper_sock=sock, mounts=(Mount("/data", "rw", "/src"),)),
               Probes(cow=cow, sources=(True,)))
    seal = ops.index(Seal())
    setup, final = ops[:seal], ops[seal + 1:]
    assert setup[:2] == (ImageRoot(upper=DISPOSABLE), MountPoints(replace=True, covered=COVERED, kept=KEPT))
    assert HOSTS in setup and not mounts(setup)  # sbx's own writes and every mount point, nothing mounted
    assert Targets(points=(("/tmp", True), ("/proc", True), ("/dev", True), ("/data", True), ("/", True))) in setup
    assert final[:2] == (ImageRoot(upper=upper, over_setup=True), MountPoints(replace=False, covered=COVERED, kept=KEPT))
    assert HOSTS not in final and not any(isinstance(op, Targets) for op in final)
    assert mounts(final) == [Tmpfs("/tmp", 64 * MiB), PROC, DEV, Bind("/data", 0, True, "rw")]
    assert final[-1] == Workdir("/")


@pytest.mark.parametrize("mount, source, op", [
    (Mount("/data", "ro", "/src"), True, Bind("/data", 0, True, "ro")),
    (Mount("/data", "rw", "/src"), True, Bind("/data", 0, True, "rw")),
    (Mount("/etc/app.conf", "ro", "/src/app.conf"), False, Bind("/etc/app.conf", 0, False, "ro")),
    (Mount("/data", "overlay", "/src"), True, Overlay("/data", 0)),
    (Mount("/scratch", "tmpfs", size=MiB), None, Tmpfs("/scratch", MiB)),
    (Mount("/scratch", "tmpfs"), None, Tmpfs("/scratch", 64 * MiB)),
    (Mount("/data", "ro", "/missing", optional=True), None, None),
])
def test_mount_kinds(mount: Mount, source: bool | None, op: Op | None) -> None:
    ops = plan(image(mounts=(mount,)), Probes(cow=True, sources=(source,)))
    assert mounts(ops)[3:] == ([] if op is None else [op])
    points = next(t for t in ops if isinstance(t, Targets)).points
    assert points[3:] == (((mount.target, source is not False),) if op else ()) + (("/", True),)


def test_payload_with_an_id_of_its_own_owns_its_home_the_root_top_and_overlays() -> None:
    ops = plan(spec(id_ranges=True, uid=1000, gid=1000, mounts=(Mount("/data", "overlay", "/src"),)),
               Probes(cow=True, sources=(True,)))
    assert Mkdir("/home/sbx", owner=(1000, 1000)) in ops and Chmod("/", 0o1777) in ops
    assert Overlay("/data", 0, (1000, 1000)) in ops
    assert Write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\nsbx:x:1000:1000:sbx:/home/sbx:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n") in ops
    single = plan(spec(uid=1000, gid=1000), Probes(cow=True))  # one mapping: sbx's files are the payload's
    assert Mkdir("/home/sbx") in single and not any(isinstance(op, Chmod) for op in single)


@pytest.mark.parametrize("network, dns, files, writes", [
    ("host", (), (("hosts", "h\n"), ("resolv.conf", "r\n")),
     [Write("/etc/hosts", "h\n"), Write("/etc/resolv.conf", "r\n")]),
    ("host", (), (), []),
    ("pasta", ("10.0.2.3",), (), [Write("/etc/resolv.conf", "nameserver 10.0.2.3\n"), HOSTS]),
    ("none", ("10.0.2.3",), (), [HOSTS]),
])
def test_etc_by_network(network: str, dns: tuple[str, ...], files: tuple[tuple[str, str], ...],
                        writes: list[Op]) -> None:
    ops = plan(image(network=network, dns=dns), Probes(cow=True, host_files=files))
    assert [op for op in ops if isinstance(op, Write)] == writes


REFUSED = [
    (spec(mounts=(Mount("/a/../b", "tmpfs"),)), Probes(), "/a/../b: '..' is not allowed in a sandbox path"),
    (spec(workdir="/w/.."), Probes(), "/w/..: '..' is not allowed in a sandbox path"),
    (spec(mounts=(Mount("/", "tmpfs"),)), Probes(), "image host: / leads to the sandbox's root: sbx cannot mount on it"),
    (spec(mounts=(Mount("/data", "overlay", "/src"),)), Probes(cow=False, sources=(True,)),
     "/src:/data:overlay: this kernel's tmpfs has no user xattrs (Linux < 6.6), so overlays cannot be stacked on it; "
     "use :ro or :rw"),
    (spec(upper="/up"), Probes(), "a kept writable layer needs an imported image (the host image has no root layer)"),
    (image(upper="/up", upper_sock=5, limits=Limits(strict=True)), Probes(cow=False),
     "--strict: the kept writable layer cannot be bounded while the run writes (this kernel's tmpfs has no user "
     "xattrs, Linux 6.6+): it would be on the host's disk"),
]


@pytest.mark.parametrize("shape, probes, message", REFUSED)
def test_refused(shape: Spec, probes: Probes, message: str) -> None:
    with pytest.raises(SetupError) as refused:
        plan(shape, probes)
    assert str(refused.value) == message


def test_strict_kept_layer_with_user_xattrs_is_planned() -> None:
    ops = plan(image(upper="/up", upper_sock=5, limits=Limits(strict=True)), Probes(cow=True))
    assert ImageRoot(upper=KEPT_ON_DISK, over_setup=True) in ops


@pytest.mark.parametrize("given, expected", [
    # Nested targets: parents first, whatever order they were given in.
    ((Mount("/a/b/c", "tmpfs"), Mount("/a", "tmpfs"), Mount("/a/b", "tmpfs")),
     [Tmpfs("/tmp", 64 * MiB), PROC, DEV, Tmpfs("/a", 64 * MiB), Tmpfs("/a/b", 64 * MiB), Tmpfs("/a/b/c", 64 * MiB)]),
    # Equal depth keeps the given order; the last entry for a target wins (spelled differently too).
    ((Mount("/y", "tmpfs", size=1), Mount("/x", "tmpfs", size=2), Mount("/x/", "tmpfs", size=3)),
     [Tmpfs("/tmp", 64 * MiB), PROC, DEV, Tmpfs("/y", 1), Tmpfs("/x/", 3)]),
    # A user mount hides sbx's own at its target: one /tmp, the user's.
    ((Mount("/tmp", "tmpfs", size=1),), [PROC, DEV, Tmpfs("/tmp", 1)]),
    # sbx's own come first, so a user mount under one stacks on it.
    ((Mount("/tmp/x", "tmpfs", size=1), Mount("/dev/shm", "tmpfs", size=2)),
     [Tmpfs("/tmp", 64 * MiB), PROC, DEV, Tmpfs("/tmp/x", 1), Tmpfs("/dev/shm", 2)]),
])
def test_mount_order(given: tuple[Mount, ...], expected: list[Op]) -> None:
    ops = plan(image(mounts=given), Probes(cow=True, sources=(None,) * len(given)))
    assert mounts(ops) == expected


def test_user_mount_hides_what_sbx_shares_under_it() -> None:
    ops = plan(spec(mounts=(Mount("/etc", "ro", "/conf"),)), Probes(cow=True, host=HOST, sources=(True,)))
    assert [op.target for op in mounts(ops)] == ["/usr", "/tmp", "/proc", "/dev", "/etc"]
    assert Write("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                                "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n") in ops


def test_every_plan_is_ordered_by_the_one_rule() -> None:
    shapes = [spec(), image(), image(upper="/up", upper_sock=5),
              spec(mounts=(Mount("/a/b", "tmpfs"), Mount("/a", "tmpfs")), workdir="/a/b")]
    phases = (ROOT, SHAPE, TREE, TARGETS, SEAL, MOUNT, CHECK)
    assert list(phases) == sorted(phases)
    for shape in shapes:
        ops = list(plan(shape, Probes(cow=True, host=HOST, sources=(None,) * len(shape.mounts))))
        passes = [ops] if Seal() not in ops else [ops[: ops.index(Seal()) + 1], ops[ops.index(Seal()) + 1:]]
        for one in passes:
            assert order(list(one)) == one
            assert [op.phase for op in one] == sorted(op.phase for op in one)
            for first, second in zip(one, one[1:]):
                if first.phase == second.phase:
                    assert len(parts(first.target)) <= len(parts(second.target)), (first, second)
        points = [path for path, _ in next(op for op in ops if isinstance(op, Targets)).points]
        assert points[-1] == shape.workdir and points[:-1] == [op.target for op in mounts(tuple(ops))]
