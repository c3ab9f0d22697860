"""Supervising one run of a Prepared sandbox: release, watch, kill, measure.

supervise_run() sends the command, puts the payload in its run cgroup, releases it, then
waits for init's Exited while pumping output (stdio.Pumps) and enforcing what only the
supervisor can (Watch: wall time, CPU time, output, seccomp kills, memory without a
cgroup); outcome.outcome turns what it saw into the Result.  Forwarder passes the
supervisor's signals on to init.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal

    from ..cgroup.runcg import RunCgroup
    from ..cgroup.stats import CgroupStats
    from .census import Census
    from .protocol import Report, ReportReader
    from .spawn import Prepared
    from .stdio import Pumps
    from .supervisor import Streams
else:
    import _signal  # `signal` itself imports enum: ~4 ms at start-up

import _socket
import os
import time

from . import landlock
from ..errors import SetupError, UsageError
from .limits import rlimits_of
from ..model.result import Result
from ..model.spec import Spec
from .outcome import CPU_TIME, MEMORY, OUTPUT, WALL, outcome
from .protocol import FORWARDED, RELEASE, SHM_RMID_FORCED, Command, ExecOutcome, Exited, decode_exec, receive_payload_ready


class Forwarder:
    """Forwards the supervisor's signals to init (held until init's pid is known)."""

    def __init__(self, tty: bool) -> None:
        self.target = 0
        self.pending: list[int] = []
        self.previous = {s: _signal.signal(s, self.forward) for s in FORWARDED
                         if not (tty and s in (_signal.SIGINT, _signal.SIGQUIT))}

    def forward(self, signum: int, _frame: object) -> None:
        if self.target:
            try:
                os.kill(self.target, signum)
            except OSError:
                pass
        else:
            self.pending.append(signum)

    def start(self, target: int) -> None:
        self.target = target

    def flush(self) -> None:
        for signum in self.pending:
            self.forward(signum, None)
        self.pending.clear()

    def restore(self) -> None:
        for signum, handler in self.previous.items():
            _signal.signal(signum, handler)
        self.previous = {}


def supervise_run(prepared: Prepared, spec: Spec, inner: Spec, streams: Streams, cgroup: RunCgroup | None,
                  enforced: dict[str, bool], cpu: int | None = None) -> Result:
    """Send the command and supervise the run; `inner` is limits.sandbox_spec(spec, enforced)."""
    from . import stdio

    _check_pass_fds(spec, prepared.shape)
    stamps = prepared.reports.stamps  # SBX_STAMPS: the run's clock (runtime/stamps.py), else None
    pumps = stdio.Pumps(spec.limits.output, streams.capture_limit)
    listener = -1
    try:
        given = pumps.wire(streams.stdin, streams.stdout, streams.stderr, spec.tty)
        prepared.send(Command(spec.argv, spec.env, rlimits_of(inner), spec.pass_fds, spec.redirects),
                      (*given, *spec.pass_fds))
        # The payload has its copies: ours would hold a pipe open (an interactor's, say).
        pumps.sent()
        streams.close(keep=pumps.keep())
        os.close(prepared.command_w)
        prepared.command_w = -1
        prepared.ready()
        if stamps is not None:
            stamps.stamp("init-ready")
        ready = _await_payload(prepared.channel, prepared.reports)
        if stamps is not None:
            stamps.stamp("payload-ready")
        payload = None if ready is None else ready[0]
        if ready is not None and ready[1] >= 0:
            listener = ready[1]
        baseline = None
        if payload is not None and cpu is not None:
            try:
                os.sched_setaffinity(payload, {cpu})
            except OSError:
                pass  # only for steadier timings
        if payload is not None and cgroup is not None:
            from ..cgroup.fs import CgroupError

            try:
                cgroup.add(payload)
                baseline = cgroup.stats()
            except CgroupError as exc:
                if _alive(payload):
                    raise SetupError(str(exc)) from None
                payload = None  # a forwarded signal ended it first
        report: Report | None
        if payload is None:
            # The payload died before its release (a forwarded SIGTERM, say): no figures, but
            # the run ends as the payload did (init reports how), not as a failure of sbx.
            report, cause, stats, wall = prepared.reports.next(), "", None, 0.0
            counted = None
            exec_outcome = _await_exec(prepared.exec_r)  # why it died, when it could tell
        else:
            if prepared.forwarder is not None:
                prepared.forwarder.flush()
            if cgroup is None and spec.limits.memory is not None:
                _force_shm_removal(prepared.init_pid)  # before the release: SysV memory the census sees
            start = time.monotonic()
            if stamps is not None:
                # Before the write: the payload it wakes may take this CPU until it has exec'd,
                # and a stamp after it would count that as the release's own cost.
                stamps.stamp("released")
            try:
                os.write(prepared.release_w, RELEASE)
            except BrokenPipeError:
                pass  # a forwarded signal ended the payload first; init reports how it died
            os.close(prepared.release_w)
            prepared.release_w = -1
            exec_outcome = _await_exec(prepared.exec_r)
            if stamps is not None:
                stamps.stamp("exec")
            watch = Watch(spec, cgroup, baseline, start, listener, pumps, prepared.init_pid, payload)
            report, cause = watch.wait(prepared.reports)
            if stamps is not None:
                stamps.stamp("exit-seen")
            counted = watch.counted()
            if cause:
                if counted is not None:
                    counted.kill()  # the whole sandbox now, as cgroup.kill would
                _kill_payload(cgroup, payload)
                report = prepared.reports.next()
            wall = time.monotonic() - start
            pumps.finish()
            stats = None if cgroup is None or baseline is None else cgroup.stats().since(baseline)
    except BaseException:
        prepared.kill()
        raise
    finally:
        pumps.close()
        if listener >= 0:
            os.close(listener)
    exited = report if isinstance(report, Exited) else None
    result = outcome(spec, exited, wall, cause, exec_outcome, stats, pumps.total, enforced, counted,
                     landlock.fences(spec.landlock))
    if streams.stdout is None or streams.stderr is None:
        from ..model.frozen import replace

        result = replace(result, stdout=pumps.captured(1), stderr=pumps.captured(2))
    if stamps is not None:
        stamps.stamp("result")
    return result


def _check_pass_fds(spec: Spec, shape: Spec) -> None:
    """--pass-fd descriptors, checked as they are sent: a regular file only where the payload is a
    subordinate id that owns no host file (id ranges, and not --uid 0 / --gid 0, which are you)."""
    if not spec.pass_fds:
        return
    from .stdio import pass_fd_refusal

    regular = shape.id_ranges and spec.id_ranges and spec.uid != 0 and spec.gid != 0
    for fd in spec.pass_fds:
        why = pass_fd_refusal(fd, regular)
        if why is not None:
            raise UsageError(f"--pass-fd {fd}: {why}")


def _kill_payload(cgroup: RunCgroup | None, payload: int) -> None:
    """End the payload's whole tree; init then kills the rest and reports."""
    if cgroup is not None:
        from ..cgroup.fs import CgroupError

        try:
            cgroup.kill()
            return
        except CgroupError:
            pass  # remove() tries again; meanwhile end the payload itself
    try:
        os.kill(payload, _signal.SIGKILL)
    except ProcessLookupError:
        pass


def _force_shm_removal(init_pid: int) -> None:
    """Ask init to set shm_rmid_forced in the sandbox's IPC namespace (protocol.SHM_RMID_FORCED)."""
    try:
        os.kill(init_pid, SHM_RMID_FORCED)
    except OSError:
        pass  # gone: init reports how


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _await_payload(sock: _socket.socket, reports: ReportReader) -> tuple[int, int] | None:
    """The payload's pid as we see it (its message's credentials) and its seccomp listener fd (or -1).

    The payload sends them once it is ready to exec.  None when init reported the payload's end
    instead: it died first (a forwarded signal, or a failure it wrote to the exec pipe).
    """
    import select

    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(reports.fd, select.POLLIN)
    while True:
        for fd, _event in poller.poll():
            if fd == reports.fd:
                # EOF may follow an Exited read along with init's Ready (spawn's _await_ready).
                if not reports.fill() and not reports.exit_pending():
                    raise SetupError("the payload died before it could be released")
                if reports.exit_pending():
                    return None
                if reports.buffer:
                    raise SetupError("the payload died before it could be released")
                continue
            pid, listener = receive_payload_ready(sock)
            if pid <= 0:
                if listener >= 0:
                    os.close(listener)
                raise SetupError("the payload's message carried no credentials")
            return pid, listener


def _await_exec(exec_r: int) -> ExecOutcome | None:
    """None once the payload has exec'd (its end of the pipe closed on exec), else why it could not."""
    return decode_exec(os.read(exec_r, 4096))


class Watch:
    """Waits for init's final report while enforcing the limits only the supervisor can.

    Causes (outcome.py): WALL, CPU_TIME, MEMORY (counted without a cgroup),
    OUTPUT, or a seccomp message; "" when init reported on its own.  CPU time
    is the run cgroup's; without one, the census of every process in the
    sandbox's pid namespace (census.py), orphans adopted by init included,
    taken when the limit could first be reached and at least every
    CENSUS_CPU_EVERY (also without limits, for the figures); with a memory
    limit, every CENSUS_MEMORY_EVERY.
    RLIMIT_CPU alone would only stop one process at the next whole second.
    """

    CENSUS_MEMORY_EVERY = 0.015
    CENSUS_CPU_EVERY = 0.1  # bounds what a child reaped by nobody (SIGCHLD ignored) can use unseen

    def __init__(self, spec: Spec, cgroup: RunCgroup | None, baseline: CgroupStats | None, start: float,
                 listener: int, pumps: Pumps, init_pid: int, payload: int) -> None:
        self.spec = spec
        self.cgroup = cgroup
        self.baseline_usec = 0 if baseline is None else baseline.cpu_usec
        self.deadline = None if spec.limits.wall_time is None else start + spec.limits.wall_time
        self.listener = listener
        self.pumps = pumps
        self.cpu_limit = spec.limits.time
        self.memory_limit = spec.limits.memory if cgroup is None else None
        self.ncpus = 1.0
        self.census: Census | None = None
        self.next_census = 0.0
        if self.cpu_limit is not None:
            from ..cgroup.stats import usable_cpus

            # --cpus and --cpuset hold only with a cgroup: without one the run may use every CPU
            self.ncpus = usable_cpus(spec.limits if cgroup is not None else None)
        self.init_pid, self.payload = init_pid, payload
        self.counting = cgroup is None
        if self.counting:
            # Without limits only for the figures, and not at all in a run shorter than the first look.
            self.next_census = start + self._census_delay()

    def counted(self) -> Census | None:
        return self.census

    def cpu_used(self) -> float:
        if self.census is not None:
            return self.census.cpu
        if self.cgroup is None:
            return 0.0
        try:
            with open(self.cgroup.path + "/cpu.stat", "rb") as f:
                first = f.readline()  # "usage_usec N"
        except OSError:
            return 0.0
        return (int(first.split()[1]) - self.baseline_usec) / 1e6

    def _take_census(self) -> None:
        began = time.thread_time()
        census = self.census
        if census is None:
            from .census import Census

            census = self.census = Census(self.init_pid, self.payload)
        census.scan()
        # A large sandbox makes a costly census: look less often rather than spend over 5% of a CPU
        # (the first scan reads every process on the host once: not a measure of the next).  Its
        # CPU time, not its wall time: preempted by the payload's own burners on a busy machine, a
        # cheap scan looks slow, and looking less often would let the payload overshoot its limit.
        floor = 0.0 if census.scans <= 1 else min(20 * (time.thread_time() - began), 0.5)
        self.next_census = time.monotonic() + max(self._census_delay(), floor)

    def _census_delay(self) -> float:
        delays = [self.CENSUS_CPU_EVERY]
        if self.memory_limit is not None:
            delays.append(self.CENSUS_MEMORY_EVERY)
        if self.cpu_limit is not None:
            from ..cgroup.stats import next_check_delay

            delays.append(next_check_delay(self.cpu_limit, self.cpu_used(), self.ncpus))
        return min(delays)

    def next_timeout(self) -> float | None:
        """Milliseconds until something must be checked, None for never."""
        now = time.monotonic()
        waits = []
        if self.deadline is not None:
            waits.append(self.deadline - now)
        if self.counting:
            waits.append(self.next_census - now)
        elif self.cpu_limit is not None:
            from ..cgroup.stats import next_check_delay

            waits.append(next_check_delay(self.cpu_limit, self.cpu_used(), self.ncpus))
        if not waits:
            return None
        return max(0.0, min(waits)) * 1000

    def expired(self) -> str:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return WALL
        if self.counting and time.monotonic() >= self.next_census:
            self._take_census()
            if self.memory_limit is not None and self.census is not None and self.census.memory > self.memory_limit:
                return MEMORY
        if self.cpu_limit is not None and self.cpu_used() >= self.cpu_limit:
            return CPU_TIME
        return ""

    def wait(self, reports: ReportReader) -> tuple[Report | None, str]:
        """Init's next report (None: it died unreported) and "", or None and why the run must end."""
        report = reports.pop()
        if report is not None:
            return report, ""
        import select

        poller = select.poll()
        poller.register(reports.fd, select.POLLIN)
        if self.listener >= 0:
            poller.register(self.listener, select.POLLIN)
        pumped: dict[int, int] = {}  # what the pumps want polled now (it changes as they go)
        while True:
            wanted = self.pumps.interest()
            if wanted != pumped:
                for fd in pumped.keys() - wanted.keys():
                    poller.unregister(fd)
                for fd, mask in wanted.items():
                    if pumped.get(fd) != mask:
                        poller.register(fd, mask)  # registers, or modifies
                pumped = wanted
            timeout = self.next_timeout()
            events = poller.poll(None if timeout is None else timeout + 0.5)
            cause = self.expired()
            if cause:
                return None, cause
            for fd, event in events:
                if fd == self.listener:
                    cause = self._seccomp(event)
                    if cause:
                        return None, cause
                    if not event & select.POLLIN:
                        poller.unregister(fd)  # no filtered task left
                elif fd == reports.fd:
                    if not reports.fill():
                        return reports.pop(), ""
                elif fd in pumped:
                    self.pumps.on(fd, event)
                    if self.pumps.exceeded:
                        return None, OUTPUT
            report = reports.pop()
            if report is not None:
                return report, ""

    def _seccomp(self, event: int) -> str:
        import select

        if not event & select.POLLIN:
            return ""
        from ..seccomp import notify as seccomp

        note = seccomp.receive(self.listener)
        return "" if note is None else seccomp.describe(note[1], note[2])
