"""Sandboxes built ahead of their runs, so a warm run only sends its command.

A run's sandbox depends on its shape (image, mounts, network, ids, sizes:
supervise.shape_of), not on its command, limits or files.  After a run of a
shape, the pool's thread builds the next sandbox of that shape (namespaces,
root, a payload waiting for its command) while the caller does something
else.  Each sandbox still serves exactly one run: nothing is reused between
runs but the interpreter and what the Runner caches.

Sandboxes are forked by a zygote (zygote.py), never by the caller's process.
The pool's thread starts the zygote and lives as long as the pool, so the
zygote and its sandboxes die with it (PR_SET_PDEATHSIG follows the thread
that started a process).  Used sandboxes are waited for here, so the
kernel's namespace teardown happens off the caller's path.
"""

from __future__ import annotations

import threading

from .errors import SbxError, SetupError
from .supervise import Prepared

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .spec import Spec
    from .zygote import Zygote

# A shape not asked for in this many runs of others loses its prepared sandboxes.
STALE_AFTER = 64


class Pool:
    """Up to `depth` prepared sandboxes per recently used shape."""

    def __init__(self, depth: int, inputs: Callable[[Spec], tuple[bytes | None, str | None]],
                 adopted: Callable[[Prepared], None]) -> None:
        """`inputs(shape)`: its seccomp program and egress rules; `adopted(prepared)`: called on
        each new sandbox (the Runner notes which box directory it was built on)."""
        self.depth = depth
        self.inputs = inputs
        self.adopted = adopted
        self.zygote: Zygote | None = None
        self.zygote_error = ""
        self.started = threading.Event()
        self.spawn_lock = threading.Lock()
        self.cond = threading.Condition()
        self.ready: dict[Spec, list[Prepared]] = {}
        self.wanted: dict[Spec, int] = {}  # shape -> when it was last asked for
        self.clock = 0
        self.zombies: list[Prepared] = []
        self.failed: set[Spec] = set()  # shapes whose preparation failed: cold runs report why
        self.closed = False
        self.preparing: dict[Spec, int] = {}  # shape -> sandboxes of it being built now
        self.thread = threading.Thread(target=self._loop, name="sbx-pool", daemon=True)
        self.thread.start()

    def take(self, shape: Spec) -> Prepared | None:
        """A prepared sandbox of this shape, or None (then the caller starts one itself).

        One being prepared right now is waited for: it is further along than a cold start.
        The pool refills after the run (done()), not now: a fork of this process and a root
        being built would compete with the run for the CPU and the GIL.
        """
        with self.cond:
            self.clock += 1
            known = shape in self.wanted
            self.wanted[shape] = self.clock
            if not known:
                self.cond.notify()  # a new shape: start preparing it for the next run
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
        prepared = Prepared.adopt(shape, child, pidfd, fds)  # type: ignore[arg-type]
        self.adopted(prepared)
        return prepared

    def close(self) -> None:
        """End the prepared sandboxes and the zygote; sandboxes running now finish first."""
        with self.cond:
            self.closed = True
            self.cond.notify()
        self.thread.join()

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

    def _wanting(self) -> list[Spec]:
        """One entry per sandbox to build now, each shape up to `depth` ready or being built."""
        for shape, last in list(self.wanted.items()):
            if self.clock - last > STALE_AFTER:
                del self.wanted[shape]
                for prepared in self.ready.pop(shape, []):
                    self.zombies.append(prepared)
        wanting = []
        for shape in self.wanted:
            if shape not in self.failed:
                have = len(self.ready.get(shape, ())) + self.preparing.get(shape, 0)
                wanting += [shape] * max(self.depth - have, 0)
        return wanting

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
                    shapes = self._wanting()
                    for shape in shapes:
                        self.preparing[shape] = self.preparing.get(shape, 0) + 1
                    if zombies or shapes:
                        break
                    self.cond.wait()
                if self.closed:
                    break
            # Fork them all first: each builds its root in its own processes, in parallel.
            started: list[tuple[Spec, Prepared | None]] = []
            for shape in shapes:
                try:
                    started.append((shape, self.spawn(shape)))
                except (SbxError, OSError):
                    started.append((shape, None))
            for shape, prepared in started:
                if prepared is not None:
                    try:
                        prepared.ready()
                    except (SbxError, OSError):
                        prepared.discard()
                        prepared = None
                with self.cond:
                    self.preparing[shape] -= 1
                    if prepared is None:
                        self.failed.add(shape)
                    elif self.closed:
                        self.zombies.append(prepared)
                    else:
                        self.ready.setdefault(shape, []).append(prepared)
                    self.cond.notify_all()
            for zombie in zombies:
                zombie.discard()  # kills what was never used; waits for the rest to exit
        self._shut_down()
