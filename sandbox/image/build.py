"""`sbx image build`: a Containerfile (see containerfile.py) -> an image in the store.

Each RUN runs in a sandbox (the `build` profile unless --profile: no network
unless --network pasta) on the image so far, with a kept writable layer
(commit.Kept: on the sandbox's --disk tmpfs) that becomes the step's layer.  COPY and
ADD copy from the context directory straight into a new layer: sources are
resolved beneath the context (a symlink leading out of it is an error, `..`
is refused) and copied without following links; ADD extracts local tar
archives with the import's hardened extractor.  ENV, ARG, LABEL, WORKDIR,
USER, CMD and ENTRYPOINT change the config only.

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
import sys

from ..kernel import linux
from ..errors import UsageError
from ..model.frozen import dataclass, replace
from . import commit, containerfile
from .containerfile import ContainerfileError, Instruction
from .errors import ImageError
from .extract import RESOLVE, RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, Limits, remove_tree, remove_tree_at, size_text
from .store import Record, Store

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from ..model.spec import Spec

BENEATH = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS  # symlinks followed, but only while they stay beneath
MAX_DEPTH = 256
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst", ".tar.zstd")


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


def build(store: Store, options: Options, log: Callable[[str], None]) -> Record:
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
        builder = Builder(store, options, os.path.basename(options.file), log)
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

    def __init__(self, store: Store, options: Options, filename: str, log: Callable[[str], None]) -> None:
        self.store = store
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
            "RUN": self.run, "COPY": self.copy, "ADD": self.copy, "ENV": self.env_, "LABEL": self.label,
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
                entry = json.loads(file.read(4096))
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

    def run(self, ins: Instruction) -> None:
        argv = containerfile.shell_or_exec(ins)
        if not self.layers:
            raise ContainerfileError(f"{self.where}: RUN needs files to run on (FROM scratch has none yet)")
        key = self.key(json.dumps(["RUN", list(argv)]))
        hit, layer = self.cached(key)
        if hit:
            self.log("using the cache")
            self.add_layer(layer)
            return
        from ..runtime import supervise

        kept = commit.Kept(self.store)
        try:
            spec = kept.spec(self.run_spec(argv))
            sys.stdout.flush()
            saved_stdout = os.dup(1)
            os.dup2(2, 1)  # the step's output is the build's log: stdout stays for the result line
            try:
                result = supervise.run(spec, self.warn)
            finally:
                os.dup2(saved_stdout, 1)
                os.close(saved_stdout)
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
                settings = dict(profile.resolve(self.options.profile, cwd=cwd, environ=os.environ).settings)
            except profile.ProfileError as exc:
                raise UsageError(str(exc)) from None
        settings.update({"sandbox.image": "host", "network.mode": self.options.network})
        if self.options.disk is not None:
            settings["sandbox.disk"] = self.options.disk
        spec = compose.build(settings, list(argv), cwd, os.environ)
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
        if not (0 <= uid <= 65535 and 0 <= gid <= 65535):
            raise ContainerfileError(f"{self.where}: USER {user[:40]}: ids go up to 65535 in sbx")
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

    # -- COPY and ADD ------------------------------------------------------------------

    def copy(self, ins: Instruction) -> None:
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
                tops.append((source, self.open_source(context, source, ins.keyword)))
            digest = hashlib.sha256()
            for source, top in tops:
                digest.update(json.dumps(["source", source]).encode())
                for entry in _tree(top, self.where):
                    _hash_entry(digest, entry)
            key = self.key(json.dumps([ins.keyword, sources, dest, into]), digest.hexdigest())
            hit, layer = self.cached(key)
            if hit:
                self.log("using the cache")
                self.add_layer(layer)
                return
            work = self.store.new_temp("copy-")
            try:
                root = os.path.join(work, "upper")  # where save_layer takes it from
                os.mkdir(root, 0o755)
                os.chmod(root, 0o755)
                dirs: dict[tuple[str, ...], tuple[int, int]] = {}
                for source, top in tops:
                    self.copy_one(root, source, top, dest, into, ins.keyword == "ADD", dirs)
                _finish_dirs(root, dirs)
                saved = commit.save_layer(self.store, work)
            except OSError as exc:
                raise ImageError(f"{self.where}: {ins.keyword}: {exc.strerror or exc}") from None
            finally:
                remove_tree(work)
        finally:
            os.close(context)
            for _source, top in tops:
                os.close(top)
        layer = None if saved is None else saved[0]
        self.remember(key, layer)
        self.add_layer(layer)

    def open_source(self, context: int, source: str, keyword: str) -> int:
        """An O_PATH fd of a source, resolved beneath the context (in-context symlinks are followed)."""
        if "://" in source or source.startswith("git@"):
            raise ContainerfileError(f"{self.where}: {keyword} {source[:80]}: only local files can be copied")
        if any(c in source for c in "*?["):
            raise ContainerfileError(f"{self.where}: {keyword} {source[:80]}: wildcards are not supported")
        parts = [p for p in source.split("/") if p not in ("", ".")]
        if ".." in parts or "\0" in source:
            raise ContainerfileError(f"{self.where}: {keyword} {source[:80]}: '..' is not allowed")
        try:
            return linux.openat2(context, "/".join(parts) or ".", os.O_PATH | os.O_CLOEXEC, BENEATH)
        except FileNotFoundError:
            raise ContainerfileError(f"{self.where}: {keyword} {source[:80]}: not found in the build context") from None
        except OSError as exc:
            if exc.errno in (18, 40):  # EXDEV, ELOOP
                raise ContainerfileError(f"{self.where}: {keyword} {source[:80]}: a symlink leads outside "
                                         "the build context") from None
            raise ContainerfileError(f"{self.where}: {keyword} {source[:80]}: {exc.strerror}") from None

    def copy_one(self, root: str, source: str, top: int, dest: str, into: bool, add: bool,
                 dirs: dict[tuple[str, ...], tuple[int, int]]) -> None:
        """Copy one source into the layer at `root`; `dirs` collects the directory modes and times to set last."""
        st = os.fstat(top)
        dest_parts = tuple(p for p in dest.split("/") if p)
        if stat.S_ISDIR(st.st_mode):
            target = _make_dirs(root, dest_parts, self.where, dirs)
            try:
                for rel, entry_st, parent, name in _tree(top, self.where):
                    _copy_entry(target, rel, entry_st, parent, name, self.where)
                    if stat.S_ISDIR(entry_st.st_mode):
                        dirs[dest_parts + rel] = (stat.S_IMODE(entry_st.st_mode) & 0o1777, entry_st.st_mtime_ns)
            finally:
                os.close(target)
            return
        base = os.path.basename(source.rstrip("/")) or "file"
        if add and _is_archive(top, source):
            os.close(_make_dirs(root, dest_parts, self.where, dirs))
            _extract(top, os.path.join(root, *dest_parts), self.where, self.options.limits)
            return
        if into:
            parent_parts, name = dest_parts, base
        else:
            if not dest_parts:
                raise ContainerfileError(f"{self.where}: cannot copy a file onto /")
            parent_parts, name = dest_parts[:-1], dest_parts[-1]
        parent = _make_dirs(root, parent_parts, self.where, dirs)
        try:
            _copy_entry(parent, (name,), st, top, None, self.where)
        finally:
            os.close(parent)


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
        return os.read(fd, 1 << 20).decode("utf-8", "replace")
    finally:
        os.close(fd)


# -- walking a source in the context ----------------------------------------------------------

Entry = tuple[tuple[str, ...], os.stat_result, int, "str | None"]


def _tree(top: int, where: str) -> Iterator[Entry]:
    """(path below the source, lstat, parent dir fd, name) in sorted pre-order; the source itself if a file.

    Symlinks inside are entries, never followed; fds are valid during the yield only.
    """
    st = os.fstat(top)
    if not stat.S_ISDIR(st.st_mode):
        yield (), st, top, None
        return
    fd = os.open(f"/proc/self/fd/{top}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from _below(fd, (), where)
    finally:
        os.close(fd)


def _below(fd: int, rel: tuple[str, ...], where: str) -> Iterator[Entry]:
    if len(rel) > MAX_DEPTH:
        raise ContainerfileError(f"{where}: the source nests deeper than {MAX_DEPTH} directories")
    for name in sorted(os.listdir(fd), key=os.fsencode):
        st = os.lstat(name, dir_fd=fd)
        yield (*rel, name), st, fd, name
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                yield from _below(sub, (*rel, name), where)
            finally:
                os.close(sub)


def _open_file(parent: int, name: str | None) -> int:
    if name is None:  # the source itself: an O_PATH fd of a regular file
        return os.open(f"/proc/self/fd/{parent}", os.O_RDONLY | os.O_CLOEXEC)
    return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)


def _hash_entry(digest: hashlib._Hash, entry: Entry) -> None:
    rel, st, parent, name = entry
    kind = stat.S_IFMT(st.st_mode)
    digest.update(json.dumps(["/".join(rel), kind, stat.S_IMODE(st.st_mode) & 0o1777]).encode())
    if stat.S_ISLNK(st.st_mode) and name is not None:
        digest.update(os.fsencode(os.readlink(name, dir_fd=parent)))
    elif stat.S_ISREG(st.st_mode):
        fd = _open_file(parent, name)
        try:
            digest.update(str(st.st_size).encode() + b"\n")
            while chunk := os.read(fd, 1 << 20):
                digest.update(chunk)
        finally:
            os.close(fd)


def _make_dirs(root: str, parts: tuple[str, ...], where: str, dirs: dict[tuple[str, ...], tuple[int, int]]) -> int:
    """An fd of root/parts, created as needed in the new layer; never through a symlink.

    Created directories get 0755 and time 0, so equal copies give equal layers.
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
                dirs.setdefault(parts[: i + 1], (0o755, 0))
            except FileExistsError:
                pass
            try:
                sub = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                raise ContainerfileError(f"{where}: /{'/'.join(parts)}: a copied file or symlink is in the way") from None
            os.close(fd)
            fd = sub
        return fd
    except BaseException:
        os.close(fd)
        raise


def _copy_entry(target: int, rel: tuple[str, ...], st: os.stat_result, parent: int, name: str | None,
                where: str) -> None:
    """Copy one entry to target/rel (its parent directories exist): no setuid/setgid, mtime kept."""
    dir_fd = linux.openat2(target, "/".join(rel[:-1]) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, RESOLVE)
    base = rel[-1]
    mode = stat.S_IMODE(st.st_mode) & 0o1777
    try:
        try:
            existing = os.lstat(base, dir_fd=dir_fd)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (stat.S_ISDIR(existing.st_mode) and stat.S_ISDIR(st.st_mode)):
            remove_tree_at(dir_fd, base)  # a later source replaces an earlier one
        if stat.S_ISDIR(st.st_mode):
            if existing is None or not stat.S_ISDIR(existing.st_mode):
                os.mkdir(base, 0o700, dir_fd=dir_fd)
            os.chmod(base, mode | 0o700, dir_fd=dir_fd)  # writable until its entries are in: see _finish_dirs
        elif stat.S_ISLNK(st.st_mode):
            assert name is not None
            os.symlink(os.readlink(name, dir_fd=parent), base, dir_fd=dir_fd)
            os.utime(base, ns=(st.st_mtime_ns, st.st_mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        elif stat.S_ISREG(st.st_mode):
            source = _open_file(parent, name)
            try:
                out = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                              dir_fd=dir_fd)
                try:
                    while chunk := os.read(source, 1 << 20):
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(out, view):]
                    os.fchmod(out, mode)
                    os.utime(out, ns=(st.st_mtime_ns, st.st_mtime_ns))
                finally:
                    os.close(out)
            finally:
                os.close(source)
        else:
            raise ContainerfileError(f"{where}: {'/'.join(rel)[:80]}: only files, directories and symlinks "
                                     "can be copied")
    finally:
        os.close(dir_fd)


def _finish_dirs(root: str, dirs: dict[tuple[str, ...], tuple[int, int]]) -> None:
    """Directory modes and times, deepest first, once nothing more is added below them."""
    top = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for parts in sorted(dirs, key=len, reverse=True):
            mode, mtime_ns = dirs[parts]
            fd = linux.openat2(top, "/".join(parts), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, RESOLVE)
            try:
                os.fchmod(fd, mode)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
    finally:
        os.close(top)


def _is_archive(top: int, source: str) -> bool:
    from .blob import GZIP_MAGIC, ZSTD_MAGIC

    fd = os.open(f"/proc/self/fd/{top}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, 512, 0)
    finally:
        os.close(fd)
    if head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
        return True
    return source.endswith(ARCHIVE_SUFFIXES) or head[257:262] == b"ustar"


def _extract(top: int, dest: str, where: str, limits: Limits) -> None:
    """ADD of a local archive, under the expansion caps of an import (one layer's)."""
    from . import blob, extract, tar
    from .errors import TooLarge

    fd = os.open(f"/proc/self/fd/{top}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        cap = limits.cap(os.fstat(fd).st_size)
        stream = blob.LayerStream(lambda n: os.read(fd, n), 1 << 40, cap[0], "archive")
        try:
            extract.extract(tar.TarReader(stream.read), dest, replace(limits, max_bytes=cap[0]))
        except TooLarge:
            raise extract.expansion_error(f"{where}: ADD", cap) from None
        except ImageError as exc:
            raise ImageError(f"{where}: ADD: {exc}") from None
        finally:
            stream.close()
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

