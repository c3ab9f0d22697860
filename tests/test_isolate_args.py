"""sbx-isolate's pure parts, by table: isolate's getopt, units and usage errors; directory and
environment rules; the meta file as isolate writes it (issue 15)."""

from __future__ import annotations

import signal

import pytest

from sandbox.isolate import options, rules
from sandbox.isolate.main import limit_settings
from sandbox.isolate.meta import as_isolate, exit_status, meta_text, status_line
from sandbox.model.result import Result
from sandbox.model.spec import Mount

# (argv, fields of Options expected)
PARSES = [
    (["--init"], {"mode": "init", "box_id": 0, "processes": 1, "open_files": 1024}),
    (["-b", "7", "--cg", "--init"], {"mode": "init", "box_id": 7, "cg": True}),
    (["-b7", "--cg", "--ini"], {"mode": "init", "box_id": 7}),                 # unique prefix, attached value
    (["--box-id=65000", "--cleanup"], {"mode": "cleanup", "box_id": 65000}),
    (["--run", "--", "./sol", "-t", "9"], {"argv": ("./sol", "-t", "9"), "time_ms": 0}),
    (["--run", "./sol", "-t", "9"], {"argv": ("./sol",), "time_ms": 9000}),  # getopt permutes argv
    (["-t", "1.5", "-x", "2", "-w", "0.25", "--run", "x"], {"time_ms": 1500, "extra_ms": 2000, "wall_ms": 250}),
    (["-t", "abc", "--run", "x"], {"time_ms": 0}),                              # atof: garbage is 0
    (["-t", " 2.5s", "--run", "x"], {"time_ms": 2500}),
    (["-t", "1e-3", "--run", "x"], {"time_ms": 1}),
    (["-p", "--run", "x"], {"processes": 0}),                                   # bare -p: unlimited
    (["-p4", "--run", "x"], {"processes": 4}),
    (["--processes=60", "--run", "x"], {"processes": 60}),
    (["--processes", "--run", "x"], {"processes": 0}),
    (["-m", "262144", "-k", "64000", "-f", "1024", "-n", "0", "--run", "x"],
     {"mem": 262144, "stack": 64000, "fsize": 1024, "open_files": 0}),
    (["--cg", "--cg-mem=1000", "--run", "x"], {"cg_mem": 1000}),
    (["-sv", "-vv", "--run", "x"], {"silent": True, "verbose": 3}),
    (["-r", "err", "--stderr-to-stdout", "--run", "x"], {"stderr": None, "stderr_to_stdout": True}),
    (["--stderr-to-stdout", "-r", "err", "--run", "x"], {"stderr": "err", "stderr_to_stdout": False}),
    (["-q", "100,20", "--init"], {"quota": (100, 20)}),
    (["--share-net", "--inherit-fds", "--core=0", "--syscalls=0", "--wait", "--special-files", "--tty-hack",
      "--run", "x"], {"share_net": True, "inherit_fds": True, "wait": True}),
    (["--cg", "--cg-timing", "--no-cg-timing", "--run", "x"], {"cg": True}),  # Judge0 passes isolate 1.x's
    (["--version"], {"mode": "version"}),
    (["--print-cg-root"], {"mode": "print-cg-root", "cg": True}),
    (["-b", " +12", "--init"], {"box_id": 12}),                                 # strtoul's leading blanks, sign
]


@pytest.mark.parametrize("argv, expected", PARSES, ids=[" ".join(a) for a, _ in PARSES])
def test_parse(argv: list[str], expected: dict[str, object]) -> None:
    opts = options.parse(argv)
    for name, value in expected.items():
        assert getattr(opts, name) == value, (name, getattr(opts, name))


# (argv, the usage text, whether the help follows on stdout)
REFUSED = [
    ([], "Please specify an isolate command (e.g. --init, --run).", False),
    (["--init", "--run", "x"], "Only one command is allowed.", False),
    (["--run"], "--run mode requires a command to run", False),
    (["--init", "extra"], "--init mode takes no parameters", False),
    (["--cleanup", "--", "x"], "--cleanup mode takes no parameters", False),
    (["--cg-mem=10", "--run", "x"], "Options related to control groups require --cg to be set.", False),
    (["-b", "x", "--init"], "Invalid numeric parameter: x", False),
    (["-b", "12a", "--init"], "Invalid numeric parameter: 12a", False),
    (["-b", "2147483648", "--init"], "Numeric parameter out of range: 2147483648", False),
    (["-b", "-1", "--init"], "Numeric parameter out of range: -1", False),
    (["-q", "100", "--init"], "Invalid quota specified: 100", False),
    (["-E", "=x", "--run", "x"], "Invalid environment specified: =x", False),
    (["-d", "a:bogus", "--run", "x"], "Invalid directory rule 'a:bogus': Unknown option 'bogus'", False),
    (["-d", "a=rel", "--run", "x"], "Invalid directory rule 'a=rel': Right-hand side must start with '/' or './'",
     False),
    (["-d", "../x", "--run", "x"], "Invalid directory rule '../x': Invalid path", False),
    (["-d", "a=x:fs", "--run", "x"], "Invalid directory rule 'a=x:fs': This filesystem is not supported", False),
    (["-d", "a:fs:tmp", "--run", "x"], "Invalid directory rule 'a:fs:tmp': Flags 'fs' and 'tmp' are mutually "
     "exclusive", False),
    (["--frobnicate", "--init"], "isolate: unrecognized option '--frobnicate'", True),
    (["--help"], "isolate: unrecognized option '--help'", True),
    (["-z", "--init"], "isolate: invalid option -- 'z'", True),
    (["--init", "-b"], "isolate: option requires an argument -- 'b'", True),
    (["--init", "--time"], "isolate: option '--time' requires an argument", True),
    (["--cg=1", "--init"], "isolate: option '--cg' doesn't allow an argument", True),
    (["--c", "--init"], "isolate: option '--c' is ambiguous; possibilities: '--chdir' '--cg' '--cg-mem' "
     "'--check-config' '--cleanup' '--core' '--cg-timing'", True),
]


@pytest.mark.parametrize("argv, text, help", REFUSED, ids=[" ".join(a) or "nothing" for a, _, _ in REFUSED])
def test_usage_errors(argv: list[str], text: str, help: bool) -> None:
    with pytest.raises(options.Usage) as caught:
        options.parse(argv)
    assert (caught.value.text, caught.value.help) == (text, help)


EMPTY_ETC = Mount(target="/etc", mode="tmpfs", size=rules.EMPTY_ETC_SIZE)


# isolate's memory options -> sbx's limits: -m (KiB of address space) is RLIMIT_AS always,
# --cg-mem (KiB, only with --cg) the memory limit; neither folds into the other
MEMORY = [
    (["--run", "x"], {}),
    (["-m", "65536", "--run", "x"], {"limits.address_space": 64 << 20}),
    (["--cg", "-m", "65536", "--run", "x"], {"limits.address_space": 64 << 20}),
    (["--cg", "--cg-mem=65536", "--run", "x"], {"limits.memory": 64 << 20}),
    (["--cg", "--cg-mem=1048576", "-m", "65536", "--run", "x"],
     {"limits.memory": 1 << 30, "limits.address_space": 64 << 20}),
    (["--cg", "--cg-mem=65536", "-m", "1048576", "--run", "x"],
     {"limits.memory": 64 << 20, "limits.address_space": 1 << 30}),
]


@pytest.mark.parametrize("argv, expected", MEMORY, ids=[" ".join(a) for a, _ in MEMORY])
def test_memory_options(argv: list[str], expected: dict[str, int]) -> None:
    settings = limit_settings(options.parse(argv), strict=False)
    assert {k: v for k, v in settings.items() if k in ("limits.memory", "limits.address_space")} == expected


def test_default_rules_become_sbx_mounts() -> None:
    """isolate's defaults: only /box is a bind of its own, and no /etc (an empty one over sbx's);
    the rest is what sbx always has."""
    opts = options.parse(["--run", "x"])
    layout = rules.layout(opts.dirs, opts.default_dirs, "/b/0", "/b/0/work")
    assert layout.mounts == (EMPTY_ETC, Mount(target="/box", mode="rw", source="/b/0/work"))
    assert rules.layout(opts.dirs, False, "/b/0", "/b/0/work").mounts == (EMPTY_ETC,)


def test_cms_and_judge0_rules(tmp_path: object) -> None:
    cms = options.parse(["-d", "/tmp=/srv/home:rw", "-d", "/dev/shm:tmp", "-d", "/etc/mono:maybe:noexec",
                         "-d", "/opt/data=./data", "-d", "scratch:tmp", "-d", "box=", "--run", "x"])
    layout = rules.layout(cms.dirs, cms.default_dirs, "/b/0", "/b/0/work")
    # /tmp replaces the default tmp:tmp rule in place; /dev/shm stays sbx's own; a missing maybe is skipped
    assert layout.mounts == (EMPTY_ETC, Mount(target="/tmp", mode="rw", source="/srv/home"),
                             Mount(target="/opt/data", mode="ro", source="/b/0/data"),
                             Mount(target="/scratch", mode="tmpfs"))
    assert any("/etc/mono" in note for note in layout.notes)
    judge0 = options.parse(["-d", "/etc:noexec", "-d", "sub=./box/sub:rw", "--run", "x"])
    layout = rules.layout(judge0.dirs, judge0.default_dirs, "/b/0", "/b/0/work")
    assert Mount(target="/etc", mode="ro", source="/etc") in layout.mounts and EMPTY_ETC not in layout.mounts
    assert Mount(target="/sub", mode="rw", source="/b/0/work/sub") in layout.mounts
    assert layout.noexec == ("/etc",)


ENV = {"HOME": "/home/judge", "PATH": "/usr/bin", "LANG": "C"}
ENVS = [
    ((), False, {"LIBC_FATAL_STDERR_": "1"}),
    (("HOME=/tmp", "PATH", "NOPE"), False, {"LIBC_FATAL_STDERR_": "1", "HOME": "/tmp", "PATH": "/usr/bin"}),
    (("LANG=", "LIBC_FATAL_STDERR_="), True, {"HOME": "/home/judge", "PATH": "/usr/bin"}),
    (("A=b=c",), False, {"LIBC_FATAL_STDERR_": "1", "A": "b=c"}),
]


@pytest.mark.parametrize("texts, full, expected", ENVS)
def test_environment(texts: tuple[str, ...], full: bool, expected: dict[str, str]) -> None:
    env_rules = tuple(rule for rule in map(rules.parse_env, texts) if rule is not None)
    assert dict(rules.environment(env_rules, full, ENV)) == expected


def meta_of(result: Result, cg: bool = False) -> dict[str, str]:
    return dict(line.split(":", 1) for line in meta_text(result, cg).splitlines())


FIGURES = {"cpu_time": 0.1234, "wall_time": 0.5, "max_rss": 2048 * 1024, "csw_voluntary": 3, "csw_forced": 1,
           "memory_peak": 4096 * 1024}
# (result, the meta file's keys and values, isolate's exit status, the status line)
METAS = [
    (Result("OK", 0, exit_code=0, **FIGURES),  # type: ignore[arg-type]
     {"time": "0.123", "time-wall": "0.500", "max-rss": "2048", "csw-voluntary": "3", "csw-forced": "1",
      "exitcode": "0"}, 0, "OK (0.123 sec real, 0.500 sec wall)"),
    (Result("RE", 3, exit_code=3, **FIGURES),  # type: ignore[arg-type]
     {"exitcode": "3", "status": "RE", "message": "Exited with error status 3"}, 1, "Exited with error status 3"),
    (Result("SG", 139, signal=signal.SIGSEGV, **FIGURES),  # type: ignore[arg-type]
     {"exitsig": "11", "status": "SG", "message": "Caught fatal signal 11"}, 1, "Caught fatal signal 11"),
    (Result("TLE", 137, signal=signal.SIGKILL, killed=True, **FIGURES),  # type: ignore[arg-type]
     {"status": "TO", "message": "Time limit exceeded", "killed": "1"}, 1, "Time limit exceeded"),
    (Result("WTLE", 137, signal=signal.SIGKILL, killed=True, **FIGURES),  # type: ignore[arg-type]
     {"status": "TO", "message": "Time limit exceeded (wall clock)", "killed": "1"}, 1,
     "Time limit exceeded (wall clock)"),
    (Result("OLE", 153, signal=signal.SIGXFSZ, **FIGURES),  # type: ignore[arg-type]
     {"exitsig": "25", "status": "SG", "message": "Caught fatal signal 25"}, 1, "Caught fatal signal 25"),
    (Result("XX", 125, message="cannot mount /box"), {"status": "XX", "message": "cannot mount /box"}, 2,
     "cannot mount /box"),
]


@pytest.mark.parametrize("result, expected, status, line", METAS, ids=[m[0].verdict for m in METAS])
def test_meta(result: Result, expected: dict[str, str], status: int, line: str) -> None:
    meta = meta_of(result)
    for key, value in expected.items():
        assert meta.get(key) == value, (key, meta)
    assert not any(key.startswith("cg-") for key in meta), meta   # no cgroup measured anything
    assert "output-bytes" not in meta                              # sbx's own key: not in isolate's file
    if meta.get("status") == "TO":
        assert "exitsig" not in meta and "exitcode" not in meta, meta
    if result.verdict in ("OK", "RE", "SG"):
        assert "killed" not in meta, meta   # the program ended on its own
    assert exit_status(result) == status and status_line(result) == line


def test_meta_cgroup_keys() -> None:
    measured = Result("MLE", 137, signal=signal.SIGKILL, oom_killed=True, cgroup=True, **FIGURES)  # type: ignore[arg-type]
    meta = meta_of(measured, cg=True)
    assert meta["cg-mem"] == "4096" and meta["cg-oom-killed"] == "1" and meta["status"] == "SG", meta
    assert not any(key.startswith("cg-") for key in meta_of(measured, cg=False))   # isolate without --cg
    counted = Result("MLE", 137, signal=signal.SIGKILL, oom_killed=True, killed=True, **FIGURES)  # type: ignore[arg-type]
    meta = meta_of(counted, cg=True)
    assert "cg-mem" not in meta and meta["killed"] == "1", meta   # no cgroup: never rusage as cg-mem


def test_time_past_t_is_to_even_under_x() -> None:
    """-x lets the program run on past -t, but isolate's verdict is TO all the same; -w likewise."""
    done = Result("OK", 0, exit_code=0, cpu_time=1.2, wall_time=1.3)
    late = as_isolate(done, time_ms=1000, wall_ms=0)
    meta = meta_of(late)
    assert meta["status"] == "TO" and "killed" not in meta and "exitcode" not in meta, meta
    assert as_isolate(done, time_ms=2000, wall_ms=0) == done
    assert as_isolate(done, time_ms=0, wall_ms=1000).verdict == "WTLE"
