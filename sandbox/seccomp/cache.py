"""The compiled filter of a SeccompSpec, cached on disk: the supervisor's side, every run.

`program(spec, environ=...)`: on the first run of a given policy it builds the
filter with libseccomp (compile.py, which imports the bindings: tens of
milliseconds) and caches the raw BPF under `$XDG_CACHE_HOME/sbx/seccomp/`
(else `$HOME/.cache/sbx/seccomp/`), both read from the `environ` the caller
passes; later runs only read that file.  A hit imports nothing of libseccomp,
hashlib, dataclasses or re.

The cache never follows a symlink below the base directory, and accepts only
directories and files owned by us and not writable by others.  A file holds
MAGIC, a digest of the program, and the program; anything else is a miss.
"""

from __future__ import annotations

import os
import stat

from . import SeccompError, SeccompSpec, check_fields
from .load import BPF_MAXINSNS, INSN_SIZE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

# Bump when a policy changes meaning; the cache key also covers the source
# files' size and mtime, the architecture and libseccomp's version.
VERSION = 2

_MAGIC = b"SBXBPF2\0"
_DIGEST_SIZE = 8  # blake2b of the program, after MAGIC
_HEADER = len(_MAGIC) + _DIGEST_SIZE
_SUBDIRS = ("sbx", "seccomp")  # below the base directory; never followed when symlinks
_PRIVATE_DIR = 0o700
_PRIVATE_FILE = 0o600
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def program(spec: SeccompSpec, *, environ: Mapping[str, str] | None = None, cache: bool = True) -> bytes | None:
    """The compiled BPF program for `spec` (None for policy "none").

    Runs in the supervisor.  Served from the cache in `cache_dir(environ)`
    when possible; on a miss the spec is validated, compiled with libseccomp
    and stored (best effort: an unusable cache directory just means
    compiling in memory).  environ=None is the process's own environment:
    only the command line's entry points should rely on it.
    """
    if spec.policy == "none":
        check_fields(spec)
        return None
    machine = os.uname().machine
    where = cache_dir(os.environ if environ is None else environ) if cache else None
    key = cache_key(spec, machine) if where is not None else ""
    if where is not None:
        prog = _cache_read(where, key)
        if prog is not None:
            return prog
    from .compile import compile_checked

    prog = compile_checked(spec, machine)
    if not 0 < len(prog) // INSN_SIZE <= BPF_MAXINSNS:
        raise SeccompError(
            f"seccomp: the filter has {len(prog) // INSN_SIZE} instructions (the kernel takes {BPF_MAXINSNS})"
        )
    if where is not None:
        _cache_write(where, key, prog)
    return prog


def libseccomp_version() -> str:
    """libseccomp's version via dlopen (no bindings import), or "none"."""
    from ..kernel.linux import Library, UInt

    try:
        lib = Library("libseccomp.so.2")
    except OSError:
        return "none"
    version = lib.function("seccomp_version", returns_long=True)()  # const struct {uint major, minor, micro} *
    major, minor, micro = (UInt.from_address(version + 4 * i).value for i in range(3))
    return f"{major}.{minor}.{micro}"


def _digest(data: bytes, size: int) -> bytes:
    try:
        from _blake2 import blake2b  # built in: hashlib would cost 8 ms
    except ImportError:  # pragma: no cover
        from hashlib import blake2b
    return blake2b(data, digest_size=size).digest()


def cache_key(spec: SeccompSpec, machine: str) -> str:
    """The file name (less .bpf) of `spec`'s program: it changes with anything
    that could change the program, every module of this package included."""
    here = os.path.dirname(os.path.abspath(__file__))
    stamps = []
    for f in sorted(name for name in os.listdir(here) if name.endswith(".py")):  # the whole package
        try:
            st = os.stat(os.path.join(here, f))
            stamps.append((st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((0, 0))
    material = repr(
        (VERSION, spec.policy, spec.allow, spec.deny, spec.action, machine, libseccomp_version(), stamps)
    ).encode()
    return _digest(material, 16).hex()


def cache_dir(environ: Mapping[str, str]) -> str | None:
    """Where the programs are cached, after XDG_CACHE_HOME or HOME in `environ`;
    None when neither is an absolute path."""
    base = environ.get("XDG_CACHE_HOME", "")
    if not base.startswith("/"):  # relative paths are to be ignored (XDG)
        home = environ.get("HOME", "")
        if not home.startswith("/"):
            return None
        base = home.rstrip("/") + "/.cache"
    return "/".join((base, *_SUBDIRS))


def _open_cache_dir(path: str, create: bool) -> int | None:
    """An fd of `path` (from cache_dir), or None where it is missing or not ours alone."""
    base = path.rsplit("/", len(_SUBDIRS))[0]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        if create:
            os.makedirs(base, _PRIVATE_DIR, exist_ok=True)
        fd = os.open(base, flags)  # the user's own setting: may be a symlink
    except OSError:
        return None
    try:
        for part in _SUBDIRS:
            try:
                nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    return None
                try:
                    os.mkdir(part, _PRIVATE_DIR, dir_fd=fd)
                except FileExistsError:
                    pass
                nfd = os.open(part, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & _OTHERS_WRITE:
                return None
        nfd, fd = fd, -1
        return nfd
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)


def _cache_read(path: str, key: str) -> bytes | None:
    d = _open_cache_dir(path, create=False)
    if d is None:
        return None
    try:
        fd = os.open(f"{key}.bpf", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=d)
    except OSError:
        return None
    finally:
        os.close(d)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & _OTHERS_WRITE:
            return None
        data = os.read(fd, _HEADER + INSN_SIZE * BPF_MAXINSNS + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _unpack(data)


def _pack(prog: bytes) -> bytes:
    return _MAGIC + _digest(prog, _DIGEST_SIZE) + prog


def _unpack(data: bytes) -> bytes | None:
    if data[: len(_MAGIC)] != _MAGIC:
        return None
    prog = data[_HEADER:]
    if not prog or len(prog) % INSN_SIZE or len(prog) > INSN_SIZE * BPF_MAXINSNS:
        return None
    if _digest(prog, _DIGEST_SIZE) != data[len(_MAGIC) : _HEADER]:
        return None
    return prog


def _cache_write(path: str, key: str, prog: bytes) -> bool:
    d = _open_cache_dir(path, create=True)
    if d is None:
        return False
    tmp = f".{key}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, _PRIVATE_FILE, dir_fd=d
        )
        try:
            os.write(fd, _pack(prog))
        finally:
            os.close(fd)
        os.rename(tmp, f"{key}.bpf", src_dir_fd=d, dst_dir_fd=d)
        return True
    except OSError:
        try:
            os.unlink(tmp, dir_fd=d)
        except OSError:
            pass
        return False
    finally:
        os.close(d)
