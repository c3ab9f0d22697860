"""User-mode networking for the sandbox: pasta (slirp4netns as the fallback),
published ports, and egress rules.

`--network none` needs nothing here: init brings loopback up.  In `pasta`
mode the supervisor starts the helper against the namespace entry process,
which sits in the sandbox's user and network namespaces and stays dumpable
(init does not), once those exist; the helper creates and configures a tap
interface there (address, default route) while init builds the root, and the
payload is released only when the route is in place.  The helper runs outside
the sandbox's pid namespace, so the payload cannot see or signal it, and dies
with the supervisor (PR_SET_PDEATHSIG, and slirp4netns' exit fd).  Its stderr
goes to a bounded memfd: a helper that fails during set-up is quoted in the
error line (SBX_DEBUG=1 prints all it said).

Egress rules are nftables rules in the sandbox's own network namespace,
installed by init (which holds CAP_NET_ADMIN there; the payload holds none)
before the payload starts.  Host names in rules are resolved when the run
starts.  This module imports nothing heavy: it is on the start-up path of
the modes that use it only.
"""

from __future__ import annotations

import os
import time

from ..model.frozen import dataclass
from ..model.spec import Publish

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    import signal as _signal
    from collections.abc import Mapping
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

READY_TIMEOUT = 10.0
IFNAME = "tap0"
HELPERS = ("pasta", "slirp4netns")  # in the order tried
MAX_PORT = 65535
PIPE_CHUNK = 4096
POLL_INTERVAL = 0.001  # s between checks for the sandbox's default route


class NetError(Exception):
    """A bad network setting, or a helper that cannot start; one line."""


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


@dataclass(frozen=True)
class Rule:
    """One egress rule: an address or network, and optionally a port."""

    network: str  # "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"
    port: int | None = None


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


def resolve_rules(texts: tuple[str, ...]) -> tuple[Rule, ...]:
    """Rules with host names resolved now (they are not followed later)."""
    import ipaddress

    rules = []
    for text in texts:
        host, port = parse_rule(text)
        try:
            networks = [str(ipaddress.ip_network(host, strict=False))]
        except ValueError:
            networks = [f"{ip}/{32 if ':' not in ip else 128}" for ip in _lookup(host, text)]
        rules += [Rule(network, port) for network in networks]
    return tuple(rules)


def _lookup(host: str, text: str) -> list[str]:
    import socket

    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise NetError(f"network rule {text!r}: cannot resolve {host}: {exc.strerror or exc}") from None
    return sorted({str(info[4][0]) for info in infos})


def nft_script(allow: tuple[Rule, ...], deny: tuple[Rule, ...], dns: tuple[str, ...]) -> str | None:
    """The sandbox's egress rules as an nft script; None when there are none.

    With an allow list, everything else is rejected (DNS to the sandbox's
    resolvers stays open, or names could not be looked up at all).  Deny rules
    come first.  Loopback and replies to accepted traffic always pass.
    """
    if not allow and not deny:
        return None
    lines = ["table inet sbx {", "  chain output {", "    type filter hook output priority 0; policy accept;",
             '    oifname "lo" accept', "    ct state established,related accept"]

    def match(rule: Rule) -> list[str]:
        family = "ip6" if ":" in rule.network else "ip"
        base = f"{family} daddr {rule.network}"
        if rule.port is None:
            return [base]
        return [f"{base} tcp dport {rule.port}", f"{base} udp dport {rule.port}"]

    for rule in deny:
        lines += [f"    {m} counter reject" for m in match(rule)]
    if allow:
        for server in dns:
            for m in match(Rule(f"{server}/{128 if ':' in server else 32}", 53)):
                lines.append(f"    {m} accept")
        for rule in allow:
            lines += [f"    {m} accept" for m in match(rule)]
        lines += ["    meta l4proto tcp counter reject with tcp reset", "    counter reject with icmpx type admin-prohibited"]
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")


def apply_rules(script: str) -> None:
    """Load an nft script into the current network namespace (init does, before the payload exists)."""
    nft = next((p for p in NFT_PATHS if os.access(p, os.X_OK)), None)
    if nft is None:
        raise NetError("egress rules need nft (Debian package 'nftables')")
    rules = os.memfd_create("sbx-egress", 0)
    os.write(rules, script.encode())
    errors_r, errors_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(errors_w, 2)
            os.dup2(errors_w, 1)
            os.set_inheritable(rules, True)
            os.execv(nft, [nft, "-f", f"/proc/self/fd/{rules}"])
        finally:
            os._exit(127)
    os.close(errors_w)
    os.close(rules)
    output = b""
    while chunk := os.read(errors_r, PIPE_CHUNK):
        output += chunk
    os.close(errors_r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        detail = output.decode(errors="replace").strip().splitlines()
        raise NetError(f"cannot install the egress rules: {detail[0] if detail else f'nft exited {status}'}")


def host_gateway() -> str | None:
    """The host's IPv4 default gateway, from /proc/net/route."""
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


class UserNet:
    """A running pasta or slirp4netns attached to the sandbox's network namespace."""

    def __init__(self, name: str, pid: int, target: int, log: int, ready_r: int = -1, exit_w: int = -1) -> None:
        self.name = name
        self.pid = pid
        self.target = target
        self.log = log  # the helper's stderr (helper_log())
        self.ready_r = ready_r
        self.exit_w = exit_w

    @classmethod
    def start(cls, target: int, helper: str | None, publish: tuple[Publish, ...], dns: tuple[str, ...],
              host_loopback: bool) -> UserNet:
        """Start `helper` (find_helper()) for the network namespace of process `target` (ours, dumpable)."""
        name = helper_name(helper)
        if helper is None or name is None:
            raise NetError("--network pasta needs pasta (Debian package 'passt') or slirp4netns; neither is "
                           "installed")
        check_tun()
        if name == "pasta":
            argv = ["pasta", "--config-net", "--foreground", "--quiet", "--ns-ifname", IFNAME, "--ipv4-only"]
            if os.getuid() == 0:
                argv += ["--runas", "0"]  # as root pasta would switch to nobody, who cannot join our namespaces
            if not host_loopback:
                argv.append("--no-map-gw")  # else the gateway address is the host's 127.0.0.1
            if dns and dns[0] == host_gateway():
                argv += ["--dns-forward", dns[0]]  # the host's resolver is on its loopback: relay to it
            tcp = [p for p in publish if p.proto == "tcp"]
            udp = [p for p in publish if p.proto == "udp"]
            for flag, items in (("-t", tcp), ("-u", udp)):
                for p in items:
                    argv += [flag, f"{p.host_ip + '/' if p.host_ip else ''}{p.host_port}:{p.sandbox_port}"]
                if not items:
                    argv += [flag, "none"]
            argv += ["-T", "none", "-U", "none", str(target)]
            log = helper_log()
            try:
                return cls(name, _spawn(helper, argv, (), log), target, log)
            except BaseException:
                os.close(log)
                raise
        if publish:
            raise NetError("-p needs pasta (Debian package 'passt'); only slirp4netns is installed")
        log = helper_log()
        fds: list[int] = []
        try:
            ready_r, ready_w = os.pipe()
            fds += (ready_r, ready_w)
            exit_r, exit_w = os.pipe()
            fds += (exit_r, exit_w)
            argv = ["slirp4netns", "--configure", "--mtu=65520", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
                    *(() if host_loopback else ("--disable-host-loopback",)), str(target), IFNAME]
            pid = _spawn(helper, argv, (ready_w, exit_r), log)
        except BaseException:
            for fd in (log, *fds):
                os.close(fd)
            raise
        os.close(ready_w)
        os.close(exit_r)
        return cls(name, pid, target, log, ready_r, exit_w)

    def wait_ready(self) -> None:
        """Until the sandbox has its default route (the helper configured the tap)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if _has_default_route(self.target):
                return
            waited, status = os.waitpid(self.pid, os.WNOHANG)
            if waited:
                self.pid = 0
                raise NetError(self._failure(f"{self.name} exited before the network was up", status))
            time.sleep(POLL_INTERVAL)
        raise NetError(self._failure(f"{self.name} did not bring the network up within {READY_TIMEOUT:g} s", None))

    def _failure(self, what: str, status: int | None) -> str:
        """`what`, with the helper's own last words."""
        said = last_words(read_log(self.log))  # all of it: stop(), with SBX_DEBUG
        if said:
            return f"{what}: {said}"
        if status is not None:
            code = os.waitstatus_to_exitcode(status)
            return f"{what} ({f'exit status {code}' if code >= 0 else f'killed by signal {-code}'}; it said nothing)"
        return f"{what} (it said nothing)"

    def stop(self) -> None:
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        if self.pid:
            try:
                os.kill(self.pid, _signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0
        if self.log >= 0:
            if os.environ.get("SBX_DEBUG"):
                text = read_log(self.log)
                if text:
                    end = "" if text.endswith("\n") else "\n"
                    os.write(2, f"sbx: {self.name}'s stderr:\n{text}{end}".encode(errors="replace"))
            os.close(self.log)
            self.log = -1


TUN = "/dev/net/tun"


def check_tun() -> None:
    """The helper opens /dev/net/tun (as we see it: it stays in our mount namespace) to create
    the sandbox's interface.  Where nothing set its mode (no udev: containers, minimal VMs,
    fresh CI machines) it is the kernel's 0600 root:root, and an unprivileged helper fails
    with words that do not say why (pasta: "Failed to open tun socket in namespace")."""
    try:
        os.close(os.open(TUN, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise NetError(_tun_problem(exc)) from None


def _tun_problem(exc: OSError) -> str:
    import errno

    if exc.errno == errno.ENOENT:
        return f"--network pasta needs {TUN}, which does not exist (the kernel's tun driver: modprobe tun)"
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return f"--network pasta cannot open {TUN}: {exc.strerror}"
    try:
        st = os.stat(TUN)
        what = f"it is {st.st_mode & 0o7777:04o}, owner uid {st.st_uid}"
    except OSError as stat_exc:
        what = f"stat: {stat_exc.strerror}"
    return (f"--network pasta needs read-write access to {TUN}, which this user lacks ({what}; udev's "
            f"rules make it 0666, the kernel alone 0600): as root, chmod 0666 {TUN}")


LOG_LIMIT = 64 * 1024


def helper_log() -> int:
    """A file for a helper's stderr: a memfd that cannot grow past LOG_LIMIT bytes.

    Not a pipe: nobody reads a helper's stderr while it runs, and a chatty helper must
    neither block on a full pipe nor fill memory (writes past the limit fail, and the
    helpers ignore failed writes to stderr).  Its file offset, shared with the helper's
    fd 2, is how much it wrote.
    """
    import fcntl

    fd = os.memfd_create("sbx-helper-stderr", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, LOG_LIMIT)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_log(fd: int) -> str:
    """What the helper has written to its helper_log() so far."""
    size = min(os.lseek(fd, 0, os.SEEK_CUR), LOG_LIMIT)
    return os.pread(fd, size, 0).decode(errors="replace")


# Lines that are no reason: passt's logger when there is no syslog socket (it prints them
# before the message it could not send), slirp4netns' parent after its child's error.
_NOISE = (r"Failed to send \d+ bytes to syslog", r"child failed\(-?\d+\)", r"WARNING: .*")


def last_words(text: str, limit: int = 300) -> str:
    """A helper's last meaningful line: printable, at most `limit` characters."""
    import re

    lines = [" ".join("".join(c if c.isprintable() else " " for c in line).split()) for line in text.splitlines()]
    lines = [line for line in lines if line]
    meaningful = [line for line in lines if not any(re.fullmatch(noise, line) for noise in _NOISE)]
    line = (meaningful or lines or [""])[-1]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _has_default_route(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/net/route") as f:
            return any(row.split()[1:2] == ["00000000"] for row in f.read().splitlines()[1:])
    except OSError:
        return False


def _spawn(path: str, argv: list[str], keep: tuple[int, ...], log: int) -> int:
    """Fork and exec a helper that dies with us: no stdin or stdout, its stderr to `log`."""
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            from ..kernel import linux

            linux.prctl(linux.PR_SET_PDEATHSIG, _signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(1)
            for signum in (_signal.SIGPIPE, _signal.SIGXFSZ):  # Python ignores them; exec would keep that
                _signal.signal(signum, _signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(log, 2)
            for fd in keep:
                os.set_inheritable(fd, True)
            os.execv(path, argv)  # our other fds are close-on-exec
        finally:
            os._exit(127)
    return pid
