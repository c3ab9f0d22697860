"""Networking, one module per concern: network.py (settings: published ports, rule syntax, which
helper, name servers), helper.py (running pasta or slirp4netns, their words when they fail),
link.py (netlink in the sandbox's namespace, with pyroute2: the route the payload waits for),
egress.py (nftables egress rules).  Loopback for `--network none` is init's one ioctl."""
