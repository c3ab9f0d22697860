"""Inputs by digest: a blob store clients put into, and the cache each worker keeps.

    store = RedisBlobs("redis://host:6379/0")      # the default: the broker's Redis
    ref = store.put(data)                          # {"sha256": HEX}, for "files" and "stdin"
    path = Cache(dir, store).path(HEX)             # on the worker: verified, cached locally

Redis holds each blob under `sbx:blob:HEX` for TTL seconds (a run submitted
later must put it again) and refuses blobs over MAX_BLOB, so the store stays
bounded by what recent batches need (set Redis's maxmemory for a hard cap).
A directory shared by every host (NFS, ...) is the alternative: DirBlobs,
`sbx worker --blob-dir DIR`, files named by their hex digest.

A worker's cache holds blobs as files named by digest, verified when
fetched (a blob whose bytes do not hash to its name is refused), up to
CACHE_BYTES (least recently used first out).
"""

from __future__ import annotations

import hashlib
import os

from .jobs import JobError, check_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Blobs(Protocol):
        def get(self, digest: str) -> bytes | None: ...

        def put(self, data: bytes) -> dict[str, str]: ...

PREFIX = "sbx:blob:"
TTL = 24 * 3600
MAX_BLOB = 256 << 20
CACHE_BYTES = 2 << 30


def _check_size(size: int) -> None:
    if size > MAX_BLOB:
        raise JobError(f"a blob of {size} bytes is larger than the store's limit of {MAX_BLOB >> 20} MiB")


class RedisBlobs:
    """Blobs in Redis (the broker's by default)."""

    def __init__(self, url: str, ttl: int = TTL) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.ttl = ttl

    def put(self, data: bytes) -> dict[str, str]:
        _check_size(len(data))
        digest = hashlib.sha256(data).hexdigest()
        if not self.client.expire(PREFIX + digest, self.ttl):  # there already: only its lease renewed
            self.client.set(PREFIX + digest, data, ex=self.ttl)
        return {"sha256": digest}

    def get(self, digest: str) -> bytes | None:
        data = self.client.get(PREFIX + check_hex(digest, "blob"))
        return data if isinstance(data, bytes) else None

    def close(self) -> None:
        self.client.close()


class DirBlobs:
    """Blobs as files DIR/HEX in a directory every host mounts."""

    def __init__(self, path: str) -> None:
        self.path = path

    def put(self, data: bytes) -> dict[str, str]:
        _check_size(len(data))
        digest = hashlib.sha256(data).hexdigest()
        final = os.path.join(self.path, digest)
        if not os.path.exists(final):
            temp = f"{final}.{os.getpid()}.tmp"
            with open(temp, "wb") as file:
                file.write(data)
            os.rename(temp, final)
        return {"sha256": digest}

    def get(self, digest: str) -> bytes | None:
        try:
            fd = os.open(os.path.join(self.path, check_hex(digest, "blob")), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as file:
            data = file.read(MAX_BLOB + 1)
        _check_size(len(data))
        return data

    def close(self) -> None:
        pass


class Cache:
    """A worker's local copies, DIR/HEX, verified and bounded."""

    def __init__(self, path: str, source: Blobs, limit: int = CACHE_BYTES) -> None:
        self.path = path
        self.source = source
        self.limit = limit
        os.makedirs(path, 0o700, exist_ok=True)

    def path_of(self, digest: str) -> str:
        """The cached file of blob HEX, fetched when missing; JobError when the store has no such blob."""
        final = os.path.join(self.path, check_hex(digest, "blob"))
        try:
            os.utime(final)  # most recently used
            return final
        except FileNotFoundError:
            pass
        data = self.source.get(digest)
        if data is None:
            raise JobError(f"blob {digest[:12]} is not in the blob store (expired, or never put)")
        if hashlib.sha256(data).hexdigest() != digest:
            raise JobError(f"blob {digest[:12]}: its content does not match its digest")
        temp = f"{final}.{os.getpid()}.tmp"
        with open(temp, "wb") as file:
            file.write(data)
        os.chmod(temp, 0o400)
        os.rename(temp, final)
        self._trim(keep=final)
        return final

    def read(self, digest: str) -> bytes:
        with open(self.path_of(digest), "rb") as file:
            return file.read()

    def _trim(self, keep: str) -> None:
        entries = []
        for name in os.listdir(self.path):
            if len(name) == 64:
                try:
                    st = os.stat(os.path.join(self.path, name))
                except FileNotFoundError:
                    continue
                entries.append((st.st_mtime, st.st_size, name))
        total = sum(size for _t, size, _n in entries)
        for _time, size, name in sorted(entries):
            if total <= self.limit:
                break
            if os.path.join(self.path, name) != keep:
                try:
                    os.unlink(os.path.join(self.path, name))
                except FileNotFoundError:
                    pass
                total -= size
