"""A helper that fails says why: pasta's, slirp4netns' and newuidmap's own words in the error line.

The helpers are real where a real failure can be arranged (a published port that is taken;
newuidmap where setuid means nothing: inside bwrap's user namespace) and stand-ins found
first on PATH where it cannot (sbx looks the network helpers up on PATH).  An unusable
/dev/net/tun, which the kernel leaves 0600 root-only where no udev runs (the unprivileged
CI stage's pasta failures), is arranged with bwrap too: a file nobody may open bound over it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from conftest import INSTALLED, REPO, SBX
from sandbox.net import helper as net

MARKER = "sbx-test-7c1e"
PREFIX = "sbx: error: "


def run(*args: str, env: dict[str, str] | None = None, wrap: list[str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`sbx ARGS...` (under the command prefix `wrap`), stdin /dev/null, output captured."""
    env = dict(os.environ if env is None else env)
    if INSTALLED:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(REPO)
    return subprocess.run([*(wrap or []), *SBX, *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout, env=env)


def fake(tmp_path: Path, name: str, script: str, helper: str = "pasta") -> dict[str, str]:
    """An environment whose PATH finds `script` as `name` first, and sbx using `helper`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBX_USERNET": helper}


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 125, result
    lines = result.stderr.splitlines()
    assert lines and lines[-1].startswith(PREFIX), result.stderr
    return lines[-1][len(PREFIX):]


def test_the_real_helpers_work_here() -> None:
    """The control for the stand-ins below: without them, the same runs bring the network up."""
    for helper in ("pasta", "slirp4netns"):
        env = {**os.environ, "SBX_USERNET": helper}
        result = run("run", "--network", "pasta", "--", "cat", "/proc/net/route", env=env)
        assert result.returncode == 0, (helper, result)
        assert any(row.split()[:2] == ["tap0", "00000000"] for row in result.stdout.splitlines()), result.stdout


def test_pasta_words_are_the_error(tmp_path: Path) -> None:
    # passt's logger prints "Failed to send ..." before each message when there is no syslog
    env = fake(tmp_path, "pasta", f'echo "Failed to send 67 bytes to syslog" >&2\n'
                                  f'echo "Could not do it: {MARKER}" >&2\nexit 1\n')
    line = error_line(run("run", "--network", "pasta", "--", "true", env=env))
    assert line == f"pasta exited before the network was up: Could not do it: {MARKER}"


def test_slirp4netns_words_are_the_error(tmp_path: Path) -> None:
    # what slirp4netns prints when its child cannot open the tun device
    env = fake(tmp_path, "slirp4netns", f'echo "WARNING: Support for sandboxing is experimental" >&2\n'
                                        f'echo "open(\\"/dev/net/tun\\"): {MARKER}" >&2\n'
                                        f'echo "child failed(1)" >&2\nexit 1\n', helper="slirp4netns")
    line = error_line(run("run", "--network", "pasta", "--", "true", env=env))
    assert line == f'slirp4netns exited before the network was up: open("/dev/net/tun"): {MARKER}'


def test_a_silent_helper_is_said_to_be_silent(tmp_path: Path) -> None:
    env = fake(tmp_path, "pasta", "exit 3\n")
    line = error_line(run("run", "--network", "pasta", "--", "true", env=env))
    assert line == "pasta exited before the network was up (exit status 3; it said nothing)"


def test_sbx_debug_shows_all_of_it(tmp_path: Path) -> None:
    env = fake(tmp_path, "pasta", f'echo "first {MARKER}" >&2\necho "second {MARKER}" >&2\n'
                                  f'printf "last {MARKER}\\033[31m" >&2\nexit 1\n')
    result = run("run", "--network", "pasta", "--", "true", env={**env, "SBX_DEBUG": "1"})
    assert error_line(result) == f"pasta exited before the network was up: last {MARKER} [31m"  # no escape byte
    said = result.stderr.index(f"first {MARKER}\nsecond {MARKER}\nlast {MARKER}")
    assert said < result.stderr.index(PREFIX)
    quiet = run("run", "--network", "pasta", "--", "true", env=env)
    assert f"first {MARKER}" not in quiet.stderr and quiet.stderr.count("\n") == 1


def test_real_pasta_refuses_a_taken_port() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    env = {**os.environ, "SBX_USERNET": "pasta"}
    try:
        line = error_line(run("run", "--network", "pasta", "-p", f"127.0.0.1:{port}:80", "--", "true", env=env))
    finally:
        taken.close()
    # Debian 12's pasta: "Failed to bind any port for '-t 127.0.0.1/PORT:80', exiting"
    assert line.startswith("pasta exited before the network was up: ") and f"127.0.0.1/{port}:80" in line, line
    # the control: the port free again, the same run starts
    result = run("run", "--network", "pasta", "-p", f"127.0.0.1:{port}:80", "--", "true", env=env)
    assert result.returncode == 0, result


def test_a_chatty_helper_neither_blocks_nor_grows(tmp_path: Path) -> None:
    """4 MiB on stderr before the real pasta starts: a pipe nobody reads would block it (and
    the run would time out); the capture keeps at most net.LOG_LIMIT bytes of it."""
    pasta = shutil.which("pasta")
    assert pasta is not None
    env = fake(tmp_path, "pasta", f"yes {MARKER} | head -c 4194304 >&2\nexec {pasta} \"$@\"\n")
    result = run("run", "--network", "pasta", "--", "cat", "/proc/net/route", env={**env, "SBX_DEBUG": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert any(row.split()[:2] == ["tap0", "00000000"] for row in result.stdout.splitlines()), result.stdout
    chatter = result.stderr.count(f"{MARKER}\n") * (len(MARKER) + 1)
    assert net.LOG_LIMIT - len(MARKER) - 1 <= chatter <= net.LOG_LIMIT


def bwrap(*binds: str) -> list[str]:
    """A user and mount namespace holding `binds`, as a user that is not root (real root
    runs as uid 1000 there, without capabilities on the host)."""
    ids = ["--uid", "1000", "--gid", "1000"] if os.getuid() == 0 else []
    return ["bwrap", "--dev-bind", "/", "/", *binds, "--unshare-user", *ids, "--"]


def test_a_tun_device_the_user_cannot_open_is_named(tmp_path: Path) -> None:
    """What made the unprivileged CI stage's pasta runs fail: /dev/net/tun at the kernel's 0600
    (no udev had run).  pasta alone says 'Failed to open tun socket in namespace'."""
    closed = tmp_path / "tun"
    closed.touch(0o000)
    single = {**os.environ, "SBX_ID_RANGES": "0", "SBX_USERNET": "pasta"}  # newuidmap means nothing in bwrap
    control = run("run", "--network", "pasta", "--", "cat", "/proc/net/route", env=single, wrap=bwrap())
    assert control.returncode == 0, control
    assert any(row.split()[:2] == ["tap0", "00000000"] for row in control.stdout.splitlines()), control.stdout
    for helper in ("pasta", "slirp4netns"):
        result = run("run", "--network", "pasta", "--", "true", env={**single, "SBX_USERNET": helper},
                     wrap=bwrap("--bind", str(closed), "/dev/net/tun"))
        line = error_line(result)
        assert line.startswith("--network pasta needs read-write access to /dev/net/tun, which this user lacks "
                               "(it is 0000, owner uid "), line
        assert line.endswith("as root, chmod 0666 /dev/net/tun"), line


def test_newuidmap_words_are_the_error(tmp_path: Path) -> None:
    """newuidmap in a user namespace of its own (bwrap's): setuid gives it nothing, and it says so."""
    subid = tmp_path / "subid"
    subid.write_text("1000:100000:65536\n")  # real root runs as uid 1000 in there
    binds = ["--ro-bind", str(subid), "/etc/subuid", "--ro-bind", str(subid), "/etc/subgid"] if os.getuid() == 0 else []
    env = {k: v for k, v in os.environ.items() if k != "SBX_ID_RANGES"}
    result = run("run", "--", "true", env=env, wrap=bwrap(*binds))
    line = error_line(result)
    assert line.startswith("cannot map the id ranges: newuidmap failed: newuidmap: "), line
    assert len(line) > len("cannot map the id ranges: newuidmap failed: newuidmap: ") + 5, line
    debug = run("run", "--", "true", env={**env, "SBX_DEBUG": "1"}, wrap=bwrap(*binds))
    said = line[len("cannot map the id ranges: newuidmap failed: "):-len(" (SBX_ID_RANGES=0 runs with the single "
                                                                       "id mapping instead)")]
    assert f"sbx: newuidmap's stderr:\n" in debug.stderr and said in debug.stderr.split(PREFIX)[0], debug.stderr
    # the control: the single mapping needs no newuidmap there
    assert run("run", "--", "true", env={**env, "SBX_ID_RANGES": "0"}, wrap=bwrap(*binds)).returncode == 0


def test_a_silent_newuidmap_is_said_to_be_silent(tmp_path: Path) -> None:
    """A stand-in bound over newuidmap (setuid means nothing in bwrap's namespace anyway)."""
    subid = tmp_path / "subid"
    subid.write_text("1000:100000:65536\n")
    silent = tmp_path / "newuidmap"
    silent.write_text("#!/bin/sh\nexit 4\n")
    silent.chmod(0o755)
    binds = ["--ro-bind", str(subid), "/etc/subuid", "--ro-bind", str(subid), "/etc/subgid"] if os.getuid() == 0 else []
    env = {k: v for k, v in os.environ.items() if k != "SBX_ID_RANGES"}
    line = error_line(run("run", "--", "true", env=env, wrap=bwrap(*binds, "--bind", str(silent), "/usr/bin/newuidmap")))
    assert line.startswith("cannot map the id ranges: newuidmap failed (exit status 4; it said nothing)"), line


NFT_SAYS = ("/proc/self/fd/3:4:32-36: Error: Service out of range\n"
            " ip daddr 10.0.0.0/8 tcp dport 99999 accept\n"
            "                               ^^^^^\n")  # nft's own format (Debian 12's 1.0.6)


def test_nft_words_are_the_error(tmp_path: Path) -> None:
    """init loads the egress rules with nft: when nft refuses them, its reason and the rule it
    quotes end the error line (a stand-in bound over /usr/sbin/nft: sbx's rules are valid)."""
    stand_in = tmp_path / "nft"
    stand_in.write_text(f"#!/bin/sh\nprintf '%s' '{NFT_SAYS}' >&2\nexit 1\n")
    stand_in.chmod(0o755)
    profile = tmp_path / "deny.toml"
    profile.write_text('[network]\nmode = "pasta"\ndeny = ["192.0.2.7/32"]\n')
    single = {**os.environ, "SBX_ID_RANGES": "0"}
    wrap = bwrap("--bind", str(stand_in), "/usr/sbin/nft")
    line = error_line(run("run", "--profile", str(profile), "--", "true", env=single, wrap=wrap))
    assert line == ("cannot install the egress rules: nft failed: Service out of range "
                    "(in: ip daddr 10.0.0.0/8 tcp dport 99999 accept)")
    debug = run("run", "--profile", str(profile), "--", "true", env={**single, "SBX_DEBUG": "1"}, wrap=wrap)
    assert f"sbx: nft's stderr:\n{NFT_SAYS}" in debug.stderr
    # the control: the real nft loads the same rules there
    assert run("run", "--profile", str(profile), "--", "true", env=single, wrap=bwrap()).returncode == 0


def test_a_silent_nft_is_said_to_be_silent(tmp_path: Path) -> None:
    stand_in = tmp_path / "nft"
    stand_in.write_text("#!/bin/sh\nexit 2\n")
    stand_in.chmod(0o755)
    profile = tmp_path / "deny.toml"
    profile.write_text('[network]\nmode = "pasta"\ndeny = ["192.0.2.7/32"]\n')
    line = error_line(run("run", "--profile", str(profile), "--", "true", env={**os.environ, "SBX_ID_RANGES": "0"},
                          wrap=bwrap("--bind", str(stand_in), "/usr/sbin/nft")))
    assert line == "cannot install the egress rules: nft failed: exit status 2"


def test_the_route_watch_names_what_it_saw() -> None:
    """The payload is released on the watch's netlink event, which SBX_DEBUG quotes."""
    for helper, seen in (("pasta", "sbx: pasta is up: tap0 "), ("slirp4netns", "sbx: slirp4netns is up: tap0 "
                                                                               "10.0.2.100/24 via 10.0.2.2")):
        result = run("run", "--network", "pasta", "--", "true", env={**os.environ, "SBX_USERNET": helper,
                                                                     "SBX_DEBUG": "1"})
        assert result.returncode == 0, result
        assert seen in result.stderr, result.stderr


def test_fuzz_helper_words(tmp_path: Path) -> None:
    """The readers of helpers' words and doctor's host readings never raise (fuzz/fuzz_helper_words.py)."""
    from test_fuzz import run_harness

    run_harness("helper_words", tmp_path)
