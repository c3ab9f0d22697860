"""Fuzz `sbx run` flag parsing: argv -> settings -> Spec.

Every input must either build a Spec or raise SbxError (one line, exit 125);
any other exception is a bug.  Covers -v/--tmpfs/-e/--env-file specs, -p
publish specs and egress rules, units and ids.

    python fuzz/fuzz_flags.py -max_total_time=20 fuzz/corpus/flags
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from sandbox.config import compose, flags
    from sandbox.net import network as net
    from sandbox.model import units
    from sandbox.errors import SbxError  # noqa: E402

WORKDIR = tempfile.mkdtemp(prefix="sbx-fuzz-")  # under $TMPDIR: the pytest wrapper points it at its tmp_path
os.makedirs(os.path.join(WORKDIR, "src"), exist_ok=True)
ENVIRON = {"HOME": WORKDIR, "FOO": "bar"}


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(200)
    args = text.split("\x00") if "\x00" in text else text.split(" ")
    try:
        spec = flags.build_spec(args, WORKDIR, ENVIRON)
        assert spec.argv, "a Spec without a command"
    except SbxError as exc:
        assert "\n" not in str(exc), f"multi-line error: {exc!r}"
    except flags.HelpRequested:
        pass
    for parse in (units.parse_size, units.parse_duration):
        try:
            parse(text)
        except ValueError:
            pass
    for build in (lambda t: compose.parse_volume(t, WORKDIR), compose.parse_tmpfs,
                  lambda t: compose.parse_env(t, ENVIRON)):
        try:
            build(text)
        except SbxError:
            pass
    for parse in (net.parse_publish, net.parse_rule):  # -p specs and egress rules
        try:
            parse(text)
        except net.NetError as exc:
            assert "\n" not in str(exc) or "\n" in text, f"multi-line error: {exc!r}"


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
