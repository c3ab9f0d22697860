"""`sbx doctor`: AppArmor's user namespace restriction, an outer container, the network probe.

The decisions are pure functions of readings (sandbox/cli/confinement.py), tested with
readings this machine cannot have (its kernel has no AppArmor; it is no container).  The
probes are real: an outer seccomp filter that denies unshare and an outer /proc with a
part hidden (what Docker does) are made with bwrap, and doctor must name each, as
`sbx run` then fails there.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from conftest import SBX, sbx_environ
from sandbox.cli import confinement as c
from sandbox.model.frozen import replace

PYTHON = "/usr/bin/python3.12"
VENV_COPY = "/opt/app/venv/bin/python3.12"


PLAIN = c.Readings(apparmor_restrict=None, dockerenv=False, containerenv=False, container_env="",
                   cgroup_paths=("/user.slice/user-1000.slice/session-2.scope",), root_fstype="ext4",
                   seccomp_mode=0, no_new_privs=False, has_fuse=True, cgroup_ro=False)


def readings(**changes: object) -> c.Readings:
    """A plain host (no AppArmor sysctl, no sign of a container), with `changes`."""
    return replace(PLAIN, **changes)  # type: ignore[arg-type]


WORKS = c.Probe(userns=0, mount=0, proc=0)
NO_USERNS = c.Probe(userns=errno.EPERM, mount=None, proc=None)
NO_CAPS = c.Probe(userns=0, mount=errno.EPERM, proc=None)  # what AppArmor's unprivileged_userns profile leaves


@pytest.mark.parametrize("restrict, probe, status", [
    (None, WORKS, None),  # no such sysctl: nothing to say
    (None, NO_USERNS, None),
    ("0", WORKS, "ok"),
    ("1", WORKS, "ok"),  # a profile grants it already (or root)
    ("1", NO_USERNS, "fail"),
    ("1", NO_CAPS, "fail"),  # Ubuntu 24.04: unshare works, the namespace has no capabilities
    ("1", c.Probe(userns=0, mount=errno.EINVAL, proc=None), "ok"),  # another failure: not AppArmor's
])
def test_apparmor_decision(restrict: str | None, probe: c.Probe, status: str | None) -> None:
    verdict = c.apparmor(readings(apparmor_restrict=restrict), probe, PYTHON)
    assert (verdict and verdict.status) == status, verdict


def test_apparmor_profile_text() -> None:
    assert c.apparmor_profile(VENV_COPY) == (
        "abi <abi/4.0>,\ninclude <tunables/global>\n\n"
        f"profile sbx-python {VENV_COPY} flags=(unconfined) {{\n  userns,\n\n"
        "  include if exists <local/sbx-python>\n}\n")


def test_apparmor_fix_gives_the_profile_the_sysctl_and_their_trade_offs() -> None:
    for python, shared in ((PYTHON, True), (VENV_COPY, False)):
        verdict = c.apparmor(readings(apparmor_restrict="1"), NO_CAPS, python)
        assert verdict is not None and verdict.status == "fail"
        assert "kernel.apparmor_restrict_unprivileged_userns=1" in verdict.detail
        assert "no capabilities" in verdict.detail
        fix = verdict.fix
        assert f"profile sbx-python {python} flags=(unconfined) {{" in fix and "userns," in fix
        assert f"apparmor_parser -r {c.PROFILE_PATH}" in fix
        assert "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0" in fix
        assert "every program on the host" in fix  # the sysctl's trade-off
        assert ("system's interpreter" in fix and "--copies" in fix) == shared  # the profile's
    denied = c.apparmor(readings(apparmor_restrict="1"), NO_USERNS, VENV_COPY)
    assert denied is not None and "unshare(CLONE_NEWUSER): Operation not permitted" in denied.detail


@pytest.mark.parametrize("changes, signs", [
    ({}, []),
    ({"dockerenv": True}, ["/.dockerenv"]),
    ({"container_env": "podman", "containerenv": True}, ["container=podman", "/run/.containerenv"]),
    ({"cgroup_paths": ("/docker/3f2a9c",)}, ["pid 1's cgroup /docker/3f2a9c"]),
    ({"cgroup_paths": ("/kubepods/besteffort/pod1/abc",), "root_fstype": "overlay", "dockerenv": True},
     ["pid 1's cgroup /kubepods/besteffort/pod1/abc", "/ is an overlay", "/.dockerenv"]),
    ({"cgroup_paths": ("/",)}, []),
])
def test_container_signs(changes: dict[str, object], signs: list[str]) -> None:
    assert c.container_signs(readings(**changes)) == signs


def test_dockerenv_alone_is_no_container() -> None:
    """This machine kind: a VM image made from a Docker image keeps /.dockerenv."""
    [verdict] = c.container(readings(dockerenv=True), NO_USERNS)
    assert verdict.status == "ok" and "treated as no container" in verdict.detail


@pytest.mark.parametrize("changes, probe, expected", [
    ({}, NO_USERNS, []),  # no container: nothing from this function
    ({"container_env": "docker", "seccomp_mode": 2}, NO_USERNS,
     [("container", "ok"), ("container: unshare", "fail"), ("container: /dev/fuse", "ok")]),
    ({"container_env": "docker"}, NO_CAPS,
     [("container", "ok"), ("container: mount", "fail"), ("container: /dev/fuse", "ok")]),
    ({"containerenv": True, "no_new_privs": True, "cgroup_ro": True, "has_fuse": False}, WORKS,
     [("container", "ok"), ("container: no_new_privs", "warn"), ("container: cgroup", "warn"),
      ("container: /dev/fuse", "ok")]),
])
def test_container_findings(changes: dict[str, object], probe: c.Probe, expected: list[tuple[str, str]]) -> None:
    found = c.container(readings(**changes), probe)
    assert [(v.name, v.status) for v in found] == expected
    for verdict in found:
        if verdict.status == "fail":
            assert "seccomp=unconfined" in verdict.fix and "apparmor=unconfined" in verdict.fix
    if changes.get("seccomp_mode") == 2:
        assert "(errno EPERM): the outer runtime denies it (its seccomp filter)" in found[1].detail


@pytest.mark.parametrize("mountinfo, fstype", [
    ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n", "ext4"),
    ("600 550 0:52 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/a,upperdir=/b\n"
     "601 600 0:53 / /proc rw - proc proc rw\n", "overlay"),
    ("1 0 0:1 / / rw - rootfs rootfs rw\n2 1 0:2 / / rw - ext4 /dev/sda1 rw\n", "ext4"),  # the last on / wins
    ("", ""),
    ("50 :52 / / r - \n", ""),  # no type after the separator (the fuzz harness's find)
])
def test_root_fstype(mountinfo: str, fstype: str) -> None:
    assert c._root_fstype(mountinfo) == fstype


def test_status_fields() -> None:
    status = "Name:\tpython3\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t1\n"
    assert (c._status_field(status, "Seccomp"), c._status_field(status, "NoNewPrivs")) == (2, 1)
    assert c._status_field("Seccomp:\tx\n", "Seccomp") == 0


# -- real probes ------------------------------------------------------------------------------------


class Report(dict[str, list[str]]):
    """`sbx doctor`'s findings: {name: [status, detail, fix...]}; names hold ": " too."""

    def __init__(self, stdout: str) -> None:
        super().__init__()
        self.lines = stdout.splitlines()

    def __missing__(self, name: str) -> list[str]:
        for i, line in enumerate(self.lines):
            status, rest = line[:4].strip(), line[6:]  # "warn  NAME: DETAIL"
            if status in ("ok", "warn", "fail") and rest.startswith(f"{name}: "):
                fixes = [f[len("      fix: "):] for f in self.lines[i + 1:i + 2] if f.startswith("      fix: ")]
                return [status, rest[len(name) + 2:], *fixes]
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        try:
            self[str(name)]
        except KeyError:
            return False
        return True


def doctor(wrap: list[str], env: dict[str, str] | None = None, fd: int | None = None) -> Report:
    """`sbx doctor` under the command prefix `wrap`."""
    result = subprocess.run([*wrap, *SBX, "doctor"], capture_output=True, text=True, timeout=120,
                            env=sbx_environ(env), stdin=subprocess.DEVNULL, pass_fds=() if fd is None else (fd,))
    assert result.returncode in (0, 1), result
    return Report(result.stdout)


def bwrap(*options: str) -> list[str]:
    """bwrap around the host's own tree, as a user that is not root where we are root."""
    ids = ["--unshare-user", "--uid", "1000", "--gid", "1000"] if os.getuid() == 0 else []
    return ["bwrap", "--dev-bind", "/", "/", *ids, *options, "--"]


def test_this_host() -> None:
    found = doctor([])
    assert found["user namespaces"][0] == "ok"
    assert "fresh /proc" not in found and "container: unshare" not in found
    assert found["network namespace"][:2] == ["ok", "loopback, a tap device, its address and default route set "
                                              "by netlink (pyroute2), as --network pasta needs"]


def test_an_outer_seccomp_filter_that_denies_unshare(tmp_path: Path) -> None:
    """Docker's default seccomp profile denies unshare(CLONE_NEWUSER) (EPERM) to a container
    without CAP_SYS_ADMIN: the same made with bwrap --seccomp, in a 'container'."""
    import pyseccomp

    program = tmp_path / "deny-unshare.bpf"
    deny = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    deny.add_rule(pyseccomp.ERRNO(errno.EPERM), "unshare")
    with open(program, "wb") as f:
        deny.export_bpf(f)
    env = {**os.environ, "container": "docker"}
    fd = os.open(program, os.O_RDONLY)
    try:
        found = doctor(["bwrap", "--dev-bind", "/", "/", "--seccomp", str(fd), "--"], env=env, fd=fd)
    finally:
        os.close(fd)
    assert found["user namespaces"][:2] == ["fail", "unshare: Operation not permitted"]
    assert found["container"][1].startswith("inside a container (container=docker")
    status, detail, fix = found["container: unshare"]
    assert status == "fail" and "(errno EPERM): the outer runtime denies it (its seccomp filter)" in detail
    assert "--security-opt seccomp=unconfined" in fix
    assert found["container: no_new_privs"][0] == "warn"  # bwrap --seccomp sets it, as docker's option does
    assert found["network namespace"][0] == "warn"
    control = doctor([], env=env)  # the same 'container' without the filter
    assert control["user namespaces"][0] == "ok" and "container: unshare" not in control


def test_an_outer_proc_with_a_part_hidden() -> None:
    """Docker masks /proc/kcore, /proc/keys, ... with binds; the kernel then refuses a fresh
    procfs in a user namespace.  doctor says so, and sbx run does fail there."""
    masked = bwrap("--unshare-pid", "--proc", "/proc", "--ro-bind", "/dev/null", "/proc/uptime")
    found = doctor(masked)
    status, detail, fix = found["fresh /proc"]
    assert status == "fail" and detail.startswith("a procfs for a new pid namespace: Operation not permitted")
    assert "systempaths=unconfined" in fix and "unmask=ALL" in fix
    single = {**os.environ, "SBX_ID_RANGES": "0"}
    run = subprocess.run([*masked, *SBX, "run", "--", "true"], capture_output=True, text=True, timeout=60,
                         env=sbx_environ(single), stdin=subprocess.DEVNULL)
    assert run.returncode == 125, run
    control = doctor(bwrap("--unshare-pid", "--proc", "/proc"))  # a fresh /proc, nothing hidden
    assert "fresh /proc" not in control and control["user namespaces"][0] == "ok"


def test_no_tun_device() -> None:
    """A container run without --device /dev/net/tun: the network probe and the tun check say so."""
    found = doctor(bwrap("--tmpfs", "/dev/net"))
    assert found["network namespace"][:2] == ["warn", "/dev/net/tun: No such file or directory"]
    status, detail, _ = found["/dev/net/tun"]
    assert status == "warn" and "which does not exist" in detail and "--device /dev/net/tun" in detail
