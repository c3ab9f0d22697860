"""Network modes: none, host, pasta (and slirp4netns), published ports, egress rules.

Everything here talks only to the host's loopback or to the sandbox's own
namespace.  In pasta mode the host's default gateway address, seen from the
sandbox, is the host's loopback (pasta's mapping), which is how a payload
reaches a server the test starts.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, SBX, sbx, sbx_environ, sh, wait_for
from sandbox.net import network as net


class Server:
    """TCP servers on the host's loopback answering 'pong' (one port each)."""

    def __init__(self, count: int = 1) -> None:
        self.socks = []
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen()
            self.socks.append(sock)
            threading.Thread(target=self.serve, args=(sock,), daemon=True).start()
        self.ports = [s.getsockname()[1] for s in self.socks]

    def serve(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"pong")

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


CONNECT = ("import socket, sys\nfor port in sys.argv[2:]:\n    try:\n"
           "        s = socket.create_connection((sys.argv[1], int(port)), timeout=3)\n"
           "        print(port, s.recv(4).decode())\n    except OSError as e:\n        print(port, 'ERR', e.errno)")
GATEWAY = net.host_gateway()


def helpers() -> set[int]:
    """Our pasta and slirp4netns processes on the host."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv0 = f.read().split(b"\0")[0]
            if os.stat(f"/proc/{entry}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        if os.path.basename(argv0) in (b"pasta", b"slirp4netns"):
            found.add(int(entry))
    return found


@pytest.fixture
def server() -> Server:
    s = Server(2)
    yield s
    s.close()


def test_host_has_a_default_route() -> None:
    # pasta copies the host's addresses and gateway; the tests below need one.
    assert GATEWAY is not None


def test_pasta_interface_route_and_dns() -> None:
    script = ("import socket; print(sorted(n for _, n in socket.if_nameindex()))\n"
              "print(open('/proc/net/route').read().split('\\n')[1].split()[:2])\n"
              "print(open('/etc/resolv.conf').read().strip())")
    result = sbx("run", "--network", "pasta", "--", "python3", "-c", script, check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "['lo', 'tap0']"
    assert lines[1] == "['tap0', '00000000']"  # the default route
    assert lines[2].startswith("nameserver ")
    assert "warning" not in result.stderr


def test_pasta_reaches_a_host_server_through_the_gateway_mapping(server: Server) -> None:
    before = helpers()
    result = sbx("run", "--network", "nat", "--host-loopback", "--", "python3", "-c", CONNECT, str(GATEWAY),
                 str(server.ports[0]), check=True)
    assert result.stdout.split() == [str(server.ports[0]), "pong"]
    assert helpers() <= before  # the helper is gone after the run


def test_pasta_keeps_the_host_loopback_out_by_default(server: Server) -> None:
    result = sbx("run", "--network", "pasta", "--", "python3", "-c", CONNECT, str(GATEWAY), str(server.ports[0]),
                 check=True)
    assert result.stdout.split()[:2] == [str(server.ports[0]), "ERR"]


def test_none_cannot_reach_the_gateway(server: Server) -> None:
    result = sbx("run", "--", "python3", "-c", CONNECT, str(GATEWAY), str(server.ports[0]), check=True)
    assert " ERR " in result.stdout  # no route at all


def test_published_port_serves_the_host(tmp_path: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    host_port = probe.getsockname()[1]
    probe.close()
    serve = ("import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             "s.bind(('0.0.0.0', 8000)); s.listen(); print('ready', flush=True)\n"
             "c, _ = s.accept(); c.sendall(b'from-sandbox'); c.close()")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*SBX, "run", "--network", "pasta", "-p", f"127.0.0.1:{host_port}:8000", "--",
                             "python3", "-c", serve], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        data = b""
        while time.monotonic() < deadline and not data:
            try:
                with socket.create_connection(("127.0.0.1", host_port), timeout=2) as conn:
                    data = conn.recv(64)
            except OSError:
                time.sleep(0.05)
        assert data == b"from-sandbox"
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("args, message", [
    (["-p", "8080:80"], "-p/--publish needs --network pasta"),
    (["--network", "pasta", "-p", "8080:80", "-p", "8080:81"], "conflicts with"),
    (["--network", "pasta", "-p", "70000:80"], "is not a port"),
    (["--network", "pasta", "-p", "8080:80/sctp"], "protocol must be tcp or udp"),
    (["--network", "pasta", "-p", "nothost:8080:80"], "is not an IP address"),
    (["--network", "bogus"], "network mode 'bogus' is not supported"),
    (["--host-loopback"], "--host-loopback needs --network pasta"),
])
def test_bad_network_flags(args: list[str], message: str) -> None:
    result = sbx("run", *args, "--", "true")
    assert result.returncode == 125
    errors = [line for line in result.stderr.splitlines() if not line.startswith("sbx: warning:")]
    assert len(errors) == 1 and errors[0].startswith("sbx: error: ") and message in errors[0], result.stderr


def test_egress_rules_allow_one_port_and_block_another(server: Server, tmp_path: Path) -> None:
    allowed, blocked = server.ports
    profile = tmp_path / "egress.toml"
    profile.write_text(f'extends = "default"\n[network]\nmode = "pasta"\nhost_loopback = true\n'
                       f'allow = ["{GATEWAY}:{allowed}"]\n')
    result = sbx("run", "--profile", str(profile), "--", "python3", "-c", CONNECT, str(GATEWAY), str(allowed),
                 str(blocked), check=True)
    assert result.stdout.splitlines() == [f"{allowed} pong", f"{blocked} ERR 111"]  # rejected with a reset
    # control: without the rule both ports answer
    result = sbx("run", "--network", "pasta", "--host-loopback", "--", "python3", "-c", CONNECT, str(GATEWAY),
                 str(allowed), str(blocked), check=True)
    assert result.stdout.splitlines() == [f"{allowed} pong", f"{blocked} pong"]


def test_egress_deny_rule(server: Server, tmp_path: Path) -> None:
    port = server.ports[0]
    profile = tmp_path / "deny.toml"
    profile.write_text(f'[network]\nmode = "pasta"\nhost_loopback = true\ndeny = ["{GATEWAY}/32"]\n')
    result = sbx("run", "--profile", str(profile), "--", "python3", "-c", CONNECT, str(GATEWAY), str(port),
                 check=True)
    assert result.stdout.split() == [str(port), "ERR", "111"]


def test_payload_cannot_change_the_egress_rules(tmp_path: Path) -> None:
    profile = tmp_path / "deny.toml"
    profile.write_text(f'[network]\nmode = "pasta"\ndeny = ["{GATEWAY}/32"]\n')
    result = sbx("run", "--profile", str(profile), "--seccomp", "none", "--", "/usr/sbin/nft", "flush",
                 "ruleset")
    assert result.returncode != 0  # no CAP_NET_ADMIN, whatever seccomp allows


def test_helper_dies_with_a_killed_supervisor() -> None:
    before = helpers()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*SBX, "run", "--network", "pasta", "--", "sh", "-c", "echo up; sleep 30"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"up\n"
    assert helpers() - before, "no helper was running"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 2
    while helpers() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not helpers() - before


def test_slirp4netns_fallback(server: Server) -> None:
    env = dict(os.environ, SBX_USERNET="slirp4netns")
    result = sbx("run", "--network", "pasta", "--", "python3", "-c",
                 "import socket; print(sorted(n for _, n in socket.if_nameindex()))", env=env, check=True)
    assert result.stdout.strip() == "['lo', 'tap0']"
    # slirp4netns maps 10.0.2.2 to the host's loopback, only when asked to
    result = sbx("run", "--network", "pasta", "--host-loopback", "--", "python3", "-c", CONNECT, "10.0.2.2",
                 str(server.ports[0]), env=env, check=True)
    assert result.stdout.split() == [str(server.ports[0]), "pong"]
    result = sbx("run", "--network", "pasta", "--", "python3", "-c", CONNECT, "10.0.2.2", str(server.ports[0]),
                 env=env, check=True)
    assert result.stdout.split()[:2] == [str(server.ports[0]), "ERR"]


def test_only_the_user_mode_network_imports_pyroute2() -> None:
    """pyroute2 costs ~120 ms to import: `none` and `host` never load it, and `pasta` loads it only
    in the child that watches the sandbox's route, never in the supervisor."""
    code = ("import os, sys; sys.argv = ['sbx', 'run', '--network', sys.argv[1], '--', '/bin/true']; "
            "from sandbox.cli.main import main; code = main(); "
            "os.write(2, f'supervisor holds pyroute2: {\"pyroute2\" in sys.modules}\\n'.encode()); os._exit(code)")
    for mode, imported in (("none", False), ("host", False), ("pasta", True)):
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", code, mode], capture_output=True,
                                text=True, timeout=60, env=sbx_environ(), stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "supervisor holds pyroute2: False" in result.stderr, result.stderr[-2000:]
        loaded = any(line.endswith("| pyroute2") for line in result.stderr.splitlines())  # children inherit -X
        assert loaded == imported, mode


def test_a_slow_helper_is_waited_for(tmp_path: Path) -> None:
    """The payload is released on the route's netlink event, however late it comes: a pasta that
    starts only when the test says so, after sbx has started waiting for it."""
    pasta = subprocess.run(["sh", "-c", "command -v pasta"], capture_output=True, text=True).stdout.strip()
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pasta").write_text(f"#!/bin/sh\nread go < {gate}\nexec {pasta} \"$@\"\n")
    (bin_dir / "pasta").chmod(0o755)
    env = {**sbx_environ(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SBX_USERNET": "pasta"}
    proc = subprocess.Popen([*SBX, "run", "--network", "pasta", "--", "cat", "/proc/net/route"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer: list[int] = []

    def stand_in_waits() -> bool:  # a FIFO opens for writing once its reader, the stand-in, has it open
        try:
            writer.append(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        return bool(writer) or proc.poll() is not None

    try:
        assert wait_for(stand_in_waits) and writer, proc.communicate()
        assert proc.poll() is None  # still waiting for the route
        os.write(writer[0], b"go\n")
        os.close(writer[0])
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert any(row.split()[:2] == ["tap0", "00000000"] for row in out.splitlines()), out
