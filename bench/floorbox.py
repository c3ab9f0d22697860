"""The least a Python sandbox does, as a module bench/floor.py shares and as a whole program.

    python bench/floorbox.py

As a program it is the floor of a cold `sbx run -- /bin/true` in Python: the interpreter
started as pip's `sbx` command starts it (site imported, so the venv's packages are found),
ctypes for the kernel calls sbx makes through it (sandbox/kernel/linux.py, its one sbx import),
then one sandbox of bench/floor.py's `... vfork payload` shape: clone3 straight into new user,
pid, mount, ipc, uts and net namespaces, the id maps written by the parent, pid 1 mounting a
tmpfs root with /usr read-only, the /bin /lib* links, /proc, a /dev of six device binds and a
/tmp, pivoting, and starting /bin/true by posix_spawn.  No sbx logic: no profile, no spec, no
seccomp, no capabilities, no Landlock, no cgroup, no reports.  Exit status 0 once /bin/true
has exited 0.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sandbox.kernel import linux  # noqa: E402

NAMESPACES = (linux.CLONE_NEWUSER | linux.CLONE_NEWPID | linux.CLONE_NEWNS | linux.CLONE_NEWIPC
              | linux.CLONE_NEWUTS | linux.CLONE_NEWNET)
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
NOSUID_NODEV = linux.MS_NOSUID | linux.MS_NODEV


def build_root(mounts: bool) -> None:
    """pid 1's set-up: a tmpfs root with the host image's view, pivoted into.  The base is a
    tmpfs over /tmp in this new mount namespace (the host's /tmp is untouched)."""
    linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
    if not mounts:
        linux.mount("proc", "/proc", "proc", NOSUID_NODEV | linux.MS_NOEXEC)
        return
    root = "/tmp"
    linux.mount("tmpfs", root, "tmpfs", NOSUID_NODEV, "mode=0755")
    for name in ("usr", "proc", "dev", "tmp", "oldroot"):
        os.mkdir(f"{root}/{name}")
    linux.mount("/usr", f"{root}/usr", None, linux.MS_BIND | linux.MS_REC)
    linux.mount(None, f"{root}/usr", None,
                linux.MS_BIND | linux.MS_REMOUNT | linux.MS_RDONLY | NOSUID_NODEV)
    for name in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), f"{root}/{name}")
    linux.mount("proc", f"{root}/proc", "proc", NOSUID_NODEV | linux.MS_NOEXEC)
    linux.mount("tmpfs", f"{root}/dev", "tmpfs", linux.MS_NOSUID, "mode=0755")
    for name in DEVICES:
        os.close(os.open(f"{root}/dev/{name}", os.O_CREAT | os.O_WRONLY, 0o666))
        linux.mount(f"/dev/{name}", f"{root}/dev/{name}", None, linux.MS_BIND)
    linux.mount("tmpfs", f"{root}/tmp", "tmpfs", NOSUID_NODEV, "mode=1777")
    os.chdir(root)
    linux.pivot_root(".", "oldroot")
    linux.umount2("/oldroot", linux.MNT_DETACH)
    os.chdir("/")


def map_ids(pid: int, uid: int, gid: int) -> None:
    """A child's maps, its uid and gid 0 being ours."""
    linux.write_file(f"/proc/{pid}/setgroups", "deny")
    linux.write_file(f"/proc/{pid}/uid_map", f"0 {uid} 1")
    linux.write_file(f"/proc/{pid}/gid_map", f"0 {gid} 1")


def start_payload(vfork: bool) -> int:
    if vfork:
        return os.posix_spawn("/usr/bin/true", ["true"], {})
    payload = os.fork()
    if payload == 0:
        try:
            os.execv("/usr/bin/true", ["true"])
        finally:
            os._exit(127)
    return payload


def start(mounts: bool, vfork: bool) -> int:
    """Clone pid 1 into new namespaces, map it, let it build its root and run /bin/true; its pid
    (our child, exiting 0 if /bin/true did)."""
    uid, gid = os.getuid(), os.getgid()
    ready_r, ready_w = os.pipe()
    pid = linux.clone(NAMESPACES)
    if pid == 0:  # pid 1 of the new namespaces
        status = 1
        try:
            os.close(ready_w)
            os.read(ready_r, 1)  # EOF: the maps are written
            build_root(mounts)
            _, status = os.waitpid(start_payload(vfork), 0)
        finally:
            os._exit(0 if status == 0 else 1)
    os.close(ready_r)
    map_ids(pid, uid, gid)
    os.close(ready_w)
    return pid


if __name__ == "__main__":
    _, wstatus = os.waitpid(start(mounts=True, vfork=True), 0)
    os._exit(0 if wstatus == 0 else 1)
