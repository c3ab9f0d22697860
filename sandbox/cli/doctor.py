"""`sbx doctor`: what this host allows, each finding with a fix hint.

Probes run in a forked child that creates its own namespaces, so the answer
is what `sbx run` will really meet, not a guess from sysctls alone.
"""

from __future__ import annotations

import os
import sys

from .confinement import Finding, read_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def _in_child(probe: Callable[[list[str]], None]) -> dict[str, str]:
    """Fork; `probe` runs in the child and reports key=value lines on a pipe (never raises out of it)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        out: list[str] = []
        try:
            probe(out)
        except BaseException as exc:  # report, never raise out of a forked child
            out.append(f"error={type(exc).__name__}: {exc}")
        os.write(write_fd, "\n".join(out).encode(errors="replace"))
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 4096):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return dict(line.split("=", 1) for line in b"".join(chunks).decode(errors="replace").splitlines() if "=" in line)


def _probe(out: list[str]) -> None:
    """What init does, step by step, each step's errno reported (userns_errno, mount_errno, proc_errno)."""
    from ..kernel import linux
    from ..runtime import rootfs

    uid, gid = os.getuid(), os.getgid()
    try:
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS | linux.CLONE_NEWPID)
        linux.map_ids(0, uid, 0, gid)
    except OSError as exc:
        out += [f"userns=no: {exc.strerror}", f"userns_errno={exc.errno}"]
        return
    out += ["userns=yes", "userns_errno=0"]
    try:
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        base = rootfs.staging_dir()
        rootfs.attach(rootfs.tmpfs(1 << 20, "0755", 0), os.open(base, os.O_PATH | os.O_CLOEXEC))
    except OSError as exc:
        out += [f"tmpfs=no: {exc.strerror}", f"mount_errno={exc.errno}"]
        return
    out += ["tmpfs=yes", "mount_errno=0"]
    out.append("xattr=" + ("yes" if rootfs.supports_user_xattrs(base) else "no"))
    for name in ("u", "w", "m", "p"):
        os.mkdir(f"{base}/{name}")
    out.append(f"proc_errno={_fresh_proc(f'{base}/p')}")
    try:
        fd = rootfs.overlay(["/usr"], f"{base}/u", f"{base}/w", 0)
        rootfs.attach(fd, os.open(f"{base}/m", os.O_PATH | os.O_CLOEXEC))
        out.append("overlay=yes")
    except OSError as exc:
        out.append(f"overlay=no: {exc.strerror}")


def _fresh_proc(target: str) -> int:
    """Mount a procfs for our new pid namespace on `target`, from its first process; the errno (0: mounted).
    An outer container that masks parts of its /proc makes the kernel refuse it (EPERM)."""
    from ..kernel import linux

    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            linux.mount("proc", target, "proc", linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC)
        except OSError as exc:
            code = exc.errno or 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _network(out: list[str]) -> None:
    from ..net.link import probe

    out.append(f"netlink={probe()}")


def _errno(probe: dict[str, str], key: str) -> int | None:
    value = probe.get(key, "")
    return int(value) if value.isdigit() else None


def findings() -> list[Finding]:
    from . import confinement

    result = [Finding("kernel", "ok", os.uname().release)]
    probe = _in_child(_probe)
    readings = confinement.read_host()
    tried = confinement.Probe(_errno(probe, "userns_errno"), _errno(probe, "mount_errno"),
                              _errno(probe, "proc_errno"))
    confined = [v for v in [confinement.apparmor(readings, tried, confinement.interpreter()),
                            *confinement.container(readings, tried)] if v is not None]
    userns = probe.get("userns", "no")
    if userns != "yes":
        hints = []
        if read_text("/proc/sys/kernel/unprivileged_userns_clone") == "0":
            hints.append("sysctl -w kernel.unprivileged_userns_clone=1")
        if read_text("/proc/sys/user/max_user_namespaces") == "0":
            hints.append("sysctl -w user.max_user_namespaces=15000")
        fix = "; ".join(hints) or ("see the findings below" if any(f.status == "fail" for f in confined)
                                   else "enable unprivileged user namespaces in the kernel")
        result.append(Finding("user namespaces", "fail", userns.partition(": ")[2] or "unavailable", fix))
        return result + confined + _helpers()
    result.append(Finding("user namespaces", "ok", "unprivileged user namespaces work"))
    tmpfs = probe.get("tmpfs", "no")
    result.append(Finding("tmpfs in a user namespace", "ok" if tmpfs == "yes" else "fail", tmpfs))
    if tried.proc not in (0, None):
        result.append(Finding("fresh /proc", "fail", f"a procfs for a new pid namespace: {os.strerror(tried.proc)} "
                              "(the kernel refuses one while the /proc sbx runs under has parts hidden by mounts "
                              "over them, as an outer container's masked paths are)",
                              "docker run --security-opt systempaths=unconfined; podman run --security-opt "
                              "unmask=ALL"))
    if probe.get("xattr") == "yes" and probe.get("overlay") == "yes":
        result.append(Finding("writable layer", "ok", "overlayfs over the host image, upper on tmpfs "
                                                      "(tmpfs has user xattrs)"))
    elif probe.get("overlay", "").startswith("no"):
        result.append(Finding("writable layer", "fail", f"overlay in a user namespace: {probe.get('overlay')}",
                              "sbx needs Linux >= 5.11 for overlayfs in a user namespace"))
    elif tmpfs == "yes":
        result.append(Finding("writable layer", "warn",
                              "tmpfs has no user.* xattrs (Linux < 6.6): the host image's /usr, /bin, ... are "
                              "read-only binds instead of copy-on-write overlays, and -v SRC:DST:overlay is "
                              "refused; /, /tmp, /etc, new paths and rw binds stay writable and size-limited",
                              "Linux >= 6.6 gives tmpfs user xattrs"))
    return result + confined + [_identity(), _landlock()] + _cgroup() + _helpers()


def _landlock() -> Finding:
    """The second fence (landlock.py; SECURITY.md, "Landlock"): which ABI, and what it lacks."""
    from ..runtime import landlock

    kernel = landlock.abi()
    cap = os.environ.get("SBX_LANDLOCK", "")
    version = min(kernel, int(cap)) if cap.isdigit() else kernel
    abi = f"ABI {version}" + (f" (the kernel's {kernel}, capped by SBX_LANDLOCK={cap})" if version < kernel else "")
    if version < 1:
        return Finding("landlock", "warn", f"not available{abi[5:]}: runs go without the second fence on files, "
                       "TCP ports and host sockets (each run says so)", "Linux >= 5.13 with landlock in lsm= at boot")
    missing = [what for need, what in ((4, "TCP port rules (ABI 4, Linux 6.7)"),
                                       (6, "abstract unix socket and signal scopes (ABI 6, Linux 6.12)"))
               if version < need]
    if missing:
        return Finding("landlock", "warn", f"{abi}: no " + ", no ".join(missing), "a newer kernel")
    return Finding("landlock", "ok", f"{abi}: files, TCP ports, abstract unix socket and signal scopes")


def _identity() -> Finding:
    """Which identity the payload gets (idmap.py; SECURITY.md, "Identity")."""
    from ..kernel import idmap

    ranges = idmap.for_payload(os.environ)
    if ranges is not None:
        host_uid = ranges.uid_start + idmap.PAYLOAD_ID - 1
        return Finding("payload identity", "ok", f"id ranges: the payload is uid {idmap.PAYLOAD_ID} inside, "
                       f"{host_uid} on the host (subordinate ids {ranges.uid_start}-"
                       f"{ranges.uid_start + ranges.count - 1}), which owns none of your files")
    if os.environ.get("SBX_ID_RANGES") == "0":
        why = "SBX_ID_RANGES=0 asks for the single mapping"
    elif os.getuid() == 0:
        why = "this root's user namespace does not map the ids sbx would use"
    else:
        why = "no subordinate ids for you in /etc/subuid and /etc/subgid, or no newuidmap/newgidmap"
    import pwd

    try:
        name = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        name = str(os.getuid())
    return Finding("payload identity", "warn", f"single mapping ({why}): the payload is you on the host, so an "
                   "rw bind is its to chmod, replace or plant files in; --strict refuses rw binds",
                   f"apt-get install uidmap; usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}")


def _cgroup() -> list[Finding]:
    """Which delegation applies and which controllers are usable (cgroup/diagnose.py), then the verdict."""
    from ..cgroup.diagnose import diagnose
    from ..cgroup.discover import discover
    from ..cgroup.fs import CgroupError
    from ..cgroup.systemd import scope_command

    found = [Finding(f"cgroup: {what}", "ok" if ok else "warn", detail) for what, ok, detail in diagnose(os.environ)]
    try:
        delegation = discover(None, os.environ)
    except CgroupError as exc:
        delegation = None
        found.append(Finding("cgroup limits", "fail", str(exc), "fix SBX_CGROUP or unset it"))
        return found
    if delegation is None and scope_command(["sbx"], os.environ) is not None:
        found.append(Finding("cgroup limits", "ok", "each `sbx run` re-executes itself in a transient systemd "
                             "user scope with Delegate=yes (see 'transient systemd user scope' above)"))
    elif delegation is None:
        found.append(Finding("cgroup limits", "warn", "no delegated cgroup v2 subtree: --memory and --time hold per "
                             "process only (rlimits); --pids-limit, --cpus, --cpuset, io limits are not enforced",
                             "see README.md, 'cgroup v2 delegation'"))
    else:
        found.append(Finding("cgroup limits", "ok", f"{delegation.path} ({delegation.how}): "
                             f"{' '.join(delegation.controllers)}"))
    return found


def _helpers() -> list[Finding]:
    found = []
    from ..net.egress import NFT_PATHS
    from ..net.network import which

    for tool, package, purpose in (("pasta", "passt", "user-mode networking (--network pasta)"),
                                   ("slirp4netns", "slirp4netns", "user-mode networking when pasta is missing"),
                                   ("nft", "nftables", "egress rules (network.allow/deny)"),
                                   ("newuidmap", "uidmap", "id ranges for images with many owners")):
        path = which(tool, os.environ) or next((p for p in NFT_PATHS if tool == "nft" and os.access(p, os.X_OK)), None)
        found.append(Finding(tool, "ok" if path else "warn", path or f"not installed: needed for {purpose}",
                             "" if path else f"apt-get install {package}"))
    from ..net.helper import check_tun
    from ..net.network import NetError

    try:
        check_tun()
        found.append(Finding("/dev/net/tun", "ok", "this user may open it (--network pasta)"))
    except NetError as exc:
        found.append(Finding("/dev/net/tun", "warn", str(exc), "as root: chmod 0666 /dev/net/tun (what udev sets)"))
    network = _in_child(_network)
    said = network.get("netlink") or network.get("error", "the probe said nothing")
    found.append(Finding("network namespace", "ok" if said == "yes" else "warn",
                         "loopback, a tap device, its address and default route set by netlink (pyroute2), as "
                         "--network pasta needs" if said == "yes" else said.removeprefix("no: "),
                         "" if said == "yes" else "--network none and host still work"))
    import ctypes.util

    lib = ctypes.util.find_library("seccomp")
    found.append(Finding("libseccomp", "ok" if lib else "warn", lib or "not found",
                         "" if lib else "apt-get install libseccomp2"))
    return found


def main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write("usage: sbx doctor\n\nChecks what this host allows sbx to do, with fixes.\n")
        return 0
    if args:
        from ..errors import UsageError

        raise UsageError(f"doctor takes no arguments (got {args[0]!r})")
    worst = "ok"
    for finding in findings():
        sys.stdout.write(f"{finding.status:4}  {finding.name}: {finding.detail}\n")
        if finding.fix:
            sys.stdout.write(f"      fix: {finding.fix}\n")
        if finding.status == "fail":
            worst = "fail"
    return 1 if worst == "fail" else 0
