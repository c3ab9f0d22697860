"""Packaging: the wheel and the sdist carry everything (issues #12, #18).

Users and distributions install a wheel, not the checkout.  In the editable
stage (root, /opt/sbx-test-venv) a wheel is built from the tree and its file
list compared with the tree (modules, profiles, image recipes, the man page,
every launcher of bin/), and an sdist is built, checked to hold the whole
project, and built into a wheel that must equal the tree's; in the installed
stage (SBX_TEST_INSTALLED=1, test.sh's unprivileged stages, under the machine's
Python and under 3.10: a fresh venv with the wheel installed, run from a copy
of the tree without sandbox/) the installed package itself is used: imported
from site-packages, every module importable, its data files in place, the
commands working (`sbx --version` from the metadata, `sbx image ls`).
Either way a subpackage or data file left out fails CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import INSTALLED, REPO

SHIPPED_PROFILES = sorted(p.name for p in (REPO / "profiles").glob("*.toml"))
# What pyproject.toml builds the wheel from (the rest of the tree is not packaged).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "bin", "profiles", "sandbox", "man", "images")
# What setup.py compiles (the rest of the wheel is the tree's own files): never in the sdist.
BUILT = "sandbox/runtime/sbx-waiter"
# What the sdist carries besides (MANIFEST.in): everything a distribution builds and tests from.
SDIST_EXTRA = ("MANIFEST.in", "SECURITY.md", "test.sh", "tests", "fuzz", "bench", ".ci")
LAUNCHERS = sorted(p.name for p in (REPO / "bin").iterdir())

installed_only = pytest.mark.skipif(not INSTALLED, reason="installed stage only (SBX_TEST_INSTALLED=1)")
checkout_only = pytest.mark.skipif(INSTALLED, reason="needs the checkout's sandbox/ (editable stage)")


def package_files(root: Path, top: str = "sandbox") -> list[str]:
    """Every file under `top` in the tree, relative to `root` (compiled files aside)."""
    return sorted(str(p.relative_to(root)) for p in (root / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def clean_copy(names: tuple[str, ...], dest: Path) -> Path:
    """The tree's `names` copied to `dest`: no stale build/ of an earlier in-tree build, no caches."""
    dest.mkdir()
    for name in names:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, dest / name)
    return dest


def build_wheel(source: Path, dist: Path, env: dict[str, str] | None = None) -> list[str]:
    """The names in the wheel pip builds from `source` (as users and test.sh build it)."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                            "-w", str(dist), str(source)], capture_output=True, text=True, timeout=540, env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(dist.glob("sbx-*.whl"))
    assert len(wheels) == 1, wheels
    # A compiled program inside: for this platform, but any Python 3 (the 3.10 stage installs it).
    assert wheels[0].name.startswith("sbx-") and "-py3-none-linux_" in wheels[0].name, wheels[0].name
    with zipfile.ZipFile(wheels[0]) as wheel:
        return sorted(wheel.namelist())


@pytest.fixture(scope="module")
def wheel_names(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("wheel")
    return build_wheel(clean_copy(SOURCES, root / "src"), root / "dist")


def data_files(names: list[str], share: str) -> list[str]:
    """The wheel's data files under <prefix>/share/`share`/, relative to it."""
    marker = f".data/data/share/{share}/"
    return sorted(n.split(marker, 1)[1] for n in names if marker in n)


@checkout_only
@pytest.mark.timeout(600)
def test_wheel_carries_every_module_and_data_file(wheel_names: list[str]) -> None:
    names = wheel_names
    in_wheel = sorted(n for n in names if n.startswith("sandbox/"))
    assert in_wheel == package_files(REPO), "the wheel and the tree's sandbox/ differ"
    assert any(n.startswith("sandbox/image/") for n in in_wheel)  # the subpackage once left out
    assert data_files(names, "sbx/profiles") == SHIPPED_PROFILES
    # Every recipe of images/ (pyproject.toml lists one data-files entry per directory).
    recipes = [str(Path(p).relative_to("images")) for p in package_files(REPO, "images")]
    assert data_files(names, "sbx/images") == recipes, "an images/ directory is missing from pyproject's data-files"
    assert data_files(names, "man/man1") == ["sbx.1"]
    assert sorted(n.rsplit("/", 1)[1] for n in names if ".data/scripts/" in n) == LAUNCHERS
    assert BUILT in names and "sandbox/runtime/waiter.c" in names


@checkout_only
@pytest.mark.timeout(600)
def test_a_wheel_builds_without_a_compiler(tmp_path: Path, wheel_names: list[str]) -> None:
    """pip install must work where no C compiler is: the wheel leaves sbx-waiter out, says why,
    and holds everything else (the payload then does the waiter's work in Python)."""
    source = clean_copy(SOURCES, tmp_path / "src")
    (source / BUILT).unlink(missing_ok=True)
    names = build_wheel(source, tmp_path / "dist", env={**os.environ, "CC": "/nonexistent/cc"})
    assert names == [n for n in wheel_names if n != BUILT]


@checkout_only
@pytest.mark.timeout(900)
def test_sdist_carries_everything(tmp_path: Path, wheel_names: list[str]) -> None:
    """The sdist holds the whole project (sources, tests, fuzz, bench, docs), and the wheel a
    distribution builds from it is the wheel built from the tree."""
    source = clean_copy(SOURCES + SDIST_EXTRA, tmp_path / "src")
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                            "print(b.build_sdist(sys.argv[1]))", str(dist)],
                           capture_output=True, text=True, timeout=300, cwd=source)
    assert built.returncode == 0, built.stdout + built.stderr
    sdist = dist / built.stdout.split()[-1]
    with tarfile.open(sdist) as archive:
        top = archive.getnames()[0].split("/")[0]
        names = sorted(n.split("/", 1)[1] for n in archive.getnames() if "/" in n and archive.getmember(n).isfile())
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # our own archive, all the same
        archive.extractall(tmp_path / "unpacked", **safe)  # type: ignore[arg-type]
    expected = sorted(name for top_name in SOURCES + SDIST_EXTRA for name in
                      (package_files(REPO, top_name) if (REPO / top_name).is_dir() else [top_name]) if name != BUILT)
    missing = sorted(set(expected) - set(names))
    assert not missing, f"not in the sdist: {missing[:20]}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    from_sdist = build_wheel(tmp_path / "unpacked" / top, tmp_path / "wheel")
    assert from_sdist == wheel_names


@installed_only
def test_imported_from_site_packages() -> None:
    import sandbox

    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert sys.prefix != sys.base_prefix, "the installed stage runs in a venv"
    assert Path(sandbox.__file__).resolve().is_relative_to(site), (sandbox.__file__, site)
    assert not (REPO / "sandbox").exists(), "the installed stage must run from a tree without sandbox/"


@installed_only
def test_every_module_imports() -> None:
    """Each module of the installed package, in a fresh isolated interpreter (-I: no cwd, no PYTHON*)."""
    code = (
        "import pkgutil, sandbox\n"
        "def fail(name): raise SystemExit(f'cannot import {name}')\n"
        "names = [m.name for m in pkgutil.walk_packages(sandbox.__path__, 'sandbox.', onerror=fail)]\n"
        "import importlib\n"
        "for n in names:\n"
        "    if not n.endswith('.__main__'): importlib.import_module(n)  # that one runs the CLI\n"
        "print(sandbox.__file__); print(*sorted(names), sep='\\n')\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr
    first, *modules = done.stdout.splitlines()
    assert Path(first).resolve().is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve())
    assert {"sandbox.__main__", "sandbox.cli", "sandbox.image", "sandbox.cli.image"} <= set(modules), modules


@installed_only
def test_shipped_profiles_installed() -> None:
    """The data files: sandbox/config/profile.py finds them under sys.prefix, the same bytes as the tree's."""
    from sandbox.config.profile import shipped_dir

    installed = Path(sys.prefix) / "share" / "sbx" / "profiles"
    assert shipped_dir() == str(installed)
    assert sorted(p.name for p in installed.glob("*.toml")) == SHIPPED_PROFILES
    for name in SHIPPED_PROFILES:
        assert (installed / name).read_bytes() == (REPO / "profiles" / name).read_bytes(), name


@installed_only
def test_installed_data_files() -> None:
    """The image recipes, the man page and the launchers, where the wheel put them."""
    share = Path(sys.prefix) / "share"
    for name in package_files(REPO, "images"):
        assert (share / "sbx" / name).read_bytes() == (REPO / name).read_bytes(), name
    assert (share / "man" / "man1" / "sbx.1").read_bytes() == (REPO / "man" / "sbx.1").read_bytes()
    scripts = Path(sysconfig.get_paths()["scripts"])
    for name in LAUNCHERS:
        assert os.access(scripts / name, os.X_OK), name


@installed_only
def test_installed_version_is_the_metadatas(tmp_path: Path) -> None:
    from importlib import metadata

    import sandbox

    assert metadata.version("sbx") == sandbox.__version__  # one source: pyproject.toml reads __version__
    done = installed_sbx("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, f"sbx {metadata.version('sbx')}\n", "")


@checkout_only
def test_checkout_version() -> None:
    """Run from the checkout (not the installed distribution), --version says the tree's own."""
    import sandbox
    from sandbox.cli.version import version

    assert version() == sandbox.__version__


def installed_sbx(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed `sbx` command (the launcher in the venv's bin/), not `python -m sandbox`."""
    command = Path(sysconfig.get_paths()["scripts"]) / "sbx"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["SBX_ROOT"] = str(cwd / "store")
    return subprocess.run([str(command), *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


@installed_only
def test_installed_commands(tmp_path: Path) -> None:
    version = installed_sbx("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("sbx "), version
    images = installed_sbx("image", "ls", cwd=tmp_path)
    assert images.returncode == 0 and images.stderr == "", images
    assert images.stdout.split()[:2] == ["NAME", "ID"], images.stdout
    profiles = installed_sbx("profile", "list", cwd=tmp_path)
    assert profiles.returncode == 0, profiles
    shipped = Path(sys.prefix) / "share" / "sbx" / "profiles"
    for name in SHIPPED_PROFILES:
        assert str(shipped / name) in profiles.stdout, (name, profiles.stdout)
    ran = installed_sbx("run", "--", "true", cwd=tmp_path)
    assert ran.returncode == 0, ran
    echoed = installed_sbx("run", "--profile", "grader", "--", "echo", "hi", cwd=tmp_path)
    assert (echoed.returncode, echoed.stdout) == (0, "hi\n"), echoed
