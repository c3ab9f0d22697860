"""Fuzz sbx-isolate's command line: argv -> Options -> directory rules -> mounts, environment.

Every input must either parse or raise options.Usage (isolate's usage error, exit 2) with a
one-line text; any other exception is a bug.  Parsed options then go through the directory
rules' layout and the environment rules, which must not fail either.

    python fuzz/fuzz_isolate_args.py -max_total_time=20 fuzz/corpus/isolate_args
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import atheris  # noqa: E402

with atheris.instrument_imports():
    from sandbox.isolate import options, rules

WORKDIR = tempfile.mkdtemp(prefix="sbx-fuzz-")  # under $TMPDIR: the pytest wrapper points it at its tmp_path
BOX = os.path.join(WORKDIR, "0")
ENVIRON = {"HOME": WORKDIR, "FOO": "bar", "PATH": "/usr/bin:/bin"}


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    text = fdp.ConsumeUnicodeNoSurrogates(300)
    args = text.split("\x00") if "\x00" in text else text.split(" ")
    try:
        opts = options.parse(args, "isolate")
    except options.Usage as usage:
        assert "\n" not in usage.text or "\n" in text, f"multi-line usage error: {usage.text!r}"
        return
    assert opts.mode in options.MODES
    assert opts.mode != "run" or opts.argv, "--run without a command"
    assert 0 <= opts.box_id <= options.INT_MAX
    layout = rules.layout(opts.dirs, opts.default_dirs, BOX, BOX + "/work")
    for mount in layout.mounts:
        assert mount.target.startswith("/") and ".." not in mount.target.split("/"), mount
    for name, value in rules.environment(opts.env, opts.full_env, ENVIRON):
        assert name and "\0" not in name + value
    for item in (text, *args[:4]):
        try:
            rules.parse_dir(item)
        except rules.RuleError:
            pass
        options.seconds_ms(item)
        try:
            options.opt_uint(item)
        except options.Usage:
            pass


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
