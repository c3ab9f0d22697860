"""When the warm pool builds the next sandboxes of a shape (issue 17, warm latency back to back).

A shape keeps up to `depth` sandboxes ready.  After a run takes one, building its replacement
competes with whatever runs next for the CPU; a run that follows another at once would share
the machine with that build.  So while a shape still has a sandbox ready, the pool tops it up
only in a lull: once no run of it has started or ended for REFILL_AFTER.  A shape with none
ready is refilled at once, since its next run would otherwise wait for a build.

Each test sets REFILL_AFTER far from the time a run takes, so what it checks does not depend
on the machine's speed: a lower bound on when the top-up happens, or a refill that can only
have come from the "none ready" rule.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import wait_stock
from sandbox import Runner
from sandbox.model.spec import Spec
from sandbox.runtime.supervisor import shape_of
from sandbox.warm import pool as pool_mod

pytestmark = pytest.mark.timeout(90)


def true_shape(runner: Runner) -> Spec:
    return shape_of(runner.spec(["true"]))


def run_true(runner: Runner) -> None:
    result = runner.run(["true"])
    assert result.verdict == "OK", result


def fill(runner: Runner, monkeypatch: pytest.MonkeyPatch) -> Spec:
    """The `true` shape, once the pool holds two of it.  With no pause meanwhile: the shape's first
    run may take one of the two being built, and the other must not then wait for a pause."""
    monkeypatch.setattr(pool_mod, "REFILL_AFTER", 0.0)
    shape = true_shape(runner)
    run_true(runner)
    wait_stock(runner, shape, 2)
    return shape


def counts(runner: Runner, shape: Spec) -> tuple[int, int]:
    """(ready, being built) sandboxes of the shape."""
    pool = runner.pool
    assert pool is not None
    with pool.cond:
        return len(pool.ready.get(shape, ())), pool.preparing.get(shape, 0)


def test_a_shape_with_one_ready_is_topped_up_only_after_the_pause(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with Runner(root=str(tmp_path / "store")) as runner:
        assert runner.pool is not None and runner.pool.depth == 2
        shape = fill(runner, monkeypatch)
        monkeypatch.setattr(pool_mod, "REFILL_AFTER", 4.0)
        started = time.monotonic()
        run_true(runner)  # takes one, one is left
        assert counts(runner, shape) == (1, 0)  # nothing built while the next run may follow
        time.sleep(0.5)
        assert counts(runner, shape) == (1, 0)
        wait_stock(runner, shape, 2, timeout=30)  # topped up once the pause has passed
        assert time.monotonic() - started >= 4.0


def test_back_to_back_runs_take_ready_sandboxes_and_the_last_one_is_replaced_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A pause no test waits out: a refill within it comes from the "none ready" rule alone.
    with Runner(root=str(tmp_path / "store")) as runner:
        shape = fill(runner, monkeypatch)
        monkeypatch.setattr(pool_mod, "REFILL_AFTER", 3600.0)
        run_true(runner)
        run_true(runner)  # the last one ready: none left
        wait_stock(runner, shape, 2, timeout=30)
        run_true(runner)
        time.sleep(0.5)  # time enough for a refill to start, had one been asked for
        assert counts(runner, shape) == (1, 0)


def test_without_the_pause_a_run_is_replaced_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: with no pause the pool is back at two after every run."""
    with Runner(root=str(tmp_path / "store")) as runner:
        shape = fill(runner, monkeypatch)
        for _ in range(3):
            run_true(runner)
            wait_stock(runner, shape, 2, timeout=30)
