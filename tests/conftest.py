"""Shared helpers: every test runs real sandboxes through the real CLI."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import io
import os
import secrets
import socket
import subprocess
import sys
import sysconfig
import tarfile
import termios
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SBX = [sys.executable, "-m", "sandbox"]
# SBX_TEST_INSTALLED=1 (test.sh's unprivileged stage): test the package installed from a wheel
# into this interpreter's environment, never the checkout (that tree has no sandbox/ then).
INSTALLED = os.environ.get("SBX_TEST_INSTALLED") == "1"
# Where sbx finds its shipped profiles (sandbox/config/profile.py shipped_dir()).
SHIPPED_PROFILES = Path(sys.prefix, "share", "sbx", "profiles") if INSTALLED else REPO / "profiles"
# The directory holding the package `sandbox`: for PYTHONPATH where site is off (python -S).
PACKAGE_PARENT = Path(sysconfig.get_paths()["purelib"]) if INSTALLED else REPO
# Debian's busybox-static (the test command installs it): the base of the tests' images.
BUSYBOX = "/bin/busybox"


def sbx_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: ours) with PYTHONPATH set so that `python -m sandbox` is the package under test."""
    env = dict(os.environ if env is None else env)
    if INSTALLED:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(REPO)
    return env


def sbx(*args: str, timeout: float = 60, check: bool = False, env: Mapping[str, str] | None = None,
        **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `sbx ARGS...` and capture its output as text."""
    result: subprocess.CompletedProcess[str] = subprocess.run(
        [*SBX, *args], capture_output=True, text=True, timeout=timeout, env=sbx_environ(env), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"sbx {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def sh(script: str, *options: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`sbx run OPTIONS -- sh -c SCRIPT`."""
    return sbx("run", *options, "--", "sh", "-c", script, **kwargs)


def errors(stderr: str) -> list[str]:
    """stderr lines, minus the `sbx: warning:` lines of a host without cgroup delegation or of a profile limit."""
    return [line for line in stderr.splitlines() if not line.startswith("sbx: warning:")]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.01) -> bool:
    """Whether `predicate` comes true within `timeout` seconds (asked once more at the deadline).

    For what has no fd or child to wait on (a process appearing in /proc, a cgroup filling up):
    wait on the event itself where there is one (Popen.wait, a line on a pipe, wait_prepared)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def wait_stock(runner: Any, shape: Any, count: int = 1, timeout: float = 20.0) -> None:
    """Until the warm Runner's pool holds `count` prepared sandboxes of `shape` (a Spec's shape_of):
    the pool notifies its condition as it stocks one."""
    pool = runner.pool
    assert pool is not None, "a cold Runner prepares nothing"
    with pool.cond:
        assert pool.cond.wait_for(lambda: len(pool.ready.get(shape, ())) >= count, timeout=timeout), \
            f"the pool prepared fewer than {count} sandbox(es) of this shape in {timeout} s"


def wait_prepared(runner: Any, argv: Sequence[str] = ("true",), count: int = 1, **spec_args: object) -> None:
    """Until the pool holds `count` prepared sandboxes for `runner.run(argv, **spec_args)` (the next
    such runs take them)."""
    from sandbox.runtime.supervisor import shape_of

    wait_stock(runner, shape_of(runner.spec(argv, **spec_args)), count)


def process_tree(pid: int) -> set[int]:
    """`pid` and its descendants, as they are now."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(name))
    tree, todo = set(), [pid]
    while todo:
        tree.add(todo[-1])
        todo += children.get(todo.pop(), [])
    return tree


def waiting_for_lock(pid: int) -> bool:
    """Whether `pid`, or a process it forked (sbx's image commands fork into a user namespace),
    is blocked on a file lock (flock, fcntl): a `->` line of /proc/locks."""
    tree = process_tree(pid)
    with open("/proc/locks") as f:
        return any(fields[1] == "->" and int(fields[5]) in tree for fields in map(str.split, f))


def delegated_here(environ: Mapping[str, str] | None = None) -> bool:
    """Whether sbx would find a cgroup v2 delegation (asked without discover()'s side effects)."""
    from sandbox.cgroup.diagnose import diagnose

    checks = {what: ok for what, ok, _ in diagnose(os.environ if environ is None else environ)}
    return bool(checks.get("SBX_CGROUP usable") or (
        checks.get("own cgroup delegated") and checks.get("controller memory") and checks.get("controller pids")))


@pytest.fixture
def rootless() -> bool:
    return os.getuid() != 0


def host_mounts() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split(" - ")[0].split(" ", 4)[4] for line in f)


def host_processes(*markers: str) -> list[tuple[int, str]]:
    """(pid, marker) for each host process (but this one) whose command line holds a marker."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace")
        except OSError:
            continue
        found += [(int(name), m) for m in markers if m in argv]
    return found


def sleepers(marker: str) -> list[int]:
    """Pids of host processes running `sleep MARKER` (not sbx itself, whose argv also holds the marker)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and os.path.basename(argv[0]) == b"sleep" and argv[1] == marker.encode():
            found.append(int(name))
    return found


def ranged(environ: dict[str, str] | None = None) -> bool:
    """Whether runs here map id ranges (the payload is inside uid 1000, a subordinate id)."""
    from sandbox.kernel import idmap

    return idmap.for_payload(os.environ if environ is None else environ) is not None


# The single mapping (the payload is the caller, root inside by default): tests of that mode.
SINGLE = {**os.environ, "SBX_ID_RANGES": "0"}


@contextlib.contextmanager
def greeting_server(srv: socket.socket, greeting: bytes) -> Iterator[None]:
    """Answer every connection to the listening `srv` with `greeting` until the block ends."""
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.sendall(greeting)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        srv.close()


@contextlib.contextmanager
def abstract_greeter(prefix: str) -> Iterator[str]:
    """A host listener on a fresh abstract unix socket (named PREFIX-<random>) that greets each
    caller with b"hello from the host"; yields the name (without the leading NUL)."""
    name = f"{prefix}-{secrets.token_hex(6)}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind("\0" + name)
    with greeting_server(srv, b"hello from the host"):
        yield name


def make_ctty() -> None:
    """preexec_fn: a new session whose controlling terminal is stdin (a pty's slave)."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def busybox_layer() -> bytes:
    """The busybox image's one layer, as images/busybox/build.py makes it."""
    spec = importlib.util.spec_from_file_location("busybox_build", REPO / "images" / "busybox" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.layer(BUSYBOX)
    assert isinstance(data, bytes)
    return data


def busybox_image(dest: Path) -> Path:
    """The busybox image as an OCI layout at `dest` (images/busybox/build.py), for `sbx image import`."""
    assert os.path.exists(BUSYBOX), "busybox-static is not installed (the test command installs it)"
    subprocess.run([sys.executable, str(REPO / "images" / "busybox" / "build.py"), str(dest)], check=True,
                   capture_output=True)
    return dest


def layer(*entries: tuple[str, str, str | bytes]) -> bytes:
    """A tar of (name, kind, data): kind "f" file, "d" dir, "l" symlink to data."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "l":
                assert isinstance(data, str)
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                raw = data if isinstance(data, bytes) else data.encode()
                info.size, info.mode = len(raw), 0o755
                tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()
