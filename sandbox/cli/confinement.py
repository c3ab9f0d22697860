"""`sbx doctor`'s view of what confines sbx itself: AppArmor's user namespace
restriction (Ubuntu 23.10+, on by default on 24.04) and an outer container.

Readings come from the host (read_host(), and the probes doctor.py runs in a
forked child); the decisions from readings to findings are pure functions, so
tests give them readings this machine cannot have.
"""

from __future__ import annotations

import errno
import os

from ..model.frozen import dataclass

APPARMOR_SYSCTL = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
PROFILE_NAME = "sbx-python"
PROFILE_PATH = f"/etc/apparmor.d/{PROFILE_NAME}"
# cgroup path words of container runtimes (/proc/1/cgroup)
RUNTIME_WORDS = ("docker", "kubepods", "containerd", "libpod", "lxc", "crio", "podman", "garden", "actions_job")
NO_CAPABILITY = (errno.EPERM, errno.EACCES)


@dataclass(frozen=True)
class Readings:
    """What the host says about the confinement around sbx."""

    apparmor_restrict: str | None  # kernel.apparmor_restrict_unprivileged_userns, None: no such sysctl
    dockerenv: bool  # /.dockerenv
    containerenv: bool  # /run/.containerenv (podman)
    container_env: str  # $container (systemd-nspawn, podman, lxc set it)
    cgroup_paths: tuple[str, ...]  # /proc/1/cgroup's paths
    root_fstype: str  # the file system type of /
    seccomp_mode: int  # /proc/self/status Seccomp: 0 none, 1 strict, 2 filter
    no_new_privs: bool  # /proc/self/status NoNewPrivs (setuid newuidmap gains nothing)
    has_fuse: bool  # /dev/fuse
    cgroup_ro: bool  # /sys/fs/cgroup mounted read-only


@dataclass(frozen=True)
class Probe:
    """What the forked probe child met: the errno of each step (0: it worked, None: not tried).
    (A fresh /proc refused is doctor.py's own finding, container or not.)"""

    userns: int | None  # unshare(CLONE_NEWUSER) and the single id mapping
    mount: int | None  # a tmpfs mount in the new user and mount namespace
    proc: int | None  # a fresh procfs for a new pid namespace


@dataclass(frozen=True)
class Finding:
    """One line of `sbx doctor` (these decisions' and doctor.py's own)."""

    name: str
    status: str  # "ok", "warn" (works, weaker) or "fail" (sbx run cannot work)
    detail: str
    fix: str = ""


def read_text(path: str) -> str | None:
    """A small file's stripped text, or None when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _status_field(status: str, key: str) -> int:
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name == key and value.strip().isdigit():
            return int(value.strip())
    return 0


def _root_fstype(mountinfo: str) -> str:
    """The file system type of / in a /proc/self/mountinfo text (the last mount on / wins)."""
    fstype = ""
    for line in mountinfo.splitlines():
        fields, _, after = line.partition(" - ")
        mount, kind = fields.split(), after.split()
        if len(mount) > 4 and mount[4] == "/" and kind:
            fstype = kind[0]
    return fstype


def _cgroup_paths(text: str) -> tuple[str, ...]:
    """The paths of a /proc/PID/cgroup text ("ID:CONTROLLERS:PATH" lines)."""
    return tuple(line.split(":", 2)[2] for line in text.splitlines() if line.count(":") >= 2)


def read_host(environ: dict[str, str] | None = None) -> Readings:
    environ = dict(os.environ) if environ is None else environ
    status = read_text("/proc/self/status") or ""
    try:
        cgroup_ro = bool(os.statvfs("/sys/fs/cgroup").f_flag & os.ST_RDONLY)
    except OSError:
        cgroup_ro = False
    return Readings(apparmor_restrict=read_text(APPARMOR_SYSCTL), dockerenv=os.path.exists("/.dockerenv"),
                    containerenv=os.path.exists("/run/.containerenv"), container_env=environ.get("container", ""),
                    cgroup_paths=_cgroup_paths(read_text("/proc/1/cgroup") or ""), root_fstype=_root_fstype(read_text("/proc/self/mountinfo") or ""),
                    seccomp_mode=_status_field(status, "Seccomp"), no_new_privs=_status_field(status, "NoNewPrivs") == 1,
                    has_fuse=os.path.exists("/dev/fuse"), cgroup_ro=cgroup_ro)


def interpreter() -> str:
    """The real path of the interpreter running sbx: AppArmor attaches profiles by it (a venv's
    bin/python is usually a symlink to the system's python3.X)."""
    import sys

    return os.path.realpath(sys.executable)


def apparmor_profile(python: str) -> str:
    """An AppArmor profile letting `python` (a real path) create user namespaces, unconfined otherwise."""
    return (f"abi <abi/4.0>,\ninclude <tunables/global>\n\n"
            f"profile {PROFILE_NAME} {python} flags=(unconfined) {{\n  userns,\n\n"
            f"  include if exists <local/{PROFILE_NAME}>\n}}\n")


def apparmor(readings: Readings, probe: Probe, python: str) -> Finding | None:
    """The finding on AppArmor's user namespace restriction; None where there is none to make."""
    if readings.apparmor_restrict is None:
        return None
    if readings.apparmor_restrict != "1":
        return Finding("AppArmor userns restriction", "ok", "off (kernel.apparmor_restrict_unprivileged_userns=0)")
    blocked = probe.userns not in (0, None) or probe.mount in NO_CAPABILITY
    if not blocked:
        return Finding("AppArmor userns restriction", "ok",
                       f"on, and this interpreter ({python}) may create user namespaces (a profile grants it, "
                       "or this is root)")
    shared = python.startswith(("/usr/bin/", "/bin/", "/usr/local/bin/"))
    scope = (f"every program {python} runs, not only sbx, since it is the system's interpreter (a venv made with "
             "`python3 -m venv --copies` has a private one to name instead)" if shared
             else f"every program {python} runs")
    fix = (f"either (1) a profile for this interpreter: write to {PROFILE_PATH}:\n\n"
           + "".join(f"        {line}\n" if line else "\n" for line in apparmor_profile(python).splitlines())
           + f"\n      then `sudo apparmor_parser -r {PROFILE_PATH}`; trade-off: it lifts the restriction for "
           f"{scope}; or (2) `sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (persist it in "
           "/etc/sysctl.d/); trade-off: it lifts the restriction for every program on the host, which is the "
           "kernel attack surface Ubuntu meant to close")
    what = (f"unshare(CLONE_NEWUSER): {os.strerror(probe.userns)}" if probe.userns not in (0, None)
            else f"a new user namespace has no capabilities (mount: {os.strerror(probe.mount or errno.EPERM)})")
    return Finding("AppArmor userns restriction", "fail",
                   f"on (kernel.apparmor_restrict_unprivileged_userns=1, Ubuntu 23.10+): {what}; sbx cannot "
                   "build a sandbox", fix)


def container_signs(readings: Readings) -> list[str]:
    """Why this looks like the inside of a container, strongest first (empty: no sign)."""
    signs = []
    if readings.container_env:
        signs.append(f"container={readings.container_env}")
    if readings.containerenv:
        signs.append("/run/.containerenv")
    runtime = next((p for p in readings.cgroup_paths if any(w in p for w in RUNTIME_WORDS)), None)
    if runtime is not None:
        signs.append(f"pid 1's cgroup {runtime}")
    if readings.root_fstype == "overlay":
        signs.append("/ is an overlay")
    if readings.dockerenv:
        signs.append("/.dockerenv")
    return signs


OUTER_RUNTIME = ("docker/podman run --security-opt seccomp=unconfined --security-opt apparmor=unconfined "
                 "--security-opt systempaths=unconfined (podman: --security-opt unmask=ALL) --device /dev/net/tun "
                 "(for --network pasta), and --cgroupns=private with a writable cgroup (or systemd inside) for "
                 "limits; GitLab's docker executor: the same in the runner's config.toml (security_opt, devices)")


def container(readings: Readings, probe: Probe) -> list[Finding]:
    """Findings on an outer container and what it blocks, with what the outer runtime must allow."""
    signs = container_signs(readings)
    if not signs:
        return []
    if signs == ["/.dockerenv"]:
        where = Finding("container", "ok", "only /.dockerenv says so (a machine image made from a Docker image "
                        "keeps it): treated as no container")
        return [where]
    found = [Finding("container", "ok", f"inside a container ({', '.join(signs)})")]
    if probe.userns not in (0, None):
        denied = ("its seccomp filter" if readings.seccomp_mode == 2 else "its AppArmor profile or seccomp filter")
        found.append(Finding("container: unshare", "fail", f"unshare(CLONE_NEWUSER): {os.strerror(probe.userns)} "
                             f"(errno {errno.errorcode.get(probe.userns, probe.userns)}): the outer runtime denies "
                             f"it ({denied})", OUTER_RUNTIME))
    elif probe.mount not in (0, None):
        found.append(Finding("container: mount", "fail", f"mount in a new user namespace: "
                             f"{os.strerror(probe.mount)}: the outer AppArmor profile or seccomp filter denies it",
                             OUTER_RUNTIME))
    if readings.no_new_privs:
        found.append(Finding("container: no_new_privs", "warn", "set on sbx itself (docker's "
                             "--security-opt no-new-privileges): setuid newuidmap/newgidmap gain nothing, so no id "
                             "ranges; the single mapping works", "run the container without no-new-privileges"))
    if readings.cgroup_ro:
        found.append(Finding("container: cgroup", "warn", "/sys/fs/cgroup is read-only: no delegated cgroup, "
                             "limits fall back to rlimits", "--cgroupns=private and a writable cgroup "
                             "(docker: --cgroup-parent with delegation, or systemd as the container's init)"))
    found.append(Finding("container: /dev/fuse", "ok", ("present" if readings.has_fuse else "absent") +
                         ": sbx does not need it (the kernel's overlayfs in a user namespace, not fuse-overlayfs)"))
    return found
