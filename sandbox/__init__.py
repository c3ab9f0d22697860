"""sbx: a rootless Linux sandbox for running untrusted code under hard limits.

The Python API (see sandbox/warm/api.py and README.md):

    from sandbox import Runner
    with Runner(profile="grader") as runner:
        result = runner.run(["python3", "solution.py"], stdin=b"1 2\n", limits={"time": 1})

Names are imported on first use, so `sbx run` pays nothing for them.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .warm.api import Runner as Runner
    from .warm.api import run as run
    from .warm.box import Box as Box
    from .warm.box import BoxBusy as BoxBusy
    from .warm.box import BoxError as BoxError
    from .errors import SbxError as SbxError
    from .errors import SetupError as SetupError
    from .errors import UsageError as UsageError
    from .image.errors import ImageError as ImageError
    from .config.profile import ProfileError as ProfileError
    from .model.result import Result as Result
    from .model.spec import Limits as Limits
    from .model.spec import Spec as Spec

_EXPORTS = {
    "Runner": "warm.api", "run": "warm.api", "Box": "warm.box", "BoxBusy": "warm.box", "BoxError": "warm.box",
    "SbxError": "errors", "SetupError": "errors", "UsageError": "errors", "ImageError": "image.errors", "ProfileError": "config.profile",
    "Result": "model.result", "Limits": "model.spec", "Spec": "model.spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
