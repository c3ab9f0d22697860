"""Sandboxes built ahead of their runs, so a warm run only sends its command.

A run's sandbox depends on its shape (image, mounts, network, ids, sizes:
supervisor.shape_of), not on its command, limits or files.  After a run of a
shape, the pool's thread builds the next sandbox of that shape (namespaces,
root, a payload waiting for its command) while the caller does something
else: at once if none of that shape is left ready, else once no run of it has
started or ended for REFILL_AFTER, so a run that follows another at once does
not share the CPU with that build.  Each sandbox still serves exactly one run:
nothing is reused between runs but the interpreter and what the Runner caches.

Sandboxes are forked by a zygote (zygote.py), never by the caller's process.
The pool's thread starts the zygote and lives as long as the pool, so the
zygote and its sandboxes die with it (PR_SET_PDEATHSIG follows the thread
that started a process).  Used sandboxes are waited for here, so the
kernel's namespace teardown happens off the caller's path.

A prepared sandbox holds binds of host objects (volume sources, image layers,
a box's directory, a kept upper): the objects their paths named while it was
built.  A judge that replaces such a directory between two runs (renames it
away and makes it again, or rm -rf and mkdir) must not have the next run see
the old one.  So:
  - while a sandbox is built, the objects its paths lead to are held open
    (_Pins); once it is ready, every path, each ancestor and symlink on the
    way included (identity_of), must name what it named before it was
    started, or it is discarded (the caller changed a path meanwhile);
  - take() hands it out only if each path still leads to the object it
    bound (objects_of: one stat a path), else discards it and the run is
    built afresh.  The sandbox's mounts pin the objects it bound, so equal
    (st_dev, st_ino) is the same object, whatever happened on the way to it.
"""

from __future__ import annotations

import os
import threading
import time

from ..errors import SbxError, SetupError
from ..runtime.spawn import Prepared

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from ..model.spec import Spec
    from .zygote import Zygote

# A shape not asked for in this many runs of others loses its prepared sandboxes.
STALE_AFTER = 64
# A shape that still has a sandbox ready is topped up only once none of its runs has started or
# ended for this long (seconds): a run that follows another at once then has the CPUs to itself,
# not shared with the building of the next sandbox; the first lull builds it.  One with none
# ready is refilled at once.
REFILL_AFTER = 0.005

Entry = tuple[int, int, int]  # st_dev, st_ino, file type (stat.S_IFMT)
Identity = tuple[Entry | None, ...]  # None: that path does not exist
_ABSENT = (FileNotFoundError, NotADirectoryError)


def bound_paths(shape: Spec) -> tuple[str, ...]:
    """The host paths a sandbox of this shape binds: volume sources (a box's work directory
    among them), image layers and a kept writable layer."""
    paths = [m.source for m in shape.mounts if m.source is not None and m.mode != "tmpfs"]
    paths += shape.layers
    if shape.upper is not None:
        paths.append(shape.upper)
    return tuple(paths)


def _entry(st: os.stat_result) -> Entry:
    return st.st_dev, st.st_ino, st.st_mode & 0o170000


def identity_of(paths: tuple[str, ...]) -> Identity | None:
    """What these paths name now, as the sandbox resolves them (following symlinks, runtime/rootfs).

    Each ancestor directory, lstat (a renamed or re-created ancestor, a symlink among them
    repointed), once however many paths share it; then each path itself, lstat (a symlink as
    the link), and where it is a link what it leads to: the object a bind gets.  Equal
    identities name the same objects: a sandbox pins the objects it bound (the mounts hold
    them), so their inode numbers cannot be given to new files while it lives.  None when a
    path cannot be looked at (no search permission, a symlink loop): unknown, never a match.
    """
    out: list[Entry | None] = []
    seen: set[str] = set()
    try:
        for path in paths:
            if not path.startswith("/"):
                return None  # resolved against the sandbox's cwd, not ours: cannot tell
            end = 0
            while True:
                end = path.find("/", end + 1)
                if end < 0:
                    break
                ancestor = path[:end]
                if ancestor not in seen:
                    seen.add(ancestor)
                    try:
                        out.append(_entry(os.lstat(ancestor)))
                    except _ABSENT:
                        out.append(None)
        for path in paths:
            try:
                st = os.lstat(path)
            except _ABSENT:
                out += (None, None)
                continue
            out.append(_entry(st))
            if st.st_mode & 0o170000 == 0o120000:  # a symlink: where it leads now
                try:
                    st = os.stat(path)
                except _ABSENT:
                    out.append(None)
                    continue
            out.append(_entry(st))
    except OSError:
        return None
    return tuple(out)


def _objects(identity: Identity, count: int) -> Identity:
    """The last `count` paths' objects (what each leads to) out of identity_of()."""
    return identity[len(identity) - 2 * count + 1::2] if count else ()


def objects_of(paths: tuple[str, ...]) -> Identity | None:
    """What each path leads to now (one stat each): _objects(identity_of(paths)), cheaper.

    Enough to hand out a sandbox that was built with identity_of(): the objects it bound are
    pinned by its mounts, so a path that leads to the same (st_dev, st_ino) leads to that very
    object, however its ancestors were renamed or its symlinks repointed meanwhile.
    """
    out: list[Entry | None] = []
    for path in paths:
        if not path.startswith("/"):
            return None
        try:
            out.append(_entry(os.stat(path)))
        except _ABSENT:
            out.append(None)
        except OSError:
            return None
    return tuple(out)


class _Pins:
    """The objects a shape's paths name, held open (O_PATH) while a sandbox of it is built.

    Held, none of them can be freed and its inode number reused: if the paths name the same
    numbers once the sandbox is ready, they named these very objects before it was started and
    after it had bound them, so it bound them (short of the caller swapping a path away and back
    meanwhile).
    """

    def __init__(self, paths: tuple[str, ...]) -> None:
        """Raises OSError when a path cannot be checked (then the shape is not prepared ahead)."""
        self.paths = paths
        self.fds: list[int] = []
        try:
            for path in paths:
                try:
                    self.fds.append(os.open(path, os.O_PATH | os.O_CLOEXEC))
                except _ABSENT:
                    self.fds.append(-1)
            before = identity_of(paths)
            if before is None:
                raise OSError(f"cannot check the paths {paths}")
        except BaseException:
            self.close()
            raise
        self.before = before

    def verify(self) -> Identity | None:
        """The paths' identity now if it is what it was when pinned, else None."""
        now = identity_of(self.paths)
        if now != self.before or now is None:
            return None
        pinned = tuple(None if fd < 0 else _entry(os.fstat(fd)) for fd in self.fds)
        return now if _objects(now, len(self.paths)) == pinned else None

    def close(self) -> None:
        for fd in self.fds:
            if fd >= 0:
                os.close(fd)
        self.fds = []


class Pool:
    """Up to `depth` prepared sandboxes per recently used shape."""

    def __init__(self, depth: int, inputs: Callable[[Spec], tuple[bytes | None, str | None]]) -> None:
        """`inputs(shape)`: its seccomp program and egress rules."""
        self.depth = depth
        self.inputs = inputs
        self.zygote: Zygote | None = None
        self.zygote_error = ""
        self.started = threading.Event()
        self.spawn_lock = threading.Lock()
        self.cond = threading.Condition()
        self.ready: dict[Spec, list[Prepared]] = {}
        self.wanted: dict[Spec, int] = {}  # shape -> when it was last asked for
        self.active: dict[Spec, float] = {}  # shape -> when a run of it last started or ended (monotonic)
        self.clock = 0
        self.zombies: list[Prepared] = []
        self.failed: set[Spec] = set()  # shapes not prepared ahead (it failed, or their paths cannot be checked)
        self.closed = False
        self.preparing: dict[Spec, int] = {}  # shape -> sandboxes of it being built now
        self.stale = 0  # sandboxes discarded because a path they bound names another object now
        self.thread = threading.Thread(target=self._loop, name="sbx-pool", daemon=True)
        self.thread.start()

    def take(self, shape: Spec) -> Prepared | None:
        """A prepared sandbox of this shape whose bound paths still name what it bound, or None
        (then the caller starts one itself).

        One being prepared right now is waited for: it is further along than a cold start.
        The pool refills after the run (done()), not now: a fork of this process and a root
        being built would compete with the run for the CPU and the GIL (and while one is left
        ready, only after a lull of REFILL_AFTER: _wanting).
        """
        with self.cond:
            self.clock += 1
            known = shape in self.wanted
            self.wanted[shape] = self.clock
            self.active[shape] = time.monotonic()
            if not known:
                self.cond.notify()  # a new shape: start preparing it for the next run
        paths = bound_paths(shape)
        now: Identity | None = None
        checked = False
        while True:
            candidate = self._next(shape)
            if candidate is None:
                return None
            if not checked:
                now, checked = objects_of(paths), True  # what the caller's paths lead to now
            if now is not None and candidate.identity is not None and \
                    _objects(candidate.identity, len(paths)) == now:
                return candidate
            with self.cond:  # a path was replaced since it was built: never a stale bind
                self.stale += 1
                self.zombies.append(candidate)
                self.cond.notify()

    def _next(self, shape: Spec) -> Prepared | None:
        with self.cond:
            while True:
                stock = self.ready.get(shape, [])
                while stock:
                    candidate = stock.pop(0)
                    if candidate.usable():
                        return candidate
                    self.zombies.append(candidate)  # died while waiting: discarded by the thread
                if not self.preparing.get(shape) or self.closed:
                    return None
                self.cond.wait()

    def done(self, prepared: Prepared | None) -> None:
        """After a run: refill, and reap its sandbox (its entry process may still be exiting)."""
        with self.cond:
            if prepared is not None and prepared.shape in self.wanted:
                self.active[prepared.shape] = time.monotonic()
            if prepared is not None and not prepared.reaped:
                if self.closed:
                    prepared.forget()  # the zygote reaps it; nobody waits for it now
                else:
                    self.zombies.append(prepared)
            self.cond.notify()

    def spawn(self, shape: Spec) -> Prepared:
        """A new sandbox of this shape, forked by the zygote (from any thread)."""
        self.started.wait()
        program, nft = self.inputs(shape)
        with self.spawn_lock:
            if self.zygote is None:
                raise SetupError(self.zygote_error or "the sandbox fork server is closed")
            child, pidfd, fds = self.zygote.spawn(shape, program, nft)
        return Prepared.adopt(shape, child, pidfd, fds)  # type: ignore[arg-type]

    def close(self) -> None:
        """End the prepared sandboxes and the zygote; sandboxes running now finish first."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()

    def _settle(self, shape: Spec, prepared: Prepared | None, pins: _Pins | None) -> None:
        """Wait until a new sandbox is ready, then stock it if its paths still name what they
        named when it was started (a judge may be replacing a directory right now)."""
        changed = False
        try:
            if prepared is not None:
                try:
                    prepared.ready()
                except (SbxError, OSError):
                    prepared.discard()
                    prepared = None
            if pins is not None:
                identity = pins.verify()
                changed = identity is None
                if prepared is not None:
                    if changed:
                        prepared.discard()
                        prepared = None
                    else:
                        prepared.identity = identity
        finally:
            if pins is not None:
                pins.close()
        with self.cond:
            self.preparing[shape] -= 1
            if prepared is None:
                if changed:
                    self.stale += 1  # built while a path changed: try again, it is not the shape's fault
                else:
                    self.failed.add(shape)  # cold runs say why
            elif self.closed:
                self.zombies.append(prepared)
            else:
                self.ready.setdefault(shape, []).append(prepared)
            self.cond.notify_all()

    def _shut_down(self) -> None:
        """In the pool's thread: the zygote dies with it, so it must end first, and on its own
        (it waits for its sandboxes, which runs still going end)."""
        with self.cond:
            stock = [p for prepared in self.ready.values() for p in prepared] + self.zombies
            self.ready.clear()
            self.zombies = []
        for prepared in stock:
            prepared.discard()
        with self.spawn_lock:
            zygote, self.zygote = self.zygote, None
        if zygote is not None:
            zygote.close()

    def _wanting(self) -> tuple[list[Spec], float | None]:
        """One entry per sandbox to build now, each shape up to `depth` ready or being built, and
        the seconds until a shape held back (REFILL_AFTER) may be topped up (None: none is)."""
        for shape, last in list(self.wanted.items()):
            if self.clock - last > STALE_AFTER:
                del self.wanted[shape]
                self.active.pop(shape, None)
                for prepared in self.ready.pop(shape, []):
                    self.zombies.append(prepared)
        wanting = []
        now = time.monotonic()
        wake: float | None = None
        for shape in self.wanted:
            if shape not in self.failed:
                have = len(self.ready.get(shape, ())) + self.preparing.get(shape, 0)
                if have >= self.depth:
                    continue
                held = self.active.get(shape, 0.0) + REFILL_AFTER - now
                if have and held > 0:
                    wake = held if wake is None else min(wake, held)
                    continue
                wanting += [shape] * (self.depth - have)
        return wanting, wake

    def _loop(self) -> None:
        try:
            from .zygote import Zygote

            self.zygote = Zygote()  # from this thread: it dies with the thread (PR_SET_PDEATHSIG)
        except (SbxError, OSError) as exc:
            self.zygote_error = f"cannot start the sandbox fork server: {exc}"
        finally:
            self.started.set()
        while True:
            with self.cond:
                while True:
                    if self.closed:
                        break
                    zombies, self.zombies = self.zombies, []
                    shapes, wake = self._wanting()
                    for shape in shapes:
                        self.preparing[shape] = self.preparing.get(shape, 0) + 1
                    if zombies or shapes:
                        break
                    self.cond.wait(wake)
                if self.closed:
                    break
            # Fork them all first: each builds its root in its own processes, in parallel.
            started: list[tuple[Spec, Prepared | None, _Pins | None]] = []
            for shape in shapes:
                pins = prepared = None
                try:
                    pins = _Pins(bound_paths(shape))  # before the sandbox binds them
                    prepared = self.spawn(shape)
                except (SbxError, OSError):
                    pass
                started.append((shape, prepared, pins))
            for shape, prepared, pins in started:
                self._settle(shape, prepared, pins)
            for zombie in zombies:
                zombie.discard()  # kills what was never used; waits for the rest to exit
        self._shut_down()
