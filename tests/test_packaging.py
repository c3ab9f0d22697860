"""Packaging: the wheel carries every module and data file (issue #12).

Users and distributions install a wheel, not the checkout.  In the editable
stage (root, /opt/sbx-test-venv) a wheel is built from the tree and its file
list compared with the tree; in the installed stage (SBX_TEST_INSTALLED=1,
test.sh's unprivileged stage: a fresh venv with the wheel installed, run from a
copy of the tree without sandbox/) the installed package itself is used:
imported from site-packages, every module importable, the commands working.
Either way a subpackage or data file left out of the wheel fails CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import INSTALLED, REPO

SHIPPED_PROFILES = sorted(p.name for p in (REPO / "profiles").glob("*.toml"))
# What pyproject.toml builds the wheel from (the rest of the tree is not packaged).
SOURCES = ("pyproject.toml", "README.md", "bin", "profiles", "sandbox")

installed_only = pytest.mark.skipif(not INSTALLED, reason="installed stage only (SBX_TEST_INSTALLED=1)")
checkout_only = pytest.mark.skipif(INSTALLED, reason="needs the checkout's sandbox/ (editable stage)")


def package_files(root: Path) -> list[str]:
    """Every file of the package in the tree, relative to `root` (compiled files aside)."""
    return sorted(str(p.relative_to(root)) for p in (root / "sandbox").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


@checkout_only
@pytest.mark.timeout(600)
def test_wheel_carries_every_module_and_data_file(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in SOURCES:  # a clean copy: no stale build/ of an earlier in-tree build
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, source / name)
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                            "-w", str(dist), str(source)], capture_output=True, text=True, timeout=540)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(dist.glob("sbx-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
    in_wheel = sorted(n for n in names if n.startswith("sandbox/"))
    assert in_wheel == package_files(REPO), "the wheel and the tree's sandbox/ differ"
    assert any(n.startswith("sandbox/image/") for n in in_wheel)  # the subpackage once left out
    data = sorted(n.rsplit("/", 1)[1] for n in names if "/data/share/sbx/profiles/" in n)
    assert data == SHIPPED_PROFILES
    assert any(n.endswith(".data/scripts/sbx") for n in names)


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
