"""Fuzz the Containerfile parser and its word, variable and pair rules.

A file must parse to instructions whose arguments then split and expand, or
fail with a one-line ContainerfileError; nothing else may escape.

    python fuzz/fuzz_containerfile.py -max_total_time=20 /tmp/cf-corpus fuzz/corpus/containerfile
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with atheris.instrument_imports():
    from sandbox.image import containerfile
    from sandbox.image.containerfile import ContainerfileError

VARIABLES = {"A": "a", "B": "two words", "EMPTY": "", "P": "/usr/local"}


def one_line(error: ContainerfileError) -> None:
    message = str(error)
    assert message and "\n" not in message, repr(message)


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        instructions = containerfile.parse(text)
    except ContainerfileError as error:
        one_line(error)
        return
    assert instructions
    for ins in instructions:
        assert ins.keyword in containerfile.SUPPORTED and ins.args
        try:
            argv = containerfile.shell_or_exec(ins)
            assert argv and all(isinstance(arg, str) for arg in argv)
            words = containerfile.words(ins.args, VARIABLES, "f:1")
            assert all(isinstance(word, str) for word in words)
            containerfile.expand(ins.args, VARIABLES, "f:1")
            if ins.keyword in ("ENV", "LABEL"):
                for key, value in containerfile.pairs(ins.args, VARIABLES, "f:1", ins.keyword):
                    assert key and isinstance(value, str)
        except ContainerfileError as error:
            one_line(error)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
