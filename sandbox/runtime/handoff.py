"""What the supervisor hands to the processes it starts inside the sandbox."""

from __future__ import annotations

from ..model.frozen import dataclass

RELEASE = b"G"  # the supervisor's go byte on the release pipe


@dataclass(frozen=True)
class Handoff:
    """The child ends of one sandbox's pipes, and the compiled seccomp filter.

    report_w: lines to the supervisor (the protocol is in init.py).
    release_r: the payload waits here for RELEASE; EOF means the supervisor is gone.
    exec_w: close-on-exec; the payload writes why exec failed, if it did.
    channel_w: a unix datagram socket shared with the supervisor.  The supervisor's message
        carries the run's fds (stdin, stdout, stderr, then --pass-fd ones); the payload's
        tells its pid (by SCM_CREDENTIALS) and carries its seccomp listener fd.
    command_r: the run's command (see Command), length-prefixed; EOF before it means the
        sandbox was prepared and then discarded.
    seccomp: the BPF program to load last before execve (None: no filter).
    nft: egress rules for the sandbox's network namespace, host names already resolved.
    maps: (write end, read end) for id ranges: the entry process writes U once it has its
        user namespace, and reads G once its parent has written the maps (idmap.py); or None,
        when it maps its one id itself.
    keep_w: Spec.upper_sock's copy (or -1): init sends the kept writable layer's directory
        fd over it once the root is built, then closes it.

    Everything that differs from one run to the next comes through command_r and
    channel_w, so a sandbox can be built before its run is known (warm runs).
    """

    report_w: int
    release_r: int
    exec_w: int
    channel_w: int
    command_r: int
    seccomp: bytes | None = None
    nft: str | None = None
    maps: tuple[int, int] | None = None
    keep_w: int = -1

    def payload_only(self) -> tuple[int, ...]:
        """Fds that init must close once the payload has its copies."""
        return (self.release_r, self.exec_w, self.channel_w, self.command_r)

    def all(self) -> tuple[int, ...]:
        return (self.report_w, *self.payload_only(), *(self.maps or ()), *((self.keep_w,) if self.keep_w >= 0 else ()))


@dataclass(frozen=True)
class Command:
    """One run's per-run part: what to exec, and the rlimits to set first.

    `pass_fds`: the numbers the --pass-fd descriptors get, in the order they
    follow stdin, stdout and stderr in the channel message.
    """

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    rlimits: tuple[tuple[int, int, int], ...]  # (resource, soft, hard)
    pass_fds: tuple[int, ...] = ()

    def encode(self) -> bytes:
        import marshal  # built in, and a data-only format: no code objects are sent

        body = marshal.dumps((self.argv, self.env, self.rlimits, self.pass_fds))
        return len(body).to_bytes(8, "little") + body

    @classmethod
    def decode(cls, body: bytes) -> Command:
        import marshal

        argv, env, rlimits, pass_fds = marshal.loads(body)
        return cls(tuple(argv), tuple(env), tuple(rlimits), tuple(pass_fds))
