"""--result and --meta: report files opened before the run, as the caller, and filled after it.

Never by path after the run: the payload may have changed what the path names
(see kernel/hostfile.py).  Used by `sbx run` and the interactor's pair of runs.
"""

from __future__ import annotations

import os
import sys

from ..errors import SbxError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..model.result import Result
    from ..model.spec import Spec

    Reports = tuple[int | None, int | None]  # --result, --meta: an fd of ours, STDOUT, or None

STDOUT = -1  # a report fd that stands for "-": sbx's own stdout


def open_reports(spec: Spec) -> Reports:
    """--result and --meta, opened now as the caller (see hostfile); write_reports fills them after the run."""

    def one(flag: str, path: str | None) -> int | None:
        if path is None or path == "-":
            return None if path is None else STDOUT
        from ..kernel.hostfile import open_output  # only when there is a file to open

        return open_output(path, flag)

    result = one("--result", spec.result)
    try:
        return result, one("--meta", spec.meta)
    except BaseException:
        close_reports((result, None))
        raise


def close_reports(reports: Reports) -> None:
    for fd in set(reports):
        if fd is not None and fd >= 0:
            os.close(fd)


def write_reports(reports: Reports, result: Result, json_text: Callable[[], str] | None = None) -> None:
    """--result and --meta, through the fds opened before the run (never by path: the payload may have
    changed what the path names); `json_text` replaces the result's own JSON.  The fds stay open."""
    for flag, fd, text in zip(("--result", "--meta"), reports, (json_text or result.to_json, result.to_meta)):
        if fd is None:
            continue
        if fd == STDOUT:
            sys.stdout.write(text())
            continue
        data = text().encode()
        try:
            os.ftruncate(fd, 0)  # whatever was written to the file meanwhile goes
            offset = 0
            while offset < len(data):
                offset += os.pwrite(fd, data[offset:], offset)
        except OSError as exc:
            raise SbxError(f"cannot write {flag}: {exc.strerror}") from None
