"""`sbx man` and the shipped man/sbx.1 (cli/manpage.py): generated from the parsers' tables.

The shipped page must be exactly what `sbx man` prints now, so a new flag or command cannot be
left out of it; the page must render without a warning; what it documents is checked against
the tables (every flag, command and profile key) and the source (every SBX_ variable read).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox.cli import manpage
from sandbox.cli.main import USAGE
from sandbox.config import schema

from conftest import INSTALLED, PACKAGE_PARENT, REPO, sbx

SHIPPED = REPO / "man" / "sbx.1"
REGENERATE = "stale: regenerate it with `PYTHONPATH=. python3 -m sandbox man > man/sbx.1`"


def test_shipped_page_is_fresh() -> None:
    assert SHIPPED.read_text() == manpage.render(USAGE), f"man/sbx.1 is {REGENERATE}"


@pytest.mark.skipif(not INSTALLED, reason="installed stage only (SBX_TEST_INSTALLED=1)")
def test_installed_page_is_the_shipped_one() -> None:
    installed = Path(sys.prefix, "share", "man", "man1", "sbx.1")
    assert installed.read_bytes() == SHIPPED.read_bytes()


def test_command_prints_the_page() -> None:
    done = sbx("man")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == manpage.render(USAGE)


def test_command_refuses_arguments() -> None:
    done = sbx("man", "sbx")
    assert (done.returncode, done.stdout) == (125, "")
    assert done.stderr == "sbx: error: man: unexpected argument 'sbx' (see 'sbx man --help')\n"


def rendered() -> str:
    """The page as `man` shows it (groff, plain text, no hyphenation), with groff's warnings all on."""
    done = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-P", "-cbou", "-rHY=0", "-rLL=200n"],
                          input=manpage.render(USAGE), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


needs_groff = pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed (man-db's groff-base)")


@needs_groff
def test_documents_every_flag_command_and_key() -> None:
    text = rendered()
    heads = {line.split()[0] for line in text.splitlines() if line.strip()}  # what entries start with
    for setting in schema.SETTINGS:
        for flag in setting.flags:
            assert flag in text, flag
        if setting.section:
            assert f"[{setting.section}]" in heads and setting.name in heads, setting.key
    for line in USAGE.split("commands:\n")[1].split("\n\n")[0].splitlines():
        assert line.split()[0] in heads, line
    assert "125 when sbx itself failed" in " ".join(text.split())


# Front ends with a command line (and a manual) of their own: sbx-isolate reads SBX_STRICT, ...
OTHER_FRONT_ENDS = ("isolate",)


def sbx_variables() -> set[str]:
    """Every "SBX_..." string constant in the source of the package, other front ends aside."""
    found = set()
    for path in (PACKAGE_PARENT / "sandbox").rglob("*.py"):
        if path.relative_to(PACKAGE_PARENT / "sandbox").parts[0] in OTHER_FRONT_ENDS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("SBX_") \
                    and node.value.replace("_", "").isalnum() and node.value.isupper():
                found.add(node.value)
    return found


def test_environment_names_every_variable_sbx_reads() -> None:
    variables = sbx_variables()
    assert {"SBX_ROOT", "SBX_DEBUG"} <= variables
    missing = variables - set(manpage.ENVIRONMENT) - set(manpage.INTERNAL)
    assert not missing, f"not in cli/manpage.py's ENVIRONMENT: {sorted(missing)}"
    assert not set(manpage.INTERNAL) & set(manpage.ENVIRONMENT)


@pytest.mark.parametrize(("text", "escaped"), [
    ("--network", "\\-\\-network"),
    ("a\\b", "a\\eb"),
    (".TH looks like a request", "\\&.TH looks like a request"),
    ("'quote first", "\\&'quote first"),
    ("plain", "plain"),
])
def test_escape(text: str, escaped: str) -> None:
    assert manpage.escape(text) == escaped
