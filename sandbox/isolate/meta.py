"""The meta file (-M) and the status line, as isolate writes them.

The meta file is opened as the caller before anything runs (`-` is stdout), with sbx's
report rules (no symlink in any component, a regular file), and written once at the end:
Result.to_meta() holds the format; here only isolate's view of the verdict (-t decides TO
even when -x let the program run on) and what sbx adds that isolate never writes.
"""

from __future__ import annotations

import os

from ..model.frozen import replace
from ..model.result import Result

SBX_ONLY = ("output-bytes:",)  # sbx's own meta keys, not isolate's
STDOUT = "-"


class Meta:
    """An open meta file (or none): written once, by write() or error()."""

    def __init__(self, path: str | None) -> None:
        self.fd = -1
        if path == STDOUT:
            self.fd = 1
        elif path is not None:
            from ..kernel.hostfile import open_output

            self.fd = open_output(path, "the meta file")  # UsageError: the caller reports it

    def write(self, text: str) -> None:
        if self.fd < 0:
            return
        data = text.encode(errors="replace")
        while data:
            data = data[os.write(self.fd, data):]
        if self.fd > 2:
            os.close(self.fd)
        self.fd = -1

    def error(self, message: str) -> None:
        """isolate's die(): an internal error (XX)."""
        self.write(f"status:XX\nmessage:{message}\n")


def as_isolate(result: Result, time_ms: int, wall_ms: int) -> Result:
    """isolate's verdict from sbx's: TO whenever the CPU time exceeded -t (the kill waits for -x
    too), else when the wall time exceeded -w; times in isolate's whole milliseconds."""
    if result.verdict == "XX":
        return result
    if time_ms and int(result.cpu_time * 1000) > time_ms and result.verdict != "TLE":
        return replace(result, verdict="TLE")
    if (wall_ms and int(result.wall_time * 1000) > wall_ms and result.verdict not in ("TLE", "WTLE")):
        return replace(result, verdict="WTLE")
    return result


def meta_text(result: Result, cgroup_keys: bool) -> str:
    lines = result.to_meta(cgroup_keys=cgroup_keys).splitlines(keepends=True)
    return "".join(line for line in lines if not line.startswith(SBX_ONLY))


def status_line(result: Result) -> str:
    """What isolate prints on stderr unless -s: OK with the times, else the meta message."""
    if result.verdict == "OK":
        cpu, wall = int(result.cpu_time * 1000), int(result.wall_time * 1000)
        return f"OK ({cpu // 1000}.{cpu % 1000:03d} sec real, {wall // 1000}.{wall % 1000:03d} sec wall)"
    if result.verdict == "XX":
        return result.message
    status = "TO" if result.verdict in ("TLE", "WTLE") else ""
    return result.meta_message(status)


def exit_status(result: Result) -> int:
    """isolate's: 0 the program succeeded, 1 it failed (RE, SG, TO), 2 the sandbox failed."""
    if result.verdict == "OK":
        return 0
    return 2 if result.verdict == "XX" else 1
