"""`sbx batch`: JSON Lines in, JSON Lines results out in input order (issue #8)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import sbx

pytestmark = pytest.mark.timeout(60)

FIGURES = ("cpu_time", "user_time", "sys_time", "wall_time", "memory_peak")


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store"
    path.mkdir()
    return path


def batch(store: Path, lines: list[object], *options: str, cwd: Path | None = None,
          timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    """`sbx batch --root STORE OPTIONS -` with `lines` (objects as JSON, strings as they are) on stdin."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    proc = sbx("batch", "--root", str(store), *options, "-", input=text, cwd=str(cwd) if cwd else None,
               timeout=timeout, env=dict(os.environ, SBX_ROOT=str(store)))
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stderr == "", proc.stderr  # not a terminal: no progress line
    return proc, [json.loads(line) for line in proc.stdout.splitlines()]


def echo(text: str, **fields: object) -> dict[str, object]:
    return {"argv": ["echo", text], **fields}


def test_from_a_file_and_from_stdin(store: Path, tmp_path: Path) -> None:
    jobs = [echo("one", id="a"), {"argv": ["sh", "-c", "cat; echo err >&2; exit 3"], "id": 7}]
    source = tmp_path / "jobs.jsonl"
    source.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    from_file = sbx("batch", "--root", str(store), str(source))
    assert from_file.returncode == 0, from_file.stderr
    _, from_stdin = batch(store, jobs)
    for results in ([json.loads(line) for line in from_file.stdout.splitlines()], from_stdin):
        assert [(r["line"], r["id"], r["verdict"], r["exit_code"]) for r in results] == [
            (1, "a", "OK", 0), (2, 7, "RE", 3)], results
        assert results[0]["stdout"] == "one\n" and results[0]["stderr"] == ""
        assert results[1]["stdout"] == "" and results[1]["stderr"] == "err\n"
        assert results[0]["message"] == "" and set(FIGURES) <= set(results[0])
    implicit = sbx("batch", "--root", str(store), input=json.dumps(echo("plain")) + "\n")  # no FILE: stdin
    assert [json.loads(line)["stdout"] for line in implicit.stdout.splitlines()] == ["plain\n"]


def test_results_keep_input_order(store: Path) -> None:
    jobs = [{"argv": ["sh", "-c", "sleep 0.5; echo slow"], "id": "slow"}, echo("fast", id="fast"),
            echo("third", id="third")]
    start = time.monotonic()
    _, results = batch(store, jobs, "-j", "2")
    elapsed = time.monotonic() - start
    assert [(r["line"], r["id"], r["stdout"]) for r in results] == [
        (1, "slow", "slow\n"), (2, "fast", "fast\n"), (3, "third", "third\n")], results
    assert results[0]["wall_time"] >= 0.5
    assert elapsed < 10


def test_blank_lines_keep_their_numbers(store: Path) -> None:
    _, results = batch(store, [echo("a"), "", "   ", echo("b")])
    assert [(r["line"], r["stdout"]) for r in results] == [(1, "a\n"), (4, "b\n")]


MALFORMED = [
    ("{not json", "not valid JSON"),
    ('["argv", "true"]', "must be a JSON object"),
    ('"just a string"', "must be a JSON object"),
    ('{"argv": ["true"], "colour": "red"}', "unknown field 'colour'"),
    ('{"argv": "true"}', "'argv' must be a non-empty list of strings"),
    ('{"argv": []}', "'argv' must be a non-empty list of strings"),
    ('{"argv": ["echo", 3]}', "'argv' must be a non-empty list of strings"),
    ('{"id": 1}', "'argv'"),
    ('{"argv": ["true"], "limits": [1]}', "'limits' must be an object"),
    ('{"argv": ["true"], "limits": {"time": "soon"}}', "soon"),
    ('{"argv": ["true"], "limits": {"colour": 1}}', "colour"),
    ('{"argv": ["true"], "env": {"A": 1}}', "'env' values must be strings"),
    ('{"argv": ["true"], "options": "--network host"}', "'options' must be a list of strings"),
    ('{"argv": ["true"], "options": ["--bogus"]}', "--bogus"),
    ('{"argv": ["true"], "stdin": 5}', "'stdin' must be a string or null"),
    ('{"argv": ["true"], "stdin": "no-such-input.txt"}', "no-such-input.txt"),
    ('{"argv": ["true"], "profile": "no-such-profile-sbx-test"}', "no-such-profile-sbx-test"),
    ('{"argv": ["true"], "box": "no-such-box"}', "no-such-box"),
    ('{"argv": ["true"], "box": "../escape"}', "../escape"),
]


def test_malformed_lines_give_xx_and_the_batch_goes_on(store: Path, tmp_path: Path) -> None:
    lines: list[object] = []
    for index, (text, _) in enumerate(MALFORMED):
        lines += [text, echo(f"ok{index}")]
    _, results = batch(store, lines, "-j", "2", cwd=tmp_path)
    assert [r["line"] for r in results] == list(range(1, len(lines) + 1))
    for index, (text, reason) in enumerate(MALFORMED):
        bad, good = results[2 * index], results[2 * index + 1]
        assert bad["verdict"] == "XX", (text, bad)
        message = str(bad["message"])
        assert message.startswith(f"line {2 * index + 1}: ") and reason in message, (text, message)
        assert "\n" not in message
        assert bad["exit_code"] is None and "stdout" not in bad
        assert (good["verdict"], good["stdout"]) == ("OK", f"ok{index}\n"), good


def test_a_bad_line_keeps_its_id_when_it_has_one(store: Path) -> None:
    _, results = batch(store, [{"argv": ["true"], "id": "x1", "box": "missing"}, {"argv": "true", "id": "x2"}])
    assert [(r["id"], r["verdict"]) for r in results] == [("x1", "XX"), (None, "XX")]


def test_stdin_and_stdout_files_relative_to_cwd(store: Path, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    for n in (1, 2):
        (tmp_path / "in" / f"{n}.txt").write_text(f"{n} {n * 10}\n")
    jobs = [{"argv": ["sh", "-c", "read a b; echo $((a + b)); echo note >&2"], "stdin": f"in/{n}.txt",
             "stdout": f"out/{n}.txt", "stderr": f"out/{n}.err"} for n in (1, 2)]
    _, results = batch(store, jobs, cwd=tmp_path)
    assert [r["verdict"] for r in results] == ["OK", "OK"]
    assert "stdout" not in results[0] and "stderr" not in results[0]  # written to files, not captured
    assert (tmp_path / "out" / "1.txt").read_text() == "11\n"
    assert (tmp_path / "out" / "2.txt").read_text() == "22\n"
    assert (tmp_path / "out" / "2.err").read_text() == "note\n"
    link = tmp_path / "out" / "link.txt"
    link.symlink_to(tmp_path / "in" / "1.txt")
    _, refused = batch(store, [echo("clobber", stdout="out/link.txt")], cwd=tmp_path)
    assert refused[0]["verdict"] == "XX" and "link.txt" in str(refused[0]["message"])
    assert (tmp_path / "in" / "1.txt").read_text() == "1 10\n"


SOLUTION_C = r"""
#include <stdio.h>
int main(void) { long a, b; if (scanf("%ld %ld", &a, &b) != 2) return 2; printf("%ld\n", a * b); return 0; }
"""


@pytest.mark.timeout(90)
def test_lines_of_one_box_run_in_input_order(store: Path, tmp_path: Path) -> None:
    made = sbx("box", "create", "--root", str(store), "sub")
    assert made.returncode == 0, made.stderr
    work = Path(made.stdout.strip().split("\t")[1])
    (work / "sol.c").write_text(SOLUTION_C)
    (tmp_path / "1.in").write_text("6 7\n")
    (tmp_path / "2.in").write_text("3 5\n")
    jobs: list[object] = [
        {"argv": ["sh", "-c", "sleep 0.3; gcc -O1 -o sol sol.c && echo built"], "box": "sub",
         "limits": {"time": 20, "wall_time": 60}, "id": "compile"},
        {"argv": ["./sol"], "box": "sub", "box_mode": "overlay", "stdin": "1.in", "limits": {"time": 1}, "id": "t1"},
        {"argv": ["./sol"], "box": "sub", "box_mode": "ro", "stdin": "2.in", "limits": {"time": 1}, "id": "t2"},
        {"argv": ["sh", "-c", "rm sol; echo removed"], "box": "sub", "id": "clean"},
        echo("other"),
    ]
    _, results = batch(store, jobs, "-j", "2", cwd=tmp_path, timeout=90)
    assert [(r["id"], r["verdict"], r.get("stdout")) for r in results] == [
        ("compile", "OK", "built\n"), ("t1", "OK", "42\n"), ("t2", "OK", "15\n"), ("clean", "OK", "removed\n"),
        (None, "OK", "other\n")], results
    assert not (work / "sol").exists()


def cpus_allowed(result: dict[str, object]) -> str:
    text = str(result["stdout"])
    assert text.startswith("Cpus_allowed_list:"), text
    return text.split(":", 1)[1].strip()


def test_jobs_are_pinned_to_one_cpu_each(store: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    assert len(cpus) >= 2, f"this test needs 2 CPUs, the host gives {cpus}"
    probe = {"argv": ["grep", "Cpus_allowed_list", "/proc/self/status"]}
    _, results = batch(store, [probe] * 6, "-j", "2")
    pinned = [cpus_allowed(r) for r in results]
    assert all(p.isdigit() and int(p) in cpus for p in pinned), pinned
    _, unpinned = batch(store, [probe], "-j", "2", "--no-pin")
    assert not cpus_allowed(unpinned[0]).isdigit(), unpinned  # the whole set, e.g. 0-1


def comparable(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k not in FIGURES}


def test_cold_gives_the_same_results(store: Path) -> None:
    jobs: list[object] = [echo("a"), {"argv": ["sh", "-c", "exit 4"]}, "{bad",
                          {"argv": ["sh", "-c", "kill -KILL $$"]}, {"argv": ["no-such-command-sbx-test"]},
                          {"argv": ["sh", "-c", "while :; do :; done"], "limits": {"wall_time": "200ms"}},
                          {"argv": ["sh", "-c", "echo $X; hostname"], "env": {"X": "y"}, "options": ["--hostname", "h"]}]
    _, warm = batch(store, jobs, "-j", "2")
    _, cold = batch(store, jobs, "-j", "2", "--cold")
    assert [comparable(r) for r in warm] == [comparable(r) for r in cold]
    assert [r["verdict"] for r in warm] == ["OK", "RE", "XX", "SG", "RE", "WTLE", "OK"]
    assert warm[-1]["stdout"] == "y\nh\n"


@pytest.mark.parametrize("args", [["-j", "0"], ["-j", "x"], ["-j"], ["-j", "1025"], ["--jobs=-1"], ["--frob"],
                                  ["a.jsonl", "b.jsonl"], ["no-such-file.jsonl"]])
def test_bad_arguments_exit_125(store: Path, args: list[str], tmp_path: Path) -> None:
    result = sbx("batch", "--root", str(store), *args, input="", cwd=str(tmp_path))
    assert result.returncode == 125, (args, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr
    assert result.stdout == ""


def test_empty_input(store: Path) -> None:
    proc, results = batch(store, [])
    assert results == [] and proc.stdout == ""


def test_lines_that_break_the_decoder_or_the_paths_still_give_xx(store: Path, tmp_path: Path) -> None:
    """A deeply nested line (json's RecursionError) and a path with a NUL byte (os.open's ValueError)
    are bad lines like any other: an XX result each, and the batch goes on."""
    lines: list[object] = ["[" * 100000, echo("after-deep"),
                           {"argv": ["true"], "stdin": "in\u0000put"}, echo("after-nul-stdin"),
                           {"argv": ["true"], "stdout": "out\u0000put"}, echo("after-nul-stdout")]
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    proc = sbx("batch", "--root", str(store), "-", input=text, cwd=str(tmp_path))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["line"], r["verdict"]) for r in results] == [
        (1, "XX"), (2, "OK"), (3, "XX"), (4, "OK"), (5, "XX"), (6, "OK")], results
    assert all(str(r["message"]).startswith(f"line {r['line']}: ") for r in results if r["verdict"] == "XX")
