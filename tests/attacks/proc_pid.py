"""Read another process through /proc: PID's mem, environ, maps, root, cwd, fds.

Inside the sandbox PID is 1 (init, not dumpable); the control reads a child of its own.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _atk import argv, ename, result  # noqa: E402

pid = argv(1, "1")
base = f"/proc/{pid}"
got, refused = [], []


def attempt(what: str, fn) -> None:  # type: ignore[no-untyped-def]
    try:
        got.append(f"{what}: {fn()}")
    except OSError as exc:
        refused.append(f"{what}: {ename(exc.errno or 0)}")


def mem() -> str:
    with open(f"{base}/maps") as f:
        start = int(f.readline().split("-")[0], 16)
    fd = os.open(f"{base}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return f"{len(os.pread(fd, 16, start))} bytes"
    finally:
        os.close(fd)


def read(name: str) -> str:
    with open(f"{base}/{name}", "rb") as f:
        data = f.read()
    if not data:
        raise OSError(0, "empty")
    return f"{len(data)} bytes"


attempt("mem", mem)
attempt("environ", lambda: read("environ"))
attempt("maps", lambda: read("maps"))
attempt("root", lambda: f"{len(os.listdir(f'{base}/root'))} entries")
attempt("cwd", lambda: os.readlink(f"{base}/cwd"))


def fds() -> str:
    names = os.listdir(f"{base}/fd")  # host root's sbx: init's fd numbers are listable (no more)
    links = []
    for name in names:
        try:
            links.append(os.readlink(f"{base}/fd/{name}"))
        except OSError as exc:
            raise OSError(exc.errno, f"{len(names)} numbers, links {exc.strerror}") from None
    return f"{len(links)} links: {', '.join(links)[:200]}"


attempt("fd", fds)
result("proc_pid", bool(got), "; ".join(got) if got else "; ".join(refused))
