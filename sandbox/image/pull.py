"""`sbx image pull REF`: the OCI distribution API, into the image store.

    GET /v2/NAME/manifests/REF     Accept: OCI/docker manifests and indexes
    GET /v2/NAME/blobs/DIGEST      config and layers, Range to resume

Authentication: anonymous first; a 401 with `WWW-Authenticate: Bearer
realm=...,service=...,scope=...` is answered by fetching a token from the
realm (with basic credentials when given: --username/--password-stdin or
$SBX_REGISTRY_AUTH=user:pass), `Basic` challenges with the credentials.
Credentials and tokens are never sent along redirects (blob storage).

HTTP for localhost/127.0.0.0/8/::1 and --insecure, HTTPS otherwise.  An
index (manifest list) is resolved for the platform (default: this machine).
Blobs are downloaded by a small thread pool into a temporary OCI layout in
the store's tmp/, each hashed while streaming and bounded by its
descriptor's size (and layers too large for the import's expansion limits,
extract.Limits, are refused before any download); a dropped connection is
resumed with a Range request.
The layout is then imported by `oci.import_images`, which verifies every
digest again, extracts safely and commits under the store's lock, so a pull
that fails anywhere leaves nothing in the store.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import IO
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from . import extract, oci, ref
from .errors import ImageError
from .store import Record, Store, check_digest

MANIFEST_ACCEPT = ", ".join((*oci.MANIFEST_TYPES, *oci.INDEX_TYPES))
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
MAX_LAYERS = 1000
JOBS = 4
RETRIES = 5
TIMEOUT = 60.0
CHUNK = 1 << 20
MAX_TOKEN = 1 << 20  # bytes of a token server's answer read
USER_AGENT = "sbx"

Credentials = tuple[str, str]
Log = Callable[[str], None]


# -- HTTP -------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[: host.find("]") + 1]
    return name in ("localhost", "[::1]") or name.startswith("127.")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="x",service="y"` -> ("bearer", {realm: x, service: y}); quoted values may hold commas."""
    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        while i < len(rest) and rest[i] in " ,":
            i += 1
        eq = rest.find("=", i)
        if eq < 0:
            break
        key = rest[i:eq].strip().lower()
        i = eq + 1
        if i < len(rest) and rest[i] == '"':
            value = ""
            i += 1
            while i < len(rest) and rest[i] != '"':
                if rest[i] == "\\" and i + 1 < len(rest):
                    i += 1
                value += rest[i]
                i += 1
            i += 1
        else:
            end = rest.find(",", i)
            end = len(rest) if end < 0 else end
            value = rest[i:end].strip()
            i = end
        params[key] = value
    return scheme.lower(), params


def registry_error(body: bytes) -> str:
    """The first message of a registry's {"errors": [{"code", "message"}]} body, else ''."""
    try:
        errors = json.loads(body[:65536]).get("errors")
        first = errors[0]
        text = f"{first.get('code', '')}: {first.get('message', '')}".strip(": ")
    except (ValueError, AttributeError, IndexError, TypeError, KeyError):
        return ""
    text = " ".join(str(text).split())
    return text[:200]


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow ftp://)."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ("http", "https"):
            raise ImageError(f"the registry redirected to {newurl[:80]!r}: only http(s) is followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class Client:
    """One registry and repository: requests with the right scheme, answering auth challenges."""

    def __init__(self, reference: ref.Reference, insecure: bool = False, credentials: Credentials | None = None,
                 timeout: float = TIMEOUT) -> None:
        self.reference = reference
        self.host = reference.api_host
        self.scheme = "http" if insecure or is_loopback(self.host) else "https"
        self.base = f"{self.scheme}://{self.host}/v2/{reference.repository}"
        self.credentials = credentials
        self.timeout = timeout
        self.auth: str | None = None  # the Authorization header that worked
        self._auth_lock = threading.Lock()
        # Redirects (to blob storage) keep Range and Accept; Authorization is an unredirected header.
        # A loopback registry is never reached through $http_proxy.
        handlers: list[urllib.request.BaseHandler] = [_Redirects()]
        if is_loopback(self.host):
            handlers.append(urllib.request.ProxyHandler({}))
        self._opener = urllib.request.build_opener(*handlers)

    def _open(self, url: str, headers: dict[str, str], auth: str | None) -> http.client.HTTPResponse:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
        if auth:
            request.add_unredirected_header("Authorization", auth)
        response = self._opener.open(request, timeout=self.timeout)
        assert isinstance(response, http.client.HTTPResponse)
        return response

    def get(self, path: str, headers: dict[str, str], what: str) -> http.client.HTTPResponse:
        """GET base/path; answers one auth challenge; HTTP errors become ImageError."""
        url = self.base + path
        auth = self.auth
        for attempt in range(2):
            try:
                return self._open(url, headers, auth)
            except urllib.error.HTTPError as exc:
                body = _read_limited(exc, 65536)
                exc.close()
                if exc.code == 401 and attempt == 0:
                    auth = self.authenticate(exc.headers.get("WWW-Authenticate", ""), auth)
                    continue
                raise self.http_error(exc.code, body, what) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                raise network_error(self.host, exc) from None
        raise AssertionError("unreachable")

    def http_error(self, code: int, body: bytes, what: str) -> ImageError:
        detail = registry_error(body)
        if code == 401:
            hint = " (give credentials with --username and --password-stdin, or $SBX_REGISTRY_AUTH)" \
                if self.credentials is None else " (the credentials were refused)"
            return ImageError(f"{what}: unauthorized{': ' + detail if detail else ''}{hint}")
        if code == 404:
            return ImageError(f"{what}: not found in the registry{' (' + detail + ')' if detail else ''}")
        return ImageError(f"{what}: registry answered HTTP {code}{': ' + detail if detail else ''}")

    def authenticate(self, challenge: str, tried: str | None) -> str:
        """The Authorization header answering `challenge` (shared by the download threads)."""
        with self._auth_lock:
            if self.auth is not None and self.auth != tried:
                return self.auth  # another thread got a fresh token meanwhile
            scheme, params = parse_challenge(challenge)
            if scheme == "basic":
                if self.credentials is None:
                    raise ImageError(f"{self.reference.registry} requires a login: give credentials with "
                                     "--username and --password-stdin, or $SBX_REGISTRY_AUTH=user:pass")
                self.auth = basic(self.credentials)
            elif scheme == "bearer" and params.get("realm"):
                self.auth = "Bearer " + self.token(params)
            else:
                raise ImageError(f"{self.reference.registry}: unsupported authentication challenge "
                                 f"{challenge[:80]!r}")
            return self.auth

    def token(self, params: dict[str, str]) -> str:
        realm = params["realm"]
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ImageError(f"{self.reference.registry}: bad token realm {realm[:80]!r}")
        if parsed.scheme == "http" and self.scheme == "https" and self.credentials is not None:
            raise ImageError(f"{self.reference.registry}: refusing to send credentials to a plain-HTTP token "
                             f"realm {realm[:80]!r}")
        query = [("service", params["service"])] if params.get("service") else []
        scope = params.get("scope") or f"repository:{self.reference.repository}:pull"
        query.append(("scope", scope))
        if self.credentials is not None:
            query.append(("account", self.credentials[0]))
        url = realm + ("&" if parsed.query else "?") + urllib.parse.urlencode(query)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
            if self.credentials is not None:
                request.add_unredirected_header("Authorization", basic(self.credentials))
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read(MAX_TOKEN)
        except urllib.error.HTTPError as exc:
            detail = registry_error(_read_limited(exc, 65536))
            exc.close()
            hint = ""
            if exc.code in (401, 403):
                hint = (" (give credentials with --username and --password-stdin, or $SBX_REGISTRY_AUTH)"
                        if self.credentials is None else " (the credentials were refused)")
            raise ImageError(f"{self.reference.registry}: the token server {parsed.netloc} answered HTTP "
                             f"{exc.code}{': ' + detail if detail else ''}{hint}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise network_error(parsed.netloc, exc) from None
        data = oci.load_json(body, "the token server's answer")
        token = data.get("token") or data.get("access_token")
        if not isinstance(token, str) or not token or not token.isascii() or not token.isprintable():
            raise ImageError(f"{self.reference.registry}: the token server gave no usable token")
        return token


def basic(credentials: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()


def read_body(client: Client, response: http.client.HTTPResponse, limit: int) -> bytes:
    """At most limit + 1 bytes of a response (so that too long is seen); network failures are ImageError."""
    try:
        return response.read(limit + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise network_error(client.host, exc) from None


def _read_limited(response: object, limit: int) -> bytes:
    read = getattr(response, "read", None)
    try:
        data = read(limit + 1) if read is not None else b""
    except (OSError, http.client.HTTPException):
        return b""
    return data if isinstance(data, bytes) else b""


def network_error(host: str, exc: BaseException) -> ImageError:
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, ssl.SSLError):
        text = f"TLS error: {reason.reason or reason}"
    elif isinstance(reason, (socket.timeout, TimeoutError)):
        text = "timed out"
    elif isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    else:
        text = str(reason) or type(reason).__name__
    return ImageError(f"cannot reach registry {host}: {' '.join(text.split())[:200]}")


# -- manifests ----------------------------------------------------------------------

def fetch_manifest(client: Client, reference: str, digest: str | None) -> tuple[bytes, str, str]:
    """(body, media type, digest) of a manifest or index; the digest is checked when known."""
    what = f"{client.reference.name}:{reference}" if digest is None else f"{client.reference.name}@{digest}"
    with client.get(f"/manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, what) as response:
        length = response.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > oci.MAX_JSON:
            raise ImageError(f"{what}: manifest larger than {oci.MAX_JSON} bytes")
        body = read_body(client, response, oci.MAX_JSON)
        header_type = response.headers.get_content_type()
        header_digest = response.headers.get("Docker-Content-Digest")
    if len(body) > oci.MAX_JSON:
        raise ImageError(f"{what}: manifest larger than {oci.MAX_JSON} bytes")
    actual = "sha256:" + hashlib.sha256(body).hexdigest()
    if digest is not None and digest.startswith("sha256:") and actual != digest:
        raise ImageError(f"{what}: manifest digest mismatch (corrupt or tampered)")
    if digest is None and header_digest and header_digest.startswith("sha256:") and header_digest != actual:
        raise ImageError(f"{what}: manifest does not match the registry's Docker-Content-Digest")
    data = oci.load_json(body, f"manifest {what}")
    media = data.get("mediaType")
    media_type = media if isinstance(media, str) and media else header_type
    if media_type in SCHEMA1_TYPES or data.get("schemaVersion") == 1:
        raise ImageError(f"{what}: docker schema 1 manifests are not supported (push the image again with a "
                         "current client)")
    if media_type not in oci.MANIFEST_TYPES + oci.INDEX_TYPES:
        if isinstance(data.get("manifests"), list):
            media_type = oci.INDEX_TYPES[0]
        elif isinstance(data.get("layers"), list):
            media_type = oci.MANIFEST_TYPES[0]
        else:
            raise ImageError(f"{what}: unsupported manifest media type {media_type!r}")
    return body, media_type, actual


def choose(index: dict[str, object], platform: oci.Platform, what: str) -> oci.Descriptor:
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError(f"index {what}: no manifests")
    children = [oci.descriptor(m, f"index {what}") for m in manifests]
    fitting = [c for c in children if c.platform is not None and oci.matches(platform, dict(c.platform))
               and (c.media_type in oci.MANIFEST_TYPES + oci.INDEX_TYPES)]
    if not fitting:
        available = sorted({str(oci.Platform(dict(c.platform).get("os", "?"), dict(c.platform).get("architecture", "?"),
                                             dict(c.platform).get("variant")))
                            for c in children if c.platform is not None})
        raise ImageError(f"{what}: no image for {platform} (available: {', '.join(available) or 'none'}); "
                         "see --platform")
    exact = [c for c in fitting if dict(c.platform or ()).get("variant") == platform.variant]
    return (exact or fitting)[0]


# -- blobs ----------------------------------------------------------------------------

class Progress:
    """A redrawn line on a terminal, one line per finished layer otherwise, nothing when quiet."""

    def __init__(self, total: int, count: int, mode: str, log: Log) -> None:
        self.total = total
        self.count = count
        self.mode = mode  # "tty", "lines" or "quiet"
        self.log = log
        self.done = 0
        self.finished = 0
        self.lock = threading.Lock()
        self.last = 0.0

    def add(self, size: int) -> None:
        with self.lock:
            self.done += size
            now = time.monotonic()
            if self.mode == "tty" and now - self.last > 0.1:
                self.last = now
                self._draw()

    def reset(self, size: int) -> None:
        with self.lock:
            self.done -= size

    def _draw(self) -> None:
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        sys.stderr.write(f"\r\x1b[Ksbx: [{'#' * filled}{'.' * (width - filled)}] {mib(self.done)}/{mib(self.total)} "
                         f"{self.finished}/{self.count} layers")
        sys.stderr.flush()

    def layer_done(self, digest: str, size: int, seconds: float) -> None:
        with self.lock:
            self.finished += 1
            if self.mode == "tty":
                self._draw()
            elif self.mode == "lines":
                self.log(f"layer {digest[7:19]} {mib(size)} in {seconds:.1f}s")

    def end(self) -> None:
        with self.lock:
            if self.mode == "tty":
                self._draw()
                sys.stderr.write("\n")
                sys.stderr.flush()


def mib(size: int) -> str:
    return f"{size / (1 << 20):.1f}MiB"


def download(client: Client, desc: oci.Descriptor, path: str, progress: Progress | None, stop: threading.Event,
             retries: int = RETRIES) -> None:
    """The blob `desc` into `path` (resuming what is there), hashed while streaming; a bad digest fails."""
    hasher = hashlib.sha256()
    have = 0
    what = f"blob {desc.digest[:19]}"
    if desc.size > oci.MAX_BLOB:
        raise ImageError(f"{what}: {desc.size} bytes is larger than the limit of {oci.MAX_BLOB}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        while chunk := os.read(fd, CHUNK):  # a partial file from before: hash it, then resume after it
            hasher.update(chunk)
            have += len(chunk)
        if have > desc.size:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            hasher, have = hashlib.sha256(), 0
        if progress is not None:
            progress.add(have)
        failures = 0
        while have < desc.size or desc.size == 0:
            if stop.is_set():
                raise ImageError("cancelled")
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with client.get(f"/blobs/{desc.digest}", headers, what) as response:
                    start = 0
                    if response.status == 206:
                        start = content_range_start(response.headers.get("Content-Range", ""), what)
                    if start != have:  # the server ignored the Range (or sent another): start over
                        if start != 0:
                            raise ImageError(f"{what}: the registry sent a bad Content-Range")
                        os.ftruncate(fd, 0)
                        os.lseek(fd, 0, os.SEEK_SET)
                        if progress is not None:
                            progress.reset(have)
                        hasher, have = hashlib.sha256(), 0
                    while True:
                        if stop.is_set():
                            raise ImageError("cancelled")
                        data = response.read(min(CHUNK, desc.size - have + 1))
                        if not data:
                            break
                        have += len(data)
                        if have > desc.size:
                            raise ImageError(f"{what}: larger than its descriptor's {desc.size} bytes")
                        hasher.update(data)
                        os.write(fd, data)
                        if progress is not None:
                            progress.add(len(data))
                if have < desc.size:
                    raise http.client.IncompleteRead(b"", desc.size - have)
                break
            except ImageError as exc:
                if not str(exc).startswith("cannot reach registry") or failures >= retries:
                    raise
                failures += 1
            except (OSError, http.client.HTTPException) as exc:
                failures += 1
                if failures > retries:
                    raise ImageError(f"{what}: download failed after {retries} retries: "
                                     f"{network_error(client.host, exc)}") from None
            time.sleep(min(0.1 * 2 ** failures, 2.0))
    finally:
        os.close(fd)
    if "sha256:" + hasher.hexdigest() != desc.digest:
        raise ImageError(f"{what}: digest mismatch (corrupt or tampered)")


def content_range_start(header: str, what: str) -> int:
    """`bytes START-END/TOTAL` -> START."""
    unit, _, spec = header.strip().partition(" ")
    first = spec.partition("-")[0]
    if unit != "bytes" or not first.isdigit():
        raise ImageError(f"{what}: the registry sent a bad Content-Range {header[:60]!r}")
    return int(first)


def fetch_small(client: Client, desc: oci.Descriptor, what: str) -> bytes:
    if desc.size > oci.MAX_JSON:
        raise ImageError(f"{what}: {desc.size} bytes is larger than {oci.MAX_JSON}")
    with client.get(f"/blobs/{desc.digest}", {}, what) as response:
        data = read_body(client, response, desc.size)
    if len(data) != desc.size:
        raise ImageError(f"{what}: {len(data)} bytes, expected {desc.size}")
    oci.verify(data, desc.digest, what)
    return data


def write_blob(layout: str, digest: str, data: bytes) -> None:
    with open(os.path.join(layout, "blobs", "sha256", check_digest(digest)), "wb") as file:
        file.write(data)


# -- the pull -----------------------------------------------------------------------

def credentials_from_env(environ: Mapping[str, str]) -> Credentials | None:
    """user:pass from $SBX_REGISTRY_AUTH in `environ`, or None."""
    value = environ.get("SBX_REGISTRY_AUTH")
    if not value:
        return None
    user, colon, password = value.partition(":")
    if not colon or not user:
        raise ImageError("$SBX_REGISTRY_AUTH must be USER:PASSWORD")
    return user, password


def pull(store: Store, text: str, platform: oci.Platform | None = None, insecure: bool = False,
         credentials: Credentials | None = None, progress: str = "lines", log: Log | None = None,
         jobs: int = JOBS, limits: extract.Limits = extract.Limits()) -> Record:
    """Pull `text` (a reference) into `store`; returns the new record.  progress: tty, lines or quiet."""
    reference = ref.parse(text)
    say = log or (lambda _text: None)
    wanted = platform or oci.host_platform()
    client = Client(reference, insecure, credentials)
    hold = store.hold()  # layers found in the store stay there until the import has used them
    work = store.new_temp("pull-")
    try:
        layout = os.path.join(work, "layout")
        os.makedirs(os.path.join(layout, "blobs", "sha256"))
        with open(os.path.join(layout, "oci-layout"), "w") as file:
            file.write('{"imageLayoutVersion": "1.0.0"}')
        if progress != "quiet":
            say(f"pulling {reference} ({wanted})")
        tag_or_digest = reference.digest or reference.tag or "latest"
        body, media_type, digest = fetch_manifest(client, tag_or_digest, reference.digest)
        what = str(reference)
        for _depth in range(oci.MAX_INDEX_DEPTH):
            if media_type not in oci.INDEX_TYPES:
                break
            chosen = choose(oci.load_json(body, f"index {what}"), wanted, what)
            body, media_type, digest = fetch_manifest(client, chosen.digest, chosen.digest)
            what = f"{reference.name}@{chosen.digest}"
        else:
            raise ImageError(f"{reference}: image indexes nested too deep")
        manifest = oci.load_json(body, f"manifest {what}")
        config_desc = oci.descriptor(manifest.get("config"), f"manifest {what} config")
        config = fetch_small(client, config_desc, f"config {config_desc.digest[:19]}")
        config_data = oci.load_json(config, "image config")
        found = oci.Platform(str(config_data.get("os", "")), str(config_data.get("architecture", "")),
                             str(config_data.get("variant") or "") or None)
        if (found.os, found.architecture) != ("", "") and not oci.matches(wanted, {
                "os": found.os, "architecture": found.architecture, "variant": found.variant}):
            say(f"warning: the image is for {found}, not {wanted}")
        layer_values = manifest.get("layers")
        if not isinstance(layer_values, list):
            raise ImageError(f"manifest {what}: no layers")
        if len(layer_values) > MAX_LAYERS:
            raise ImageError(f"manifest {what}: more than {MAX_LAYERS} layers")
        layers = [oci.descriptor(v, f"manifest {what} layer") for v in layer_values]
        for layer in layers:
            if not layer.media_type.startswith(oci.LAYER_PREFIXES):
                raise ImageError(f"unsupported layer media type {layer.media_type!r}")
        ids = oci.diff_ids(config_data, len(layers))
        write_blob(layout, digest, body)
        write_blob(layout, config_desc.digest, config)
        needed: dict[str, oci.Descriptor] = {}
        for layer, diff_id in zip(layers, ids):
            if not store.has_layer(diff_id):
                needed.setdefault(layer.digest, layer)
        check_sizes(what, list(needed.values()), limits)
        fetch_layers(client, layout, list(needed.values()), len(layers), progress, say, jobs)
        entry = {"mediaType": media_type, "digest": digest, "size": len(body),
                 "platform": {k: v for k, v in (("os", found.os or wanted.os),
                                                ("architecture", found.architecture or wanted.architecture),
                                                ("variant", found.variant)) if v}}
        with open(os.path.join(layout, "index.json"), "w") as file:
            json.dump({"schemaVersion": 2, "mediaType": oci.INDEX_TYPES[0], "manifests": [entry]}, file)
        records = oci.import_images(store, layout, name=str(reference), limits=limits,
                                    log=say if progress != "quiet" else None)
        return records[0]
    finally:
        extract.remove_tree(work)
        os.close(hold)


def check_sizes(what: str, layers: list[oci.Descriptor], limits: extract.Limits) -> None:
    """Refuse before downloading what could not expand within the limits: compressed data is never much
    larger than its plain form (gzip and zstd add a few bytes per 64 KiB), so past the caps plus 1.5%
    and 1 MiB, a blob would be refused after its download anyway."""
    def over(size: int, cap: int) -> bool:
        return size > cap + (cap >> 6) + (1 << 20)

    for layer in layers:
        if over(layer.size, limits.max_bytes):
            raise ImageError(f"{what}: layer {layer.digest} is {extract.size_text(layer.size)} compressed, past the "
                             f"--max-layer-size of {extract.size_text(limits.max_bytes)}")
    total = sum(layer.size for layer in layers)
    if over(total, limits.max_image):
        raise ImageError(f"{what}: its layers are {extract.size_text(total)} compressed, past the --max-size of "
                         f"{extract.size_text(limits.max_image)}")


def fetch_layers(client: Client, layout: str, needed: list[oci.Descriptor], count: int, progress_mode: str,
                 say: Log, jobs: int) -> None:
    if not needed:
        if progress_mode != "quiet":
            say(f"all layers ({count}) are in the store already")
        return
    progress = Progress(sum(d.size for d in needed), len(needed), progress_mode, say)
    stop = threading.Event()

    def one(desc: oci.Descriptor) -> None:
        started = time.monotonic()
        download(client, desc, os.path.join(layout, "blobs", "sha256", check_digest(desc.digest)), progress, stop)
        progress.layer_done(desc.digest, desc.size, time.monotonic() - started)

    pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(needed))), thread_name_prefix="sbx-pull")
    try:
        futures = [pool.submit(one, desc) for desc in needed]
        done, _pending = wait(futures, return_when=FIRST_EXCEPTION)
        errors = [e for e in (f.exception() for f in done) if e is not None]
        if errors:
            raise next((e for e in errors if str(e) != "cancelled"), errors[0])
    finally:  # on an error or ^C the other downloads stop at their next chunk
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        progress.end()
