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

    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

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


class _Loader:
    """Finds and loads sbx's own modules from their cached bytecode, in a fraction of the generic
    path machinery's work: every `sbx run` imports some forty of them, and the per-module cost of
    importlib's FileFinder and SourceFileLoader (~60 us each here) was most of sbx's start-up
    import budget.  It serves only `sandbox.*` names, only from a `__pycache__` entry whose
    timestamp and size still match the source (what SourceFileLoader checks); anything else
    (no bytecode yet, stale or hash-based bytecode, -O) falls through to the normal machinery,
    which also writes the cache for next time."""

    def __init__(self, root: str) -> None:
        import marshal
        import sys

        bootstrap = sys.modules["_frozen_importlib"]
        external = sys.modules["_frozen_importlib_external"]
        self.root = root  # the directory of this package
        self.suffix = f".{sys.implementation.cache_tag}.pyc"
        self.magic: bytes = external.MAGIC_NUMBER
        self.spec_type = bootstrap.ModuleSpec
        self.loads = marshal.loads
        self.fix_filename = sys.modules["_imp"]._fix_co_filename
        self.optimized = sys.flags.optimize != 0 or sys.implementation.cache_tag is None
        self.listings: dict[str, frozenset[str]] = {}

    def _entries(self, directory: str) -> frozenset[str]:
        entries = self.listings.get(directory)
        if entries is None:
            import os

            try:
                entries = frozenset(os.listdir(directory))
            except OSError:
                entries = frozenset()
            self.listings[directory] = entries
        return entries

    def find_spec(self, name: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        if not name.startswith("sandbox.") or self.optimized:
            return None
        import os

        parent, _, leaf = name[len("sandbox."):].rpartition(".")
        directory = self.root + ("/" + parent.replace(".", "/") if parent else "")
        entries = self._entries(directory)
        if leaf in entries and "__init__.py" in self._entries(f"{directory}/{leaf}"):
            source, package = f"{directory}/{leaf}/__init__.py", f"{directory}/{leaf}"
            cached = f"{package}/__pycache__/__init__{self.suffix}"
        elif leaf + ".py" in entries:
            source, package = f"{directory}/{leaf}.py", ""
            cached = f"{directory}/__pycache__/{leaf}{self.suffix}"
        else:
            return None
        try:
            st = os.stat(source)
            fd = os.open(cached, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            data = os.read(fd, os.fstat(fd).st_size + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if (data[:4] != self.magic or data[4:8] != b"\0\0\0\0"
                or int.from_bytes(data[8:12], "little") != int(st.st_mtime) & 0xFFFFFFFF
                or int.from_bytes(data[12:16], "little") != st.st_size & 0xFFFFFFFF):
            return None  # stale or hash-based: the normal machinery recompiles or checks it
        spec: ModuleSpec = self.spec_type(name, self, origin=source, loader_state=data, is_package=bool(package))
        spec.has_location = True
        spec.cached = cached
        if package:
            spec.submodule_search_locations = [package]
        return spec

    def create_module(self, spec: ModuleSpec) -> None:
        return None  # the default module object

    def exec_module(self, module: ModuleType) -> None:
        spec = module.__spec__
        assert spec is not None
        data, spec.loader_state = spec.loader_state, None
        code = self.loads(memoryview(data)[16:])
        self.fix_filename(code, spec.origin)
        exec(code, module.__dict__)

    def get_code(self, name: str) -> object:
        """What runpy (`python -m sandbox...`) asks for instead of exec_module."""
        spec = self.find_spec(name)
        if spec is None:
            raise ImportError(f"no current bytecode for {name}", name=name)
        code = self.loads(memoryview(spec.loader_state)[16:])
        self.fix_filename(code, spec.origin)
        return code

    # What linecache, inspect and pkgutil ask a loader.
    def _spec_of(self, name: str) -> ModuleSpec:
        import sys

        module = sys.modules.get(name)
        spec = module.__spec__ if module is not None else self.find_spec(name)
        if spec is None or spec.origin is None:
            raise ImportError(f"no source for {name}", name=name)
        return spec

    def get_filename(self, name: str) -> str:
        return str(self._spec_of(name).origin)

    def get_source(self, name: str) -> str:
        with open(self.get_filename(name), encoding="utf-8") as file:
            return file.read()

    def is_package(self, name: str) -> bool:
        return self._spec_of(name).submodule_search_locations is not None


def _install_loader() -> None:
    import sys

    if not any(isinstance(finder, _Loader) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Loader(__path__[0]))


_install_loader()
