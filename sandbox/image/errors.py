"""The image store's one error type: a one-line message, exit 125 in the CLI."""

from __future__ import annotations

from ..errors import SbxError


class ImageError(SbxError):
    """Bad image reference, bad archive, missing image, store failure."""


class TooLarge(ImageError):
    """A stream or a layer went past a size cap; the import names the layer and the cap."""
