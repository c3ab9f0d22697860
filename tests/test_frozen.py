"""sandbox/model/frozen.py: the dataclass subset sbx uses at run time, where it differs from
`dataclasses`: a frozen instance caches its hash (issue #17: a warm run hashed its Spec afresh
several times), which must never travel with a pickle (the zygote is another interpreter)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from sandbox.model.frozen import dataclass, replace
from sandbox.runtime.protocol import Setup

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Holder:
    name: str
    items: object = ()


def test_equal_instances_hash_alike_and_compare_field_by_field() -> None:
    a, b = Holder("x", (1, 2)), Holder("x", (1, 2))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a != Holder("x", (1, 3)) and a != Holder("y", (1, 2))
    assert hash(a) == hash(a)  # cached: the same value again
    assert replace(a, items=(1, 3)) != a and replace(a, items=(1, 2)) == a


def test_a_field_that_cannot_be_hashed_still_compares() -> None:
    assert Holder("x", {"k": [1]}) == Holder("x", {"k": [1]})
    assert Holder("x", {"k": [1]}) != Holder("x", {"k": [2]})


def test_the_cached_hash_stays_out_of_pickles() -> None:
    """Hashed here, unpickled in an interpreter with another string hash seed: it must find its
    equal made there (a stale hash would miss it), as the zygote finds a shape's entries."""
    setup = Setup(0, 1, 2, 40, "/work/dir")
    hash(setup)
    data = pickle.dumps(setup)
    code = ("import pickle, sys\nfrom sandbox.runtime.protocol import Setup\n"
            "got = pickle.loads(sys.stdin.buffer.read())\n"
            "assert got in {Setup(0, 1, 2, 40, '/work/dir')}, 'a stale hash'\n"
            "assert Setup(0, 1, 2, 40, '/work/dir') == got\n")
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                              env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr.decode()
