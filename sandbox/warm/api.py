"""The Python API: run sandboxes from a long-lived process, warm.

    from sandbox import Runner

    with Runner(profile="grader") as runner:
        box = runner.create_box()
        build = runner.run(["g++", "-O2", "-o", "sol", "sol.cpp"], box=box, limits={"time": 10})
        for case in cases:
            result = runner.run(["./sol"], box=box, box_mode="overlay", stdin=case.input,
                                limits={"time": 1, "memory": "256M"})
            print(result.verdict, result.cpu_time, result.memory_peak, result.stdout)

A Runner keeps what is safe to reuse between runs: the interpreter, parsed
profiles, compiled seccomp filters, resolved images (their store lock held),
the delegated cgroup, and sandboxes prepared ahead for the shapes it has
run (see pool.py).  Every run still gets its own user, pid, mount, ipc, uts,
cgroup and net namespaces, a fresh writable layer and /tmp, and a fresh run
cgroup.  Profiles are read once per Runner: make a new Runner to see changes
to them.  An image's record is checked at each run (one stat): an image
imported again under its name is used from the next run on.  A prepared
sandbox serves a run only while every host path it bound (volumes, the box,
image layers) still names the object it bound (pool.py).

Thread safety: `Runner.run` may be called from several threads at once.
Signals are the caller's business: the API installs no handlers.

Errors are typed: UsageError (bad options), ProfileError (a profile that
cannot be used; a UsageError), SetupError (the sandbox could not be built:
no run cgroup, ...), BoxError and BoxBusy, ImageError; all are SbxError.
A sandbox that dies while being built is an XX Result, as in the CLI.
"""

from __future__ import annotations

import os
import threading

from .box import MODES as BOX_MODES
from .box import Box, BoxError
from ..errors import SbxError, SetupError, UsageError
from ..model.result import Result
from ..model.spec import Spec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ..cgroup.discover import Delegation
    from ..image import ImageInfo
    from .pool import Pool
    from ..seccomp import SeccompSpec
    from ..runtime.spawn import Prepared
    from ..runtime.supervisor import Streams

    Stdin = bytes | str | int | None
    Output = str | int | None

_UNSET = object()
SPEC_CACHE = 256  # Specs remembered per Runner


class Runner:
    """Runs sandboxes, warm.  Use as a context manager, or call close()."""

    def __init__(self, profile: str | None = None, *, options: Sequence[str] = (), cwd: str | None = None,
                 environ: Mapping[str, str] | None = None, root: str | None = None, warm: bool = True,
                 depth: int = 2, warn: Callable[[str], None] | None = None) -> None:
        """`profile`: a name or TOML path (default: "default"); `options`: `sbx run` flags that
        apply to every run (["--network", "pasta", "-v", "data:/data"], ...); `root`: the image
        and box store (default: where `environ` says); `environ`: the only environment sbx reads
        for this Runner's runs (SBX_ROOT, SBX_USERNET, PATH, ...; default: a copy of os.environ
        now); `warm`: prepare sandboxes ahead (`depth` per shape: two, so a run that follows
        another at once still finds one ready); `warn`: gets the warnings `sbx run` prints
        (default: ignored, the Result's limits_enforced says the same).
        """
        self.profile = profile
        self.options = tuple(options)
        self.cwd = os.getcwd() if cwd is None else cwd
        self.environ = dict(os.environ if environ is None else environ)
        self.root = root
        self.warn: Callable[[str], None] = warn if warn is not None else (lambda line: None)
        self.lock = threading.Lock()
        self.settings: dict[tuple[str | None, bool], dict[str, object]] = {}
        self.specs: dict[tuple[object, ...], tuple[Spec, tuple[tuple[str, str | None], ...]]] = {}  # and its images
        self.programs: dict[SeccompSpec, bytes | None] = {}
        self.images: dict[tuple[str, str | None], ImageInfo] = {}
        # Each image's record file, held open (O_PATH) as it was read: (path, fd, (st_dev, st_ino)).
        self.records: dict[tuple[str, str | None], tuple[str, int, tuple[int, int]]] = {}
        self.retired: dict[tuple[str, str | None], int] = {}  # an image's lock until its new record is read
        self.delegations: dict[str | None, Delegation | None] = {}
        self.pool: Pool | None = None
        self.closed = False
        if warm:
            from .pool import Pool

            self.pool = Pool(depth, self._inputs)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """End prepared sandboxes and release image locks; runs in progress finish first."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
        if self.pool is not None:
            self.pool.close()
        for fd in (*(info.lock_fd for info in self.images.values()), *(r[1] for r in self.records.values()),
                   *self.retired.values()):
            if fd >= 0:
                os.close(fd)
        self.images.clear()
        self.records.clear()
        self.retired.clear()

    # -- building a run ----------------------------------------------------------------------

    def spec(self, argv: Sequence[str], *, profile: str | None | object = _UNSET, options: Sequence[str] = (),
             limits: Mapping[str, object] | None = None, env: Mapping[str, str] | None = None,
             volumes: Sequence[str] = (), workdir: str | None = None, image: str | None = None,
             network: str | None = None, box: Box | None = None, box_mode: str = "rw") -> Spec:
        """The Spec a run with these arguments would use (raises UsageError/ProfileError).

        Specs are remembered by their arguments (a judge repeats the same few), so files
        named by volumes are checked when a Spec is first built, and mounted at each run;
        one whose image was imported again since is built again.
        """
        try:
            key: tuple[object, ...] | None = (
                tuple(argv), profile, tuple(options), None if limits is None else tuple(limits.items()),
                None if env is None else tuple(env.items()), tuple(volumes), workdir, image, network, box, box_mode)
            hash(key)
        except TypeError:
            key = None  # unhashable arguments: build it every time
        if key is not None:
            with self.lock:
                cached = self.specs.get(key)
            if cached is not None and self._images_current(cached[1]):
                return cached[0]
        used: list[tuple[str, str | None]] = []

        def images(name: str, root: str | None) -> ImageInfo:
            used.append((name, root))
            self._images_current(((name, root),))  # forgets it if imported again since
            return self._image(name, root)

        spec = self._build_spec(argv, profile, options, limits, env, volumes, workdir, image, network, box, box_mode,
                                images)
        if key is not None:
            with self.lock:
                if len(self.specs) >= SPEC_CACHE:
                    del self.specs[next(iter(self.specs))]
                self.specs[key] = (spec, tuple(used))
        return spec

    def _build_spec(self, argv: Sequence[str], profile: str | None | object, options: Sequence[str],
                    limits: Mapping[str, object] | None, env: Mapping[str, str] | None, volumes: Sequence[str],
                    workdir: str | None, image: str | None, network: str | None, box: Box | None,
                    box_mode: str, images: Callable[[str, str | None], ImageInfo]) -> Spec:
        from ..config import compose, flags

        profile_name = self.profile if profile is _UNSET else profile
        raw, rest = flags.parse_run_args([*self.options, *options])
        if rest:
            raise UsageError(f"options: unexpected argument {rest[0]!r} (the command goes in argv)")
        name = raw.pop("profile", profile_name)
        project = raw.pop("project_profiles", False) is True  # options=["--project-profiles"]
        settings = compose.merge(self._profile(name if isinstance(name, str) else None, project),
                                 flags.flag_settings(raw, self.cwd, self.environ))
        extra: dict[str, object] = {}
        if limits:
            extra.update(flags.limit_settings(limits))
        if env:
            for key, value in env.items():
                if not key or "=" in key or "\0" in key or "\0" in str(value):
                    raise UsageError(f"env: {key!r} is not a valid variable")
            extra["sandbox.env"] = tuple((k, str(v)) for k, v in env.items())
        mounts = [compose.parse_volume(v, self.cwd) for v in volumes]
        if mounts:
            extra["mounts"] = tuple(mounts)
        if workdir is not None:
            extra["sandbox.workdir"] = workdir
        if image is not None:
            extra["sandbox.image"] = image
        if network is not None:
            extra["network.mode"] = network
        if self.root is not None and "run.image_root" not in settings:
            extra["run.image_root"] = self.root
        settings = compose.merge(settings, extra)
        if box is not None:
            settings = box.settings(settings, box_mode, workdir="sandbox.workdir" in raw or workdir is not None)
        return compose.build(settings, list(argv), self.cwd, self.environ, images=images)

    def run(self, argv: Sequence[str], *, stdin: Stdin = None, stdout: Output = None, stderr: Output = None,
            capture_limit: int = 16 << 20, box: Box | str | None = None, box_mode: str = "rw",
            box_wait: bool = True, cpu: int | None = None, **spec_args: object) -> Result:
        """Run argv in a fresh sandbox and wait for it.

        stdin: bytes (fed to the run), a path, an fd (duplicated), or None for /dev/null.
        stdout/stderr: a path (created or truncated, never through a symlink), an fd
        (duplicated), or None to capture into Result.stdout/stderr (up to capture_limit each).
        The run never gets a file of yours itself: sbx feeds and drains pipes (see stdio.py).
        box: a Box or box name: its work directory at /box (box_mode rw, ro, or overlay for a
        writable view whose changes are discarded), the default workdir; the box's lock is
        held for the run (box_wait=False: BoxBusy instead of waiting).  cpu: pin the run to it.
        Other keywords as for spec(): profile, options, limits, env, volumes, workdir, image,
        network.
        """
        if isinstance(box, str):
            box = Box.open(box, self.root, self.environ)
        if box_mode not in BOX_MODES:
            raise BoxError(f"box mode {box_mode!r}: choose one of {', '.join(BOX_MODES)}")
        if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int) or cpu < 0
                                or cpu not in os.sched_getaffinity(0)):
            raise UsageError(f"cpu: {cpu!r} is not a CPU this process may use")
        spec = self.spec(argv, box=box, box_mode=box_mode, **spec_args)  # type: ignore[arg-type]
        streams = _streams(stdin, stdout, stderr, capture_limit)
        box_fd = -1
        try:
            if box is not None:
                box_fd = box.lock(box_wait)
            return self.execute(spec, streams, cpu=cpu)
        finally:
            streams.close()
            if box_fd >= 0:
                os.close(box_fd)

    def execute(self, spec: Spec, streams: Streams, cpu: int | None = None) -> Result:
        """Run a Spec (as built by spec()) with these streams; they are closed once sent.  A box's
        lock is the caller's to hold (run() does)."""
        from ..runtime import supervisor

        if self.closed:
            raise SbxError("this Runner is closed")
        try:
            program = self._program(spec)
            delegation = self._delegation(spec.cgroup)
            prepared = self._take(spec)
            if prepared is None:
                prepared = self._prepare(supervisor.shape_of(spec))
            try:
                return supervisor.execute(spec, streams, program, delegation, self.warn, prepared=prepared,
                                         cpu=cpu, wait=False)
            finally:
                if self.pool is not None:
                    self.pool.done(prepared)
                else:
                    prepared.reap(block=True)
        except SbxError:
            raise
        except OSError as exc:
            raise SetupError(f"cannot run the sandbox: {exc.strerror or exc}") from None

    def run_interactive(self, solution: Sequence[str], interactor: Sequence[str], *,
                        solution_args: Mapping[str, object] | None = None,
                        interactor_args: Mapping[str, object] | None = None) -> tuple[Result, Result]:
        """Two sandboxes, the solution's stdout feeding the interactor's stdin and back.

        Each has its own limits and figures; `*_args` are run()'s keywords (not stdin/stdout).
        Returns (solution's result, interactor's result).
        """
        from .interact import run_pair

        return run_pair(self, solution, interactor, dict(solution_args or {}), dict(interactor_args or {}))

    # -- boxes ------------------------------------------------------------------------------

    def create_box(self, name: str | None = None) -> Box:
        return Box.create(name, self.root, self.environ)

    def open_box(self, name: str) -> Box:
        return Box.open(name, self.root, self.environ)

    def remove_box(self, box: Box | str, wait: bool = False) -> None:
        if isinstance(box, str):
            box = Box.open(box, self.root, self.environ)
        box.remove(wait)

    # -- what a Runner keeps -----------------------------------------------------------------

    def _profile(self, name: str | None, project: bool) -> dict[str, object]:
        from ..config.flags import profile_settings

        key = (name, project)
        with self.lock:
            cached = self.settings.get(key)
        if cached is None:
            cached = profile_settings(name, self.cwd, self.environ, project, self.warn)
            with self.lock:
                self.settings[key] = cached
        return cached

    def _image(self, name: str, root: str | None) -> ImageInfo:
        key = (name, root)
        with self.lock:
            info = self.images.get(key)
        if info is None:
            info, record = _resolve_image(name, root, self.environ)
            with self.lock:
                if key in self.images:  # another thread won
                    spare = (info.lock_fd, record[1])
                    info = self.images[key]
                else:
                    self.images[key] = info
                    self.records[key] = record
                    spare = (self.retired.pop(key, -1), -1)  # the new lock holds the layers now
            for fd in spare:
                if fd >= 0:
                    os.close(fd)
        return info

    def _images_current(self, used: tuple[tuple[str, str | None], ...]) -> bool:
        """Whether each image a Spec was built on still has the record it was read from (one stat
        each); one imported again since is forgotten, so the Spec is built again."""
        for key in used:
            with self.lock:
                record = self.records.get(key)
            if record is not None and record[1] >= 0:
                try:
                    st = os.stat(record[0])
                    if (st.st_dev, st.st_ino) == record[2]:
                        continue
                except OSError:
                    pass
            with self.lock:  # another thread may have got here first: close only what we took out
                info = self.images.pop(key, None)
                taken = self.records.pop(key, None)
                spare = -1
                if info is not None:
                    spare = self.retired.pop(key, -1)
                    self.retired[key] = info.lock_fd  # until the new record's lock is held
            for fd in (spare, -1 if taken is None else taken[1]):
                if fd >= 0:
                    os.close(fd)
            return False
        return True

    def _program(self, spec: Spec) -> bytes | None:
        with self.lock:
            if spec.seccomp in self.programs:
                return self.programs[spec.seccomp]
        from ..runtime.supervisor import seccomp_program

        program = seccomp_program(spec, self.environ)  # its cache is where self.environ says
        with self.lock:
            self.programs[spec.seccomp] = program
        return program

    def _delegation(self, explicit: str | None) -> Delegation | None:
        with self.lock:
            if explicit in self.delegations:
                return self.delegations[explicit]
        from ..cgroup.runcg import remove_stale
        from ..runtime.supervisor import delegation_for

        delegation = delegation_for(explicit, self.environ)  # SBX_CGROUP as self.environ says
        if delegation is not None:
            remove_stale(delegation)
        with self.lock:
            self.delegations[explicit] = delegation
        return delegation

    def _take(self, spec: Spec) -> Prepared | None:
        """A sandbox the pool prepared, if its binds (volumes, the box, image layers) are still
        of the objects their paths name now (pool.Pool.take)."""
        if self.pool is None or spec.tty:
            return None
        from ..runtime.supervisor import shape_of

        return self.pool.take(shape_of(spec))

    def _prepare(self, shape: Spec) -> Prepared:
        """A sandbox of this shape, started now (by the zygote when warm)."""
        if self.pool is not None:
            return self.pool.spawn(shape)
        from ..runtime.spawn import Prepared

        return Prepared.start(shape, *self._inputs(shape))

    def _inputs(self, shape: Spec) -> tuple[bytes | None, str | None]:
        from ..runtime.supervisor import egress_rules

        return self._program(shape), egress_rules(shape)


def run(argv: Sequence[str], **kwargs: object) -> Result:
    """One run, cold: Runner(warm=False).run(argv, ...); `profile`, `options`, `root` and `cwd`
    are the Runner's, the rest run()'s."""
    runner_args: dict[str, object] = {k: kwargs.pop(k) for k in ("profile", "options", "root", "cwd", "environ")
                                      if k in kwargs}
    with Runner(warm=False, **runner_args) as runner:  # type: ignore[arg-type]
        return runner.run(argv, **kwargs)  # type: ignore[arg-type]


def _resolve_image(name: str, root: str | None,
                   environ: Mapping[str, str]) -> tuple[ImageInfo, tuple[str, int, tuple[int, int]]]:
    """The image, and its record file held open (O_PATH) with its (st_dev, st_ino).

    The record is read again once held, so the file held is the one read: records are
    replaced by renaming a new file over them, and a held file's inode number is never
    given to another, so a later stat of the path that finds it means nothing was imported
    since.  fd -1 when no stable record could be held (a run then reads it again).
    """
    from ..model.frozen import replace
    from ..image import resolve
    from ..image.store import Store

    info = resolve(name, root, environ=environ)
    fd = -1
    try:
        for _ in range(3):
            store = Store(root, create=False, environ=environ)
            for path in (store.record_path(info.name, ".run"), store.record_path(info.name)):
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                    break
                except FileNotFoundError:
                    fd = -1
            if fd < 0:
                return info, ("", -1, (0, 0))
            again = resolve(name, root, hold=False, environ=environ)
            held = os.fstat(fd)
            try:
                st = os.stat(path)
                same = (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)
            except OSError:
                same = False
            if same and (again.name, again.id, again.layer_dirs) == (info.name, info.id, info.layer_dirs):
                return info, (path, fd, (held.st_dev, held.st_ino))
            os.close(fd)
            fd = -1
            info = replace(again, lock_fd=info.lock_fd)
    except BaseException:
        for spare in (fd, info.lock_fd):
            if spare >= 0:
                os.close(spare)
        raise
    return info, ("", -1, (0, 0))


_STREAMS = ("stdin", "stdout", "stderr")


def _streams(stdin: object, stdout: object, stderr: object, capture_limit: int) -> Streams:
    from ..runtime import stdio
    from .interact import Owned
    from ..runtime.supervisor import Streams

    opened: list[int] = []
    try:
        fds: list[int | None] = []
        for index, value in enumerate((stdin, stdout, stderr)):
            if value is None:
                if index == 0:
                    opened.append(stdio.empty_input())
                    fds.append(opened[-1])
                else:
                    fds.append(None)
            elif isinstance(value, bytes) and index == 0:
                opened.append(stdio.sealed_bytes(value))  # the payload may read, seek, map it, not change it
                fds.append(opened[-1])
            elif isinstance(value, Owned):
                value.taken = True
                opened.append(value)
                fds.append(value)
            elif isinstance(value, int) and not isinstance(value, bool):
                try:
                    opened.append(os.dup(value))
                except OSError as exc:
                    raise UsageError(f"{_STREAMS[index]}: {value} is not an open file descriptor "
                                     f"({exc.strerror})") from None
                fds.append(opened[-1])
            elif isinstance(value, (str, os.PathLike)):
                from ..kernel.hostfile import open_input, open_output

                # UsageError for a bad path; outputs: no symlink in any component, regular files only.
                opener = open_input if index == 0 else open_output
                opened.append(opener(value, _STREAMS[index]))
                fds.append(opened[-1])
            else:
                raise UsageError(f"{_STREAMS[index]}: {value!r} is not bytes, a path or a file descriptor")
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    stdin_fd = fds[0]
    assert stdin_fd is not None
    return Streams(stdin_fd, fds[1], fds[2], capture_limit)


__all__ = ["Runner", "run", "Result", "Box", "BoxError", "SbxError", "SetupError", "UsageError", "Spec"]
