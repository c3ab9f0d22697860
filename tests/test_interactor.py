"""Interactive problems: a solution and an interactor in two sandboxes wired by pipes (issue #8)."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import pytest

from sandbox import Result, Runner, UsageError

from conftest import sbx

pytestmark = pytest.mark.timeout(60)

SECRET = 637

# The interactor: reads guesses, answers higher/lower/correct; exits 0 when guessed within 12 tries,
# 1 for too many guesses, 3 when the solution's side closed (EOF) first.
INTERACTOR = r"""
import sys
secret = int(sys.argv[1])
for tries in range(1, 13):
    line = sys.stdin.readline()
    if not line:
        print("interactor: EOF after", tries - 1, "guesses", file=sys.stderr)
        sys.exit(3)
    guess = int(line)
    if guess == secret:
        print("correct", flush=True)
        print("interactor: solved in", tries, file=sys.stderr)
        sys.exit(0)
    print("higher" if guess < secret else "lower", flush=True)
print("interactor: too many guesses", file=sys.stderr)
sys.exit(1)
"""

# The solution: binary search over 1..1000; burns ~0.2 s of CPU first, so its figures differ.
SOLUTION = r"""
import sys, time
t = time.process_time()
while time.process_time() - t < 0.2:
    pass
low, high = 1, 1000
while True:
    guess = (low + high) // 2
    print(guess, flush=True)
    answer = sys.stdin.readline().strip()
    if answer == "correct":
        print("solution: done", file=sys.stderr)
        break
    if answer == "higher":
        low = guess + 1
    else:
        high = guess - 1
"""


def interactor_argv(secret: int = SECRET) -> list[str]:
    return ["python3", "-c", INTERACTOR, str(secret)]


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> object:
    with Runner(root=str(tmp_path_factory.mktemp("store"))) as r:
        yield r


def test_guessing_game_api(runner: Runner) -> None:
    solution, interactor = runner.run_interactive(
        ["python3", "-c", SOLUTION], interactor_argv(),
        solution_args={"limits": {"time": "5s", "wall_time": "20s"}},
        interactor_args={"limits": {"wall_time": "20s"}})
    assert isinstance(solution, Result) and isinstance(interactor, Result)
    assert solution.verdict == "OK", solution
    assert interactor.verdict == "OK", interactor
    assert interactor.stderr is not None and b"interactor: solved in" in interactor.stderr
    assert solution.stderr == b"solution: done\n"
    assert solution.stdout is None and interactor.stdout is None  # wired to each other, not captured
    # Each side has its own limits and figures.
    assert dict(solution.limits_enforced).keys() == {"time", "wall_time"}
    assert dict(interactor.limits_enforced).keys() == {"wall_time"}
    assert solution.cpu_time >= 0.2, solution
    assert interactor.cpu_time < solution.cpu_time - 0.1, (solution.cpu_time, interactor.cpu_time)


def test_guessing_game_runs_again_on_the_same_runner(runner: Runner) -> None:
    for secret in (1, 1000, 500):
        solution, interactor = runner.run_interactive(["python3", "-c", SOLUTION], interactor_argv(secret))
        assert (solution.verdict, interactor.verdict) == ("OK", "OK"), (secret, solution, interactor)


def test_solution_that_exits_early(runner: Runner) -> None:
    solution, interactor = runner.run_interactive(["sh", "-c", "exit 0"], interactor_argv())
    assert solution.verdict == "OK"
    assert interactor.verdict == "RE" and interactor.exit_code == 3, interactor
    assert interactor.stderr == b"interactor: EOF after 0 guesses\n"
    # Once it has guessed: the interactor reads the guess, answers, then sees EOF.
    solution, interactor = runner.run_interactive(
        ["sh", "-c", "echo 500; read answer; echo \"$answer\" >&2"], interactor_argv())
    assert solution.verdict == "OK" and solution.stderr == b"higher\n", solution
    assert interactor.exit_code == 3 and interactor.stderr == b"interactor: EOF after 1 guesses\n", interactor


def test_interactor_that_exits_early(runner: Runner) -> None:
    start = time.monotonic()
    solution, interactor = runner.run_interactive(
        ["python3", "-c", "import sys\nprint(1, flush=True)\nprint(sys.stdin.readline() == '', flush=True)\n"
                          "print(2, flush=True)"],
        ["sh", "-c", "exit 0"], solution_args={"limits": {"wall_time": "10s"}})
    assert time.monotonic() - start < 8
    assert interactor.verdict == "OK"
    # the solution saw EOF on stdin and EPIPE (or SIGPIPE) on stdout, not a hang
    assert solution.verdict in ("OK", "RE", "SG"), solution
    assert solution.verdict != "WTLE"


def test_solution_looping_forever_gets_wtle(runner: Runner) -> None:
    start = time.monotonic()
    solution, interactor = runner.run_interactive(
        ["sh", "-c", "while :; do :; done"], interactor_argv(),
        solution_args={"limits": {"wall_time": "500ms"}}, interactor_args={"limits": {"wall_time": "10s"}})
    elapsed = time.monotonic() - start
    assert solution.verdict == "WTLE" and solution.signal == 9, solution
    assert 0.5 <= solution.wall_time < 2
    assert interactor.verdict == "RE" and interactor.exit_code == 3, interactor  # saw EOF, ended by itself
    assert interactor.wall_time < 5
    assert elapsed < 8


def test_interactor_own_limit(runner: Runner) -> None:
    solution, interactor = runner.run_interactive(
        ["sh", "-c", "cat >/dev/null"], ["sh", "-c", "sleep 30"],
        interactor_args={"limits": {"wall_time": "300ms"}}, solution_args={"limits": {"wall_time": "10s"}})
    assert interactor.verdict == "WTLE", interactor
    assert solution.verdict == "OK", solution  # its stdin closed when the interactor was killed
    assert solution.wall_time < 5


@pytest.mark.parametrize("side", ["solution_args", "interactor_args"])
@pytest.mark.parametrize("key", ["stdin", "stdout"])
def test_run_interactive_refuses_stdin_and_stdout(runner: Runner, side: str, key: str) -> None:
    with pytest.raises(UsageError):
        runner.run_interactive(["true"], ["true"], **{side: {key: b"x" if key == "stdin" else 1}})  # type: ignore[arg-type]


def test_cli_guessing_game(tmp_path: Path) -> None:
    result = sbx("run", "--interactor", shlex.join(interactor_argv()), "--time", "5", "--wall-time", "20",
                 "--result", "-", "--", "python3", "-c", SOLUTION, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "OK"
    assert isinstance(data["interactor"], dict) and data["interactor"]["verdict"] == "OK"
    assert data["cpu_time"] >= 0.2
    assert data["interactor"]["cpu_time"] < data["cpu_time"]
    assert "solution: done" in result.stderr and "interactor: solved in" in result.stderr


def test_cli_result_file_and_failing_interactor(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = sbx("run", "--interactor", shlex.join(interactor_argv()), "--wall-time", "10",
                 "--result", str(out), "--", "sh", "-c", "exit 0", cwd=str(tmp_path))
    data = json.loads(out.read_text())
    assert data["verdict"] == "OK"
    assert data["interactor"]["verdict"] == "RE" and data["interactor"]["exit_code"] == 3
    assert result.returncode == 3  # the solution was fine: the interactor's status


def test_cli_solution_wtle(tmp_path: Path) -> None:
    # The interactor gets the solution's options unless --interactor-profile names its own.
    result = sbx("run", "--interactor", shlex.join(interactor_argv()), "--interactor-profile", "default",
                 "--wall-time", "400ms", "--result", "-", "--", "sh", "-c", "while :; do :; done",
                 cwd=str(tmp_path))
    data = json.loads(result.stdout)
    assert data["verdict"] == "WTLE" and data["interactor"]["verdict"] == "RE", data
    assert data["interactor"]["exit_code"] == 3 and data["interactor"]["limits_enforced"] == {}
    assert result.returncode == 137
    same = sbx("run", "--interactor", "sh -c 'cat >/dev/null; sleep 5'", "--wall-time", "400ms", "--result", "-",
               "--", "sh", "-c", "true", cwd=str(tmp_path))
    data = json.loads(same.stdout)
    assert data["verdict"] == "OK" and data["interactor"]["verdict"] == "WTLE", data  # the same --wall-time


@pytest.mark.parametrize("flag", ["--stdin", "--stdout"])
def test_cli_interactor_refuses_stdin_and_stdout(tmp_path: Path, flag: str) -> None:
    (tmp_path / "f").write_text("x\n")
    result = sbx("run", "--interactor", "cat", flag, "f", "--", "echo", "hi", cwd=str(tmp_path))
    assert result.returncode == 125, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbx: error: ") and flag in lines[0], result.stderr
    assert (tmp_path / "f").read_text() == "x\n"


def test_cli_interactor_needs_a_command(tmp_path: Path) -> None:
    for args in (["--interactor", "", "--", "true"], ["--interactor", "cat"], ["--interactor", "'unclosed", "--",
                                                                                  "true"]):
        result = sbx("run", *args, cwd=str(tmp_path))
        assert result.returncode == 125, (args, result.stderr)
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("sbx: error: ")
    misuse = sbx("box", "run", "--root", str(tmp_path), "nobox", "--interactor", "cat", "--", "true")
    assert misuse.returncode == 125
