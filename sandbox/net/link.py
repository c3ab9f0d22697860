"""Netlink work in the sandbox's network namespace, with pyroute2.

pyroute2 costs about 120 ms to import, so it is imported only in forked
children, only in the modes that set a network up: `--network none` (init
brings loopback up with one ioctl) and `host` (nothing to set up) never load it.

RouteWatch: a child that joins the sandbox's user and network namespaces (we
own that user namespace, so setns grants us its capabilities, as it does
pasta), subscribes to route events, then dumps the routes (an event between
the two is not lost), and reports the first default route through the
helper's interface on a pipe.  The supervisor polls that pipe and the helper's
pidfd: no polling of /proc/PID/net/route, no fixed interval.
"""

from __future__ import annotations

import os

from .network import NetError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Iterable
    from typing import Any
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

IFNAME = "tap0"  # the sandbox's interface, which the helper creates
TUN = "/dev/net/tun"
MAIN_TABLE = 254  # RT_TABLE_MAIN
AF_INET = 2
REPORT_LIMIT = 4096
PYROUTE2_MISSING = "pyroute2 is not installed (pip install pyroute2; it is one of sbx's dependencies)"


def setns(fd: int, nstype: int) -> None:
    """os.setns (Python >= 3.12), else libc's."""
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    from ..kernel import linux

    if linux.function("setns")(fd, nstype) < 0:
        err = linux.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class RouteWatch:
    """A child waiting, in the sandbox's network namespace, for its default route."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd  # readable once the child has reported (or died)

    @classmethod
    def start(cls, namespaces: tuple[int, int], ifname: str) -> RouteWatch:
        """Watch the network namespace `namespaces` (fds of the sandbox's user and network
        namespaces, left open) for a default route via `ifname`."""
        from ..kernel import linux

        fds = namespaces
        try:
            report_r, report_w = os.pipe()
        except OSError as exc:
            raise NetError(f"cannot watch the sandbox's network: {exc.strerror}") from None
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            words = "error the route watch died"
            try:
                linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
                if os.getppid() != parent:
                    os._exit(1)
                os.close(report_r)
                setns(fds[0], linux.CLONE_NEWUSER)  # before any thread: pyroute2 may start some
                setns(fds[1], linux.CLONE_NEWNET)
                words = "ok " + _watch(ifname)
            except OSError as exc:
                words = f"error cannot join the sandbox's network namespace: {exc.strerror}"
            except NetError as exc:
                words = f"error {exc}"
            except BaseException as exc:  # report, never raise out of a forked child
                words = f"error the route watch failed: {type(exc).__name__}: {exc}"
            finally:
                os.write(report_w, words.encode(errors="replace")[:REPORT_LIMIT])
                os._exit(0)
        os.close(report_w)
        return cls(pid, report_r)

    def result(self) -> str:
        """What the child saw ("tap0 10.0.2.100/24 via 10.0.2.2"); NetError in its words if it could not watch."""
        said = b""
        while chunk := os.read(self.fd, REPORT_LIMIT):
            said += chunk
        self.stop()
        status, _, words = said.decode(errors="replace").partition(" ")
        if status != "ok":
            raise NetError(words or "the route watch died")
        return words

    def stop(self) -> None:
        kill_and_reap(self.pid)
        self.pid = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def kill_and_reap(pid: int) -> None:
    """SIGKILL our child `pid` (0: none) and wait for it (the route watch, the network helper)."""
    if not pid:
        return
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def _watch(ifname: str) -> str:
    """In the sandbox's network namespace: block until a default route via `ifname` exists."""
    try:
        from pyroute2 import IPRoute  # type: ignore[import-untyped]
        from pyroute2.netlink.rtnl import RTMGRP_IPV4_ROUTE  # type: ignore[import-untyped]
    except ImportError:
        raise NetError(f"--network pasta: {PYROUTE2_MISSING}") from None
    with IPRoute() as events, IPRoute() as ipr:
        events.bind(groups=RTMGRP_IPV4_ROUTE)  # first: a route added during the dump is an event
        index = _index(ipr, ifname)
        gateway = default_gateway(ipr.route("dump", family=AF_INET), index)
        while gateway is None:
            gateway = default_gateway(events.get(), index)
        index = index if index is not None else _index(ipr, ifname)
        addresses = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)
                     if a["family"] == AF_INET]
        return f"{ifname} {' '.join(addresses) or 'no address'} via {gateway or 'no gateway'}"


def _index(ipr: Any, ifname: str) -> int | None:
    """`ifname`'s index, None while it does not exist (slirp4netns creates it after we start)."""
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def default_gateway(messages: Iterable[Any], index: int | None) -> str | None:
    """The gateway ("" for none) of the first new IPv4 default route in the main table among
    `messages` (pyroute2 route messages), through interface `index` where that is known."""
    for msg in messages:
        if msg.get("event") != "RTM_NEWROUTE" or msg.get("family") != AF_INET or msg.get("dst_len") != 0:
            continue
        table = msg.get_attr("RTA_TABLE") or msg.get("table")
        if table != MAIN_TABLE or (index is not None and msg.get_attr("RTA_OIF") != index):
            continue
        return str(msg.get_attr("RTA_GATEWAY") or "")
    return None


# linux/if_tun.h, linux/if.h; documentation addresses (RFC 5737), in a namespace of the probe's own
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_UP = 0x0002, 0x1000, 0x1
PROBE_ADDRESS, PROBE_GATEWAY = "192.0.2.2", "192.0.2.1"


def probe() -> str:
    """`sbx doctor`'s network check, in a forked child (it unshares): what pasta does in a sandbox's
    network namespace, by netlink: loopback up, a tap device, its address and a default route,
    the route read back.  "yes", or "no: WHY"."""
    import fcntl
    import struct

    from ..kernel import linux

    uid, gid = os.getuid(), os.getgid()
    try:
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNET)
        linux.map_ids(0, uid, 0, gid)
    except OSError as exc:
        return f"no: a new user and network namespace: {exc.strerror}"
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return f"no: {PYROUTE2_MISSING}"
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        if not ipr.link("get", index=lo)[0]["flags"] & IFF_UP:
            return "no: loopback did not come up"
        try:
            tun = os.open(TUN, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            return f"no: {TUN}: {exc.strerror}"
        try:
            fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH22x", IFNAME.encode(), IFF_TAP | IFF_NO_PI))
            tap = ipr.link_lookup(ifname=IFNAME)[0]
            ipr.addr("add", index=tap, address=PROBE_ADDRESS, prefixlen=24)
            ipr.link("set", index=tap, state="up")
            ipr.route("add", dst="0.0.0.0/0", gateway=PROBE_GATEWAY, oif=tap)
            gateway = default_gateway(ipr.route("dump", family=AF_INET), tap)
        except OSError as exc:
            return f"no: a tap device in a new network namespace: {exc.strerror}"
        finally:
            os.close(tun)
    return "yes" if gateway == PROBE_GATEWAY else f"no: the default route reads back as {gateway!r}"
