"""`sbx --version`: the version in the installed package's metadata.

The one source is `sandbox.__version__`: pyproject.toml reads it there when a wheel is built,
so the metadata of an installed sbx says the same.  importlib.metadata (~10 ms of imports) is
loaded on this path only.
"""

from __future__ import annotations

import os


def version() -> str:
    """The metadata's version when the installed distribution is the package running; else (a
    checkout on sys.path, an editable install) `sandbox.__version__`."""
    from importlib import metadata

    from .. import __file__ as package_init
    from .. import __version__

    try:
        dist = metadata.distribution("sbx")
    except metadata.PackageNotFoundError:
        return __version__
    # Another sbx installed beside the checkout that is running must not speak for it.
    own = os.path.realpath(str(dist.locate_file("sandbox/__init__.py")))
    return dist.version if own == os.path.realpath(package_init) else __version__
