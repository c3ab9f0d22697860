"""config/argv.split: a subcommand's options and operands (sbx batch, batch --broker, worker)."""

from __future__ import annotations

import pytest

from sandbox.config.argv import split
from sandbox.errors import UsageError

VALUED = ("-j", "--jobs", "--root")
SWITCHES = ("--cold",)
UNKNOWN = "unknown option {arg}"
LAST = "one FILE, last"

ACCEPTED = [
    ([], {}, []),
    (["-j", "2"], {"-j": "2"}, []),
    (["--jobs=3", "--root", "/r"], {"--jobs": "3", "--root": "/r"}, []),
    (["--jobs", "1", "--jobs", "4"], {"--jobs": "4"}, []),  # the last value
    (["--cold", "f.jsonl"], {"--cold": True}, ["f.jsonl"]),
    (["-"], {}, ["-"]),  # standard input: an operand
    (["--help"], {"--help": True}, []),
    (["-h", "--root=/x=y"], {"-h": True, "--root": "/x=y"}, []),
    (["--root", "--cold"], {"--root": "--cold"}, []),  # a value may look like an option
]

REFUSED = [
    (["-j"], "-j needs a value"),
    (["--root"], "--root needs a value"),
    (["--bogus"], "unknown option '--bogus'"),
    (["-j=2"], "unknown option '-j=2'"),  # `=` only after a long option
    (["--cold=1"], "unknown option '--cold=1'"),
    (["a", "b"], LAST),
    (["a", "--cold"], LAST),
]


@pytest.mark.parametrize("args, options, operands", ACCEPTED)
def test_accepted(args: list[str], options: dict[str, object], operands: list[str]) -> None:
    assert split(args, VALUED, SWITCHES, unknown=UNKNOWN, one_operand_last=LAST) == (options, operands)


@pytest.mark.parametrize("args, message", REFUSED)
def test_refused(args: list[str], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        split(args, VALUED, SWITCHES, unknown=UNKNOWN, one_operand_last=LAST)
    assert str(caught.value) == message


def test_operands_anywhere_without_the_rule() -> None:
    assert split(["a", "--cold", "b"], VALUED, SWITCHES, unknown=UNKNOWN) == ({"--cold": True}, ["a", "b"])
