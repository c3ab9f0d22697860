"""sbx's own failures: each becomes one `sbx: error: ...` line and exit 125."""

from __future__ import annotations

EXIT_SBX = 125
EXIT_NOEXEC = 126
EXIT_NOTFOUND = 127


class SbxError(Exception):
    """A failure of sbx itself (bad input or setup); str() is the one-line message."""

    def __str__(self) -> str:
        # Messages quote user input; control characters would split or forge lines.
        text = super().__str__()
        if text.isprintable():
            return text
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UsageError(SbxError):
    """Bad flags or arguments."""


class SetupError(SbxError):
    """The sandbox could not be built."""
