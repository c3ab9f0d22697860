"""Discovery step 3 (discover.py): re-running sbx in a transient systemd user scope with Delegate=yes.

`scope_command(argv, environ)` decides whether that would help here and, if
so, returns the command line and environment to exec; `scope_argv` builds
them from explicit values alone (pure).  Whoever calls it passes the argv
that re-runs the whole command (the CLI: the interpreter and its original
argv); nothing here reads sys.argv or os.environ.
"""

from __future__ import annotations

import os
import stat
import time

from .discover import unified_offers_essentials, usable_own
from .fs import own_cgroup_dir

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
MANAGER_CONNECT_TIMEOUT_S = 1.0
_UNIT_STAMP_MOD = 10**9  # keeps unit names short; the pid makes them unique


def scope_command(
    argv: list[str], environ: Mapping[str, str], explicit: str | None = None
) -> tuple[list[str], dict[str, str]] | None:
    """The command line and environment to re-run `argv` in a transient systemd user scope, or None.

    Only when no cgroup is given (`explicit`, `SBX_CGROUP`), this is not
    already the re-run (`SBX_SCOPE`) nor turned off (`SBX_NO_SCOPE`), a user
    manager answers (`user_manager_socket`: a stat when there is none), our
    own cgroup is not usable as it is, the unified hierarchy holds memory
    and pids, and systemd-run is on $PATH.  systemd-run --scope moves itself
    into the new scope and execs `argv` (same pid); `SBX_SCOPE` names the
    unit, so the re-run never loops and knows which cgroup it asked for.
    """
    if explicit or environ.get("SBX_CGROUP") or environ.get("SBX_SCOPE") or no_scope(environ):
        return None
    if user_manager_socket(environ) is None:
        return None
    own = own_cgroup_dir()
    if own is None or usable_own(own, environ) is not None or not unified_offers_essentials():
        return None
    systemd_run = which("systemd-run", environ)
    if systemd_run is None:
        return None
    return scope_argv(systemd_run, unit_name(os.getpid(), time.time_ns()), argv, environ, os.getuid())


def rerun_in_scope(argv: list[str], environ: Mapping[str, str], explicit: str | None = None) -> None:
    """Exec `argv` again in a delegated transient scope where scope_command says one would help;
    returns when there is none to use, or when systemd-run could not be run after all (the
    caller then goes on with its degraded limits, and their warning)."""
    scope = scope_command(argv, environ, explicit)
    if scope is None:
        return
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(scope[0][0], scope[0], scope[1])
    except OSError:
        pass


def scope_argv(systemd_run: str, unit: str, argv: list[str], environ: Mapping[str, str],
               uid: int) -> tuple[list[str], dict[str, str]]:
    """The systemd-run command line that runs `argv` in scope `unit`, and its environment (pure).

    The environment is `environ` plus `SBX_SCOPE=unit` (the re-run's marker)
    and an `XDG_RUNTIME_DIR` for systemd-run to find the user manager.
    """
    env = dict(environ)
    env["SBX_SCOPE"] = unit
    env.setdefault("XDG_RUNTIME_DIR", runtime_dir(environ, uid))
    cmd = [systemd_run, "--user", "--scope", "--quiet", "--collect", f"--unit={unit}", "-p", "Delegate=yes",
           "--", *argv]
    return cmd, env


def unit_name(pid: int, stamp_ns: int) -> str:
    """The transient scope's unit name."""
    return f"sbx-{pid}-{stamp_ns % _UNIT_STAMP_MOD}.scope"


def no_scope(environ: Mapping[str, str]) -> bool:
    """`SBX_NO_SCOPE` set to anything but "" or "0"."""
    return environ.get("SBX_NO_SCOPE", "") not in ("", "0")


def runtime_dir(environ: Mapping[str, str], uid: int) -> str:
    return environ.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"


def user_manager_socket(environ: Mapping[str, str]) -> str | None:
    """The systemd user manager's private socket when one answers there, else None.

    `$XDG_RUNTIME_DIR/systemd/private` (else `/run/user/UID/...`): a stat,
    then a connect(2) to tell a live manager from a stale socket file.
    systemd-run --user and systemctl --user talk to it, D-Bus or not.
    """
    path = os.path.join(runtime_dir(environ, os.getuid()), "systemd", "private")
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return None
    except OSError:
        return None
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(MANAGER_CONNECT_TIMEOUT_S)
        sock.connect(path)
    except OSError:
        return None
    finally:
        sock.close()
    return path


def which(name: str, environ: Mapping[str, str]) -> str | None:
    """`name` on the caller's $PATH (else a default one), as exec would find it."""
    for d in (environ.get("PATH") or DEFAULT_PATH).split(":"):
        path = os.path.join(d or ".", name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None
