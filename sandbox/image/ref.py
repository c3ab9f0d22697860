"""Image references, docker's grammar: [HOST[:PORT]/]PATH[:TAG][@DIGEST].

    busybox                  -> docker.io/library/busybox:latest
    user/app:1.2             -> docker.io/user/app:1.2
    localhost:5000/app@sha256:...  (a first component with '.', ':' or
                                    'localhost' is a registry host)

Hand-written checks rather than `re`: `resolve()` parses the name on the run
path, and `re` costs milliseconds to import there.
"""

from __future__ import annotations

from ..model.frozen import dataclass
from .errors import ImageError

DOCKER_HUB = "docker.io"
DOCKER_HUB_ALIASES = ("index.docker.io", "registry-1.docker.io")
MAX_NAME = 255
MAX_TAG = 128
LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")
HEX = frozenset("0123456789abcdef")
DIGEST_LENGTHS = {"sha256": 64, "sha512": 128}
SHORT_ID = 12  # hex digits of an image id that `sbx image ls` shows, as docker does


@dataclass(frozen=True)
class Reference:
    registry: str  # host[:port], docker.io for Docker Hub
    repository: str  # path, library/NAME for Docker Hub's official images
    tag: str | None = None
    digest: str | None = None  # "sha256:<hex>"

    @property
    def name(self) -> str:
        """registry/repository, without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += ":" + self.tag
        if self.digest is not None:
            text += "@" + self.digest
        return text

    @property
    def familiar(self) -> str:
        """The short form docker shows: busybox:latest for docker.io/library/busybox:latest."""
        return short_name(str(self))

    @property
    def api_host(self) -> str:
        """Where the registry's HTTP API lives."""
        return "registry-1.docker.io" if self.registry == DOCKER_HUB else self.registry


def parse(text: str, default_tag: str | None = "latest") -> Reference:
    """A validated, normalized reference; `default_tag` is added when neither tag nor digest is given."""
    if not text:
        raise ImageError("empty image reference")
    if len(text) > 1024 or not text.isascii() or not text.isprintable() or any(c.isspace() for c in text):
        raise ImageError(f"invalid image reference {text!r}")
    rest, at, digest = text.partition("@")
    if at:
        check_digest(digest, text)
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not tag or len(tag) > MAX_TAG or tag[0] in ".-" or not set(tag) <= TAG_CHARS:
            raise ImageError(f"invalid image reference {text!r}: bad tag {tag!r}")
    first, sep, path = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first != first.lower()):
        registry = check_host(first, text)
    else:
        registry, path = DOCKER_HUB, rest
    if registry in DOCKER_HUB_ALIASES:
        registry = DOCKER_HUB
    components = path.split("/")
    for component in components:
        check_component(component, text)
    if registry == DOCKER_HUB and len(components) == 1:
        path = "library/" + path
    if len(registry) + 1 + len(path) > MAX_NAME:
        raise ImageError(f"invalid image reference {text!r}: name longer than {MAX_NAME} characters")
    if tag is None and not at:
        tag = default_tag
    return Reference(registry, path, tag, digest if at else None)


def short_name(name: str) -> str:
    """A stored name as docker shows it: busybox:latest for docker.io/library/busybox:latest."""
    for prefix in (DOCKER_HUB + "/library/", DOCKER_HUB + "/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def short_id(image_id: str) -> str:
    """An image id as `sbx image ls` shows it: the first 12 hex digits of sha256:HEX."""
    return image_id.removeprefix("sha256:")[:SHORT_ID]


def check_digest(digest: str, text: str) -> str:
    algorithm, colon, value = digest.partition(":")
    length = DIGEST_LENGTHS.get(algorithm)
    if not colon or length is None:
        raise ImageError(f"invalid image reference {text!r}: digest must be sha256:<64 hex digits>")
    if len(value) != length or not set(value) <= HEX:
        raise ImageError(f"invalid image reference {text!r}: bad {algorithm} digest")
    return digest


def check_host(host: str, text: str) -> str:
    name, colon, port = host.partition(":")
    if name.startswith("["):  # [IPv6]:port
        end = host.find("]")
        if end < 0 or not set(host[1:end]) <= set("0123456789abcdefABCDEF:."):
            raise ImageError(f"invalid image reference {text!r}: bad registry {host!r}")
        name, colon, port = host[: end + 1], host[end + 1: end + 2], host[end + 2:]
        if colon not in ("", ":"):
            raise ImageError(f"invalid image reference {text!r}: bad registry {host!r}")
    else:
        labels = name.split(".")
        if not all(label and set(label) <= HOST_CHARS and label[0] != "-" and label[-1] != "-" for label in labels):
            raise ImageError(f"invalid image reference {text!r}: bad registry {host!r}")
    if colon and (not port.isdigit() or not port.isascii() or not 0 < int(port) < 65536):
        raise ImageError(f"invalid image reference {text!r}: bad registry port {port!r}")
    return host


def check_component(component: str, text: str) -> None:
    """[a-z0-9]+ joined by '.', '_', '__' or runs of '-'."""
    ok = bool(component) and component[0] in LOWER_ALNUM and component[-1] in LOWER_ALNUM
    run = ""
    for char in component:
        if char in LOWER_ALNUM:
            if run and not (run in (".", "_", "__") or set(run) == {"-"}):
                ok = False
            run = ""
        elif char in "._-":
            run += char
        else:
            ok = False
    if not ok:
        raise ImageError(f"invalid image reference {text!r}: bad name component {component!r} "
                         "(lower-case letters, digits and . _ - separators)")
