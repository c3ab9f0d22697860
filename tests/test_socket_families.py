"""Socket families in real sandboxes: an allow-list (unix, inet, inet6, route netlink) in every network mode.

vsock is not isolated by network namespaces: without the filter, `--network none` would share the
host's vsock port space.  Each probe runs twice per socket: as asked, and with a type flag the kernel
rejects (EINVAL) before it looks at the family; under sbx that second call must still say
EAFNOSUPPORT, which only the filter can answer, so the test fails without it even where the host
kernel lacks a family.  The controls run the same probe on the host and in sbx with `--seccomp none`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import sbx

PROBE = r"""
import errno, json, socket, sys
out = {}
for name, family, type_, proto in json.loads(sys.argv[1]):
    results = []
    for t in (type_, type_ | 0x100):  # 0x100: no valid flag: EINVAL from the kernel, for every family
        try:
            if name.startswith("pair "):
                for s in socket.socketpair(family, t, proto):
                    s.close()
            else:
                socket.socket(family, t, proto).close()
            results.append("OK")
        except OSError as e:
            results.append(errno.errorcode.get(e.errno, str(e.errno)))
    out[name] = results
print(json.dumps(out))
"""

# name, family, type, protocol
REFUSED = [
    ("AF_VSOCK", 40, 1, 0),
    ("AF_ALG", 38, 5, 0),
    ("AF_PACKET", 17, 2, 0),
    ("AF_KEY", 15, 3, 2),
    ("AF_TIPC", 30, 4, 0),
    ("AF_RDS", 21, 5, 0),
    ("AF_XDP", 44, 3, 0),
    ("AF_BLUETOOTH", 31, 3, 1),
    ("AF_CAN", 29, 3, 1),
    ("AF_NETLINK/NETLINK_AUDIT", 16, 3, 9),
    ("AF_NETLINK/NETLINK_KOBJECT_UEVENT", 16, 2, 15),
    ("AF_NETLINK/NETLINK_SOCK_DIAG", 16, 3, 4),
    ("AF_NETLINK/NETLINK_NETFILTER", 16, 3, 12),
    ("AF_NETLINK/NETLINK_GENERIC", 16, 3, 16),
    ("AF_INET/SOCK_PACKET", 2, 10, 0x0300),  # the kernel's old spelling of AF_PACKET
    ("family 46", 46, 1, 0),  # the first one a future kernel may add
    ("pair AF_VSOCK", 40, 1, 0),
    ("pair AF_TIPC", 30, 5, 0),
]
ALLOWED = [
    ("AF_UNIX", 1, 1, 0),
    ("AF_UNIX/SOCK_DGRAM", 1, 2, 0),
    ("AF_INET", 2, 1, 0),
    ("AF_INET/SOCK_DGRAM", 2, 2, 0),
    ("AF_INET6", 10, 1, 0),
    ("AF_NETLINK/NETLINK_ROUTE", 16, 3, 0),
    ("pair AF_UNIX", 1, 1, 0),
]
CASES = json.dumps(REFUSED + ALLOWED)
REFUSED_NAMES = [name for name, *_ in REFUSED]
ALLOWED_NAMES = [name for name, *_ in ALLOWED]


def probe_in_sbx(*options: str, cwd: Path | None = None) -> dict[str, list[str]]:
    result = sbx("run", *options, "--", "python3", "-c", PROBE, CASES, timeout=60, cwd=cwd)
    assert result.returncode == 0, (options, result.stdout, result.stderr)
    return dict(json.loads(result.stdout))


@pytest.fixture(scope="module")
def host() -> dict[str, list[str]]:
    """The control: the same probe on the host, no sandbox."""
    out = subprocess.run([sys.executable, "-c", PROBE, CASES], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def test_control_the_kernel_answers_first_with_einval(host: dict[str, list[str]]) -> None:
    # Without a filter the flagged call never reaches the family: a filter's EAFNOSUPPORT is its own.
    assert {name: r[1] for name, r in host.items()} == {name: "EINVAL" for name in host}, host
    # The host opens some of the refused families (vsock and the netlink ones here): what the test refuses
    # is reachable.  A family the host kernel lacks shows EAFNOSUPPORT here and changes nothing below.
    opened = [name for name in REFUSED_NAMES if host[name][0] == "OK"]
    assert "AF_NETLINK/NETLINK_KOBJECT_UEVENT" in opened, host
    print("opened on the host:", opened)


@pytest.mark.parametrize("network", ["none", "pasta", "host"])
def test_refused_families(network: str, host: dict[str, list[str]]) -> None:
    inside = probe_in_sbx("--network", network)
    assert {name: inside[name] for name in REFUSED_NAMES} == {name: ["EAFNOSUPPORT"] * 2 for name in REFUSED_NAMES}
    assert {name: inside[name] for name in ALLOWED_NAMES} == {name: ["OK", "EINVAL"] for name in ALLOWED_NAMES}, inside
    # the control of the fix: in sbx without the filter, vsock opens as on the host
    unfiltered = probe_in_sbx("--network", network, "--seccomp", "none")
    assert unfiltered["AF_VSOCK"][0] == host["AF_VSOCK"][0], (unfiltered, host)
    assert unfiltered["AF_NETLINK/NETLINK_KOBJECT_UEVENT"][0] == "OK", unfiltered


def test_grader_profile_refuses_without_killing(tmp_path: Path) -> None:
    """strict + kill: a refused family is an errno (the program falls back), not verdict SG."""
    inside = probe_in_sbx("--profile", "grader", cwd=tmp_path)
    assert {name: inside[name] for name in REFUSED_NAMES} == {name: ["EAFNOSUPPORT"] * 2 for name in REFUSED_NAMES}
    # strict allows no new socket (EACCES), but socketpair of the listed families
    expected = {name: ["OK", "EINVAL"] if name.startswith("pair ") else ["EACCES"] * 2 for name in ALLOWED_NAMES}
    assert {name: inside[name] for name in ALLOWED_NAMES} == expected, inside


def test_a_profile_names_a_family(tmp_path: Path, host: dict[str, list[str]]) -> None:
    profile = tmp_path / "vsock.toml"
    profile.write_text('[seccomp]\nallow = ["socket(arg0 == AF_VSOCK)", "socket(arg0 == AF_NETLINK, arg2 == NETLINK_SOCK_DIAG)"]\n')
    inside = probe_in_sbx("--profile", str(profile))
    assert inside["AF_VSOCK"] == [host["AF_VSOCK"][0], "EINVAL"], inside
    assert inside["AF_NETLINK/NETLINK_SOCK_DIAG"] == ["OK", "EINVAL"], inside
    assert inside["pair AF_VSOCK"] == ["EAFNOSUPPORT"] * 2  # named for socket only
    others = [n for n in REFUSED_NAMES if n not in ("AF_VSOCK", "AF_NETLINK/NETLINK_SOCK_DIAG", "pair AF_VSOCK")]
    assert {n: inside[n] for n in others} == {n: ["EAFNOSUPPORT"] * 2 for n in others}
    # allowing socket outright names no family
    profile.write_text('[seccomp]\nallow = ["socket"]\n')
    assert probe_in_sbx("--profile", str(profile))["AF_VSOCK"] == ["EAFNOSUPPORT"] * 2


ROUTE_USERS = r"""
import socket
print(sorted(name for _, name in socket.if_nameindex()))
print(sorted({a[4][0] for a in socket.getaddrinfo("localhost", 80, flags=socket.AI_ADDRCONFIG)}))
"""


@pytest.mark.parametrize("network", ["none", "pasta"])
def test_route_netlink_users_work(network: str) -> None:
    """if_nameindex() and getaddrinfo(AI_ADDRCONFIG) read route netlink; so does `ip`."""
    result = sbx("run", "--network", network, "--", "python3", "-c", ROUTE_USERS, check=True)
    names, addresses = result.stdout.splitlines()
    assert "'lo'" in names, result.stdout
    assert "127.0.0.1" in addresses, result.stdout
    ip = shutil.which("ip", path="/usr/sbin:/usr/bin:/sbin:/bin")
    if ip is not None and os.path.realpath(ip).startswith("/usr"):  # the host image shows /usr
        out = sbx("run", "--network", network, "--", ip, "-o", "addr", "show", "dev", "lo", check=True).stdout
        assert "inet 127.0.0.1/8" in out, out


def test_loopback_tcp_still_works() -> None:
    script = ("import socket\n"
              "for family, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n"
              "    s = socket.socket(family); s.bind((host, 0)); s.listen()\n"
              "    c = socket.create_connection(s.getsockname()[:2]); a, _ = s.accept()\n"
              "    c.sendall(b'ping'); print(a.recv(4).decode())\n")
    result = sbx("run", "--", "python3", "-c", script, check=True)
    assert result.stdout.split() == ["ping", "ping"], result.stdout
