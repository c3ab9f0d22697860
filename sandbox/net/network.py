"""The network settings of a run: published ports, egress rule syntax, which helper,
which name servers, read from flags, profiles and the host.

The rest of net/ acts on them: helper.py runs pasta or slirp4netns, link.py
watches the sandbox's network namespace by netlink (pyroute2), egress.py
writes and loads the nftables rules.  `--network none` needs none of it: init
brings loopback up.  This module imports nothing heavy: config/ parses with it.
"""

from __future__ import annotations

import os

from ..errors import SbxError
from ..model.spec import Publish

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Mapping

HELPERS = ("pasta", "slirp4netns")  # in the order tried
MAX_PORT = 65535


class NetError(SbxError):
    """A bad network setting, or a helper that cannot start; one line (an SbxError: init reports
    one it meets, as when nft refuses the egress rules, in its own words)."""


def _port(text: str, what: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PORT:
        raise NetError(f"{what}: {text!r} is not a port from 1 to {MAX_PORT}")
    return int(text)


def _ip(text: str, what: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    import ipaddress

    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise NetError(f"{what}: {text!r} is not an IP address") from None


def parse_publish(text: str) -> Publish:
    what = f"-p {text}"
    spec, slash, proto = text.partition("/")
    if slash and proto not in ("tcp", "udp"):
        raise NetError(f"{what}: protocol must be tcp or udp")
    host_ip = None
    if spec.startswith("["):  # [::1]:8080:80
        close = spec.find("]")
        if close < 0 or spec[close + 1: close + 2] != ":":
            raise NetError(f"{what}: expected [HOST_IP]:HOST_PORT:SANDBOX_PORT")
        host_ip, spec = spec[1:close], spec[close + 2:]
    parts = spec.split(":")
    if host_ip is None and len(parts) == 3:
        host_ip = parts.pop(0)
    if len(parts) == 1 and host_ip is None:
        parts = parts * 2
    if len(parts) != 2:
        raise NetError(f"{what}: expected [[HOST_IP:]HOST_PORT:]SANDBOX_PORT[/tcp|udp]")
    if host_ip is not None:
        host_ip = str(_ip(host_ip, what))
    return Publish(_port(parts[0], what), _port(parts[1], what), proto or "tcp", host_ip)


def check_publish(publish: tuple[Publish, ...]) -> None:
    """Two publications may not claim the same host address and port."""
    seen: dict[tuple[str, int], Publish] = {}
    for item in publish:
        for ip in ("0.0.0.0", "::") if item.host_ip is None else (item.host_ip,):
            key = (f"{ip}/{item.proto}", item.host_port)
            wild = (f"{'0.0.0.0' if ':' not in ip else '::'}/{item.proto}", item.host_port)
            other = seen.get(key) or (seen.get(wild) if item.host_ip is not None else None)
            if other is not None and other != item:
                raise NetError(f"-p {item} conflicts with -p {other}: the same host port")
            seen[key] = item


def parse_rule(text: str) -> tuple[str, int | None]:
    """"10.0.0.0/8", "192.0.2.7", "example.org:443", "[2001:db8::1]:53" -> (host or network, port)."""
    what = f"network rule {text!r}"
    host, port = text, None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise NetError(f"{what}: unclosed '['")
        host, rest = text[1:close], text[close + 1:]
        if rest:
            if not rest.startswith(":"):
                raise NetError(f"{what}: expected [ADDRESS]:PORT")
            port = _port(rest[1:], what)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        port = _port(port_text, what)
    if not host or any(c.isspace() for c in host) or host.startswith("-"):
        raise NetError(f"{what}: expected ADDRESS[/PREFIX], HOST or HOST:PORT")
    return host, port


def host_gateway() -> str | None:
    """The host's IPv4 default gateway, from /proc/net/route: one read when a pasta run's settings
    are composed, in the supervisor itself, where pyroute2 would cost its ~120 ms import unhidden."""
    try:
        with open("/proc/net/route") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return None
    for row in rows:
        fields = row.split()
        if len(fields) > 2 and fields[1] == "00000000":
            raw = int(fields[2], 16)
            return ".".join(str((raw >> shift) & 0xFF) for shift in (0, 8, 16, 24))
    return None


def host_nameservers() -> list[str]:
    try:
        with open("/etc/resolv.conf") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]


def find_helper(environ: Mapping[str, str]) -> str | None:
    """The user-mode networking helper's path, on `environ`'s PATH (the caller's environment, which
    may not be this process's): $SBX_USERNET's if that names one of HELPERS, else pasta's, else
    slirp4netns's.  compose.build puts it in Spec.usernet."""
    wanted = environ.get("SBX_USERNET")
    for name in (wanted,) if wanted in HELPERS else HELPERS:
        path = which(name, environ)
        if path is not None:
            return path
    return None


def helper_name(path: str | None) -> str | None:
    """"pasta" or "slirp4netns" for a path find_helper() gave."""
    return None if path is None else os.path.basename(path)


def which(name: str, environ: Mapping[str, str]) -> str | None:
    """shutil.which on `environ`'s PATH, without shutil (which imports fnmatch and re: ~10 ms)."""
    for directory in environ.get("PATH", "/usr/bin:/bin").split(":") + ["/usr/sbin", "/usr/bin"]:
        path = os.path.join(directory or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def sandbox_dns(explicit: tuple[str, ...], helper: str | None) -> tuple[str, ...]:
    """Name servers for the sandbox's resolv.conf in pasta mode, with this helper (find_helper()).

    The host's own servers where they are reachable from the sandbox (not on
    its loopback); else pasta forwards DNS sent to the gateway address to them.
    """
    if explicit:
        return explicit
    if helper_name(helper) == "slirp4netns":
        return ("10.0.2.3",)
    servers = [s for s in host_nameservers() if not s.startswith("127.") and s != "::1"]
    if servers:
        return tuple(servers[:3])
    gateway = host_gateway()
    return (gateway,) if gateway else ()
