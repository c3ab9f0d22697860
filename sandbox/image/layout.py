"""Writing OCI image layouts: the shipped recipes and the tests (`sbx image build` writes to the store).

    blobs = Layout(path)
    desc = blobs.image([layer_tar_bytes, ...], {"Cmd": ["/bin/sh"]}, compression="gzip")
    blobs.index([desc], ref_name="latest")
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {None: "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}

Descriptor = dict[str, object]


def compress(data: bytes, how: str | None) -> bytes:
    if how is None:
        return data
    if how == "gzip":
        return gzip.compress(data, mtime=0)
    if how == "zstd":
        try:
            import zstandard  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout
        return bytes(zstandard.ZstdCompressor().compress(data))
    raise ValueError(f"unknown compression {how!r}")


class Layout:
    def __init__(self, path: str) -> None:
        self.path = path
        os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        with open(os.path.join(path, "oci-layout"), "w") as file:
            file.write('{"imageLayoutVersion": "1.0.0"}')

    def blob(self, data: bytes, media_type: str, **extra: object) -> Descriptor:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(self.path, "blobs", "sha256", digest), "wb") as file:
            file.write(data)
        return {"mediaType": media_type, "digest": "sha256:" + digest, "size": len(data), **extra}

    def image(self, layers: list[bytes], config: dict[str, object] | None = None, compression: str | None = "gzip",
              architecture: str = "amd64", os_name: str = "linux", variant: str | None = None) -> Descriptor:
        """Write the layer, config and manifest blobs of one image; returns the manifest's descriptor."""
        layer_descs = [self.blob(compress(layer, compression), LAYER_TYPES[compression]) for layer in layers]
        platform: dict[str, object] = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant
        image_config = {
            **platform,
            "created": "2024-01-01T00:00:00Z",
            "config": config or {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()
                                                      for layer in layers]},
        }
        config_desc = self.blob(json.dumps(image_config).encode(), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_desc, "layers": layer_descs}
        return self.blob(json.dumps(manifest).encode(), OCI_MANIFEST, platform=platform)

    def image_index(self, manifests: list[Descriptor]) -> Descriptor:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return self.blob(json.dumps(index).encode(), OCI_INDEX)

    def index(self, manifests: list[Descriptor], ref_name: str | None = None) -> None:
        """Write index.json; `ref_name` (a tag or a full name) annotates every entry."""
        entries = []
        for desc in manifests:
            entry = dict(desc)
            if ref_name is not None:
                entry["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
            entries.append(entry)
        with open(os.path.join(self.path, "index.json"), "w") as file:
            json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, file)
