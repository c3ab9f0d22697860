"""sbx's own failures: each becomes one `sbx: error: ...` line and exit 125."""

from __future__ import annotations

EXIT_SBX = 125
EXIT_NOEXEC = 126
EXIT_NOTFOUND = 127


class SbxError(Exception):
    """A failure of sbx itself (bad input or setup); str() is the one-line message."""


class UsageError(SbxError):
    """Bad flags or arguments."""


class SetupError(SbxError):
    """The sandbox could not be built."""
