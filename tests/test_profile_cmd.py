"""`sbx profile list | show | check`, through profile_cmd.main."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from sandbox.config import search
from sandbox.cli.profile import main

from conftest import SHIPPED_PROFILES

REPO = Path(__file__).resolve().parent.parent
SHIPPED = SHIPPED_PROFILES


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(search, "SYSTEM_DIR", str(tmp_path / "etc"))
    return project


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list_shows_name_source_description(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "list")
    assert status == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SOURCE", "DESCRIPTION"]
    rows = {line.split()[0]: line.split(None, 2) for line in lines[1:] if line and not line.startswith("searched")}
    assert set(rows) == {"build", "ci", "default", "grader", "interactive"}
    assert rows["grader"][1] == str(SHIPPED / "grader.toml")
    assert rows["grader"][2].startswith("Online judge")
    assert lines[-1].startswith(f"searched, first match wins: {cwd.parent}/xdg/sbx/profiles, ")


def test_list_marks_shadowed_and_invalid_profiles(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = cwd / ".sbx" / "profiles"
    mine.mkdir(parents=True)
    (mine / "grader.toml").write_text('extends = "grader"\ndescription = "my judge"\n')
    (mine / "broken.toml").write_text("[limits]\nmemroy = 1\n")
    status, out, _ = run(capsys, "list", "--project-profiles")
    assert status == 0
    assert f"{mine}/grader.toml" in out and "my judge" in out
    assert f"(shadowed by {mine}/grader.toml)" in out
    assert "(invalid: .sbx/profiles/broken.toml: unknown key 'limits.memroy' (did you mean 'memory'?))" in out


def test_show_prints_resolved_toml_with_the_file_documentation(
    cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "show", "grader")
    assert status == 0 and err == ""
    assert out.startswith("# Online judge")  # the file's own comment block
    doc = tomllib.loads(out)
    assert doc["limits"]["memory"] == "256M" and doc["limits"]["time"] == "2s"
    assert doc["limits"]["io_read_bps"] == "unlimited"  # defaults are shown too
    assert doc["mount"] == [{"source": str(cwd), "target": "/box", "mode": "overlay"}]
    assert "extends" not in doc


def test_show_of_builtin_default(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "show", "default")
    assert status == 0 and "from <built-in>" in out
    assert tomllib.loads(out)["sandbox"]["image"] == "host"


@pytest.mark.parametrize("name", ["default", "grader", "ci", "interactive", "build"])
def test_check_accepts_what_show_prints(cwd: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    _, out, _ = run(capsys, "show", name)
    (cwd / "shown.toml").write_text(out)
    status, out, err = run(capsys, "check", "shown.toml")
    assert (status, out, err) == (0, "shown.toml: ok (profile 'shown')\n", "")


def test_check_shipped_files(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in SHIPPED.glob("*.toml"))
    status, out, _ = run(capsys, "check", *files)
    assert status == 0 and out.count(": ok") == len(files) == 5


def test_check_reports_errors_and_exits_125(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (cwd / "grader.toml").write_text('[limits]\nmemroy = "1G"\n')
    (cwd / "good.toml").write_text("")
    status, out, err = run(capsys, "check", "good.toml", "grader.toml")
    assert status == 125
    assert out == "good.toml: ok (profile 'good')\n"
    assert err == "sbx: error: grader.toml: unknown key 'limits.memroy' (did you mean 'memory'?)\n"


def test_check_takes_a_file_never_a_name(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "check", "grader")
    assert status == 125 and err == "sbx: error: profile file grader not found\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "profile: missing command: list, show, check, trust or untrust (see sbx profile --help)"),
        (["frobnicate"], "profile: unknown command 'frobnicate': use list, show, check, trust or untrust"),
        (["show"], "profile: usage: sbx profile show NAME"),
        (["show", "a", "b"], "profile: usage: sbx profile show NAME"),
        (["check"], "profile: usage: sbx profile check FILE..."),
        (["list", "x"], "profile: usage: sbx profile list"),
        (["show", "gradr"], "profile 'gradr' not found (did you mean 'grader'?); looked in "),
        (["show", "--project-profiles", "gradr"],
         "profile 'gradr' not found (did you mean 'grader'?); looked in ./.sbx/profiles, "),
    ],
)
def test_usage_errors(cwd: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 125 and out == ""
    assert err.startswith(f"sbx: error: {message}") and err.count("\n") == 1


def test_help(cwd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0 and out.startswith("usage: sbx profile list")


def test_no_traceback_for_bad_input_in_a_real_process(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_bytes(b"[limits]\nmemory = \xff\n")
    code = "import sys; from sandbox.cli.profile import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "check", str(tmp_path / "bad.toml")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 125
    assert result.stderr == f"sbx: error: {tmp_path}/bad.toml:2:10: invalid TOML: not UTF-8 text\n"
