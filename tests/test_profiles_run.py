"""Every shipped profile runs a real program through `sbx run`.

These need the runner (sandbox/__main__.py, cli.py, supervise.py, ...): until
it lands they fail, by design.  Each run happens in a scratch working
directory with empty XDG/HOME, so no personal or project profile interferes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import conftest
from conftest import REPO, ranged

SHIPPED = sorted(path.stem for path in (REPO / "profiles").glob("*.toml"))


def sbx(tmp_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """`sbx run ARGS` in tmp_path/work with an empty HOME and XDG dir."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "TERM": "dumb",
    }
    return conftest.sbx("run", *args, cwd=work, env=env, input=stdin)


def test_shipped_profiles_are_the_expected_ones() -> None:
    assert SHIPPED == ["build", "ci", "default", "grader", "interactive"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_runs_a_program(tmp_path: Path, name: str) -> None:
    result = sbx(tmp_path, "--profile", name, "--", "/bin/echo", "ok")
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_no_profile_means_default(tmp_path: Path) -> None:
    result = sbx(tmp_path, "--", "/bin/echo", "ok")
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


def test_grader_runs_a_solution_in_box_and_forgets_its_writes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "solution.py").write_text(
        "import os\n"
        "print(os.getcwd())\n"
        "open('scratch', 'w').write('x')\n"
        "print(sum(map(int, input().split())))\n"
    )
    result = sbx(tmp_path, "--profile", "grader", "--", "python3", "solution.py", stdin="1 2\n")
    assert (result.returncode, result.stdout) == (0, "/box\n3\n"), result.stderr
    assert not (work / "scratch").exists()


def test_grader_environment_is_exactly_the_profiles(tmp_path: Path) -> None:
    result = sbx(tmp_path, "--profile", "grader", "--", "/usr/bin/env")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        # sbx's base: the payload's home (uid 1000 under id ranges, else root); the profile sets PATH and LANG
        "HOME=/home/sbx" if ranged({}) else "HOME=/root",
        "LANG=C.UTF-8",
        "PATH=/usr/local/bin:/usr/bin:/bin",
    ]


def test_ci_sees_the_checkout_in_place_and_changes_vanish(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "existing").write_text("original\n")
    script = "pwd; touch new; echo changed > existing; cat existing"
    result = sbx(tmp_path, "--profile", "ci", "--", "/bin/sh", "-c", script)
    assert (result.returncode, result.stdout) == (0, f"{work}\nchanged\n"), result.stderr
    assert not (work / "new").exists()
    assert (work / "existing").read_text() == "original\n"


def test_a_bad_profile_runs_nothing_and_exits_125(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "grader.toml").write_text('[limits]\nmemroy = "1G"\n')
    result = sbx(tmp_path, "--profile", "grader.toml", "--", "/bin/touch", "ran")
    assert result.returncode == 125
    assert result.stderr == "sbx: error: grader.toml: unknown key 'limits.memroy' (did you mean 'memory'?)\n"
    assert not (work / "ran").exists()


def test_a_missing_profile_runs_nothing_and_exits_125(tmp_path: Path) -> None:
    result = sbx(tmp_path, "--profile", "nope", "--", "/bin/echo", "ok")
    assert result.returncode == 125 and result.stdout == ""
    # The trusted search path only: ./.sbx/profiles/ is searched only with --project-profiles.
    assert result.stderr.startswith(f"sbx: error: profile 'nope' not found; looked in {tmp_path}/xdg/sbx/profiles, ")
