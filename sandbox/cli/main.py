"""Command line: parse argv, build a Spec, call the supervisor.

A small table-driven parser instead of argparse: argparse (with the `re` and
`gettext` it pulls in) costs ~8 ms per start, and `sbx run` aims to start
within 3x of bubblewrap's ~5 ms.
"""

from __future__ import annotations

import os
import sys

from .. import __version__
from ..errors import EXIT_SBX, SbxError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from ..warm.box import Box
    from ..model.result import Result
    from ..model.spec import Spec

    Reports = tuple[int | None, int | None]  # --result, --meta: an fd of ours, STDOUT, or None

# (flags, setting key, metavar or None for a switch, repeatable, help)
Option = tuple[tuple[str, ...], str, "str | None", bool, str]

RUN_OPTIONS: tuple[Option, ...] = (
    (("--profile",), "profile", "NAME", False, "profile name or TOML file (default: 'default')"),
    (("--project-profiles",), "project_profiles", None, False,
     "let profile names resolve in ./.sbx/profiles/ first (the project's, restricted: SECURITY.md)"),
    (("-v", "--volume"), "volume", "SRC:DST[:MODE]", True,
     "bind SRC at DST; MODE ro (default), rw, or overlay (writable, changes discarded)"),
    (("--tmpfs",), "tmpfs", "DST[:size=N]", True, "mount a fresh tmpfs at DST"),
    (("-w", "--workdir"), "sandbox.workdir", "DIR", False,
     "working directory inside (default: the caller's cwd where a bind shows it, else /)"),
    (("-e", "--env"), "env", "NAME[=VALUE]", True, "set a variable, or copy NAME from the caller"),
    (("--env-file",), "env_file", "FILE", True, "read NAME=VALUE lines from FILE"),
    (("--hostname",), "sandbox.hostname", "NAME", False, "hostname inside (default: sbx)"),
    (("--network", "--net"), "network.mode", "MODE", False,
     "none (default: loopback only), pasta (user-mode NAT; alias nat) or host"),
    (("-p", "--publish"), "network.publish", "[HOST_IP:]HOST_PORT:PORT[/tcp|udp]", True,
     "make a port inside reachable from the host (pasta)"),
    (("--dns",), "network.dns", "IP", True, "name server for the sandbox's resolv.conf (pasta)"),
    (("--host-loopback",), "network.host_loopback", None, False,
     "pasta: let the gateway address reach the host's loopback services (off by default)"),
    (("--uid",), "sandbox.uid", "N", False, "user id inside (default 0)"),
    (("--gid",), "sandbox.gid", "N", False, "group id inside (default 0)"),
    (("--image",), "sandbox.image", "NAME", False, "image to run on (default: host, the host's /usr)"),
    (("--root",), "run.image_root", "DIR", False, "image store (default: $SBX_ROOT, else $XDG_DATA_HOME/sbx)"),
    (("--disk",), "sandbox.disk", "SIZE", False, "size of the writable layer (default 256M)"),
    (("--commit",), "run.commit", "NAME", False, "save the writable layer as image NAME when the run ends (needs --image)"),
    (("-t", "--tty"), "run.tty", None, False, "keep the caller's terminal (no new session)"),
    (("--pass-fd",), "run.pass_fds", "N", True, "keep file descriptor N open for the command"),
    (("--strict",), "limits.strict", None, False, "refuse to run when a protection or limit cannot be applied"),
    (("--cgroup",), "run.cgroup", "PATH", False,
     "a delegated cgroup v2 directory to create run cgroups in (default: $SBX_CGROUP, else discovered)"),
    (("--seccomp",), "seccomp.policy", "POLICY", False,
     "syscall filter: default (deny-list), strict (allow-list) or none"),
    (("--memory", "-m"), "limits.memory", "SIZE", False, "memory limit"),
    (("--cpus",), "limits.cpus", "N", False, "CPU bandwidth limit, e.g. 1.5"),
    (("--cpuset",), "limits.cpuset", "CPUS", False, "CPUs to run on, e.g. 0-1"),
    (("--pids-limit",), "limits.pids", "N", False, "maximum number of processes"),
    (("--time",), "limits.time", "DURATION", False, "CPU time limit of the whole tree"),
    (("--wall-time",), "limits.wall_time", "DURATION", False, "wall-clock limit"),
    (("--output-limit",), "limits.output", "SIZE", False, "bytes the command may write to stdout and stderr"),
    (("--file-size",), "limits.file_size", "SIZE", False, "largest file the command may write"),
    (("--open-files",), "limits.open_files", "N", False, "maximum open file descriptors"),
    (("--stack",), "limits.stack", "SIZE", False, "stack size limit"),
    (("--io-read-bps",), "limits.io_read_bps", "SIZE", False, "read bandwidth limit (bytes/s)"),
    (("--io-write-bps",), "limits.io_write_bps", "SIZE", False, "write bandwidth limit (bytes/s)"),
    (("--stdin",), "io.stdin", "FILE", False, "read stdin from FILE"),
    (("--stdout",), "io.stdout", "FILE", False, "write stdout to FILE"),
    (("--stderr",), "io.stderr", "FILE", False, "write stderr to FILE"),
    (("--result",), "io.result", "FILE", False, "write the verdict and figures as JSON (- for stdout)"),
    (("--meta",), "io.meta", "FILE", False, "write isolate-style key:value figures (- for stdout)"),
    (("--interactor",), "run.interactor", "CMD", False,
     "run CMD (split like a shell) in a second sandbox, wired to COMMAND's stdin and stdout"),
    (("--interactor-profile",), "run.interactor_profile", "NAME", False,
     "the interactor's profile (default: the same profile and options as COMMAND)"),
)

USAGE = """usage: sbx [--version] [--help] COMMAND ...

Run untrusted code in a rootless sandbox under hard limits.

commands:
  run [OPTIONS] [--] COMMAND [ARG...]   run COMMAND in a fresh sandbox
  profile list|show NAME|check FILE     inspect profiles
  image pull|import|ls|inspect|rm|tag|prune   images (sbx image --help)
  box create|run|rm|ls                  persistent work directories (sbx box --help)
  batch [-j N] [FILE|-]                 many runs from JSON Lines, results as JSON Lines
  doctor                                what this host allows, with fixes

'sbx run --help' lists the run options.
"""

RUN_USAGE_HEAD = """usage: sbx run [OPTIONS] [--] COMMAND [ARG...]

Runs COMMAND in new user, mount, pid, ipc, uts, cgroup and net namespaces on a
disposable writable layer over the host's /usr, and exits with its status
(128+N for signal N, 125 when sbx itself fails, 126 not executable, 127 not found).

options:
"""


def run_usage() -> str:
    lines = [RUN_USAGE_HEAD]
    for flags, _key, metavar, repeat, text in RUN_OPTIONS:
        left = ", ".join(flags) + (f" {metavar}" if metavar else "")
        lines.append(f"  {left:<34} {text}{' (repeatable)' if repeat else ''}\n")
    lines.append(f"  {'-h, --help':<34} show this help\n")
    return "".join(lines)


def parse_run_args(args: list[str]) -> tuple[dict[str, object], list[str]]:
    """Options (raw strings, lists for repeatable ones) and the command."""
    table = {flag: option for option in RUN_OPTIONS for flag in option[0]}
    raw: dict[str, object] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return raw, args[i + 1:]
        if not arg.startswith("-") or arg == "-":
            return raw, args[i:]
        if arg in ("-h", "--help"):
            raise HelpRequested(run_usage())
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in table and not arg.startswith("--") and arg[:2] in table and len(arg) > 2:
            name, eq, value = arg[:2], "=", arg[2:]  # -vSRC:DST, -eX=1
        option = table.get(name)
        if option is None:
            raise UsageError(f"unknown option {name!r} (see 'sbx run --help')")
        flags, key, metavar, repeat, _text = option
        if metavar is None:
            if eq:
                raise UsageError(f"{name} takes no value")
            raw[key] = True
        else:
            if not eq:
                i += 1
                if i >= len(args):
                    raise UsageError(f"{name} needs a value ({metavar})")
                value = args[i]
            if repeat:
                raw.setdefault(key, [])
                raw[key].append(value)  # type: ignore[attr-defined]
            else:
                raw[key] = value
        i += 1
    return raw, []


class HelpRequested(Exception):
    """-h/--help among the run options; str() is the text to print."""


def convert_value(key: str, value: str, flag: str) -> object:
    """A flag's string value -> the setting's type (sizes, durations, numbers), or UsageError."""
    from ..model.units import parse_duration, parse_size

    converters: dict[str, Callable[[str], object]] = {
        "sandbox.uid": int, "sandbox.gid": int, "sandbox.disk": parse_size,
        "limits.memory": parse_size, "limits.cpus": float, "limits.pids": int, "limits.time": parse_duration,
        "limits.wall_time": parse_duration, "limits.output": parse_size, "limits.file_size": parse_size,
        "limits.open_files": int, "limits.stack": parse_size, "limits.io_read_bps": parse_size,
        "limits.io_write_bps": parse_size,
    }
    convert = converters.get(key)
    if convert is None:
        return value
    try:
        result = convert(value)
    except ValueError as exc:
        detail = str(exc) if "is not" in str(exc) or "too large" in str(exc) else f"{value!r} is not a number"
        raise UsageError(f"{flag}: {detail}") from None
    if isinstance(result, (int, float)) and (result < 0 or result != result):
        raise UsageError(f"{flag}: {value!r} must not be negative")
    if key == "limits.cpus" and not 0 < result <= 4096:  # type: ignore[operator]
        raise UsageError(f"{flag}: {value!r} is not a CPU count such as 0.5 or 2")
    if key in ("limits.pids", "limits.open_files") and result > MAX_COUNT:  # type: ignore[operator]
        raise UsageError(f"{flag}: {value!r} is too large (at most {MAX_COUNT})")
    return result


MAX_COUNT = (1 << 31) - 1  # pids and open files: what the kernel's limits can hold


def flag_settings(raw: Mapping[str, object], cwd: str, environ: Mapping[str, str]) -> dict[str, object]:
    """Raw option strings -> settings with the profile's key names and value types."""
    from ..config import compose

    flag_of = {option[1]: option[0][-1] for option in RUN_OPTIONS}
    settings: dict[str, object] = {}
    env: list[tuple[str, str]] = []
    mounts = []
    for key, value in raw.items():
        if key in ("profile", "project_profiles"):
            continue
        if key == "volume":
            mounts += [compose.parse_volume(v, cwd) for v in value]  # type: ignore[attr-defined]
        elif key == "tmpfs":
            mounts += [compose.parse_tmpfs(v) for v in value]  # type: ignore[attr-defined]
        elif key == "env_file":
            for path in value:  # type: ignore[attr-defined]
                env += compose.read_env_file(path, environ)
        elif key == "env":
            for text in value:  # type: ignore[attr-defined]
                pair = compose.parse_env(text, environ)
                if pair is not None:
                    env.append(pair)
        elif key == "run.pass_fds":
            settings[key] = tuple(_pass_fd(v) for v in value)  # type: ignore[attr-defined]
        elif isinstance(value, list):
            settings[key] = tuple(value)
        elif isinstance(value, bool):
            settings[key] = value
        else:
            settings[key] = convert_value(key, str(value), flag_of[key])
    if env:
        settings["sandbox.env"] = tuple(env)
    if mounts:
        settings["mounts"] = tuple(mounts)
    return settings


def _pass_fd(text: str) -> int:
    try:
        fd = int(text)
        os.fstat(fd)
    except ValueError:
        raise UsageError(f"--pass-fd: {text!r} is not a file descriptor number") from None
    except OSError:
        raise UsageError(f"--pass-fd: {text} is not an open file descriptor") from None
    if fd <= 2:
        raise UsageError(f"--pass-fd: {fd} is always passed (stdin, stdout, stderr)")
    from ..runtime.stdio import pass_fd_refusal

    # What is never passed, refused now; a regular file only once the run's ids are known (supervise).
    why = pass_fd_refusal(fd, regular_files=True)
    if why is not None:
        raise UsageError(f"--pass-fd {fd}: {why}")
    return fd


def profile_settings(name: str | None, cwd: str, environ: Mapping[str, str], project: bool = False,
                     warn: Callable[[str], None] | None = None) -> dict[str, object]:
    """`project`: --project-profiles; `warn` gets the line saying a project profile was ignored."""
    from ..config import profile

    # ProfileError is a UsageError
    return dict(profile.resolve(name, cwd=cwd, environ=environ, project=project, warn=warn or _warn).settings)


def _warn(line: str) -> None:
    sys.stderr.write(f"sbx: warning: {line}\n")


def build_spec(args: list[str], cwd: str, environ: Mapping[str, str], box: Box | None = None,
               box_mode: str = "rw") -> Spec:
    """`box`: its work directory at /box, replacing any profile mount there, and the workdir
    unless -w gives one."""
    from ..config import compose

    raw, argv = parse_run_args(args)
    for key in ("run.interactor", "run.interactor_profile"):
        if key in raw:
            raise UsageError(f"--{key[4:].replace('_', '-')} is only for 'sbx run'")
    profile_name = raw.get("profile")
    base = profile_settings(profile_name if isinstance(profile_name, str) else None, cwd, environ,
                            project=raw.get("project_profiles") is True)
    settings = compose.merge(base, flag_settings(raw, cwd, environ))
    if box is not None:
        settings = box.settings(settings, box_mode, workdir="sandbox.workdir" in raw)
    return compose.build(settings, argv, cwd, environ)


def cmd_run(args: list[str], box: Box | None = None, box_mode: str = "rw") -> int:
    from ..runtime import supervise

    if box is None and _interactive(args):
        from ..warm.interact import cmd_interactive

        return cmd_interactive(args)
    spec = build_spec(args, os.getcwd(), os.environ, box, box_mode)
    # No usable cgroup but a systemd user manager: run again in a delegated scope of our own
    # (only the command line this process was started with, never an in-process main()).
    if "SBX_SCOPE" not in os.environ and sys.orig_argv[len(sys.orig_argv) - len(args) - 1:] == ["run", *args]:
        from ..cgroup.manager import scope_command

        scope = scope_command([sys.executable, *sys.orig_argv[1:]], os.environ, spec.cgroup)
        if scope is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                os.execvpe(scope[0][0], scope[0], scope[1])
            except OSError:
                pass  # no systemd-run after all: the degraded path, with its warning
    raw = parse_run_args(args)[0]
    reports = open_reports(spec)  # before anything runs: a bad path is exit 125 with nothing started
    try:
        if isinstance(raw.get("run.commit"), str):  # keep the writable layer and save it as an image
            from ..image import commit
            from .image import enter_ranges

            enter_ranges()  # the new layer may hold files of other ids: read and store it as their root

            result = commit.run(spec, str(raw["run.commit"]), raw.get("run.image_root"),  # type: ignore[arg-type]
                                supervise.run)
        else:
            result = supervise.run(spec)
        write_reports(reports, result)
    finally:
        close_reports(reports)
    if result.message:
        sys.stderr.write(f"sbx: {'error: ' if result.verdict == 'XX' else ''}{result.message}\n")
    return result.status


def _interactive(args: list[str]) -> bool:
    if not any(arg.startswith("--interactor") for arg in args):
        return False
    return "run.interactor" in parse_run_args(args)[0]


STDOUT = -1  # a report fd that stands for "-": sbx's own stdout


def open_reports(spec: Spec) -> Reports:
    """--result and --meta, opened now as the caller (see hostfile); write_reports fills them after the run."""
    from ..kernel.hostfile import open_output

    def one(flag: str, path: str | None) -> int | None:
        return None if path is None else STDOUT if path == "-" else open_output(path, flag)

    result = one("--result", spec.result)
    try:
        return result, one("--meta", spec.meta)
    except BaseException:
        close_reports((result, None))
        raise


def close_reports(reports: Reports) -> None:
    for fd in set(reports):
        if fd is not None and fd >= 0:
            os.close(fd)


def write_reports(reports: Reports, result: Result, json_text: Callable[[], str] | None = None) -> None:
    """--result and --meta, through the fds opened before the run (never by path: the payload may have
    changed what the path names); `json_text` replaces the result's own JSON.  The fds stay open."""
    for flag, fd, text in zip(("--result", "--meta"), reports, (json_text or result.to_json, result.to_meta)):
        if fd is None:
            continue
        if fd == STDOUT:
            sys.stdout.write(text())
            continue
        data = text().encode()
        try:
            os.ftruncate(fd, 0)  # whatever was written to the file meanwhile goes
            offset = 0
            while offset < len(data):
                offset += os.pwrite(fd, data[offset:], offset)
        except OSError as exc:
            raise SbxError(f"cannot write {flag}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if not args or args[0] in ("-h", "--help", "help"):
            sys.stdout.write(USAGE)
            return 0 if args else EXIT_SBX
        command, rest = args[0], args[1:]
        if command == "--version":
            sys.stdout.write(f"sbx {__version__}\n")
            return 0
        if command == "run":
            return cmd_run(rest)
        if command == "doctor":
            from . import doctor

            return doctor.main(rest)
        if command == "profile":
            from . import profile as profile_cmd

            return profile_cmd.main(rest)
        if command == "image":
            from . import image as image_cli

            return image_cli.main(rest)
        if command == "box":
            from .box import main as box_main

            return box_main(rest)
        if command == "batch":
            from ..warm.batch import main as batch_main

            return batch_main(rest)
        raise UsageError(f"unknown command {command!r} (see 'sbx --help')")
    except HelpRequested as shown:
        sys.stdout.write(str(shown))
        return 0
    except SbxError as exc:
        sys.stderr.write(f"sbx: error: {exc}\n")
        return EXIT_SBX
    except KeyboardInterrupt:
        return 130
