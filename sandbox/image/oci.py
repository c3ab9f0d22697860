"""`sbx image import`: docker-archive (`docker save`) and OCI image layouts.

A source is a directory, a tar file (plain, gzip or zstd) or `-` (stdin,
spooled into the store's tmp/ first, since the manifest may come last): see
source.py.  The outer archive is only indexed, never extracted.

Everything is verified: config and manifest digests, layer blob digests and
sizes where the format records them, and always each layer's diff_id (the
digest of the uncompressed tar) from the config.  Layers are extracted into
one temporary directory of the import and moved into the store together, with
the image records, under the store's lock; any failure removes that
directory, so a bad archive leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import posixpath
import time
from collections.abc import Callable, Iterator

from ..model.frozen import dataclass, replace
from . import blob, extract, ref
from .errors import ImageError, TooLarge
from .source import MAX_BLOB as MAX_BLOB
from .source import MAX_JSON as MAX_JSON
from .source import Source, open_source
from .source import verify as verify
from .store import Record, Store, check_digest
from .tar import TarReader

MAX_INDEX_DEPTH = 4

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
LAYER_PREFIXES = ("application/vnd.oci.image.layer.", "application/vnd.docker.image.rootfs.")
REF_NAME = "org.opencontainers.image.ref.name"
CONTAINERD_NAME = "io.containerd.image.name"
CONFIG_KEYS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "StopSignal")
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
          "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


# -- platforms -------------------------------------------------------------------

@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def host_platform() -> Platform:
    machine = os.uname().machine
    variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
    return Platform("linux", ARCHES.get(machine, machine), variant)


def parse_platform(text: str) -> Platform:
    parts = text.split("/")
    if not 2 <= len(parts) <= 3 or not all(p and p.isascii() and p.replace("_", "").isalnum() for p in parts):
        raise ImageError(f"--platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64")
    return Platform(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


def matches(wanted: Platform, found: object) -> bool:
    if not isinstance(found, dict):
        return False
    if found.get("os") != wanted.os or found.get("architecture") != wanted.architecture:
        return False
    return wanted.variant is None or found.get("variant") in (wanted.variant, None)


# -- JSON helpers -------------------------------------------------------------------

def load_json(data: bytes, what: str) -> dict[str, object]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise ImageError(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def str_list(value: object, what: str) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ImageError(f"{what} must be a list of strings")
    return list(value)


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: tuple[tuple[str, str], ...] | None = None

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


def descriptor(value: object, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ImageError(f"{what}: a descriptor must be a JSON object")
    media, digest, size = value.get("mediaType", ""), value.get("digest"), value.get("size")
    if not isinstance(media, str) or not isinstance(digest, str) or not isinstance(size, int) or size < 0:
        raise ImageError(f"{what}: a descriptor needs mediaType, digest and size")
    check_digest(digest)
    annotations = value.get("annotations") or {}
    platform = value.get("platform")
    if not isinstance(annotations, dict) or (platform is not None and not isinstance(platform, dict)):
        raise ImageError(f"{what}: bad annotations or platform")
    return Descriptor(media, digest, size,
                      tuple((str(k), str(v)) for k, v in annotations.items()),
                      None if platform is None else tuple((str(k), str(v)) for k, v in platform.items()))


# -- images in a source ------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    path: str  # in the source
    digest: str | None  # of the blob as stored (compressed), when the format records it
    size: int | None
    diff_id: str


@dataclass(frozen=True)
class Candidate:
    names: tuple[str, ...]
    config_digest: str
    config: bytes
    layers: tuple[Layer, ...]
    manifest_digest: str | None = None
    tag_only: str | None = None  # an OCI ref.name that is a bare tag


def diff_ids(config: dict[str, object], count: int) -> list[str]:
    rootfs = config.get("rootfs")
    ids = str_list(rootfs.get("diff_ids") if isinstance(rootfs, dict) else None, "config rootfs.diff_ids")
    if ids is None or len(ids) != count:
        raise ImageError(f"image config lists {0 if ids is None else len(ids)} layer diff_ids for {count} layers")
    for digest in ids:
        check_digest(digest)
    return ids


def docker_candidates(source: Source) -> list[Candidate]:
    try:
        manifest = json.loads(source.read_all("manifest.json"))
    except ValueError:
        raise ImageError("manifest.json is not valid JSON") from None
    if not isinstance(manifest, list):
        raise ImageError("manifest.json: expected a list")
    found = []
    for i, item in enumerate(manifest):
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str):
            raise ImageError(f"manifest.json entry {i}: no Config")
        config_path = str(item["Config"])
        config = source.read_all(config_path)
        stem = posixpath.basename(config_path).removesuffix(".json")
        config_digest = "sha256:" + stem
        try:
            check_digest(config_digest)
        except ImageError:
            import hashlib

            config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        verify(config, config_digest, f"config {config_path}")
        paths = str_list(item.get("Layers"), f"manifest.json entry {i} Layers") or []
        ids = diff_ids(load_json(config, "image config"), len(paths))
        layers = []
        for path, diff_id in zip(paths, ids):
            digest = None
            if path.startswith("blobs/sha256/"):
                digest = "sha256:" + posixpath.basename(path)
            layers.append(Layer(path, digest, None, diff_id))
        names = tuple(str_list(item.get("RepoTags"), "RepoTags") or ())
        found.append(Candidate(names, config_digest, config, tuple(layers)))
    return found


def oci_candidates(source: Source, platform: Platform | None) -> list[Candidate]:
    layout = load_json(source.read_all("oci-layout"), "oci-layout")
    if not isinstance(layout.get("imageLayoutVersion"), str):
        raise ImageError("oci-layout: no imageLayoutVersion")
    index = load_json(source.read_all("index.json"), "index.json")
    manifests = index.get("manifests")
    if not isinstance(manifests, list):
        raise ImageError("index.json: no manifests")
    found = []
    for i, value in enumerate(manifests):
        top = descriptor(value, f"index.json manifest {i}")
        for desc in expand(source, top, platform, 0):
            found.append(oci_candidate(source, desc, top))
    return found


def expand(source: Source, desc: Descriptor, platform: Platform | None, depth: int) -> Iterator[Descriptor]:
    """Image manifests under a descriptor: indexes are followed, for the wanted platform."""
    if desc.media_type in INDEX_TYPES:
        if depth >= MAX_INDEX_DEPTH:
            raise ImageError("image indexes nested too deep")
        index = load_json(source.blob(desc.digest, size=desc.size), f"index {desc.digest}")
        manifests = index.get("manifests")
        if not isinstance(manifests, list):
            raise ImageError(f"index {desc.digest}: no manifests")
        wanted = platform or host_platform()
        children = [descriptor(m, f"index {desc.digest}") for m in manifests]
        chosen = [c for c in children if c.media_type in INDEX_TYPES
                  or (c.platform is not None and matches(wanted, dict(c.platform)))]
        if not chosen:
            available = sorted({str(Platform(dict(c.platform).get("os", "?"), dict(c.platform).get("architecture", "?"),
                                             dict(c.platform).get("variant")))
                                for c in children if c.platform is not None})
            raise ImageError(f"no image for {wanted} in the index (available: {', '.join(available) or 'none'}); "
                             "see --platform")
        for child in chosen[:1] if all(c.media_type not in INDEX_TYPES for c in chosen) else chosen:
            yield from expand(source, child, platform, depth + 1)
    elif desc.media_type in MANIFEST_TYPES or not desc.media_type:
        if platform is not None and desc.platform is not None and not matches(platform, dict(desc.platform)):
            return
        yield desc
    else:
        raise ImageError(f"unsupported manifest media type {desc.media_type!r}")


def oci_candidate(source: Source, desc: Descriptor, top: Descriptor) -> Candidate:
    manifest = load_json(source.blob(desc.digest, size=desc.size), f"manifest {desc.digest}")
    config_desc = descriptor(manifest.get("config"), f"manifest {desc.digest} config")
    config = source.blob(config_desc.digest, size=config_desc.size)
    layer_values = manifest.get("layers")
    if not isinstance(layer_values, list):
        raise ImageError(f"manifest {desc.digest}: no layers")
    descs = [descriptor(v, f"manifest {desc.digest} layer") for v in layer_values]
    for layer in descs:
        if not layer.media_type.startswith(LAYER_PREFIXES):
            raise ImageError(f"unsupported layer media type {layer.media_type!r}")
    ids = diff_ids(load_json(config, "image config"), len(descs))
    layers = tuple(Layer("blobs/sha256/" + check_digest(d.digest), d.digest, d.size, i) for d, i in zip(descs, ids))
    names: tuple[str, ...] = ()
    tag_only = None
    full = top.annotation(CONTAINERD_NAME)
    short = top.annotation(REF_NAME)
    if full:
        names = (full,)
    elif short:
        if "/" in short or ":" in short:
            names = (short,)
        else:
            tag_only = short
    return Candidate(names, config_desc.digest, config, layers, desc.digest, tag_only)


# -- the import --------------------------------------------------------------------

def _owners() -> int:
    """Ids whose owners extraction keeps: those of a ranged user namespace we are root in, else none."""
    from ..kernel import idmap

    return idmap.inside_count() if os.geteuid() == 0 else 0


def extract_layer(read: Callable[[int], bytes], dest: str, layer: Layer, limits: extract.Limits,
                  owners: int = 0, stored: int | None = None, spent: int = 0) -> extract.Stats:
    """Extract one layer blob into `dest` in one pass, checking its digests as it goes by.

    Expansion is capped (Limits.cap: `stored` is the blob's size in the source, `spent` what the
    import's earlier layers expanded to) on the decompressor's output and on the data written, while
    extracting: past the cap, decompression stops and the import fails; Stats.expanded is the plain
    tar's size, for the next layer's `spent`.

    Nothing extracted is trusted before the digests are checked at the end: `dest` is in the import's
    temporary directory, which a failure removes.  (Checking the blob in a pass of its own first adds a
    full read and buys nothing: the extractor takes hostile archives, and digests come from the same
    untrusted archive.)  When extraction fails on a blob that does not match its digest, the mismatch is
    the error reported: it says what is wrong, where a tar error would say only how it showed.
    """
    what = f"layer {layer.diff_id}"
    sizes = [size for size in (layer.size, stored) if size is not None]
    cap = limits.cap(min(sizes) if sizes else MAX_BLOB, spent)
    stream = blob.LayerStream(read, layer.size if layer.size is not None else MAX_BLOB, cap[0], what)
    try:
        # A plain blob is bounded by its size; the extractor bounds the data it writes by the cap.
        stats = extract.extract(TarReader(stream.read), dest, replace(limits, max_bytes=cap[0]), owners)
        stream.drain()
    except ImageError as exc:
        if layer.digest is not None and not stream.raw_intact(layer.digest, layer.size):
            raise ImageError(f"layer {layer.digest}: digest mismatch (corrupt or tampered)") from None
        if isinstance(exc, TooLarge):
            raise extract.expansion_error(what, cap) from None
        raise
    finally:
        stream.close()
    if layer.size is not None and stream.raw.count != layer.size:
        raise ImageError(f"layer {layer.digest}: {stream.raw.count} bytes, expected {layer.size}")
    if layer.digest is not None and stream.raw.digest != layer.digest:
        raise ImageError(f"layer {layer.digest}: digest mismatch (corrupt or tampered)")
    if stream.plain.digest != layer.diff_id:
        raise ImageError(f"layer {layer.diff_id}: content digest mismatch (corrupt or tampered)")
    return replace(stats, expanded=stream.plain.count)


def image_config(config: bytes) -> dict[str, object]:
    data = load_json(config, "image config")
    inner = data.get("config") or {}
    if not isinstance(inner, dict):
        raise ImageError("image config: 'config' is not an object")
    kept: dict[str, object] = {}
    for key in CONFIG_KEYS:
        if inner.get(key) is not None:
            kept[key] = inner[key]
    for key in ("Env", "Cmd", "Entrypoint"):
        str_list(kept.get(key), f"image config {key}")
    for key in ("WorkingDir", "User"):
        if not isinstance(kept.get(key, ""), str):
            raise ImageError(f"image config {key} must be a string")
    return kept


def record_for(name: str, candidate: Candidate, sizes: dict[str, int]) -> Record:
    data = load_json(candidate.config, "image config")
    return {
        "schema": 1,
        "name": name,
        "id": candidate.config_digest,
        "digest": candidate.manifest_digest,
        "layers": [layer.diff_id for layer in candidate.layers],
        "config": image_config(candidate.config),
        "os": str(data.get("os", "")),
        "architecture": str(data.get("architecture", "")),
        "variant": str(data.get("variant", "")) or None,
        "created": str(data.get("created", "")) or None,
        "size": sum(sizes.get(layer.diff_id, 0) for layer in candidate.layers),
        "imported": int(time.time()),
        # "ownership" is Store.write_image's to set: it knows the namespace the record is written in.
    }


def normalize(name: str) -> str:
    return str(ref.parse(name))


def import_images(store: Store, path: str, name: str | None = None, platform: Platform | None = None,
                  limits: extract.Limits = extract.Limits(), log: Callable[[str], None] | None = None) -> list[Record]:
    """Import every image of the archive at `path` (or stdin for '-'); returns the new records."""
    hold = store.hold()
    work = store.new_temp("import-")
    try:
        return _import(store, path, work, name, platform, limits, log or (lambda _text: None))
    finally:
        extract.remove_tree(work)
        os.close(hold)


def _import(store: Store, path: str, work: str, name: str | None, platform: Platform | None,
            limits: extract.Limits, log: Callable[[str], None]) -> list[Record]:
    source = open_source(path, work, limits)
    try:
        if source.exists("manifest.json"):
            candidates = docker_candidates(source)
        elif source.exists("index.json"):
            candidates = oci_candidates(source, platform)
        else:
            raise ImageError(f"{path}: neither a docker archive (manifest.json) nor an OCI layout (index.json)")
        if not candidates:
            raise ImageError(f"{path}: no image in the archive")
        named: list[tuple[tuple[str, ...], Candidate]] = []
        if name is not None:
            if len(candidates) > 1:
                raise ImageError(f"{path} holds {len(candidates)} images: import it without --name")
            named.append(((normalize(name),), candidates[0]))
        else:
            for candidate in candidates:
                if not candidate.names:
                    hint = f" (its tag is {candidate.tag_only!r})" if candidate.tag_only else ""
                    raise ImageError(f"{path}: an image has no name{hint}: give one with --name NAME")
                named.append((tuple(normalize(n) for n in candidate.names), candidate))
        sizes: dict[str, int] = {}
        extracted: dict[str, str] = {}
        owners = _owners()
        spent = 0  # bytes the layers extracted so far expanded to: bounded by limits.max_image
        for _names, candidate in named:
            for layer in candidate.layers:
                if layer.diff_id in sizes or store.has_layer(layer.diff_id):
                    continue
                dest = os.path.join(work, check_digest(layer.diff_id))
                os.mkdir(dest, 0o700)
                log(f"extracting {layer.diff_id[:19]}")
                read, stored, close = source.open(layer.path)
                try:
                    stats = extract_layer(read, dest, layer, limits, owners, stored, spent)
                finally:
                    close()
                spent += stats.expanded
                sizes[layer.diff_id] = stats.size  # what tree_bytes() says of layers already in the store
                if stats.other_owners:
                    which = f"owners above {owners}, which have no id outside," if owners else "other owners than root:"
                    log(f"note: {stats.other_owners} entries of layer {layer.diff_id[7:19]} have {which} all now "
                        "belong to the caller (root inside the sandbox)"
                        + ("" if owners else "; with subordinate ids (/etc/subuid) and newuidmap, sbx keeps owners"))
                extracted[layer.diff_id] = dest
        records = []
        with store.lock(True):
            for diff_id, dest in extracted.items():
                store.commit_layer(dest, diff_id)
            for names, candidate in named:
                for layer in candidate.layers:
                    if layer.diff_id not in sizes:
                        sizes[layer.diff_id] = extract.tree_bytes(store.layer_path(layer.diff_id))
                for full in names:
                    record = record_for(full, candidate, sizes)
                    if not all(store.has_layer(layer.diff_id) for layer in candidate.layers):
                        raise ImageError("a layer vanished from the store during the import")
                    store.write_image(record)
                    records.append(record)
        return records
    finally:
        source.close()
