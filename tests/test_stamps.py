"""SBX_STAMPS: each step of a run on stderr, in the order the steps happen; nothing without it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from conftest import sbx
from sandbox import Runner
from sandbox.runtime import protocol
from sandbox.runtime.protocol import ReportReader
from sandbox.runtime.stamps import COLD_STEPS, Stamps, parse


def test_cold_run_stamps_every_step_in_order() -> None:
    done = sbx("run", "--", "/bin/true", env={**os.environ, "SBX_STAMPS": "1"})
    assert done.returncode == 0, done.stderr
    steps = parse(done.stderr)
    names = [name for name, _ in steps]
    assert sorted(names) == sorted(COLD_STEPS), done.stderr  # each step once
    assert names == list(COLD_STEPS), done.stderr  # and in time order
    assert all(ms >= 0 for _, ms in steps)


def test_origin_given_by_the_caller() -> None:
    """A number names the start on CLOCK_MONOTONIC: every step comes after it."""
    origin = time.monotonic_ns()
    done = sbx("run", "--", "/bin/true", env={**os.environ, "SBX_STAMPS": str(origin)})
    assert done.returncode == 0, done.stderr
    steps = dict(parse(done.stderr))
    assert 0 < steps["main"] < steps["result-written"] < (time.monotonic_ns() - origin) / 1e6


def test_off_by_default() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SBX_STAMPS"}
    done = sbx("run", "--", "/bin/true", env=env)
    assert done.returncode == 0, done.stderr
    assert "stamp" not in done.stderr


def test_warm_run_stamps_the_supervisor_side(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A warm run's sandbox was built beforehand: its steps start at the run cgroup."""
    with Runner(root=str(tmp_path), environ={**os.environ, "SBX_STAMPS": "1"}) as runner:
        assert runner.run(["/bin/true"]).verdict == "OK"
        # The first run's stamps apart: each run counts from its own start, so sorted together
        # by time the two would interleave (its sandbox was built during it: its late steps
        # may come later than the whole of a fast warm run).
        capfd.readouterr()
        assert runner.run(["/bin/true"]).verdict == "OK"
    names = [name for name, _ in parse(capfd.readouterr().err)]
    after = ["init-ready", "payload-ready", "released", "exec", "exit-seen", "result", "torn-down"]
    assert names[-len(after):] == after
    assert "root-built" not in names[-len(after):]


def test_stamp_lines_go_to_the_clock_not_the_caller() -> None:
    assert protocol.decode_report(b"S pivot 12345") == ("pivot", 12345)
    assert protocol.decode_report(b"S pivot") is None
    r, w = os.pipe()
    seen_r, seen_w = os.pipe()
    try:
        before = time.monotonic_ns()
        protocol.say_stamp(w, "entry")
        os.write(w, protocol.Ready().encode())
        reader = ReportReader(r)
        reader.stamps = Stamps(before, seen_w)
        assert reader.next() == protocol.Ready()
        os.close(seen_w)
        seen_w = -1
        line = os.read(seen_r, 4096).decode()
        assert line.startswith("sbx: stamp entry ") and line.endswith("\n")
        assert 0 <= float(line.split()[3]) < (time.monotonic_ns() - before) / 1e6
        # Without a clock the line is dropped all the same.
        protocol.say_stamp(w, "entry")
        os.write(w, protocol.Started(7).encode())
        assert ReportReader(r).next() == protocol.Started(7)
    finally:
        for fd in (r, w, seen_r, seen_w):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("text, expected", [
    ("", []),
    ("sbx: stamp b 2.5\nnoise\nsbx: stamp a 1.0\n", [("a", 1.0), ("b", 2.5)]),
    ("sbx: stamp a x\nsbx: stamp a 1 2\n", []),
])
def test_parse(text: str, expected: list[tuple[str, float]]) -> None:
    assert parse(text) == expected
