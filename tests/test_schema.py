"""The settings schema (config/schema.py): what a flag and a profile key accept and refuse, and that they agree.

Pure table tests of the conversions, then the drift fixes through the real command line
(`--hostname 'a_b!'` and `--pids-limit 0` ran while the same values in a profile were errors).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import sbx
from sandbox.config import compose, flags, schema
from sandbox.errors import UsageError
from sandbox.model.frozen import fields
from sandbox.model.spec import LandlockSpec, Limits
from sandbox.seccomp import SeccompSpec

REFUSED = object()
G, M, K = 1 << 30, 1 << 20, 1 << 10

# key -> [(a flag's text, the same value as TOML, what both become, or REFUSED)]
CASES: dict[str, list[tuple[str, object, object]]] = {
    "sandbox.image": [("host", "host", "host"), ("busybox:1.36", "busybox:1.36", "busybox:1.36"),
                      ("", "", REFUSED), ("a b", "a b", REFUSED), ("x" * 256, "x" * 256, REFUSED)],
    "sandbox.hostname": [("judge-7", "judge-7", "judge-7"), ("a.b-c", "a.b-c", "a.b-c"), ("a_b!", "a_b!", REFUSED),
                         ("-x", "-x", REFUSED), ("", "", REFUSED), ("a/b", "a/b", REFUSED),
                         ("h" * 65, "h" * 65, REFUSED), ("a..b", "a..b", REFUSED)],
    "sandbox.uid": [("0", 0, 0), ("1000", 1000, 1000), ("65535", 65535, 65535), ("65536", 65536, REFUSED),
                    ("-1", -1, REFUSED), ("abc", "abc", REFUSED), ("1.5", 1.5, REFUSED)],
    "sandbox.gid": [("0", 0, 0), ("2345", 2345, 2345), ("70000", 70000, REFUSED)],
    "sandbox.workdir": [("/work", "/work", "/work"), ("", "", REFUSED), ("a\0b", "a\0b", REFUSED)],
    "sandbox.disk": [("256M", "256M", 256 * M), ("1G", 1 << 30, G), ("0", 0, REFUSED), ("12Q", "12Q", REFUSED),
                     ("unlimited", "unlimited", REFUSED)],
    "limits.memory": [("64M", "64M", 64 * M), ("1.5G", "1.5G", 3 * G // 2), ("0", 0, REFUSED),
                      ("-5M", "-5M", REFUSED), ("unlimited", "unlimited", None), ("lots", "lots", REFUSED)],
    "limits.address_space": [("64M", "64M", 64 * M), ("1.5G", "1.5G", 3 * G // 2), ("65536K", 67108864, 64 * M),
                             ("0", 0, REFUSED), ("-5M", "-5M", REFUSED), ("unlimited", "unlimited", None),
                             ("lots", "lots", REFUSED), ("true", True, REFUSED)],
    "limits.cpus": [("1.5", 1.5, 1.5), ("2", 2, 2.0), ("0", 0, REFUSED), ("4097", 4097, REFUSED),
                    ("nan", float("nan"), REFUSED), ("abc", "abc", REFUSED), ("unlimited", "unlimited", None)],
    "limits.cpuset": [("0-3,6", "0-3,6", "0-3,6"), ("0", "0", "0"), ("3-1", "3-1", REFUSED), ("x", "x", REFUSED),
                      ("", "", REFUSED)],
    "limits.pids": [("64", 64, 64), ("1", 1, 1), ("4194304", 4194304, 4194304), ("0", 0, REFUSED),
                    ("4194305", 4194305, REFUSED), ("-1", -1, REFUSED), ("many", "many", REFUSED),
                    ("9" * 5000, 10 ** 30, REFUSED), ("unlimited", "unlimited", None)],
    "limits.time": [("1", 1, 1.0), ("500ms", "500ms", 0.5), ("1.5m", "1.5m", 90.0), ("0", 0, REFUSED),
                    ("soon", "soon", REFUSED), ("unlimited", "unlimited", None)],
    "limits.wall_time": [("400ms", "400ms", 0.4), ("2s", "2s", 2.0), ("0", 0, REFUSED)],
    "limits.output": [("64K", "64K", 64 * K), ("0", 0, 0), ("-1", -1, REFUSED), ("unlimited", "unlimited", None)],
    "limits.file_size": [("1M", "1M", M), ("0", 0, 0), ("x", "x", REFUSED)],
    "limits.open_files": [("64", 64, 64), ("0", 0, REFUSED), (str(1 << 30), 1 << 30, 1 << 30),
                          (str((1 << 30) + 1), (1 << 30) + 1, REFUSED), ("unlimited", "unlimited", None)],
    "limits.stack": [("8M", "8M", 8 * M), ("0", 0, REFUSED)],
    "limits.io_read_bps": [("1M", "1M", M), ("0", 0, REFUSED)],
    "limits.io_write_bps": [("50M", "50M", 50 * M), ("-1", -1, REFUSED)],
    "network.dns": [("192.0.2.53", ["192.0.2.53"], ("192.0.2.53",)), ("::1", ["::1"], ("::1",)),
                    ("pypi.org", ["pypi.org"], REFUSED), ("", [""], REFUSED)],
    "seccomp.policy": [("strict", "strict", "strict"), ("none", "none", "none"), ("bogus", "bogus", REFUSED)],
}
SWITCHES = ("limits.strict", "network.host_loopback")  # a flag without a value: true
LATE = ("network.mode", "network.publish")  # flags checked when the Spec is built, by the same parser


def flag_value(key: str, text: str) -> object:
    setting = schema.BY_KEY[key]
    try:
        return schema.from_flag(setting, [text] if setting.read == "list" else text, setting.flag)
    except UsageError as error:
        message = str(error)
        assert message.startswith(setting.flag + ": ") and "\n" not in message, message
        return REFUSED


def profile_value(key: str, value: object) -> object:
    check = schema.BY_KEY[key].check
    assert check is not None
    try:
        return check(value)
    except schema.Bad as bad:
        assert bad.args[0] and "\n" not in bad.args[0]
        return REFUSED


CASE_LIST = [(key, text, toml, want) for key, cases in CASES.items() for text, toml, want in cases]


@pytest.mark.parametrize("key, text, toml, want", CASE_LIST, ids=[f"{c[0]}={c[1][:20]!r}" for c in CASE_LIST])
def test_a_flag_and_a_profile_key_accept_and_refuse_the_same_values(key: str, text: str, toml: object,
                                                                     want: object) -> None:
    assert flag_value(key, text) == want
    assert profile_value(key, toml) == want


def test_every_setting_with_a_flag_and_a_profile_key_is_in_the_table() -> None:
    both = {s.key for s in schema.SETTINGS if s.flags and s.section is not None}
    assert both == set(CASES) | set(SWITCHES) | set(LATE)


@pytest.mark.parametrize("key", SWITCHES)
def test_switches_are_true_as_flags_and_booleans_in_profiles(key: str) -> None:
    assert flag_value(key, True) is True  # type: ignore[arg-type]
    assert profile_value(key, True) is True and profile_value(key, False) is False
    assert profile_value(key, "yes") is REFUSED


@pytest.mark.parametrize("key, good, bad", [("network.mode", "nat", "bogus"), ("network.publish", ["8080:80"], ["x"])])
def test_late_flags_pass_through_for_the_run_path_parser(key: str, good: object, bad: object) -> None:
    """The profile checks these with the run path's own parser (net.parse_publish, the mode list in compose)."""
    setting = schema.BY_KEY[key]
    passed = schema.from_flag(setting, bad, setting.flag)  # type: ignore[arg-type]
    assert passed == (tuple(bad) if isinstance(bad, list) else bad)
    assert profile_value(key, good) == (tuple(good) if isinstance(good, list) else good)
    assert profile_value(key, bad) is REFUSED


def test_messages_say_what_is_allowed_in_the_words_of_the_profile() -> None:
    with pytest.raises(UsageError) as flag:
        schema.from_flag(schema.BY_KEY["limits.pids"], "0", "--pids-limit")
    assert str(flag.value) == "--pids-limit: '0' is not an integer from 1 to 4194304, or \"unlimited\""
    check = schema.BY_KEY["limits.pids"].check
    assert check is not None
    with pytest.raises(schema.Bad) as key:
        check(0)
    assert key.value.args[0] == 'an integer from 1 to 4194304, or "unlimited"'


@pytest.mark.parametrize("limits, want", [
    ({"memory": "256M", "time": 1.5, "pids": 64, "strict": True},
     {"limits.memory": 256 * M, "limits.time": 1.5, "limits.pids": 64, "limits.strict": True}),
    ({"cpuset": "0-1", "output": 0, "memory": None, "time": "unlimited"},
     {"limits.cpuset": "0-1", "limits.output": 0, "limits.memory": None, "limits.time": None}),
    ({"address_space": "64M", "memory": 1 << 30}, {"limits.address_space": 64 * M, "limits.memory": G}),
    ({"address_space": "unlimited"}, {"limits.address_space": None}),
])
def test_the_apis_limits_go_through_the_same_checks(limits: dict[str, object], want: dict[str, object]) -> None:
    assert flags.limit_settings(limits) == want


@pytest.mark.parametrize("limits", [{"pids": 0}, {"cpuset": "x"}, {"time": 0}, {"memory": "-5M"}, {"bogus": 1},
                                    {"address_space": 0}, {"address_space": True}])
def test_the_apis_limits_refuse_what_flags_and_profiles_refuse(limits: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        flags.limit_settings(limits)


def test_the_schema_names_every_field_of_the_model() -> None:
    assert set(schema.LIMIT_KEYS) == {f.name for f in fields(Limits)}
    assert set(schema.SECCOMP_KEYS) == {f.name for f in fields(SeccompSpec)}
    assert set(schema.LANDLOCK_KEYS) <= {f.name for f in fields(LandlockSpec)}


def test_flags_are_unique_and_documented() -> None:
    seen = [flag for s in schema.SETTINGS for flag in s.flags]
    assert len(seen) == len(set(seen))
    assert all(s.help and (s.metavar or s.read == "switch") for s in schema.SETTINGS if s.flags)
    usage = flags.run_usage()
    assert all(s.flag in usage for s in schema.SETTINGS if s.flags)


@pytest.mark.parametrize("args, toml, message", [
    (["--hostname", "a_b!"], '[sandbox]\nhostname = "a_b!"\n',
     "--hostname: 'a_b!' is not a host name of letters, digits, '-' and '.' (64 at most)"),
    (["--pids-limit", "0"], "[limits]\npids = 0\n",
     "--pids-limit: '0' is not an integer from 1 to 4194304, or \"unlimited\""),
    (["--dns", "pypi.org"], '[network]\ndns = ["pypi.org"]\n', "--dns: 'pypi.org' is not an IP address"),
    (["--address-space", "0"], "[limits]\naddress_space = 0\n",
     "--address-space: '0' is not a size above 0 such as 256M, or \"unlimited\""),
])
def test_values_a_profile_refuses_are_refused_as_flags(tmp_path: Path, args: list[str], toml: str,
                                                       message: str) -> None:
    ran = tmp_path / "ran"
    for options in (args, ["--profile", str(tmp_path / "p.toml")]):
        (tmp_path / "p.toml").write_text(toml)
        result = sbx("run", *options, "--", "touch", str(ran))
        assert result.returncode == 125, result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sbx: error: "), result.stderr
        assert not ran.exists()
    assert sbx("run", *args, "--", "true").stderr == f"sbx: error: {message}\n"


@pytest.mark.parametrize("size, toml, want", [("64M", "64M", 64 * M), ("0", 0, REFUSED), ("lots", "lots", REFUSED)])
def test_a_tmpfs_size_is_checked_as_a_mounts(size: str, toml: object, want: object) -> None:
    """--tmpfs DST:size=N and [[mount]] size: 0 would be an unbounded tmpfs."""
    try:
        got: object = compose.parse_tmpfs(f"/scratch:size={size}").size
    except UsageError as error:
        assert str(error).startswith(f"--tmpfs /scratch:size={size}: ") and "\n" not in str(error)
        got = REFUSED
    assert got == want
    assert profile_value_of(schema.SIZE, toml) == want


@pytest.mark.parametrize("name, ok", [("LANG", True), ("_x1", True), ("A B", False), ("1A", False), ("é", False),
                                      ("a.b", False)])
def test_an_env_name_is_checked_as_a_profiles(name: str, ok: bool) -> None:
    try:
        flag_ok = compose.parse_env(f"{name}=1", {}) == (name, "1")
    except UsageError:
        flag_ok = False
    assert flag_ok == ok
    assert (profile_value("sandbox.env", {name: "1"}) is not REFUSED) == ok


def profile_value_of(check: schema.Convert, value: object) -> object:
    try:
        return check(value)
    except schema.Bad:
        return REFUSED


def test_unlimited_is_a_flag_value_too() -> None:
    result = sbx("run", "--profile", "grader", "--memory", "unlimited", "--pids-limit", "unlimited", "--",
                 "true")
    assert result.returncode == 0, result.stderr
