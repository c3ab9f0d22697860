"""Shared helpers: every test runs real sandboxes through the real CLI."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import sysconfig
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

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


def sbx(*args: str, timeout: float = 60, check: bool = False, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run `sbx ARGS...` and capture its output as text."""
    env = kwargs.pop("env", None)
    if env is None:
        env = dict(os.environ)
    if INSTALLED:
        env.pop("PYTHONPATH", None)
    else:
        env["PYTHONPATH"] = str(REPO)
    result = subprocess.run([*SBX, *args], capture_output=True, text=True, timeout=timeout, env=env,
                            **kwargs)  # type: ignore[call-overload]
    if check and result.returncode != 0:
        raise AssertionError(f"sbx {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def sh(script: str, *options: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`sbx run OPTIONS -- sh -c SCRIPT`."""
    return sbx("run", *options, "--", "sh", "-c", script, **kwargs)


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
