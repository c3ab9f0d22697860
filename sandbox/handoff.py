"""What the supervisor hands to the processes it starts inside the sandbox."""

from __future__ import annotations

from .frozen import dataclass

RELEASE = b"G"  # the supervisor's go byte on the release pipe


@dataclass(frozen=True)
class Handoff:
    """The child ends of one run's pipes, and the compiled seccomp filter.

    report_w: lines to the supervisor (the protocol is in init.py).
    release_r: the payload waits here for RELEASE; EOF means the supervisor is gone.
    exec_w: close-on-exec; the payload writes why exec failed, if it did.
    stdio: the payload's fds 0, 1, 2.
    channel_w: a unix datagram socket to the supervisor: the payload's first message tells
        its pid (by SCM_CREDENTIALS), a later one carries its seccomp listener fd.
    seccomp: the BPF program to load last before execve (None: no filter).
    nft: egress rules for the sandbox's network namespace, host names already resolved.
    """

    report_w: int
    release_r: int
    exec_w: int
    stdio: tuple[int, int, int]
    channel_w: int
    seccomp: bytes | None = None
    nft: str | None = None

    def payload_only(self) -> tuple[int, ...]:
        """Fds that init must close once the payload has its copies."""
        return (self.release_r, self.exec_w, *(fd for fd in (self.channel_w, *self.stdio) if fd > 2))
