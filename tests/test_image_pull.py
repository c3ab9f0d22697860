"""`sbx image pull`: against a real registry (Debian's docker-registry) on 127.0.0.1.

Images are built as OCI layouts here and pushed with skopeo; the tests then
pull them through the CLI: single-arch (and run it), a multi-arch index
(amd64, arm64/v8, arm/v7), a corrupt blob tampered with on the registry's
disk, a missing tag, dropped connections resumed through a cutting proxy, a
partial file resumed directly, and a token-auth registry (a second registry
on the same storage, with a tiny token server signing JWTs with openssl).

Needs the Debian packages docker-registry, skopeo, busybox-static and
openssl; as root they are installed when missing, otherwise the tests fail.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO, busybox_layer, sbx
from sandbox.image import ImageError, oci, pull, ref
from sandbox.image.layout import Layout
from sandbox.image.store import Store

REGISTRY = "/usr/bin/docker-registry"
PACKAGES = {"docker-registry": REGISTRY, "skopeo": "/usr/bin/skopeo", "busybox-static": "/bin/busybox",
            "openssl": "/usr/bin/openssl"}


def ensure_packages() -> None:
    missing = [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]
    if missing and os.getuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True,
                       capture_output=True, timeout=600, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        missing = [pkg for pkg, path in PACKAGES.items() if not os.path.exists(path)]
    assert not missing, f"missing Debian packages {' '.join(missing)} (the test command installs them)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"docker-registry exited: {log.read_text()}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # 401: up, and asking for a token
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"docker-registry did not answer: {log.read_text()}")


def start_registry(base: Path, storage: Path,
                   auth: dict[str, dict[str, str]] | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    config: dict[str, object] = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
              "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
              "http": {"addr": f"127.0.0.1:{port}"}}
    if auth is not None:
        config["auth"] = auth
    path = base / f"config-{port}.yml"
    path.write_text(json.dumps(config))  # YAML is a superset of JSON
    log = base / f"registry-{port}.log"
    proc = subprocess.Popen([REGISTRY, "serve", str(path)], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{port}/v2/", proc, log)
    return f"127.0.0.1:{port}", proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def layer(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
            out.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Registry:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.storage = base / "storage"
        self.host, self.proc = start_registry(base, self.storage)

    def push(self, layout: Path, tag: str, name: str, all_images: bool = False) -> str:
        target = f"{self.host}/{name}"
        argv = ["skopeo", "copy", "--dest-tls-verify=false", *(["--all"] if all_images else []),
                f"oci:{layout}:{tag}", f"docker://{target}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return target

    def manifest(self, name: str, tag: str) -> tuple[str, dict[str, object]]:
        """(digest, manifest) as the registry serves it (skopeo may have compressed the layers)."""
        request = urllib.request.Request(f"http://{self.host}/v2/{name}/manifests/{tag}",
                                         headers={"Accept": pull.MANIFEST_ACCEPT})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return "sha256:" + hashlib.sha256(body).hexdigest(), json.loads(body)

    def blob_file(self, digest: str) -> Path:
        hex_part = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_part[:2] / hex_part / "data"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    ensure_packages()
    reg = Registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        stop(reg.proc)


class Images:
    """What the module's registry holds: full names, the per-arch digests, the big image's layers."""

    bb = multi = big = ""
    multi_digests: dict[str, str] = {}
    big_layers: list[str] = []
    big_sizes: list[int] = []


@pytest.fixture(scope="module")
def images(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Images:
    """Push: busybox (bb:1), a multi-arch index (multi:1), a 3-layer random image (big:1)."""
    base = tmp_path_factory.mktemp("layouts")
    found = Images()
    bb = Layout(str(base / "bb"))
    bb.index([bb.image([busybox_layer()], {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]})], ref_name="1")
    found.bb = registry.push(base / "bb", "1", "bb:1")

    multi = Layout(str(base / "multi"))
    arches = (("amd64", None), ("arm64", "v8"), ("arm", "v7"))
    descs = [multi.image([layer({f"arch-{arch}": arch.encode()})], {"Cmd": ["/bin/true"]}, architecture=arch,
                         variant=variant) for arch, variant in arches]
    multi.index([multi.image_index(descs)], ref_name="1")
    found.multi = registry.push(base / "multi", "1", "multi:1", all_images=True)
    found.multi_digests = {arch: str(d["digest"]) for (arch, _v), d in zip(arches, descs)}

    big = Layout(str(base / "big"))
    big_layers = [layer({f"random-{i}": os.urandom(600_000 + i * 1000)}) for i in range(3)]
    big.index([big.image(big_layers, {}, compression=None)], ref_name="1")
    found.big = registry.push(base / "big", "1", "big:1")
    layers = registry.manifest("big", "1")[1]["layers"]
    assert isinstance(layers, list)
    found.big_layers = [d["digest"] for d in layers]
    found.big_sizes = [d["size"] for d in layers]
    return found


def image_pull(store: Path, *args: str, env: dict[str, str] | None = None,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return sbx("image", "--root", str(store), "pull", *args, env=env, input=stdin)


def records(store: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((store / "images").glob("*.json"))]


def assert_nothing_left(store: Path) -> None:
    for sub in ("tmp", "images", "layers/sha256"):
        path = store / sub
        assert not path.exists() or os.listdir(path) == [], (sub, os.listdir(path))


# -- the tests ----------------------------------------------------------------------------

def test_registry_urls_and_challenges() -> None:
    hub = pull.Client(ref.parse("busybox"))
    assert hub.base == "https://registry-1.docker.io/v2/library/busybox"
    assert pull.Client(ref.parse("localhost:5000/a/b:1")).base == "http://localhost:5000/v2/a/b"
    assert pull.Client(ref.parse("127.0.0.1:5000/a")).scheme == "http"
    assert pull.Client(ref.parse("registry.example:5000/a")).scheme == "https"
    assert pull.Client(ref.parse("registry.example:5000/a"), insecure=True).scheme == "http"
    assert pull.parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                                'scope="repository:library/busybox:pull,push"') == (
        "bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                   "scope": "repository:library/busybox:pull,push"})
    assert pull.parse_challenge('Basic realm="r"') == ("basic", {"realm": "r"})
    assert pull.credentials_from_env({"SBX_REGISTRY_AUTH": "u:p:q"}) == ("u", "p:q")
    with pytest.raises(ImageError):
        pull.credentials_from_env({"SBX_REGISTRY_AUTH": "nocolon"})


def test_pull_then_run(images: Images, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = image_pull(store, images.bb)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{images.bb} "), result.stdout
    assert "layer " in result.stderr and "\r" not in result.stderr  # one line per layer off a terminal
    assert os.listdir(store / "tmp") == []
    run = sbx("run", "--root", str(store), "--image", images.bb, "--", "sh", "-c",
              "echo from-pulled; test -x /bin/busybox && echo ok")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["from-pulled", "ok"]
    again = image_pull(store, "-q", images.bb)
    assert again.returncode == 0 and again.stderr == "", again.stderr


def test_pull_by_digest_and_quiet(images: Images, tmp_path: Path) -> None:
    store = tmp_path / "store"
    digest = images.multi_digests["amd64"]
    name = images.multi.rsplit(":", 1)[0] + "@" + digest
    result = image_pull(store, "-q", name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [record] = records(store)
    assert record["name"] == name and record["digest"] == digest


def test_multi_arch_index_picks_this_platform(images: Images, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert oci.host_platform().architecture == "amd64", "the test assumes an amd64 host"
    result = image_pull(store, images.multi)
    assert result.returncode == 0, result.stderr
    [record] = records(store)
    assert record["architecture"] == "amd64" and record["digest"] == images.multi_digests["amd64"]
    [layer_dir] = os.listdir(store / "layers/sha256")
    assert os.listdir(store / "layers/sha256" / layer_dir) == ["arch-amd64"]

    other = tmp_path / "other"
    for platform, arch in (("linux/arm64", "arm64"), ("linux/arm/v7", "arm")):
        result = image_pull(other, "--platform", platform, images.multi)
        assert result.returncode == 0, result.stderr
        record = json.loads(sbx("image", "--root", str(other), "inspect", images.multi, check=True).stdout)[0]
        assert record["architecture"] == arch
        assert record["digest"] == images.multi_digests[arch]

    missing = image_pull(tmp_path / "none", "--platform", "linux/s390x", images.multi)
    assert missing.returncode == 125
    assert missing.stderr.splitlines()[-1].startswith("sbx: error: ")
    assert "no image for linux/s390x" in missing.stderr and "linux/arm64/v8" in missing.stderr
    assert_nothing_left(tmp_path / "none")


def test_missing_tag_and_repository(images: Images, registry: Registry, tmp_path: Path) -> None:
    store = tmp_path / "store"
    for name in (f"{registry.host}/bb:nope", f"{registry.host}/nothere:1"):
        result = image_pull(store, name)
        assert result.returncode == 125
        errors = [line for line in result.stderr.splitlines() if line.startswith("sbx: error:")]
        assert len(errors) == 1 and "not found" in errors[0] and name in errors[0], result.stderr
        assert "Traceback" not in result.stderr
    assert_nothing_left(store)
    unreachable = image_pull(store, f"127.0.0.1:{free_port()}/x:1")
    assert unreachable.returncode == 125 and "cannot reach registry" in unreachable.stderr
    assert_nothing_left(store)


def test_parallel_layers(images: Images, tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = image_pull(store, images.big)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(" layer ") + result.stderr.count("sbx: layer ") >= 3
    assert len(os.listdir(store / "layers/sha256")) == 3


@pytest.mark.parametrize("what", ["layer", "manifest"])
def test_corrupt_blob_rejected(registry: Registry, tmp_path: Path, what: str) -> None:
    layout = Layout(str(tmp_path / "img"))
    desc = layout.image([layer({"f": os.urandom(4096)}), layer({"g": b"x" * 5000})], {}, compression=None)
    layout.index([desc], ref_name="1")
    name = registry.push(tmp_path / "img", "1", f"corrupt-{what}:1")
    digest, manifest = registry.manifest(f"corrupt-{what}", "1")
    layers = manifest["layers"]
    assert isinstance(layers, list)
    target = registry.blob_file(layers[1]["digest"] if what == "layer" else digest)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x20  # same size, one bit flipped
    target.write_bytes(bytes(data))
    store = tmp_path / "store"
    result = image_pull(store, name)
    assert result.returncode == 125, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sbx: error:")]
    assert len(errors) == 1 and ("digest mismatch" in errors[0] or "Docker-Content-Digest" in errors[0]), errors
    assert_nothing_left(store)


# -- resume -----------------------------------------------------------------------------

class CuttingProxy(http.server.ThreadingHTTPServer):
    """Forwards to the registry; the first GET of each blob stops halfway and drops the connection."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.cut: set[str] = set()
        self.ranges: list[str] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), CuttingHandler)


class CuttingHandler(http.server.BaseHTTPRequestHandler):
    server: CuttingProxy

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        conn = http.client.HTTPConnection(self.server.upstream, timeout=10)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "authorization")}
        conn.request("GET", self.path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        with self.server.lock:
            if self.headers.get("Range"):
                self.server.ranges.append(self.headers["Range"])
            cut = "/blobs/" in self.path and self.path not in self.server.cut and len(body) > 100_000
            if cut:
                self.server.cut.add(self.path)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in ("connection", "transfer-encoding", "date", "server"):
                self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        self.wfile.flush()
        if cut:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        conn.close()


def test_dropped_connections_resume(images: Images, registry: Registry, tmp_path: Path) -> None:
    proxy = CuttingProxy(registry.host)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        name = f"127.0.0.1:{proxy.server_address[1]}/big:1"
        store = tmp_path / "store"
        result = image_pull(store, name)
        assert result.returncode == 0, result.stderr
        assert len(proxy.cut) == 3
        assert sorted(proxy.ranges) == sorted(f"bytes={size // 2}-" for size in images.big_sizes)
        assert len(os.listdir(store / "layers/sha256")) == 3
    finally:
        proxy.shutdown()
        proxy.server_close()


def test_resume_from_partial_file(images: Images, tmp_path: Path) -> None:
    digest = images.big_layers[0]
    size = images.big_sizes[0]
    client = pull.Client(ref.parse(images.big))
    seen: list[dict[str, str]] = []
    real_get = client.get

    def get(path: str, headers: dict[str, str], what: str) -> http.client.HTTPResponse:
        seen.append(dict(headers))
        return real_get(path, headers, what)

    client.get = get  # type: ignore[method-assign]
    desc = oci.Descriptor("application/vnd.oci.image.layer.v1.tar", digest, size)
    full = tmp_path / "full"
    pull.download(client, desc, str(full), None, threading.Event())
    assert "sha256:" + hashlib.sha256(full.read_bytes()).hexdigest() == digest
    part = tmp_path / "part"
    part.write_bytes(full.read_bytes()[:12345])
    seen.clear()
    pull.download(client, desc, str(part), None, threading.Event())
    assert seen == [{"Range": "bytes=12345-"}]
    assert part.read_bytes() == full.read_bytes()
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 12345)  # a partial file that is not a prefix of the blob
    with pytest.raises(ImageError, match="digest mismatch"):
        pull.download(client, desc, str(bad), None, threading.Event())


# -- token auth ---------------------------------------------------------------------------

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, base: Path, credentials: tuple[str, str]) -> None:
        self.base = base
        self.credentials = credentials
        self.key = base / "key.pem"
        self.cert = base / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-subj", "/CN=sbx-token", "-days", "1"], check=True,
                       capture_output=True)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True).stdout
        self.x5c = base64.b64encode(der).decode()
        self.requests: list[str] = []
        self.anonymous = False  # hand out pull tokens without credentials, as Docker Hub does
        super().__init__(("127.0.0.1", 0), TokenHandler)

    def token(self, scope: str, service: str) -> str:
        kind, name, actions = (scope.split(":") + ["", "", ""])[:3]
        now = int(time.time())
        claims = {"iss": "sbx-test", "sub": self.credentials[0], "aud": service, "exp": now + 300,
                  "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                  "access": [{"type": kind, "name": name, "actions": actions.split(",")}]}
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                                   check=True, capture_output=True).stdout
        return f"{signing}.{b64url(signature)}"


class TokenHandler(http.server.BaseHTTPRequestHandler):
    server: TokenServer

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.server.requests.append(self.path)
        expected = "Basic " + base64.b64encode(":".join(self.server.credentials).encode()).decode()
        given = self.headers.get("Authorization")
        if given != expected and not (self.server.anonymous and given is None):
            body = b'{"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}'
            self.send_response(401)
        else:
            body = json.dumps({"token": self.server.token(query.get("scope", ""), query.get("service", ""))}).encode()
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_token_auth(images: Images, registry: Registry, tmp_path: Path) -> None:
    tokens = TokenServer(tmp_path, ("sbx", "s3cret"))
    thread = threading.Thread(target=tokens.serve_forever, daemon=True)
    thread.start()
    auth = {"token": {"realm": f"http://127.0.0.1:{tokens.server_address[1]}/token", "service": "sbx-registry",
                      "issuer": "sbx-test", "rootcertbundle": str(tokens.cert)}}
    host, proc = start_registry(tmp_path, registry.storage, auth)  # the same storage, behind auth
    try:
        name = f"{host}/bb:1"
        store = tmp_path / "store"
        anonymous = image_pull(store, name)
        assert anonymous.returncode == 125
        assert "token server" in anonymous.stderr and "401" in anonymous.stderr, anonymous.stderr
        assert "--username" in anonymous.stderr
        assert_nothing_left(store)
        wrong = image_pull(store, "--username", "sbx", "--password-stdin", name, stdin="wrong\n")
        assert wrong.returncode == 125 and "credentials were refused" in wrong.stderr, wrong.stderr
        assert_nothing_left(store)
        good = image_pull(store, "--username", "sbx", "--password-stdin", name, stdin="s3cret\n")
        assert good.returncode == 0, good.stderr
        assert any("scope=repository%3Abb%3Apull" in r for r in tokens.requests), tokens.requests
        other = tmp_path / "other"
        by_env = image_pull(other, "-q", name, env=dict(os.environ, SBX_REGISTRY_AUTH="sbx:s3cret"))
        assert by_env.returncode == 0, by_env.stderr
        assert [r["name"] for r in records(other)] == [name]
        tokens.anonymous = True
        anonymous = image_pull(tmp_path / "anonymous", "-q", name)
        assert anonymous.returncode == 0, anonymous.stderr
        assert [r["name"] for r in records(tmp_path / "anonymous")] == [name]
    finally:
        stop(proc)
        tokens.shutdown()
        tokens.server_close()


# -- progress on a terminal ---------------------------------------------------------------

def test_progress_bar_on_a_terminal(images: Images, tmp_path: Path) -> None:
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*__import__("conftest").SBX, "image", "--root", str(tmp_path / "store"), "pull",
                             images.big], stdout=subprocess.PIPE, stderr=slave, env=env)
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(60) == 0, output
    os.close(master)
    text = output.decode(errors="replace")
    assert "\r" in text and "3/3 layers" in text and "[########################]" in text, text


def test_store_api(images: Images, tmp_path: Path) -> None:
    """pull() itself, for `sbx image build` and friends: returns the record; a bad platform is refused."""
    store = Store(str(tmp_path / "store"))
    record = pull.pull(store, images.multi, platform=oci.parse_platform("linux/arm64"), progress="quiet")
    assert record["architecture"] == "arm64"
    assert os.listdir(store.tmp) == []
    with pytest.raises(ImageError):
        oci.parse_platform("linux")
    shutil.rmtree(tmp_path / "store", ignore_errors=True)
