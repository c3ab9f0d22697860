"""`sbx image push`: against Debian's docker-registry on 127.0.0.1, then pulled back.

An image imported into one store (busybox plus a layer with a symlink, a hard
link, an empty directory, a whiteout and an opaque directory) is pushed with
small chunks (so the busybox layer goes up in chunks and the rest whole),
pulled by digest into another store, and run; pushed again (every blob is
found by HEAD), to another repository (blobs mounted across repositories),
and through a token-auth registry.  Last, a cluster worker runs a job naming
the image by digest: it pulls it on first use and keeps it.

Needs the Debian packages docker-registry, busybox-static and openssl (and
redis-server for the worker); as root they are installed when missing.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from conftest import busybox_image, layer, sbx
from sandbox.image.layout import Layout
from test_image_pull import Registry, TokenServer, image_pull, registry, start_registry, stop  # noqa: F401 (registry: a fixture)

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding `local/app:1`: busybox, then a layer of links, a whiteout and an opaque directory."""
    base = tmp_path_factory.mktemp("push-src")
    source = busybox_image(base / "bb")
    root = base / "store"
    done = sbx("image", "--root", str(root), "import", "--name", "local/bb:1", str(source))
    assert done.returncode == 0, done.stderr
    upper = Layout(str(base / "app"))
    bb_index = json.loads((source / "index.json").read_text())["manifests"][0]
    bb_manifest = json.loads((source / "blobs/sha256" / bb_index["digest"].split(":")[1]).read_bytes())
    bb_layer = (source / "blobs/sha256" / bb_manifest["layers"][0]["digest"].split(":")[1]).read_bytes()
    import gzip

    top = layer(("app", "d", ""), ("app/hello", "f", "hello from the pushed image\n"), ("app/link", "l", "hello"),
                ("app/empty", "d", ""), ("etc/.wh.motd", "f", ""), ("opaque", "d", ""),
                ("opaque/.wh..wh..opq", "f", ""), ("opaque/new", "f", "new\n"))
    base_layer = gzip.decompress(bb_layer) if bb_layer[:2] == b"\x1f\x8b" else bb_layer
    upper.index([upper.image([base_layer, top], {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]})], ref_name="1")
    done = sbx("image", "--root", str(root), "import", "--name", "local/app:1", str(base / "app"))
    assert done.returncode == 0, done.stderr
    return root


def push(store: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> tuple[str, str]:
    done = sbx("image", "--root", str(store), "push", *args, env=env, input=stdin, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_push_then_pull_round_trip(registry: Registry, store: Path, tmp_path: Path) -> None:
    target = f"{registry.host}/pushed/app:1"
    pushed, log = push(store, "--chunk-size", "64K", "local/app:1", target)
    assert pushed.startswith(f"{registry.host}/pushed/app@sha256:"), pushed
    assert " in " in log and " chunks" in log, log  # the busybox layer, in 64K chunks
    assert log.count("sbx: blob ") == 3, log  # two layers and the config
    digest = pushed.rsplit("@", 1)[1]
    served, manifest = registry.manifest("pushed/app", "1")
    assert served == digest
    layers = manifest["layers"]
    assert isinstance(layers, list) and len(layers) == 2

    other = tmp_path / "other"
    pulled = image_pull(other, "-q", pushed)
    assert pulled.returncode == 0, pulled.stderr
    run = sbx("run", "--root", str(other), "--image", pushed, "--", "sh", "-c",
              "cat /app/link; ls -A /app/empty | wc -l; test -e /etc/motd || echo no-motd; ls /opaque; "
              "test -x /bin/busybox && echo busybox")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n") == ["hello from the pushed image", "0", "no-motd", "new", "busybox", ""]

    again, log = push(store, "local/app:1", target)
    assert again == pushed  # the same tars, the same gzip: the same digests
    assert log.count("already in the registry") == 3, log

    mounted, log = push(store, "--from", "pushed/app", "local/app:1", f"{registry.host}/copy/app:2")
    assert mounted.rsplit("@", 1)[1] == digest
    assert log.count("mounted from pushed/app") == 3, log


def test_push_errors(registry: Registry, store: Path) -> None:
    for args, message in ((["nope:1", f"{registry.host}/x:1"], "not found"),
                          (["local/app:1", f"{registry.host}/x@sha256:{'0' * 64}"], "push to a tag"),
                          (["local/app:1"], "wrong number of arguments"),
                          (["--chunk-size", "lots", "local/app:1", f"{registry.host}/x:1"], "--chunk-size"),
                          (["local/app:1", f"127.0.0.1:{registry.host.rsplit(':', 1)[1]}0/x:1"], "")):
        done = sbx("image", "--root", str(store), "push", *args, timeout=60)
        assert done.returncode == 125, done
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sbx: error: ") and message in lines[0], done.stderr


def test_push_with_token_auth(registry: Registry, store: Path, tmp_path: Path) -> None:
    tokens = TokenServer(tmp_path, ("sbx", "s3cret"))
    thread = threading.Thread(target=tokens.serve_forever, daemon=True)
    thread.start()
    auth = {"token": {"realm": f"http://127.0.0.1:{tokens.server_address[1]}/token", "service": "sbx-registry",
                      "issuer": "sbx-test", "rootcertbundle": str(tokens.cert)}}
    host, proc = start_registry(tmp_path, registry.storage, auth)
    try:
        target = f"{host}/private/app:1"
        refused = sbx("image", "--root", str(store), "push", "local/app:1", target, timeout=60)
        assert refused.returncode == 125 and "401" in refused.stderr and "--username" in refused.stderr
        pushed, _log = push(store, "--username", "sbx", "--password-stdin", "local/app:1", target, stdin="s3cret\n")
        # The scope the registry's challenge named, which lists the actions in either order.
        asked = {"scope=repository%3Aprivate%2Fapp%3Apull%2Cpush", "scope=repository%3Aprivate%2Fapp%3Apush%2Cpull"}
        assert any(scope in r for r in tokens.requests for scope in asked), tokens.requests
        pulled = image_pull(tmp_path / "other", "-q", pushed, env=dict(os.environ, SBX_REGISTRY_AUTH="sbx:s3cret"))
        assert pulled.returncode == 0, pulled.stderr
    finally:
        stop(proc)
        tokens.shutdown()
        tokens.server_close()


def test_worker_pulls_by_digest_on_first_use(registry: Registry, store: Path, tmp_path: Path) -> None:
    from sandbox.cluster import Client
    from test_cluster import Redis, Worker

    pushed, _log = push(store, "local/app:1", f"{registry.host}/cluster/app:1")
    redis = Redis(tmp_path)
    worker = None
    try:
        worker = Worker(redis.url, tmp_path, "puller")
        with Client(redis.url) as cluster:
            for _ in range(2):
                result = cluster.run(["cat", "/app/hello"], image=pushed)
                assert result.verdict == "OK" and result.stdout == b"hello from the pushed image\n", result
            with pytest.raises(Exception, match="not found"):
                cluster.run(["true"], image=f"{registry.host}/cluster/app@sha256:{'0' * 64}")
        records = list((tmp_path / "root" / "images").glob("*.json"))
        assert [json.loads(r.read_text())["name"] for r in records] == [pushed]  # pulled once, kept
    finally:
        if worker is not None:
            worker.stop()
        redis.stop()
