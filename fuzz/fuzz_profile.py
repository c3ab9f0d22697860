"""Fuzz profile parsing: any bytes, as a profile file, must give a Profile or
a one-line ProfileError, and a Profile written back by `sbx profile show`
must resolve to the same profile again.

Each input is resolved twice through the whole path (read, TOML, validation,
inheritance, mounts, expansion): by path as a trusted file, and by name from
./.sbx/profiles/ under the project rule.  Run it (new inputs go to the first
directory, so give a scratch one before the seeds):

    python fuzz/fuzz_profile.py -max_total_time=20 -dict=fuzz/profile.dict \
        /tmp/profile-corpus fuzz/corpus/profile
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

with atheris.instrument_imports():
    # Instrumented: config/tomlfile.py imports the parser lazily (tomli on Python 3.10).
    if sys.version_info >= (3, 11):
        import tomllib  # noqa: F401
    else:
        import tomli  # noqa: F401

    from sandbox.config import dump, profile
    from sandbox.config import layers, profile_file, schema, tomlfile, trust  # noqa: F401  (loaded lazily)
    from sandbox.seccomp import parse as seccomp_policy
    from sandbox.model import units

# libFuzzer ends the process without running atexit handlers, so this small
# directory stays behind: point TMPDIR somewhere disposable (the test does).
ROOT = tempfile.mkdtemp(prefix="sbx-fuzz-profile-")
PROJECT = os.path.join(ROOT, "project")
PROJECT_PROFILES = os.path.join(PROJECT, ".sbx", "profiles")
ENVIRON = {
    "HOME": os.path.join(ROOT, "home"),
    "XDG_CONFIG_HOME": os.path.join(ROOT, "xdg"),
    "DATA": "/srv/data",
    "EMPTY": "",
}
os.makedirs(PROJECT_PROFILES)
os.makedirs(os.path.join(PROJECT, "data"))


def resolve(ref: str) -> profile.Profile | None:
    try:
        return profile.resolve(ref, cwd=PROJECT, environ=ENVIRON, project=True)  # "fuzz": the project rule
    except profile.ProfileError as error:
        message = str(error)
        assert message and "\n" not in message, repr(message)
        return None


def round_trip(resolved: profile.Profile) -> None:
    text = dump.dumps(resolved)
    shown = os.path.join(ROOT, "shown.toml")
    with open(shown, "w", encoding="utf-8") as file:
        file.write(text)
    again = profile.resolve(shown, cwd=PROJECT, environ=ENVIRON)  # must not fail
    assert dump.dumps(again, header=False) == dump.dumps(resolved, header=False), text


def test_one_input(data: bytes) -> None:
    for directory in (PROJECT, PROJECT_PROFILES):
        with open(os.path.join(directory, "fuzz.toml"), "wb") as file:
            file.write(data)
    for ref in ("./fuzz.toml", "fuzz"):
        resolved = resolve(ref)
        if resolved is not None:
            round_trip(resolved)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
