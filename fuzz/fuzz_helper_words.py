"""Fuzz the readers of what helpers and the host say: a helper's last words (pasta,
slirp4netns, newuidmap), nft's error text, and doctor's readings of /proc/self/status,
/proc/self/mountinfo and /proc/1/cgroup.

Each must return a string (or a number, a tuple) for any text: never raise, and the words
for an error line stay one printable line of bounded length.

    python fuzz/fuzz_helper_words.py -max_total_time=20 fuzz/corpus/helper_words
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from sandbox.cli import confinement
    from sandbox.net import egress, helper


def one_input(data: bytes) -> None:
    text = data.decode(errors="replace")  # as the readers decode what they read
    for words in (helper.last_words(text), egress.nft_words(text)):
        assert words.isprintable() and len(words) <= 300, repr(words)
    assert isinstance(confinement._root_fstype(text), str)
    assert isinstance(confinement._status_field(text, "Seccomp"), int)
    assert all(isinstance(path, str) for path in confinement._cgroup_paths(text))


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
