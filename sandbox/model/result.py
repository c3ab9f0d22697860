"""A run's outcome: verdict, figures, and the JSON and isolate-style meta forms."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

from .frozen import dataclass
from .spec import Spec

VERDICTS = ("OK", "RE", "SG", "TLE", "WTLE", "MLE", "OLE", "XX")
# isolate's status codes for the meta file
_META_STATUS = {"RE": "RE", "SG": "SG", "TLE": "TO", "WTLE": "TO", "MLE": "SG", "OLE": "RE", "XX": "XX"}


@dataclass(frozen=True)
class Result:
    """What a run did.  `stdout`/`stderr` hold the captured bytes (up to the capture cap)
    when the run was asked to capture them, else None; they are not part of to_dict()."""

    verdict: str
    status: int                 # what sbx exits with: the payload's code, 128+signal, or 125
    exit_code: int | None = None
    signal: int | None = None
    wall_time: float = 0.0
    cpu_time: float = 0.0
    user_time: float = 0.0
    sys_time: float = 0.0
    memory_peak: int = 0
    oom_killed: bool = False
    pids_peak: int | None = None
    output_bytes: int = 0
    limits_enforced: tuple[tuple[str, bool], ...] = ()
    message: str = ""
    fences: tuple[tuple[str, bool], ...] = ()  # protections beyond the namespaces: ("landlock", held)
    # For the meta file (isolate's keys): the payload's own rusage, whether sbx ended the run
    # (a limit it watches: wall, CPU, output, memory counted without a cgroup, a seccomp kill),
    # and whether a run cgroup measured memory_peak and oom_killed (else rusage and the census).
    max_rss: int = 0            # bytes
    csw_voluntary: int = 0
    csw_forced: int = 0
    killed: bool = False
    cgroup: bool = False
    stdout: bytes | None = None
    stderr: bytes | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "OK"

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "cpu_time": round(self.cpu_time, 6),
            "user_time": round(self.user_time, 6),
            "sys_time": round(self.sys_time, 6),
            "wall_time": round(self.wall_time, 6),
            "memory_peak": self.memory_peak,
            "oom_killed": self.oom_killed,
            "pids_peak": self.pids_peak,
            "output_bytes": self.output_bytes,
            "limits_enforced": dict(self.limits_enforced),
            "message": self.message,
            "fences": dict(self.fences),
        }

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_meta(self, cgroup_keys: bool = True) -> str:
        """isolate's meta-file format, so judge code written for isolate parses it unchanged.

        As isolate writes it: no status on success; a timeout is TO with the message that tells
        CPU from wall clock ("wall"), and no exitcode or exitsig; `killed:1` only when sbx (or
        the kernel, for its CPU limit) ended the run; a file-size signal is SG.  `cg-mem` only
        when a run cgroup measured memory (never rusage under that name), and neither cg-* key
        unless `cgroup_keys` (the isolate front end without --cg).  `output-bytes` is sbx's own.
        """
        status = _META_STATUS[self.verdict] if self.verdict != "OK" else ""
        if self.signal == _signal.SIGXFSZ and self.verdict != "XX":
            status = "SG"  # the file-size rlimit's signal, as isolate reports it (exitsig:25)
        timeout = status == "TO"
        lines = []
        if status == "XX":
            return f"status:XX\nmessage:{self.message or 'internal error'}\n"
        if timeout:
            lines += ["status:TO", f"message:{self.meta_message(status)}"]
            if self.killed or self.signal is not None:
                lines.append("killed:1")
        lines += [f"time:{self.cpu_time:.3f}", f"time-wall:{self.wall_time:.3f}",
                  f"max-rss:{self.max_rss // 1024}", f"csw-voluntary:{self.csw_voluntary}",
                  f"csw-forced:{self.csw_forced}"]
        if cgroup_keys and self.cgroup and self.memory_peak:
            lines.append(f"cg-mem:{self.memory_peak // 1024}")
        if cgroup_keys and self.oom_killed:
            lines.append("cg-oom-killed:1")
        lines.append(f"output-bytes:{self.output_bytes}")
        if not timeout:
            if self.exit_code is not None:
                lines.append(f"exitcode:{self.exit_code}")
            if self.signal is not None:
                lines.append(f"exitsig:{self.signal}")
            if status:
                lines += [f"status:{status}", f"message:{self.meta_message(status)}"]
            if self.killed:
                lines.append("killed:1")
        return "\n".join(lines) + "\n"

    def meta_message(self, status: str) -> str:
        """isolate's wording for a meta status (CMS tells a wall-clock timeout by "wall" in it);
        sbx's own message where isolate has no words for the cause (a seccomp kill, output)."""
        if status == "TO":
            return "Time limit exceeded (wall clock)" if self.verdict == "WTLE" else "Time limit exceeded"
        if self.message and self.verdict in ("SG", "OLE"):
            return self.message
        if self.verdict == "OLE" and self.signal != _signal.SIGXFSZ:
            return "Output limit exceeded"
        if self.signal is not None:
            return f"Caught fatal signal {self.signal}"
        return f"Exited with error status {self.exit_code}"


def verdict_for(spec: Spec, exit_code: int | None, signal: int, cause: str, failed: bool, cpu_time: float,
                oom: bool) -> str:
    """cause: what the supervisor killed the run for ("wall", "time", "output", a seccomp message) or ""."""
    if failed:
        return "XX"
    if cause == "wall":
        return "WTLE"
    if cause == "time":
        return "TLE"
    if cause == "output":
        return "OLE"
    if cause:
        return "SG"  # a seccomp kill: SIGSYS with the syscall in the message
    if oom:
        return "MLE"
    time_limit = spec.limits.time
    # RLIMIT_CPU's SIGXCPU (the kernel counts exact runtime; rusage may show a tick less),
    # or its hard SIGKILL a second later.
    if time_limit is not None and (signal == _signal.SIGXCPU or (signal == _signal.SIGKILL and cpu_time >= time_limit)):
        return "TLE"
    # More CPU time than allowed, though nothing had to be killed: the run ended between two
    # checks, or (without a cgroup) a child the supervisor could not watch used it.
    if time_limit is not None and cpu_time > time_limit:
        return "TLE"
    if signal == _signal.SIGXFSZ and spec.limits.file_size is not None:
        return "OLE"
    if signal:
        return "SG"
    return "OK" if exit_code == 0 else "RE"
