"""Egress rules: nftables rules in the sandbox's own network namespace.

The supervisor resolves host names when the run starts (resolve_rules: they are
not followed later) and writes the rules as one nft script (nft_script); init,
which holds CAP_NET_ADMIN in the sandbox's network namespace (the payload holds
none), loads it before the payload exists (apply_rules).

Why `nft` and not pyroute2's nftables support: pyroute2 (0.9) builds tables,
chains and IPv4 address matches with a verdict; every script sbx writes also needs
what it has no builder for (ip6 daddr, tcp/udp dport, ct state, oifname, reject
with tcp reset or icmpx), which would mean hand-assembling nf_tables expression
attributes against an API pyroute2 calls a prototype.  `nft -f` loads the whole
script as one atomic transaction, and its own words name a bad rule.
"""

from __future__ import annotations

import os

from ..model.frozen import dataclass
from .network import NetError, parse_rule

NFT_PATHS = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")
PIPE_CHUNK = 4096


@dataclass(frozen=True)
class Rule:
    """One egress rule: an address or network, and optionally a port."""

    network: str  # "10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"
    port: int | None = None


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


def find_nft() -> str | None:
    """nft's path: a fixed list, not $PATH (init runs it with CAP_NET_ADMIN in the sandbox's namespace)."""
    return next((p for p in NFT_PATHS if os.access(p, os.X_OK)), None)


def apply_rules(script: str, nft: str | None = None, debug: bool = False) -> None:
    """Load an nft script into the current network namespace (init does, before the payload exists).

    nft's words end the error line; with SBX_DEBUG all it said comes first."""
    nft = nft or find_nft()
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
        output = (output + chunk)[-PIPE_CHUNK * 16:]
    os.close(errors_r)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        from .helper import exit_words, show_all

        said = output.decode(errors="replace")
        if debug:
            show_all("nft", said)
        raise NetError(f"cannot install the egress rules: nft failed: {nft_words(said) or exit_words(status)}")


def nft_words(text: str) -> str:
    """nft's reason: its first "Error: ..." (after a "FILE:LINE:COLUMNS:" or "netlink:"
    prefix), with the rule it quotes next where it quotes one (then a ^^^ line marks the spot).
    Else its last meaningful line."""
    from .helper import last_words

    lines = text.splitlines()
    for i, line in enumerate(lines):
        _, found, reason = line.partition("Error:")
        if not found:
            continue
        quoted = lines[i + 1].strip() if i + 2 < len(lines) and set(lines[i + 2].strip()) == {"^"} else ""
        return last_words(f"{reason.strip()}{f' (in: {quoted})' if quoted else ''}")
    return last_words(text)
