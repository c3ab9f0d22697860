"""Landlock, the second fence (issue 13): real runs on this kernel, each denial with a control.

The controls are the same run with the fence off: `[landlock] enabled = false` in a profile, or
SBX_LANDLOCK=N (use at most ABI N; 0 acts as a kernel without Landlock).  Whatever the mounts
and permissions allow that Landlock denies shows as EACCES (EPERM for the scopes) here only.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
from pathlib import Path

import pytest

from conftest import REPO, abstract_greeter, sbx

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sandbox.runtime import landlock  # noqa: E402

ABI = landlock.abi()
PY = "/usr/bin/python3"

# Tries each operation, prints NAME ok|ERRNO-NAME per line.
PROBE = r"""
import errno, os, sys
def attempt(name, fn):
    try:
        fn()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
ops = {
    "mkdir": lambda p: os.mkdir(p),
    "create": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)),
    "append": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_APPEND)),
    "truncate": lambda p: os.truncate(p, 0),
    "symlink": lambda p: os.symlink("/tmp", p),
    "fifo": lambda p: os.mkfifo(p),
    "unlink": lambda p: os.unlink(p),
    "rename": lambda p: os.rename(p, p + ".moved"),
}
for arg in sys.argv[1:]:
    op, _, path = arg.partition(":")
    attempt(arg, lambda: ops[op](path))
"""


def profile(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, str, dict[str, object], int]:
    """sbx run ARGS from a fresh cwd: (stdout, stderr, result, exit status)."""
    cwd = tmp_path / f"cwd{secrets.token_hex(4)}"
    cwd.mkdir()
    os.chmod(cwd, 0o755)
    result = tmp_path / f"r{secrets.token_hex(4)}.json"
    p = sbx("run", "--result", str(result), *args, cwd=cwd, env=env)
    text = result.read_text() if result.exists() else ""
    data = json.loads(text) if text else {}  # nothing written when sbx refused to run
    return p.stdout, p.stderr, data, p.returncode


def probe(tmp_path: Path, options: list[str], ops: list[str], env: dict[str, str] | None = None) -> dict[str, str]:
    out, err, _, _ = run(tmp_path, *options, "--", PY, "-c", PROBE, *ops, env=env)
    assert "Traceback" not in err, err
    return dict(line.split(" ", 1) for line in out.splitlines())


def no_landlock(**extra: str) -> dict[str, str]:
    return {**os.environ, "SBX_LANDLOCK": "0", **extra}


# -- files: write only where the profile says ------------------------------------------------------

SCRATCH = '[landlock]\nwrite = "scratch"\n'
OFF = '[landlock]\nenabled = false\nwrite = "scratch"\n'
OUTSIDE = ["mkdir:/newdir", "create:/newfile", "mkdir:/var/newdir", "symlink:/var/link", "fifo:/var/fifo",
           "create:/etc/newfile"]


def test_scratch_denies_writes_that_permissions_allow(tmp_path: Path) -> None:
    # The root's top is the payload's to write (mode 1777 with id ranges, its own without), and
    # /var too for root inside: the mounts and permissions allow all of this; Landlock does not.
    ops = OUTSIDE + ["append:/etc/hosts", "truncate:/etc/hosts", "rename:/etc/hosts", "unlink:/etc/group"]
    control = probe(tmp_path, ["--uid", "0", "--profile", profile(tmp_path, "off", OFF)], ops)
    assert control == {op: "ok" for op in ops}, control
    fenced = probe(tmp_path, ["--uid", "0", "--profile", profile(tmp_path, "scratch", SCRATCH)], ops)
    assert fenced == {op: "EACCES" for op in ops}, fenced


def test_scratch_denies_writes_for_the_payload_user_too(tmp_path: Path) -> None:
    ops = ["mkdir:/newdir", "create:/newfile"]
    assert probe(tmp_path, ["--profile", profile(tmp_path, "off", OFF)], ops) == {op: "ok" for op in ops}
    fenced = probe(tmp_path, ["--profile", profile(tmp_path, "scratch", SCRATCH)], ops)
    assert fenced == {op: "EACCES" for op in ops}, fenced


def test_scratch_keeps_the_writable_places(tmp_path: Path) -> None:
    ops = ["create:/tmp/a", "mkdir:/var/tmp/d", "create:/dev/shm/a", "create:/box/a", "mkdir:/scratch/d",
           "create:/home/sbx/a", "append:/dev/null", "truncate:/tmp/a", "rename:/tmp/a", "symlink:/tmp/l"]
    box = tmp_path / "box"
    box.mkdir()
    options = ["--uid", "1000", "--gid", "1000", "--profile", profile(tmp_path, "scratch", SCRATCH),
               "-v", f"{box}:/box:overlay", "--tmpfs", "/scratch"]
    assert probe(tmp_path, options, ops) == {op: "ok" for op in ops}
    root = probe(tmp_path, ["--uid", "0", "--profile", profile(tmp_path, "scratch", SCRATCH)], ["create:/root/a"])
    assert root == {"create:/root/a": "ok"}


def test_default_profile_writes_anywhere_in_the_disposable_root(tmp_path: Path) -> None:
    ops = ["mkdir:/newdir", "create:/etc/newfile"]
    assert probe(tmp_path, ["--uid", "0"], ops) == {op: "ok" for op in ops}


def test_pipes_and_the_terminal_devices_still_work_under_scratch(tmp_path: Path) -> None:
    out, err, result, _ = run(tmp_path, "--profile", profile(tmp_path, "scratch", SCRATCH), "--", "sh", "-c",
                              "echo to-null > /dev/null; head -c 4 /dev/urandom | wc -c; echo done")
    assert out.split() == ["4", "done"] and result["verdict"] == "OK", (out, err)


# -- exec: nothing dropped in /tmp runs under grader ----------------------------------------------

DROP = ("cat /bin/true > {dir}/t && chmod 755 {dir}/t && {dir}/t; echo exec=$?")


@pytest.mark.parametrize("where", ["/tmp", "/var/tmp"])
def test_grader_denies_exec_from_scratch(tmp_path: Path, where: str) -> None:
    script = DROP.format(dir=where)
    out, err, _, _ = run(tmp_path, "--profile", "grader", "--", "sh", "-c", script)
    assert "exec=126" in out and "Permission denied" in err, (out, err)
    # Controls: the same under default, and under grader with the fence off.
    out, err, _, _ = run(tmp_path, "--", "sh", "-c", script)
    assert "exec=0" in out, (out, err)
    off = profile(tmp_path, "grader-off", 'extends = "grader"\n[landlock]\nenabled = false\n')
    out, err, _, _ = run(tmp_path, "--profile", off, "--", "sh", "-c", script)
    assert "exec=0" in out, (out, err)


def test_grader_exec_around_the_fence(tmp_path: Path) -> None:
    """A symlink from /box still resolves into /tmp; a hard link into /box would gain execute: refused."""
    script = (DROP.format(dir="/tmp") + "; ln -s /tmp/t /box/s; /box/s; echo symlink=$?;"
              " ln /tmp/t /box/h; echo link=$?; /usr/bin/true; echo system=$?")
    out, err, _, _ = run(tmp_path, "--profile", "grader", "--", "sh", "-c", script)
    assert "exec=126" in out and "symlink=126" in out and "link=1" in out and "system=0" in out, (out, err)
    assert "Invalid cross-device link" in err, err  # EXDEV: Landlock's answer to a link that gains rights


def test_grader_still_runs_the_solution_in_box(tmp_path: Path) -> None:
    cwd = tmp_path / "judge"
    cwd.mkdir()
    os.chmod(cwd, 0o755)
    (cwd / "solution").write_bytes(Path("/bin/true").read_bytes())
    os.chmod(cwd / "solution", 0o755)
    p = sbx("run", "--profile", "grader", "--", "./solution", cwd=cwd)
    assert p.returncode == 0, p.stderr


# -- scopes (ABI 6): the host's abstract sockets and processes ---------------------------------------

CONNECT = r"""
import errno, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect("\0" + sys.argv[1])
    print("connected", s.recv(64).decode())
except OSError as e:
    print("refused", errno.errorcode.get(e.errno, e.errno))
"""


def test_network_host_keeps_host_abstract_sockets_out(tmp_path: Path) -> None:
    with abstract_greeter("sbx-landlock") as name:
        # Control: the host's socket is reachable without the scope (as on kernels before 6.12).
        out, err, _, _ = run(tmp_path, "--network", "host", "--", PY, "-c", CONNECT, name,
                             env={**os.environ, "SBX_LANDLOCK": "5"})
        assert out.strip() == "connected hello from the host", (out, err)
        assert "abstract unix sockets are reachable" in err, err
        out, err, _, _ = run(tmp_path, "--network", "host", "--", PY, "-c", CONNECT, name)
    if ABI >= 6:
        assert out.strip() == "refused EPERM", (out, err)
        assert "--network host" in err and "abstract unix sockets" not in err, err
    else:  # this kernel cannot scope them: the run says so
        assert out.strip() == "connected hello from the host" and "abstract unix sockets are reachable" in err


SELF_SOCKET = r"""
import os, socket
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind("\0inside-" + str(os.getpid()))
srv.listen(1)
if os.fork() == 0:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect("\0inside-" + str(os.getppid()))
    c.sendall(b"ping")
    os._exit(0)
conn, _ = srv.accept()
print(conn.recv(4).decode())
os.wait()
"""


def test_abstract_sockets_inside_the_sandbox_still_work(tmp_path: Path) -> None:
    out, err, _, _ = run(tmp_path, "--network", "host", "--", PY, "-c", SELF_SOCKET)
    assert out.strip() == "ping", (out, err)


def test_signal_scope_keeps_init_out_of_reach(tmp_path: Path) -> None:
    # As root inside, init's own uid: only the scope stands between the payload and init.
    script = "kill -0 1 2>/dev/null; echo init=$?; sleep 5 & kill $!; wait $!; echo child=$?"
    out, err, _, _ = run(tmp_path, "--uid", "0", "--", "sh", "-c", script, env={**os.environ, "SBX_LANDLOCK": "5"})
    assert out.split() == ["init=0", "child=143"], (out, err)  # control: no scope before ABI 6
    out, err, _, _ = run(tmp_path, "--uid", "0", "--", "sh", "-c", script)
    assert out.split() == (["init=1", "child=143"] if ABI >= 6 else ["init=0", "child=143"]), (out, err)


# -- TCP ports (ABI 4) -----------------------------------------------------------------------------

TCP = r"""
import errno, socket
def attempt(name, fn):
    s = socket.socket()
    try:
        fn(s)
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
    return s
srv = attempt("bind:8080", lambda s: (s.bind(("127.0.0.1", 8080)), s.listen()))
attempt("bind:9090", lambda s: s.bind(("127.0.0.1", 9090)))
attempt("connect:8080", lambda s: s.connect(("127.0.0.1", 8080)))
attempt("connect:9091", lambda s: s.connect(("127.0.0.1", 9091)))
"""


def test_tcp_port_rules(tmp_path: Path) -> None:
    rules = profile(tmp_path, "tcp", "[landlock]\ntcp_bind = [8080]\ntcp_connect = [8080]\n")
    out, err, _, _ = run(tmp_path, "--profile", rules, "--", PY, "-c", TCP)
    seen = dict(line.split(" ", 1) for line in out.splitlines())
    control_out, _, _, _ = run(tmp_path, "--", PY, "-c", TCP)
    control = dict(line.split(" ", 1) for line in control_out.splitlines())
    assert control == {"bind:8080": "ok", "bind:9090": "ok", "connect:8080": "ok", "connect:9091": "ECONNREFUSED"}
    if ABI >= 4:
        assert seen == {"bind:8080": "ok", "bind:9090": "EACCES", "connect:8080": "ok",
                        "connect:9091": "EACCES"}, (out, err)
    else:
        assert seen == control and "tcp_bind/tcp_connect are not enforced" in err


def test_tcp_rules_the_abi_lacks_are_noted_and_refused_under_strict(tmp_path: Path) -> None:
    rules = profile(tmp_path, "tcp", "[landlock]\ntcp_bind = [8080]\n")
    old = {**os.environ, "SBX_LANDLOCK": "3"}
    _, err, result, status = run(tmp_path, "--profile", rules, "--", "true", env=old)
    assert status == 0 and "tcp_bind/tcp_connect are not enforced: they need Landlock ABI 4" in err, err
    _, err, _, status = run(tmp_path, "--strict", "--profile", rules, "--", "true", env=old)
    assert status == 125 and err.startswith("sbx: error: landlock.tcp_bind/tcp_connect are not enforced"), err


# -- reporting: the result, the note, --strict, doctor ------------------------------------------------

def test_result_says_whether_the_fence_held(tmp_path: Path) -> None:
    _, err, result, _ = run(tmp_path, "--", "true")
    assert result["fences"] == {"landlock": ABI >= 1} and "Landlock" not in err, (result, err)
    off = profile(tmp_path, "off", "[landlock]\nenabled = false\n")
    _, err, result, _ = run(tmp_path, "--profile", off, "--", "true")
    assert result["fences"] == {"landlock": False} and "Landlock" not in err, (result, err)  # asked off: no note


def test_without_landlock_runs_go_on_with_a_note(tmp_path: Path) -> None:
    out, err, result, status = run(tmp_path, "--", "sh", "-c", "mkdir /newdir && echo made", env=no_landlock())
    assert status == 0 and out == "made\n" and result["fences"] == {"landlock": False}, (out, err)
    notes = [line for line in err.splitlines() if "Landlock" in line]
    assert notes == ["sbx: warning: Landlock is not in use (SBX_LANDLOCK=0): the sandbox runs without its second "
                     "fence on files, TCP ports and host sockets (see 'sbx doctor')"], err


def test_strict_refuses_a_missing_fence(tmp_path: Path) -> None:
    out, err, result, status = run(tmp_path, "--strict", "--", "echo", "ran", env=no_landlock())
    assert status == 125 and out == "" and result == {}, err
    assert err.startswith("sbx: error: Landlock is not in use") and err.endswith("refusing to run under --strict\n")


def test_doctor_reports_the_abi() -> None:
    p = sbx("doctor")
    lines = [line for line in p.stdout.splitlines() if line[6:].startswith("landlock:")]
    assert len(lines) == 1, p.stdout
    if ABI >= 6:
        assert lines[0].startswith(f"ok    landlock: ABI {ABI}: files, TCP ports"), lines
    p = sbx("doctor", env=no_landlock())
    line = next(line for line in p.stdout.splitlines() if line[6:].startswith("landlock:"))
    assert line.startswith("warn  landlock: not available"), line


@pytest.mark.parametrize(("text", "says"), [
    ('[landlock]\nwrite = "everywhere"\n', "'landlock.write'"),
    ('[landlock]\nnoexec = ["tmp"]\n', "'landlock.noexec'"),
    ('[landlock]\nnoexec = ["/a/../tmp"]\n', "'landlock.noexec'"),
    ('[landlock]\ntcp_bind = [70000]\n', "'landlock.tcp_bind'"),
    ('[landlock]\nenabled = "no"\n', "'landlock.enabled'"),
    ('[landlock]\nnoexc = []\n', "landlock.noexc"),
])
def test_bad_profile_keys_are_refused(tmp_path: Path, text: str, says: str) -> None:
    marker = tmp_path / "ran"
    _, err, _, status = run(tmp_path, "--profile", profile(tmp_path, "bad", text), "-v", f"{tmp_path}:/out:rw",
                            "--", "touch", "/out/ran")
    assert status == 125 and says in err and err.startswith("sbx: error: ") and not marker.exists(), err
    assert len(err.splitlines()) == 1, err


def test_sbx_landlock_must_be_a_version(tmp_path: Path) -> None:
    _, err, _, status = run(tmp_path, "--", "true", env={**os.environ, "SBX_LANDLOCK": "off"})
    assert status == 125 and err.startswith("sbx: error: SBX_LANDLOCK='off'"), err


def test_noexec_follows_the_images_symlinks(tmp_path: Path) -> None:
    """noexec names where a path leads: the host image's /bin (a link to usr/bin on merged-/usr
    hosts) takes /usr/bin with it, as an image's /tmp linked elsewhere would take the tmpfs there."""
    rules = profile(tmp_path, "nobin", '[landlock]\nnoexec = ["/bin"]\n')
    _, err, result, status = run(tmp_path, "--profile", rules, "--", "/bin/true")
    assert status == 126 and "Permission denied" in str(result["message"]), (err, result)
    _, err, result, status = run(tmp_path, "--profile", rules, "--", "/usr/bin/true")
    assert status == (126 if os.path.realpath("/bin") == "/usr/bin" else 0), (err, result)
    _, err, _, status = run(tmp_path, "--", "/usr/bin/true")
    assert status == 0, err
