"""The one description of a run: frozen values built by the CLI or a profile.

Everything the supervisor, init and the payload need is here, so the later
stages never look at argv, profiles or the environment again.
"""

from __future__ import annotations

from .frozen import dataclass, field
from ..seccomp import SeccompSpec

MiB = 1024 * 1024

# Mount modes: bind modes for -v, plus "tmpfs" for --tmpfs and [[mount]] tmpfs.
BIND_MODES = ("ro", "rw", "overlay")
MOUNT_MODES = BIND_MODES + ("tmpfs",)
NETWORK_MODES = ("none", "host", "pasta")
LANDLOCK_WRITE = ("root", "scratch")


@dataclass(frozen=True)
class Mount:
    """One bind or tmpfs inside the sandbox.

    `source` is an absolute host path (None for tmpfs); `target` an absolute
    path inside the sandbox, resolved there without ever leaving the new root.
    """

    target: str
    mode: str = "ro"
    source: str | None = None
    size: int | None = None
    optional: bool = False


@dataclass(frozen=True)
class Publish:
    """-p [[HOST_IP:]HOST_PORT:]SANDBOX_PORT[/tcp|udp]; a lone port is the same port on both sides."""

    host_port: int
    sandbox_port: int
    proto: str = "tcp"
    host_ip: str | None = None

    def __str__(self) -> str:
        ip = "" if self.host_ip is None else (f"[{self.host_ip}]:" if ":" in self.host_ip else f"{self.host_ip}:")
        return f"{ip}{self.host_port}:{self.sandbox_port}/{self.proto}"


@dataclass(frozen=True)
class Limits:
    """Resource limits; None means unlimited.  Sizes in bytes, times in seconds."""

    memory: int | None = None
    address_space: int | None = None  # RLIMIT_AS of every process, whatever holds `memory`
    cpus: float | None = None
    cpuset: str | None = None
    pids: int | None = None
    time: float | None = None
    wall_time: float | None = None
    output: int | None = None
    file_size: int | None = None
    open_files: int | None = None
    stack: int | None = None
    io_read_bps: int | None = None
    io_write_bps: int | None = None
    strict: bool = False


@dataclass(frozen=True)
class LandlockSpec:
    """The Landlock fence the payload puts on itself (payload.py; SECURITY.md, "Landlock").

    `write`: "root", anywhere in the disposable root the mounts make writable; "scratch", only
    /tmp, /var/tmp, /dev/shm, the home sbx makes (/root, or /home/sbx for another uid) and the
    rw, overlay and tmpfs mounts.  `noexec`: sandbox
    paths nothing may be executed from.  `tcp_bind`/`tcp_connect`: the only TCP ports allowed
    (None: any).  `abi_cap`: use at most this ABI (SBX_LANDLOCK=N; 0 acts as a kernel without).
    """

    enabled: bool = True
    write: str = "root"
    noexec: tuple[str, ...] = ()
    tcp_bind: tuple[int, ...] | None = None
    tcp_connect: tuple[int, ...] | None = None
    abi_cap: int | None = None


# Metadata of a Spec field that belongs to one run, not to the sandbox it runs in (see Spec);
# "shape" gives a shape's value where the field has no default.
PER_RUN = {"run": True}


@dataclass(frozen=True)
class Spec:
    """A complete run.  `env` is the payload's whole environment.

    Two kinds of field.  The shape is what a sandbox is built from: its image, root, mounts,
    ids, network, sizes and protections; two runs of one shape can use sandboxes prepared the
    same way (the warm pool keys on it: runtime/supervisor.shape_of).  The fields marked
    PER_RUN are the run's own: the command, its limits, its files and fds, and the reports;
    a shape has them at their defaults (argv: ()).
    """

    argv: tuple[str, ...] = field(metadata={**PER_RUN, "shape": ()})
    env: tuple[tuple[str, str], ...] = field(default=(), metadata=PER_RUN)
    image: str = "host"
    layers: tuple[str, ...] = ()  # an imported image's layer dirs, top first; () for the host image
    # The imported image's writable layer is kept after the run (image builds, --commit)
    # instead of vanishing with the sandbox.  `upper_sock`: a unix datagram socket; the layer
    # is then on the --disk tmpfs, bounded while the run writes, and init sends its directory's
    # fd there (commit.Kept).  Else, or on a kernel whose tmpfs lacks user xattrs, it is `upper`,
    # a host directory holding upper/ and work/, checked against --disk only after the run.
    upper: str | None = None
    upper_sock: int = -1
    # fd holding the image store's use lock for as long as this process lives
    image_lock: int = field(default=-1, metadata=PER_RUN)
    id_ranges: bool = False  # map the caller's subordinate ids too (an image whose files keep owners)
    debug: bool = False  # SBX_DEBUG in the caller's environment: set-up tracebacks, helpers' whole stderr
    stamps: bool = False  # SBX_STAMPS in the caller's environment: each step's time on stderr (runtime/stamps.py)
    hostname: str = "sbx"
    uid: int = 0
    gid: int = 0
    workdir: str = "/"
    mounts: tuple[Mount, ...] = ()
    network: str = "none"
    publish: tuple[Publish, ...] = ()
    egress_allow: tuple[str, ...] = ()  # "10.0.0.0/8", "example.org:443": everything else is rejected
    egress_deny: tuple[str, ...] = ()
    dns: tuple[str, ...] = ()  # name servers for resolv.conf in pasta mode
    host_loopback: bool = False  # pasta: the gateway address reaches the host's loopback
    usernet: str | None = None  # pasta mode: the helper's path, found in the caller's environ (net.find_helper)
    disk: int = 256 * MiB
    tmp_size: int = 64 * MiB
    shm_size: int = 64 * MiB
    tty: bool = False
    pass_fds: tuple[int, ...] = field(default=(), metadata=PER_RUN)
    limits: Limits = field(default=Limits(), metadata=PER_RUN)
    seccomp: SeccompSpec = SeccompSpec()
    landlock: LandlockSpec = LandlockSpec()
    stdin: str | None = field(default=None, metadata=PER_RUN)
    stdout: str | None = field(default=None, metadata=PER_RUN)
    stderr: str | None = field(default=None, metadata=PER_RUN)
    # (fd, path inside the sandbox) the payload opens itself, as its own uid, after its fds are
    # placed and before its rlimits (isolate's -i/-o/-r): fd 0 for reading, else written
    # (created 0666, truncated); an empty path makes fd a copy of fd 1 (--stderr-to-stdout).
    redirects: tuple[tuple[int, str], ...] = field(default=(), metadata=PER_RUN)
    result: str | None = field(default=None, metadata=PER_RUN)
    meta: str | None = field(default=None, metadata=PER_RUN)
    cgroup: str | None = None  # a delegated cgroup v2 directory to run under (else discovered)
