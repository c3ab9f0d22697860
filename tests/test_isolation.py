"""What the payload sees: ids, processes, files, environment, network, privileges."""

from __future__ import annotations

import os
import socket
import sys
import threading

from conftest import REPO, SINGLE, ranged, sbx, sh


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def test_uid_zero_inside_maps_to_caller() -> None:
    result = sh("id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map", env=SINGLE, check=True)
    out = lines(result.stdout)
    assert out[:2] == ["0", "0"]
    assert out[2].split() == ["0", str(os.getuid()), "1"]
    assert out[3].split() == ["0", str(os.getgid()), "1"]


def test_uid_gid_flags_use_a_nested_user_namespace() -> None:
    result = sh("id -u; id -g; id -un; echo $HOME; cat /proc/self/uid_map", "--uid", "1000", "--gid", "1000",
                env=SINGLE, check=True)
    out = lines(result.stdout)
    assert out[:4] == ["1000", "1000", "sbx", "/home/sbx"]
    assert out[4].split() == ["1000", "0", "1"]


def test_host_processes_are_invisible() -> None:
    result = sh("cd /proc && for p in [0-9]*; do echo $p; done", check=True)
    pids = {int(p) for p in lines(result.stdout)}
    assert os.getpid() not in pids or os.getpid() < 10
    assert 1 in pids and 2 in pids
    assert len(pids) < 6, pids  # init, the shell, and the short-lived helpers it forks


def test_payload_is_pid_2_under_an_init() -> None:
    result = sh("echo $$; cat /proc/1/comm", check=True)
    out = lines(result.stdout)
    assert out[0] == "2"


def test_home_root_run_var_and_callers_files_are_hidden(tmp_path: object) -> None:
    marker = os.path.join(str(tmp_path), "secret")
    with open(marker, "w") as f:
        f.write("x")
    script = f"ls -A /home /root /run; ls -A /var; test -e {marker} && echo VISIBLE; true"
    result = sh(script, check=True)
    out = result.stdout
    assert "VISIBLE" not in out
    listing = lines(out)
    # headers from ls for the three dirs, /home holds the payload's home under id ranges, and
    # /var only the tmp we made
    home = ["sbx"] if ranged() else []
    assert [entry for entry in listing if not entry.endswith(":")] == [*home, "tmp"]


def test_only_the_host_image_is_visible() -> None:
    result = sh("ls -A /", check=True)
    assert set(lines(result.stdout)) <= {"bin", "dev", "etc", "home", "lib", "lib32", "lib64", "libx32",
                                         "proc", "root", "run", "sbin", "tmp", "usr", "var"}


def test_synthetic_etc() -> None:
    result = sh("cat /etc/passwd; ls /etc; test -e /etc/shadow && echo SHADOW; true", check=True)
    assert result.stdout.startswith("root:x:0:0:")
    assert "SHADOW" not in result.stdout
    assert "resolv.conf" not in lines(result.stdout)  # no network, no DNS


def test_environment_is_scrubbed_and_set() -> None:
    env = dict(os.environ, SBX_TEST_SECRET="leak", SBX_TEST_COPY="copied")
    result = sbx("run", "-e", "FOO=bar", "-e", "SBX_TEST_COPY", "-e", "SBX_TEST_UNSET_ANYWHERE", "--",
                 "env", env=env, check=True)
    got = dict(line.split("=", 1) for line in lines(result.stdout))
    assert "SBX_TEST_SECRET" not in got
    assert got["FOO"] == "bar"
    assert got["SBX_TEST_COPY"] == "copied"
    assert "SBX_TEST_UNSET_ANYWHERE" not in got
    assert got["HOME"] == ("/home/sbx" if ranged() else "/root")
    assert got["LANG"] == "C.UTF-8"
    assert got["PATH"].startswith("/usr/local/sbin:")
    assert "TERM" not in got  # only with --tty


def test_env_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "env")
    with open(path, "w") as f:
        f.write("# comment\n\nA=1\nB=two words\n")
    result = sbx("run", "--env-file", path, "--", "sh", "-c", 'echo "$A|$B"', check=True)
    assert result.stdout == "1|two words\n"


def test_hostname() -> None:
    assert sh("hostname", check=True).stdout == "sbx\n"
    assert sh("hostname", "--hostname", "judge-7", check=True).stdout == "judge-7\n"


def test_no_capabilities_and_no_new_privs() -> None:
    result = sh("grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status", check=True)
    fields = dict(line.split(":\t") for line in lines(result.stdout))
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"] == "1"


def test_no_controlling_terminal() -> None:
    # setsid(): the payload cannot reach the caller's terminal (no TIOCSTI).
    script = "import os\ntry:\n    os.open('/dev/tty', os.O_RDWR)\n    print('TTY')\nexcept OSError as e:\n    print(e.errno)"
    result = sbx("run", "--", "python3", "-c", script, check=True)
    assert result.stdout.strip() == "6"  # ENXIO


def test_init_is_not_dumpable() -> None:
    result = sh("cat /proc/1/environ >/dev/null 2>&1 && echo READ || echo DENIED; ls -l /proc/1/exe 2>&1 | "
                "grep -q -- '->' && echo LINK || echo NOLINK", check=True)
    assert lines(result.stdout) == ["DENIED", "NOLINK"]


def test_core_dumps_disabled() -> None:
    assert sh("ulimit -c", check=True).stdout.strip() == "0"


def test_proc_is_hardened() -> None:
    masked = [p for p in ("/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/sched_debug") if os.path.exists(p)]
    assert masked, "the host kernel has none of the files to mask"
    script = ("echo x > /proc/sys/kernel/hostname 2>/dev/null && echo WROTE || echo RO; "
              "grep ' /proc ' /proc/self/mounts; " + "; ".join(f"head -c 1 {p} 2>/dev/null | wc -c" for p in masked))
    out = lines(sh(script, check=True).stdout)
    assert out[0] == "RO"
    assert "nosuid" in out[1] and "nodev" in out[1] and "noexec" in out[1]
    assert out[2:] == ["0"] * len(masked)


def test_minimal_dev() -> None:
    out = lines(sh("ls -A /dev; echo hi > /dev/null && echo NULL; head -c 4 /dev/zero | wc -c", check=True).stdout)
    assert set(out[:-2]) == {"fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout",
                             "tty", "urandom", "zero"}
    assert out[-2:] == ["NULL", "4"]


def test_own_devpts_instance() -> None:
    result = sbx("run", "--", "python3", "-c", "import os; m, s = os.openpty(); print(os.ttyname(s))", check=True)
    assert result.stdout.startswith("/dev/pts/")


def test_tmp_and_shm_are_size_limited_tmpfs() -> None:
    out = sh("grep -E ' /tmp | /dev/shm ' /proc/self/mounts", check=True).stdout
    assert out.count("tmpfs") == 2 and "size=" in out


class LoopbackServer:
    """A TCP server on the host's loopback, answering 'pong'."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.sendall(b"pong")
            conn.close()

    def close(self) -> None:
        self.sock.close()


CONNECT = ("import socket, sys\ntry:\n    s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3)\n"
           "    print(s.recv(4).decode())\nexcept OSError as e:\n    print('ERR', e.errno)")


def test_network_none_cannot_reach_host_loopback() -> None:
    server = LoopbackServer()
    try:
        result = sbx("run", "--", "python3", "-c", CONNECT, str(server.port), check=True)
        assert result.stdout.startswith("ERR 111")  # ECONNREFUSED: our own, empty loopback
    finally:
        server.close()


def test_network_none_has_loopback_up() -> None:
    script = ("import socket\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
              "c = socket.create_connection(s.getsockname()); print('ok')")
    assert sbx("run", "--", "python3", "-c", script, check=True).stdout == "ok\n"


def test_network_host_reaches_host_loopback_and_warns() -> None:
    server = LoopbackServer()
    try:
        result = sbx("run", "--network", "host", "--", "python3", "-c", CONNECT, str(server.port), check=True)
        assert result.stdout == "pong\n"
        assert "sbx: warning: --network host" in result.stderr
    finally:
        server.close()


def test_ipc_namespace_is_private() -> None:
    # A SysV message queue made inside is not visible to the host (and vice versa).
    result = sh("cat /proc/sysvipc/msg | wc -l", check=True)
    assert result.stdout.strip() == "1"  # the header line only


def test_writes_in_root_and_tmp_are_discarded() -> None:
    # As root inside: under id ranges the payload (uid 1000) may not write the synthetic /etc.
    sh("echo 1 > /marker; echo 1 > /tmp/marker; echo 1 > /etc/marker", "--uid", "0", "--gid", "0", check=True)
    out = sh("ls /marker /tmp/marker /etc/marker 2>&1 | grep -c 'No such file'", check=True)
    assert out.stdout.strip() == "3"


def test_tty_keeps_the_terminal() -> None:
    """--tty: no new session, the terminal stays the payload's, TERM passes in."""
    import pty

    script = "import os; print('isatty', os.isatty(0), os.environ.get('TERM'))"
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-test"
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "sandbox", "run", "-t", "--", "python3", "-c", script])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"isatty True xterm-test" in output, output
