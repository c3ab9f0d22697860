"""The floor of a sandbox built in Python: what issue 17's goals leave for sbx's own logic.

    python bench/floor.py [--runs 200] [--preload MODULE[,MODULE...]]

Measures, alternating run by run in this one process (medians [p25 p75], wall and CPU):

  bwrap            bubblewrap's whole run, bench/perrun.py's set-up (the goals' yardstick);
  spawn            posix_spawn of /bin/true from this process: the floor of running anything;
  fork+exec        os.fork of this interpreter, execve /bin/true in the child;
  python sandbox   the least a Python sandbox can do with sbx's process shape: clone3 of this
                   interpreter straight into new user, pid, mount, ipc, uts and net namespaces
                   (the parent writes the id maps), that child as pid 1 mounts a tmpfs root,
                   /usr read-only, /proc, a /dev of six device binds, a /tmp, pivots, and forks
                   the payload, which execs /bin/true; pid 1 reaps it.  No sbx code at all: no
                   seccomp, no capabilities, no cgroup, no reports, no supervision.
  ... no mounts    the same with only /proc mounted: what the mounts cost.
  ... template     the same view from a mount tree built once: a holder process (cloned at
                   start-up into its own user and mount namespaces) builds the static part (the
                   tmpfs root, /usr, the links, /dev and its binds) as a detached tree, then per
                   run clones pid 1 into the same new namespaces (nested in its own), which
                   clones the template (open_tree), attaches it, mounts a fresh /proc and /tmp in
                   it and pivots.  CPU includes the holder's per run; the one-off build is left out.
  ... vfork payload  the same with the payload started by posix_spawn (vfork, no copy of the
                   interpreter): what a payload that is not a fork of Python saves (sbx's
                   init starts sbx-waiter so, which sets the payload up in compiled code).
  python -I -S -c pass, python -c pass
                   a new interpreter's bare start, without and with site (which `sbx` needs to
                   find the venv's packages);
  cold python sandbox
                   bench/floorbox.py, a new interpreter doing one `... vfork payload` sandbox,
                   with site and ctypes: the floor of a cold `sbx run -- /bin/true` in Python.
                   Less the bare start, against bubblewrap's whole run: issue 17's cold goal.

CPU is this process's own (getrusage RUSAGE_SELF: the clone, the map writes) plus what the
child and everything it reaped used (wait4's rusage).  --preload imports modules first (sbx's
fork server, say), so the interpreter that forks is as large as the one sbx forks: fork's and
copy-on-write's cost grows with it.  Run it as an unprivileged user; it asserts nothing.

The pid 1 and its set-up are bench/floorbox.py's.  If `python sandbox` alone is over a goal
(or the cold row over the cold goal), no change to sbx's Python can meet that goal: only
work done outside a forked interpreter (a compiled helper) can.
"""

from __future__ import annotations

import argparse
import importlib
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from perrun import GOAL_COLD, Launcher, bwrap_argv, spread  # noqa: E402

import floorbox  # noqa: E402
from floorbox import DEVICES, NAMESPACES, NOSUID_NODEV, map_ids, start_payload  # noqa: E402

from sandbox.kernel import linux  # noqa: E402
from sandbox.runtime.rootfs import mount  # noqa: E402

AT_FDCWD = -100


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def attach(tree: int, dir_fd: int, path: str) -> None:
    """move_mount a detached tree onto path (relative to dir_fd), closing it."""
    mount.attach(tree, os.open(path, os.O_PATH | os.O_CLOEXEC, dir_fd=dir_fd))


def new_tmpfs(mode: str, attrs: int) -> int:
    fs = linux.fsopen("tmpfs")
    try:
        linux.fsconfig(fs, "mode", mode)
        linux.fsconfig(fs, None)
        return linux.fsmount(fs, attrs)
    finally:
        os.close(fs)


def build_template() -> int:
    """build_root's static part as a detached tree: a tmpfs from fsmount with binds moved into
    it.  Only a tree in no mount namespace can be cloned from namespaces nested below: one
    open_tree copied out of a namespace clones only from that namespace (EINVAL elsewhere)."""
    root = new_tmpfs("0755", linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV)
    for name in ("usr", "proc", "dev", "tmp", "oldroot"):
        os.mkdir(name, dir_fd=root)
    usr = linux.open_tree(AT_FDCWD, "/usr", linux.OPEN_TREE_CLONE | linux.AT_RECURSIVE)
    linux.mount_setattr(usr, linux.MOUNT_ATTR_RDONLY | linux.MOUNT_ATTR_NOSUID | linux.MOUNT_ATTR_NODEV,
                        recursive=False)
    attach(usr, root, "usr")
    for name in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink("/" + name):
            os.symlink(os.readlink("/" + name), name, dir_fd=root)
    dev = new_tmpfs("0755", linux.MOUNT_ATTR_NOSUID)
    for name in DEVICES:
        os.close(os.open(name, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o666, dir_fd=dev))
        attach(linux.open_tree(AT_FDCWD, f"/dev/{name}", linux.OPEN_TREE_CLONE), dev, name)
    attach(dev, root, "dev")
    return root


def enter_template(template: int) -> None:
    """pid 1's set-up from the template: its clone attached over /tmp (in this new mount
    namespace), a fresh /proc and /tmp in it, pivoted into."""
    attach(linux.open_tree(template, "", linux.OPEN_TREE_CLONE | linux.AT_RECURSIVE | linux.AT_EMPTY_PATH),
           AT_FDCWD, "/tmp")
    os.chdir("/tmp")
    linux.mount("proc", "proc", "proc", NOSUID_NODEV | linux.MS_NOEXEC)
    linux.mount("tmpfs", "tmp", "tmpfs", NOSUID_NODEV, "mode=1777")
    linux.pivot_root(".", "oldroot")
    linux.umount2("/oldroot", linux.MNT_DETACH)
    os.chdir("/")


def python_sandbox(mounts: bool, vfork: bool = False) -> Callable[[], tuple[float, float]]:
    def run() -> tuple[float, float]:
        cpu = self_cpu()
        start = time.perf_counter()
        pid = floorbox.start(mounts, vfork)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - start
        if status != 0:
            raise RuntimeError(f"the Python sandbox failed: status {status:#x}")
        return wall, self_cpu() - cpu + usage.ru_utime + usage.ru_stime

    return run


class TemplateSandbox:
    """`python sandbox` from a template: a holder, root of its own user namespace (so it may
    write a nested one's maps) with a private mount namespace, keeps the template and starts
    each run's pid 1 on request, answering with pid 1's status and the CPU the run cost it."""

    def __init__(self) -> None:
        requests_r, self.requests = os.pipe()
        self.replies, replies_w = os.pipe()
        self.pid = linux.clone(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
        if self.pid == 0:
            code = 1
            try:
                os.close(self.requests)
                os.close(self.replies)
                self.serve(requests_r, replies_w)
                code = 0
            except BaseException as error:
                print(f"floor: the template holder: {error}", file=sys.stderr)
            finally:
                os._exit(code)
        os.close(requests_r)
        os.close(replies_w)
        map_ids(self.pid, os.getuid(), os.getgid())
        os.write(self.requests, b"m")  # the maps are written
        if os.read(self.replies, 16) != b"ready":
            raise RuntimeError("the template holder failed")

    @staticmethod
    def serve(requests: int, replies: int) -> None:
        os.read(requests, 1)
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)  # build_root's, once
        template = build_template()
        mark = self_cpu()
        os.write(replies, b"ready")
        while os.read(requests, 1):
            ready_r, ready_w = os.pipe()
            pid = linux.clone(NAMESPACES)
            if pid == 0:  # pid 1 of the new namespaces, nested in the holder's user namespace
                status = 1
                try:
                    os.close(ready_w)
                    os.read(ready_r, 1)
                    enter_template(template)
                    _, status = os.waitpid(start_payload(False), 0)
                finally:
                    os._exit(0 if status == 0 else 1)
            os.close(ready_r)
            map_ids(pid, 0, 0)
            os.close(ready_w)
            _, status, usage = os.wait4(pid, 0)
            # The holder's CPU from reply to reply: its wake-up, the clone, the maps, the reaping.
            now = self_cpu()
            os.write(replies, f"{status} {now - mark + usage.ru_utime + usage.ru_stime!r}".encode())
            mark = now

    def __call__(self) -> tuple[float, float]:
        cpu = self_cpu()
        start = time.perf_counter()
        os.write(self.requests, b"r")
        reply = os.read(self.replies, 64).split()
        wall = time.perf_counter() - start
        if len(reply) != 2 or reply[0] != b"0":
            raise RuntimeError(f"the template sandbox failed: {reply!r}")
        return wall, self_cpu() - cpu + float(reply[1])

    def close(self) -> None:
        os.close(self.requests)  # the holder reads EOF and exits
        os.waitpid(self.pid, 0)
        os.close(self.replies)


def fork_exec() -> tuple[float, float]:
    cpu = self_cpu()
    start = time.perf_counter()
    _, status, usage = os.wait4(start_payload(vfork=False), 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"fork+exec failed: status {status:#x}")
    return wall, self_cpu() - cpu + usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--preload", default="", help="modules to import first, comma-separated")
    args = parser.parse_args()
    for name in filter(None, args.preload.split(",")):
        importlib.import_module(name)
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("floor: bubblewrap is not installed", file=sys.stderr)
        return 1
    template = TemplateSandbox()  # before the launcher's descriptors exist: the holder keeps none
    launcher = Launcher({"PATH": "/usr/bin:/bin"})
    bwrap_run = bwrap_argv(bwrap)
    variants: dict[str, Callable[[], tuple[float, float]]] = {
        "bwrap": lambda: launcher.run(bwrap_run),
        "spawn": lambda: launcher.run(["/usr/bin/true"]),
        "fork+exec": fork_exec,
        "python sandbox": python_sandbox(mounts=True),
        "... no mounts": python_sandbox(mounts=False),
        "... template": template,
        "... vfork payload": python_sandbox(mounts=True, vfork=True),
        # Cold: each a new interpreter, as `sbx run` is.
        "python -I -S -c pass": lambda: launcher.run([sys.executable, "-I", "-S", "-c", "pass"]),
        "python -c pass": lambda: launcher.run([sys.executable, "-c", "pass"]),
        "cold python sandbox": lambda: launcher.run([sys.executable, str(REPO / "bench" / "floorbox.py")]),
    }
    for run in variants.values():
        run()  # the page cache, and a failure before any figure
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, run in variants.items():
            w, c = run()
            wall[name].append(w)
            cpu[name].append(c)
    launcher.close()
    template.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"floor of a Python sandbox, {args.runs} alternating runs, as uid {os.getuid()}; "
          f"this interpreter's peak RSS {rss:.1f} MiB"
          + (f" (preloaded {args.preload})" if args.preload else ""))
    print(f"  {'':20} {'wall ms [p25 p75]':>24} {'CPU ms [p25 p75]':>24}  CPU/bwrap's")
    bwrap_cpu = statistics.median(cpu["bwrap"])
    for name in variants:
        ratio = statistics.median(cpu[name]) / bwrap_cpu
        print(f"  {name:20} {spread(wall[name]):>24} {spread(cpu[name]):>24}  {ratio:5.2f}x")
    bare, bwrap_wall = statistics.median(wall["python -I -S -c pass"]), statistics.median(wall["bwrap"])
    own = statistics.median(wall["cold python sandbox"]) - bare
    print(f"  cold python sandbox less the bare start: {own * 1000:.2f} ms = {own / bwrap_wall:.2f}x bwrap's whole "
          f"run (issue 17's cold goal for sbx's own work: <= {GOAL_COLD}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
