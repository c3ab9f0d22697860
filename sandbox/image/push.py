"""`sbx image push NAME REF`: an image of the store to a registry (the OCI distribution API).

The store keeps extracted layers, not their archives, so each layer is
written again as a canonical tar (sorted, owners as the store holds them,
mtimes kept, whiteouts as `.wh.NAME`, opaque directories as `.wh..wh..opq`)
and gzip-compressed without a timestamp: the same layer always gives the same
blob, so pushing an image twice, or to two repositories, sends equal digests.
The config names those tars' digests (diff_ids), which differ from the
record's when the layer came from another tool's archive.

    HEAD  /v2/NAME/blobs/DIGEST                   already there: skipped
    POST  /v2/NAME/blobs/uploads/?mount=D&from=R  cross-repository mount (201), else a session (202)
    POST  /v2/NAME/blobs/uploads/                 a session; then either
    PUT   LOCATION?digest=D  (the whole blob)     monolithic, blobs up to --chunk-size
    PATCH LOCATION (Content-Range a-b) ...  PUT   chunked, larger blobs
    PUT   /v2/NAME/manifests/TAG                  last: the image appears whole or not at all

Authentication as for pull (pull.Client): bearer tokens for the scope the
registry's challenge names (push needs `pull,push`), basic credentials.
The mount source is --from REPO, else the image's own repository when it
came from the same registry.  Prints REF@DIGEST: workers pull by that.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import stat
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO

from . import oci, ref
from .errors import ImageError
from .extract import OPAQUE, OPAQUE_XATTR, WHITEOUT, remove_tree
from .pull import Client, Credentials, Log, network_error
from .store import Record, Store

CHUNK = 16 << 20            # blobs larger than this are uploaded in chunks of this size
READ = 1 << 20
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_TYPE = oci.MANIFEST_TYPES[0]


class _Tee:
    """A write-only file: hashes and counts what passes, then writes it on."""

    def __init__(self, out: object) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        self.out.write(data)  # type: ignore[attr-defined]
        return len(data)

    def flush(self) -> None:
        pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _Sink:
    def write(self, data: bytes) -> int:
        return len(data)


def _owner(value: int, me: int) -> int:
    """The caller (root inside, or the caller itself without a user namespace) is 0 in the archive."""
    return 0 if value == me else value


def write_layer(layer_dir: str, path: str) -> tuple[str, str, int]:
    """The layer at `layer_dir` as a gzipped canonical tar at `path`: (diff_id, blob digest, blob size)."""
    with open(path, "wb") as file:
        packed = _Tee(file)
        with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=6) as zipped:
            plain = _Tee(zipped)
            with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                _add_tree(tar, layer_dir)
    return plain.digest, packed.digest, packed.size


def _add_tree(tar: tarfile.TarFile, top: str) -> None:
    me_uid, me_gid = os.geteuid(), os.getegid()
    links: dict[tuple[int, int], str] = {}
    stack: list[tuple[str, str]] = [("", top)]  # (name in the archive, host path) of directories to list
    while stack:
        prefix, directory = stack.pop()
        try:
            names = sorted(os.listdir(directory), key=os.fsencode)
        except OSError as exc:
            raise ImageError(f"cannot read layer directory {directory}: {exc.strerror}") from None
        if prefix and _opaque(directory):
            tar.addfile(_entry(f"{prefix}/{OPAQUE}", tarfile.REGTYPE))
        below: list[tuple[str, str]] = []
        for name in names:
            host = os.path.join(directory, name)
            member = f"{prefix}/{name}" if prefix else name
            st = os.lstat(host)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                tar.addfile(_entry(f"{prefix}/{WHITEOUT}{name}" if prefix else WHITEOUT + name, tarfile.REGTYPE))
                continue
            info = tarfile.TarInfo(member)
            info.mode = stat.S_IMODE(st.st_mode)
            info.mtime = int(st.st_mtime)
            info.uid, info.gid = _owner(st.st_uid, me_uid), _owner(st.st_gid, me_gid)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                below.append((member, host))
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(host)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in links:
                    info.type, info.linkname = tarfile.LNKTYPE, links[key]
                    tar.addfile(info)
                    continue
                links[key] = member
                info.size = st.st_size
                try:
                    fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as exc:
                    raise ImageError(f"cannot read {member} of a layer: {exc.strerror}") from None
                with os.fdopen(fd, "rb") as file:
                    tar.addfile(info, file)
            elif stat.S_ISFIFO(st.st_mode):
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            # sockets and other devices: an imported layer holds none
        stack.extend(reversed(below))  # depth first, in name order


def _opaque(directory: str) -> bool:
    try:
        return os.getxattr(directory, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _entry(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, 0o644
    return info


# -- the registry --------------------------------------------------------------------

class PushClient(Client):
    """pull.Client plus the write side: requests of any method, answering auth challenges."""

    def request(self, method: str, url: str, what: str, data: bytes | BinaryIO | None = None, headers: dict[str, str] | None = None,
                ok: tuple[int, ...] = (200, 201, 202, 204)) -> tuple[int, dict[str, str], bytes]:
        """(status, headers by lower-case name, body up to 64 KiB); `data`: bytes or a file (read again
        from its start after a challenge)."""
        if not url.startswith(("http://", "https://")):
            url = urllib.parse.urljoin(f"{self.scheme}://{self.host}/", url)
        auth = self.auth
        for attempt in range(2):
            if data is not None and not isinstance(data, bytes):
                data.seek(0)
            request = urllib.request.Request(url, data=data, method=method,
                                             headers={"User-Agent": "sbx", **(headers or {})})
            if auth:
                request.add_unredirected_header("Authorization", auth)
            try:
                with self._opener.open(request, timeout=self.timeout) as response:
                    return response.status, _lower(response.headers.items()), response.read(65536)
            except urllib.error.HTTPError as exc:
                body = exc.read(65536) if exc.fp is not None else b""
                exc.close()
                if exc.code == 401 and attempt == 0:
                    auth = self.authenticate(exc.headers.get("WWW-Authenticate", ""), auth)
                    continue
                if exc.code in ok:
                    return exc.code, _lower(exc.headers.items()), body
                raise self.http_error(exc.code, body, what) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise network_error(self.host, exc) from None
        raise AssertionError("unreachable")

    def location(self, headers: dict[str, str], what: str) -> str:
        where = headers.get("location")
        if not where:
            raise ImageError(f"{what}: the registry gave no upload location")
        return urllib.parse.urljoin(f"{self.scheme}://{self.host}/", where)

    def has_blob(self, digest: str) -> bool:
        status, _headers, _body = self.request("HEAD", f"{self.base}/blobs/{digest}", f"blob {digest[:19]}",
                                               ok=(200, 404))
        return status == 200

    def mount(self, digest: str, source: str) -> str | None:
        """None when mounted from `source`, else an upload session's location (the registry declined)."""
        query = urllib.parse.urlencode({"mount": digest, "from": source})
        status, headers, _body = self.request("POST", f"{self.base}/blobs/uploads/?{query}", f"mount {digest[:19]}",
                                              data=b"")
        return None if status == 201 else self.location(headers, f"mount {digest[:19]}")

    def upload(self, digest: str, path: str, size: int, chunk: int, session: str | None) -> int:
        """Upload the file at `path` as blob `digest`; returns the number of requests carrying data."""
        what = f"blob {digest[:19]}"
        if session is None:
            _status, headers, _body = self.request("POST", f"{self.base}/blobs/uploads/", what, data=b"")
            session = self.location(headers, what)
        parts = 0
        with open(path, "rb") as file:
            if size <= chunk:
                self.request("PUT", _with_query(session, digest), what, data=file,
                             headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
                return 1
            offset = 0
            while offset < size:
                data = file.read(chunk)
                _status, headers, _body = self.request(
                    "PATCH", session, what, data=data,
                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data)),
                             "Content-Range": f"{offset}-{offset + len(data) - 1}"})
                session = self.location(headers, what)
                offset += len(data)
                parts += 1
        self.request("PUT", _with_query(session, digest), what, data=b"", headers={"Content-Length": "0"})
        return parts


def _lower(items: object) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}  # type: ignore[attr-defined]


def _with_query(url: str, digest: str) -> str:
    return url + ("&" if urllib.parse.urlsplit(url).query else "?") + urllib.parse.urlencode({"digest": digest})


# -- the push ------------------------------------------------------------------------

def image_config(record: Record, diff_ids: list[str]) -> bytes:
    config: dict[str, object] = {"architecture": record.get("architecture") or oci.host_platform().architecture,
                                 "os": record.get("os") or "linux",
                                 "config": record.get("config") or {},
                                 "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    if record.get("variant"):
        config["variant"] = record["variant"]
    if record.get("created"):
        config["created"] = record["created"]
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


def push(store: Store, name: str, target: str, insecure: bool = False, credentials: Credentials | None = None,
         source: str | None = None, chunk: int = CHUNK, log: Log | None = None) -> tuple[str, dict[str, int]]:
    """Push the stored image `name` to `target`; (TARGET-NAME@DIGEST, counts of what each blob needed)."""
    from . import find

    say = log or (lambda _text: None)
    reference = ref.parse(target)
    if reference.digest is not None:
        raise ImageError(f"{target}: push to a tag, not a digest (the digest is the pushed manifest's)")
    with store.lock(False):
        record = find(store, name)
    diff_ids = record.get("layers")
    if not isinstance(diff_ids, list):
        raise ImageError(f"image {name!r}: corrupt record")
    if source is None:
        try:
            origin: ref.Reference | None = ref.parse(str(record.get("name", "")).split("@")[0], default_tag=None)
        except ImageError:
            origin = None
        if origin is not None and origin.registry == reference.registry and origin.repository != reference.repository:
            source = origin.repository
    client = PushClient(reference, insecure, credentials)
    counts = {"present": 0, "mounted": 0, "monolithic": 0, "chunked": 0}
    hold = store.hold()  # prune keeps the layers while they are read
    work = store.new_temp("push-")
    try:
        layers: list[dict[str, object]] = []
        plain_ids: list[str] = []
        for index, diff_id in enumerate(diff_ids):
            path = os.path.join(work, f"layer-{index}")
            plain, digest, size = write_layer(store.layer_path(str(diff_id)), path)
            plain_ids.append(plain)
            layers.append({"mediaType": LAYER_TYPE, "digest": digest, "size": size})
            _send(client, digest, path, size, chunk, source, counts, say)
        config = image_config(record, plain_ids)
        config_path = os.path.join(work, "config")
        with open(config_path, "wb") as file:
            file.write(config)
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        _send(client, config_digest, config_path, len(config), chunk, source, counts, say)
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                               "config": {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)},
                               "layers": layers}, separators=(",", ":")).encode()
        digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        _status, headers, _body = client.request("PUT", f"{client.base}/manifests/{reference.tag or 'latest'}",
                                                 f"manifest {reference}", data=manifest,
                                                 headers={"Content-Type": MANIFEST_TYPE})
        answered = headers.get("docker-content-digest")
        if answered and answered != digest:
            raise ImageError(f"{reference}: the registry stored the manifest as {answered}, not {digest}")
        return f"{reference.name}@{digest}", counts
    finally:
        remove_tree(work)
        os.close(hold)


def _send(client: PushClient, digest: str, path: str, size: int, chunk: int, source: str | None,
          counts: dict[str, int], say: Log) -> None:
    if client.has_blob(digest):
        counts["present"] += 1
        say(f"blob {digest[7:19]} already in the registry")
        return
    session = None
    if source is not None:
        try:
            session = client.mount(digest, source)
        except ImageError:  # refused (no pull right on the source, say): upload it after all
            session = ""
        if session is None:
            counts["mounted"] += 1
            say(f"blob {digest[7:19]} mounted from {source}")
            return
    parts = client.upload(digest, path, size, chunk, session or None)
    counts["chunked" if size > chunk else "monolithic"] += 1
    say(f"blob {digest[7:19]} {size} bytes" + (f" in {parts} chunks" if size > chunk else ""))
