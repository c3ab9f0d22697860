"""The supervisor: the sbx process outside the sandbox, and a run from start to end.

It makes the run cgroup and the limits plan, starts the sandbox (spawn.py) or takes a
prepared one (the warm pool), and supervises the run (watch.py): the payload goes into its
run cgroup and is released once the root is built; CPU time, wall time and output size are
enforced, signals forwarded to init, and what was measured becomes a Result (outcome.py).
It holds no state on the host but the run cgroup, which it removes: the sandbox's files
live in tmpfs mounts of its own mount namespace, which vanish with it.

The run path, in process order: supervisor -> spawn (fork) -> init.enter (namespaces) ->
init.init (pid 1: the root) -> payload (pid 2: exec); protocol.py holds every message
between them.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    from ..cgroup.discover import Delegation
    from .stamps import Stamps

import os
import time

from . import landlock
from . import limits as limits_mod
from ..errors import EXIT_SBX, SbxError, SetupError
from ..model.result import Result
from ..model.spec import Spec
from .spawn import Prepared
from .watch import supervise_run


class Streams:
    """A run's stdin, stdout and stderr as fds sbx owns; None for stdout/stderr means capture.

    These are the caller's: the payload gets them only where they are no host file (see stdio.py),
    else pipes sbx feeds or drains.  The fds are closed with close(); fds 0-2 of sbx itself are
    never closed.
    """

    def __init__(self, stdin: int = 0, stdout: int | None = 1, stderr: int | None = 2,
                 capture_limit: int = 16 << 20) -> None:
        self.stdin, self.stdout, self.stderr = stdin, stdout, stderr
        self.capture_limit = capture_limit

    def close(self, keep: list[int] | tuple[int, ...] = ()) -> None:
        """Close our fds but those in `keep` (still to be written to); close() again for them."""
        if self.stdin > 2 and self.stdin not in keep:
            os.close(self.stdin)
            self.stdin = 0
        if self.stdout is not None and self.stdout > 2 and self.stdout not in keep:
            os.close(self.stdout)
            self.stdout = 1
        if self.stderr is not None and self.stderr > 2 and self.stderr not in keep:
            os.close(self.stderr)
            self.stderr = 2


def open_streams(spec: Spec) -> Streams:
    """The spec's --stdin/--stdout/--stderr files, opened here, outside, before the sandbox is built:
    outputs with no symlink in any component and only as regular files, nothing blocking (see hostfile)."""
    fds = [0, 1, 2]
    for index, path, flag in ((0, spec.stdin, "--stdin"), (1, spec.stdout, "--stdout"), (2, spec.stderr, "--stderr")):
        if path is None:
            continue
        from ..kernel.hostfile import open_input, open_output  # only when there is a file to open

        try:
            fds[index] = open_input(path, flag) if index == 0 else open_output(path, flag)
        except SbxError:
            for fd in fds[:index]:
                if fd > 2:
                    os.close(fd)
            raise
    return Streams(fds[0], fds[1], fds[2])


def warn_on_stderr(line: str) -> None:
    """The command line's way to warn: one line on sbx's stderr."""
    import sys

    sys.stderr.write(f"sbx: warning: {line}\n")


def run_sandbox(spec: Spec, environ: Mapping[str, str], warn: Callable[[str], None] = warn_on_stderr,
                stdout_fd: int | None = None, stamps: Stamps | None = None) -> Result:
    """Run one sandbox to completion, from the command line (signals forwarded to it).

    Raises SbxError for bad input and for a run cgroup that cannot be made; a
    sandbox that cannot be built (or whose init dies) is an XX result instead,
    so --result and --meta still say what happened.

    `environ`: the caller's environment, the only one read (the cgroup to run under, the
    seccomp cache).  `warn` gets each protection or limit that is weaker than asked (an error
    instead under --strict), before anything runs.  `stdout_fd`: where the payload's
    stdout goes when the spec names no --stdout file (else sbx's own stdout); the
    caller keeps it open (an image build sends its RUN output to fd 2).  `stamps`: see stamps.py.
    """
    program = seccomp_program(spec, environ)
    if stamps is not None:
        stamps.stamp("seccomp-ready")
    delegation = delegation_for(spec.cgroup, environ)
    if delegation is not None:
        from ..cgroup.runcg import remove_stale

        remove_stale(delegation)  # of supervisors that were SIGKILLed
    if stamps is not None:
        stamps.stamp("cgroup-discovered")
    streams = open_streams(spec)
    if stdout_fd is not None and spec.stdout is None:
        streams.stdout = stdout_fd if stdout_fd <= 2 else os.dup(stdout_fd)  # Streams closes its own above 2
    try:
        return execute(spec, streams, program, delegation, warn, forward_signals=True, stamps=stamps)
    finally:
        streams.close()


def execute(spec: Spec, streams: Streams, program: bytes | None, delegation: Delegation | None,
            warn: Callable[[str], None], prepared: Prepared | None = None, forward_signals: bool = False,
            cpu: int | None = None, wait: bool = True, stamps: Stamps | None = None) -> Result:
    """One run: its cgroup, its limits plan, and a sandbox (`prepared` in advance, or started now).

    `prepared` must have been started with shape_of(spec); it is used up either way.  `cpu`:
    pin the payload to this CPU.  wait=False: the sandbox's entry process may be left for
    prepared.reap() (the kernel tears the namespaces down as it exits).
    """
    if stamps is None and spec.stamps:  # the API's runs: SBX_STAMPS counts from here
        from .stamps import Stamps

        stamps = Stamps.now()
    cgroup = None
    if delegation is not None:
        from ..cgroup.fs import CgroupError
        from ..cgroup.iodev import devices_behind
        from ..cgroup.runcg import RunCgroup, run_name

        devices: tuple[str, ...] = ()
        if spec.limits.io_read_bps is not None or spec.limits.io_write_bps is not None:
            devices = devices_behind(m.source for m in spec.mounts if m.source is not None)
        try:
            cgroup = RunCgroup.create(delegation, spec.limits, run_name(os.getpid(), time.monotonic_ns()), devices)
        except CgroupError:  # a SetupError: the caller reports it
            if prepared is not None:
                prepared.discard()
            raise
    terminals = _save_terminals(spec, streams)
    try:
        enforced, warnings = limits_mod.plan(spec, delegation, () if cgroup is None else cgroup.unenforced)
        for line in warnings:
            warn(line)
        unenforced = () if cgroup is None else cgroup.unenforced
        inner = limits_mod.sandbox_spec(spec, enforced, None if limits_mod.by_cgroup("pids", delegation, unenforced)
                             else limits_mod.nproc_limit(spec))
        try:
            if prepared is None:
                if stamps is not None:
                    stamps.stamp("spawn")
                prepared = Prepared.start(shape_of(inner), program, egress_rules(spec),
                                          forward_signals=forward_signals)
            prepared.reports.stamps = stamps
            return supervise_run(prepared, spec, inner, streams, cgroup, enforced, cpu)
        except SetupError as exc:
            # The sandbox could not be built or died: a result all the same (XX), so a
            # judge reading --result/--meta sees a sandbox failure, not a missing file.
            return Result(verdict="XX", status=EXIT_SBX, message=str(exc), limits_enforced=tuple(enforced.items()),
                          fences=landlock.fences(spec.landlock))
    finally:
        if prepared is not None:
            prepared.discard(wait)
        if cgroup is not None:
            from ..cgroup.fs import CgroupError

            try:
                cgroup.remove()
            except CgroupError as exc:
                warn(f"run cgroup left behind: {exc}")
        if terminals:
            from .stdio import restore_terminals

            restore_terminals(terminals)
        if stamps is not None:
            stamps.stamp("torn-down")


def _save_terminals(spec: Spec, streams: Streams) -> list[tuple[int, list[Any]]]:
    """With -t the payload shares the caller's terminal: its settings, to put back however the run ends
    (a payload killed in raw mode without echo).  Without -t no terminal reaches it (stdio.py)."""
    if not spec.tty:
        return []
    from .stdio import save_terminals

    return save_terminals((0, 1, 2, streams.stdin, *(fd for fd in (streams.stdout, streams.stderr) if fd is not None)))


def shape_of(spec: Spec) -> Spec:
    """What a sandbox is built from: the spec with its PER_RUN fields (model/spec.py: command,
    limits, files to write) at their shape values.

    Two runs with equal shapes can use sandboxes prepared the same way.
    """
    from ..model.frozen import fields, replace

    per_run = {f.name: f.metadata.get("shape", f.default) for f in fields(spec) if f.metadata.get("run")}
    return replace(spec, **per_run)


def delegation_for(explicit: str | None, environ: Mapping[str, str]) -> Delegation | None:
    """The delegated cgroup runs go under (an explicit path, else discovered), or None.
    CgroupError (a SetupError) when the one asked for cannot be used."""
    from ..cgroup.discover import discover

    return discover(explicit, environ)


def egress_rules(spec: Spec) -> str | None:
    """The run's egress rules as an nft script for init, host names resolved now (None: none)."""
    if spec.network != "pasta" or not (spec.egress_allow or spec.egress_deny):
        return None
    from ..net.egress import nft_script, resolve_rules
    from ..net.network import NetError

    try:
        return nft_script(resolve_rules(spec.egress_allow), resolve_rules(spec.egress_deny), spec.dns)
    except NetError as exc:
        raise SbxError(str(exc)) from None


def seccomp_program(spec: Spec, environ: Mapping[str, str]) -> bytes | None:
    """The run's compiled seccomp filter (cached on disk under `environ`'s cache directory),
    or None for policy "none".  SeccompError (an SbxError) for a policy that cannot be built."""
    from ..seccomp.cache import program

    return program(spec.seccomp, environ=environ)
