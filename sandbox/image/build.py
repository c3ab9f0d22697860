"""`sbx image build`: a Containerfile (see containerfile.py) -> an image in the store.

Each RUN runs in a sandbox (the `build` profile unless --profile: no network
unless --network pasta) on the image so far, with a kept writable layer
(commit.Kept: on the sandbox's --disk tmpfs) that becomes the step's layer; its
output goes to the build's log (stderr), stdout being for the result line.  COPY
and ADD copy from the context directory straight into a new layer (copy.py).
ENV, ARG, LABEL, WORKDIR, USER, CMD and ENTRYPOINT change the config only.

The cache (ROOT/cache/build/KEY) maps a step to the layer it made.  KEY is a
digest of the parent's layers, the instruction after ARG/ENV expansion, the
environment, workdir and user a RUN sees, and for COPY/ADD the copied
content (names, modes, bytes, link targets): a hit runs and copies nothing.

Every error is one line and exit 125; the image record is written only at the
end, and scratch directories are removed whatever happens.  Layers of steps
that did succeed stay, with their cache entries, for the next attempt.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat

from ..errors import UsageError
from ..kernel import linux
from ..model.frozen import dataclass, replace
from . import commit, containerfile
from .containerfile import ContainerfileError, Instruction
from .errors import ImageError
from .extract import RESOLVE, Limits, size_text
from .store import Record, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..model.spec import Spec

STDERR = 2
MAX_ID = 65535  # the ids sbx maps (compose.MAX_ID)
MAX_CACHE_ENTRY = 4096  # bytes of a cache entry read (a small JSON object)
MAX_ID_FILE = 1 << 20  # bytes of an image's /etc/passwd or /etc/group read for USER


@dataclass(frozen=True)
class Options:
    file: str
    tag: str
    context: str
    build_args: tuple[tuple[str, str], ...] = ()
    no_cache: bool = False
    network: str = "none"
    profile: str = "build"
    disk: int | None = None
    limits: Limits = Limits()  # ADD of a compressed archive: its expansion caps
    profile_settings: tuple[tuple[str, object], ...] | None = None  # `profile`, resolved (else read per step)


def build(store: Store, options: Options, log: Callable[[str], None], environ: Mapping[str, str]) -> Record:
    """Build options.file into the store; `log` gets progress lines, `environ` is the caller's environment
    (for profiles and the RUN steps' sandboxes)."""
    from . import ref

    try:
        name = str(ref.parse(options.tag))
    except ImageError as exc:
        raise UsageError(f"-t: {exc}") from None
    if options.network not in ("none", "pasta", "nat"):
        raise UsageError(f"--network {options.network!r}: a build step gets none (default) or pasta")
    if not os.path.isdir(options.context):
        raise UsageError(f"build context {options.context}: not a directory")
    try:
        with open(options.file, "rb") as file:
            data = file.read(containerfile.MAX_SIZE + 1)
        text = data.decode("utf-8")
    except OSError as exc:
        raise UsageError(f"{options.file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ContainerfileError(f"{options.file}: not UTF-8 text") from None
    instructions = containerfile.parse(text, os.path.basename(options.file))
    hold = store.hold()
    try:
        builder = Builder(store, options, os.path.basename(options.file), log, environ)
        for number, instruction in enumerate(instructions, 1):
            log(f"step {number}/{len(instructions)}: {instruction.keyword} {instruction.args[:120]}")
            builder.step(instruction)
        builder.finish()
        record = commit.image_record(name, builder.layers, builder.config, builder.base, store)
        commit.write_record(store, record)
        return record
    finally:
        os.close(hold)


class Builder:
    """The image so far: its layers (base first) and its config, changed step by step."""

    def __init__(self, store: Store, options: Options, filename: str, log: Callable[[str], None],
                 environ: Mapping[str, str]) -> None:
        self.store = store
        self.environ = environ
        self.options = options
        self.filename = filename
        self.log = log
        self.layers: list[str] = []
        self.config: dict[str, object] = {}
        self.base: Record | None = None
        self.started = False
        self.cmd_set = False
        self.global_args: dict[str, str] = {}  # ARGs before FROM: for FROM only, unless declared again
        self.args: dict[str, str] = {}
        self.given = dict(options.build_args)
        self.used: set[str] = set()
        self.warned: set[str] = set()
        self.where = filename

    # -- state ------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {}
        for item in self.config.get("Env") or []:  # type: ignore[attr-defined]
            key, _, value = str(item).partition("=")
            env[key] = value
        return env

    def variables(self) -> dict[str, str]:
        return {**self.args, **self.env()}  # ENV wins over ARG, as in docker

    def workdir(self) -> str:
        value = self.config.get("WorkingDir")
        return value if isinstance(value, str) and value.startswith("/") else "/"

    def finish(self) -> None:
        if not self.started:
            raise ContainerfileError(f"{self.filename}: no FROM instruction")
        unused = sorted(set(self.given) - self.used)
        if unused:
            self.log(f"warning: build arguments not used by {self.filename}: {', '.join(unused)}")

    # -- steps ------------------------------------------------------------------

    def step(self, ins: Instruction) -> None:
        self.where = f"{self.filename}:{ins.line}"
        if ins.keyword == "ARG":
            self.arg(ins)
            return
        if ins.keyword == "FROM":
            self.from_(ins)
            return
        if not self.started:
            raise ContainerfileError(f"{self.where}: {ins.keyword} before FROM")
        handler: dict[str, Callable[[Instruction], None]] = {
            "RUN": self.run_step, "COPY": self.copy, "ADD": self.copy, "ENV": self.env_, "LABEL": self.label,
            "WORKDIR": self.workdir_, "USER": self.user, "CMD": self.cmd, "ENTRYPOINT": self.entrypoint,
        }
        handler[ins.keyword](ins)

    def arg(self, ins: Instruction) -> None:
        variables = self.variables() if self.started else dict(self.global_args)
        for item in containerfile.words(ins.args, variables, self.where):
            key, eq, default = item.partition("=")
            containerfile.check_name(key, self.where)
            if key in self.given:
                value = self.given[key]
                self.used.add(key)
            elif eq:
                value = default
            else:
                value = self.global_args.get(key, "")
            (self.args if self.started else self.global_args)[key] = value

    def from_(self, ins: Instruction) -> None:
        if self.started:
            raise ContainerfileError(f"{self.where}: a second FROM: multi-stage builds are not supported")
        parts = containerfile.words(ins.args, dict(self.global_args), self.where)
        if len(parts) not in (1, 3) or (len(parts) == 3 and parts[1].upper() != "AS"):
            raise ContainerfileError(f"{self.where}: expected FROM IMAGE [AS NAME]")
        image = parts[0]
        self.started = True
        if image == "scratch":
            return
        if image == "host":
            raise ContainerfileError(f"{self.where}: FROM host: the host image has no layers to build on; "
                                     "build FROM an imported image (see 'sbx image import', 'sbx image pull')")
        from . import find

        try:
            with self.store.lock(False):
                record = find(self.store, image)
        except ImageError as exc:
            raise ContainerfileError(f"{self.where}: FROM {image[:80]}: {exc}") from None
        layers, config = record.get("layers"), record.get("config")
        if not isinstance(layers, list) or not all(isinstance(x, str) and self.store.has_layer(x) for x in layers):
            raise ContainerfileError(f"{self.where}: FROM {image[:80]}: a layer is missing from the store")
        self.layers = list(layers)
        self.config = json.loads(json.dumps(config)) if isinstance(config, dict) else {}
        self.base = record

    def env_(self, ins: Instruction) -> None:
        env = self.env()
        for key, value in containerfile.pairs(ins.args, self.variables(), self.where, "ENV"):
            env[key] = value
        self.config["Env"] = [f"{key}={value}" for key, value in env.items()]

    def label(self, ins: Instruction) -> None:
        labels = self.config.get("Labels")
        labels = dict(labels) if isinstance(labels, dict) else {}
        labels.update(containerfile.pairs(ins.args, self.variables(), self.where, "LABEL"))
        self.config["Labels"] = labels

    def workdir_(self, ins: Instruction) -> None:
        self.config["WorkingDir"] = self.path(containerfile.expand(ins.args, self.variables(), self.where))

    def user(self, ins: Instruction) -> None:
        user = containerfile.expand(ins.args, self.variables(), self.where)
        if not user or not user.isprintable() or " " in user:
            raise ContainerfileError(f"{self.where}: bad USER {user[:40]!r}")
        self.config["User"] = user

    def cmd(self, ins: Instruction) -> None:
        self.config["Cmd"] = list(containerfile.shell_or_exec(ins))
        self.cmd_set = True

    def entrypoint(self, ins: Instruction) -> None:
        self.config["Entrypoint"] = list(containerfile.shell_or_exec(ins))
        if not self.cmd_set:
            self.config.pop("Cmd", None)  # docker: a new ENTRYPOINT drops the base image's CMD

    def path(self, text: str) -> str:
        """An absolute, normalized path inside the image; relative ones start at WORKDIR."""
        if "\0" in text or not text:
            raise ContainerfileError(f"{self.where}: bad path {text[:40]!r}")
        parts = [p for p in os.path.join(self.workdir(), text).split("/") if p not in ("", ".")]
        if ".." in parts:
            raise ContainerfileError(f"{self.where}: '..' is not allowed in {text[:80]!r}")
        return "/" + "/".join(parts)

    # -- the cache -----------------------------------------------------------------

    def key(self, text: str, extra: str = "") -> str:
        blob = json.dumps([self.layers, text, sorted(self.run_env().items()), self.workdir(),
                           self.config.get("User", ""), extra])
        return hashlib.sha256(blob.encode()).hexdigest()

    def cached(self, key: str) -> tuple[bool, str | None]:
        if self.options.no_cache:
            return False, None
        try:
            with open(os.path.join(self.store.cache, key), "rb") as file:
                entry = json.loads(file.read(MAX_CACHE_ENTRY))
        except (OSError, ValueError):
            return False, None
        layer = entry.get("layer") if isinstance(entry, dict) else None
        if layer is None and isinstance(entry, dict) and "layer" in entry:
            return True, None
        if isinstance(layer, str) and self.store.has_layer(layer):
            return True, layer
        return False, None

    def remember(self, key: str, layer: str | None) -> None:
        os.makedirs(self.store.cache, 0o700, exist_ok=True)
        path = os.path.join(self.store.cache, key)
        temp = f"{path}.{os.getpid()}.tmp"
        with open(temp, "w") as file:
            json.dump({"layer": layer}, file)
        os.rename(temp, path)

    def add_layer(self, layer: str | None) -> None:
        if layer is not None:
            self.layers.append(layer)

    # -- RUN -------------------------------------------------------------------------

    def run_env(self) -> dict[str, str]:
        return {**self.args, **self.env()}

    def run_step(self, ins: Instruction) -> None:
        argv = containerfile.shell_or_exec(ins)
        if not self.layers:
            raise ContainerfileError(f"{self.where}: RUN needs files to run on (FROM scratch has none yet)")
        key = self.key(json.dumps(["RUN", list(argv)]))
        hit, layer = self.cached(key)
        if hit:
            self.log("using the cache")
            self.add_layer(layer)
            return
        from ..runtime import supervisor

        kept = commit.Kept(self.store)
        try:
            spec = kept.spec(self.run_spec(argv))
            # The step's output is the build's log (stderr): sbx's stdout is for the result line.
            result = supervisor.run_sandbox(spec, self.environ, self.warn, stdout_fd=STDERR)
            if result.verdict != "OK":
                why = _why(result.verdict, result.exit_code, result.signal, result.message)
                if result.verdict != "XX" and kept.full():
                    why += f" ({commit.FULL.format(size_text(spec.disk))})"
                raise ImageError(f"{self.where}: RUN failed: {why}")
            try:
                saved = kept.save(spec.disk)
            except ImageError as exc:
                raise ImageError(f"{self.where}: RUN: {exc}") from None
            if not kept.bounded:
                self.warn(commit.UNBOUNDED)
        finally:
            kept.close()
        layer = None if saved is None else saved[0]
        self.remember(key, layer)
        self.add_layer(layer)

    def warn(self, line: str) -> None:
        if line not in self.warned:  # once a build, not once a step
            self.warned.add(line)
            self.log(f"warning: {line}")

    def run_spec(self, argv: tuple[str, ...]) -> Spec:
        from ..config import compose, profile

        cwd = os.getcwd()
        if self.options.profile_settings is not None:
            settings = dict(self.options.profile_settings)
        else:
            try:
                settings = dict(profile.resolve(self.options.profile, cwd=cwd, environ=self.environ).settings)
            except profile.ProfileError as exc:
                raise UsageError(str(exc)) from None
        settings.update({"sandbox.image": "host", "network.mode": self.options.network})
        if self.options.disk is not None:
            settings["sandbox.disk"] = self.options.disk
        spec = compose.build(settings, list(argv), cwd, self.environ)
        uid, gid = self.ids()
        dirs = tuple(self.store.layer_path(layer) for layer in reversed(self.layers))
        limits = spec.limits
        if limits.file_size is None:  # a backstop where the layer is on the host's disk (commit.UNBOUNDED)
            limits = replace(limits, file_size=spec.disk)
        return replace(spec, image=self.filename, layers=dirs, env=tuple({**dict(spec.env), **self.run_env()}.items()),
                       workdir=self.workdir(), uid=uid, gid=gid, stdin="/dev/null", limits=limits)

    def ids(self) -> tuple[int, int]:
        """USER as numbers: uid[:gid], or names from the image's /etc/passwd and /etc/group."""
        user = self.config.get("User")
        if not isinstance(user, str) or not user:
            return 0, 0
        name, _, group = user.partition(":")
        uid, gid = self.lookup("etc/passwd", name, 2)
        if group:
            gid = self.lookup("etc/group", group, 2)[0]
        if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
            raise ContainerfileError(f"{self.where}: USER {user[:40]}: ids go up to {MAX_ID} in sbx")
        return uid, gid

    def lookup(self, file: str, name: str, field: int) -> tuple[int, int]:
        if name.isdigit():
            return int(name), int(name) if file == "etc/passwd" else 0
        for layer in reversed(self.layers):  # the top layer that has the file decides
            text = _read_in_layer(self.store.layer_path(layer), file)
            if text is None:
                continue
            for line in text.splitlines():
                fields = line.split(":")
                if len(fields) > field + 1 and fields[0] == name and fields[field].isdigit():
                    gid = fields[field + 1] if file == "etc/passwd" and fields[field + 1].isdigit() else "0"
                    return int(fields[field]), int(gid)
            break
        raise ContainerfileError(f"{self.where}: USER: no {name[:40]!r} in the image's /{file}")

    # -- COPY and ADD (copy.py) ------------------------------------------------------------

    def copy(self, ins: Instruction) -> None:
        from . import copy

        argv = list(ins.exec_form) if ins.exec_form is not None else \
            containerfile.words(ins.args, self.variables(), self.where)
        if len(argv) < 2:
            raise ContainerfileError(f"{self.where}: {ins.keyword} needs a source and a destination")
        sources, dest_text = argv[:-1], argv[-1]
        dest = self.path(dest_text)
        into = dest_text.endswith("/") or len(sources) > 1
        context = os.open(self.options.context, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        tops: list[tuple[str, int]] = []
        try:
            for source in sources:
                tops.append((source, copy.open_source(context, source, ins.keyword, self.where)))
            key = self.key(json.dumps([ins.keyword, sources, dest, into]), copy.digest(tops, self.where))
            hit, layer = self.cached(key)
            if hit:
                self.log("using the cache")
                self.add_layer(layer)
                return
            saved = copy.copy_layer(self.store, tops, dest, into, ins.keyword, self.where, self.options.limits)
        finally:
            os.close(context)
            for _source, top in tops:
                os.close(top)
        layer = None if saved is None else saved[0]
        self.remember(key, layer)
        self.add_layer(layer)


def _why(verdict: str, exit_code: int | None, signal: int | None, message: str) -> str:
    if verdict == "RE":
        return f"exit status {exit_code}"
    if verdict == "SG":
        return f"killed by signal {signal}" + (f" ({message})" if message else "")
    return f"{verdict}" + (f": {message}" if message else "")


def _read_in_layer(layer: str, path: str) -> str | None:
    """A small regular file in one layer, None if the layer does not have it; never through a symlink."""
    try:
        top = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = linux.openat2(top, path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC, RESOLVE)
    except OSError:
        return None
    finally:
        os.close(top)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""  # a whiteout: deleted here
        return os.read(fd, MAX_ID_FILE).decode("utf-8", "replace")
    finally:
        os.close(fd)


def parse_build_args(values: list[str], environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """--build-arg NAME=VALUE, or NAME for the caller's value (skipped when unset)."""
    pairs = []
    for text in values:
        key, eq, value = text.partition("=")
        try:
            containerfile.check_name(key, "--build-arg")
        except ContainerfileError:
            raise UsageError(f"--build-arg {text[:60]!r}: expected NAME=VALUE") from None
        if eq:
            pairs.append((key, value))
        elif key in environ:
            pairs.append((key, environ[key]))
    return tuple(pairs)


def default_file(context: str) -> str:
    for name in ("Containerfile", "Dockerfile"):
        path = os.path.join(context, name)
        if os.path.exists(path):
            return path
    raise UsageError(f"no Containerfile or Dockerfile in {context} (use -f FILE)")

