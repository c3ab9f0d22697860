"""Builds the one compiled part of sbx, where a C compiler is: sandbox/runtime/sbx-waiter.

pyproject.toml holds everything else.  The program is optional (sandbox/runtime/waiter.py):
without a compiler, or when the build fails (an architecture waiter.c has no glue for), the
install goes on without it and sbx does its work in Python, a little slower on warm runs.  $CC names the compiler (default: cc);
CC=false builds a wheel without it.
"""

from __future__ import annotations

import os
import runpy
import shlex
import subprocess
import sys

from setuptools import Command, Distribution, setup
from setuptools.command.build import build

SOURCE = os.path.join("sandbox", "runtime", "waiter.c")
PROGRAM = os.path.join("sandbox", "runtime", "sbx-waiter")


class BuildWaiter(Command):
    """build's sub-command: compile waiter.c into the build tree, or in place for an editable
    install (setuptools sets editable_mode)."""

    description = "compile sbx-waiter (optional)"
    user_options: list[tuple[str, str | None, str]] = []
    editable_mode = False

    def initialize_options(self) -> None:
        self.build_lib: str | None = None

    def finalize_options(self) -> None:
        self.set_undefined_options("build", ("build_lib", "build_lib"))

    def _target(self) -> str:
        return PROGRAM if self.editable_mode or self.build_lib is None else os.path.join(self.build_lib, PROGRAM)

    def run(self) -> None:
        target = self._target()
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        compiler = shlex.split(os.environ.get("CC") or "cc")
        # waiter.py's flags, read without importing the package (setup.py runs before it is built)
        flags = list(runpy.run_path(os.path.join("sandbox", "runtime", "waiter.py"))["CFLAGS"])
        try:
            done = subprocess.run([*compiler, *flags, "-o", target, SOURCE], capture_output=True)
        except OSError as exc:
            print(f"sbx: no C compiler ({exc}): sbx-waiter left out; the payload does its work in Python",
                  file=sys.stderr)
            return
        if done.returncode != 0:
            print("sbx: sbx-waiter did not compile; the payload does its work in Python:\n"
                  + done.stderr.decode(errors="replace"), file=sys.stderr)
            if os.path.exists(target):
                os.unlink(target)

    def get_outputs(self) -> list[str]:
        target = self._target()
        return [target] if os.path.exists(target) else []

    def get_source_files(self) -> list[str]:
        return [SOURCE]


class PlatformDistribution(Distribution):
    """A wheel holding a compiled program is for one platform (not py3-none-any)."""

    def has_ext_modules(self) -> bool:
        return True


commands: dict[str, type] = {"build_waiter": BuildWaiter}
try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70.1: wheel's (absent for an sdist, which needs none)
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:
        bdist_wheel = None

if bdist_wheel is not None:
    class PlatformWheel(bdist_wheel):
        """...but for any Python 3: the program is no extension module, and the Python is pure."""

        def get_tag(self) -> tuple[str, str, str]:
            return ("py3", "none", super().get_tag()[2])

    commands["bdist_wheel"] = PlatformWheel

build.sub_commands.append(("build_waiter", None))
setup(cmdclass=commands, distclass=PlatformDistribution)
