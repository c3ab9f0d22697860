"""Validating a SeccompSpec and compiling it to BPF with libseccomp.

Only the supervisor imports this module, and only on a cache miss (or to
validate a spec): it pulls in libseccomp's Python bindings, which cost tens
of milliseconds.  cache.py is the light front end.  The rules come from
resolve.py; bpf.py's prelude goes in front of libseccomp's program.
"""

from __future__ import annotations

import errno
import os

from . import SeccompError, SeccompSpec, check_fields
from .bpf import prelude
from .parse import PolicyError, cond_text, parse_entry
from .resolve import ALLOW, DEFAULT_MISS, resolve
from .table import AUDIT_ARCH, REVIEWED_MAX, X86_64_NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_OPTIMIZE_BINARY_TREE = 2  # libseccomp's SCMP_FLTATR_CTL_OPTIMIZE: a binary tree of syscall numbers
_EXPORT_MAX = 1 << 20  # bytes of exported BPF read back: far above the kernel's 4096 instructions
_PROBED_NRS = 1024  # syscall numbers asked of libseccomp on architectures without a table here


def validate(spec: SeccompSpec) -> None:
    """Raise SeccompError for an unknown policy, action or syscall name, a bad
    condition, or a combination of entries the filter cannot express."""
    check_fields(spec)
    if spec.policy == "none":
        return
    machine = os.uname().machine
    try:
        names = native_names(None, machine)
        for field, deny in (("allow", False), ("deny", True)):
            for entry in getattr(spec, field):
                name, _ = parse_entry(entry, f"seccomp.{field}", deny)
                if name not in names and not known_anywhere(name):
                    raise SeccompError(f"seccomp.{field}: unknown syscall {name!r}{_hint(name, names)}")
        resolve(spec, names)
    except PolicyError as e:
        raise SeccompError(str(e)) from None


def _hint(name: str, names: dict[str, int]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def compile_checked(spec: SeccompSpec, machine: str) -> bytes:
    """validate(spec), then compile_bpf; every failure a SeccompError."""
    validate(spec)
    try:
        return compile_bpf(spec, machine)
    except PolicyError as e:
        raise SeccompError(str(e)) from None
    except OSError as e:
        raise SeccompError(f"seccomp: libseccomp could not build the filter: {e.strerror or e}") from None


def bindings() -> Any:
    """The official `seccomp` module where present, else `pyseccomp`."""
    try:
        import seccomp as mod  # type: ignore[import-not-found,unused-ignore]

        if not hasattr(mod, "SyscallFilter"):  # some other module of that name
            raise ImportError
    except ImportError:
        try:
            import pyseccomp as mod  # type: ignore[import-untyped,no-redef,unused-ignore]
        except (ImportError, RuntimeError, OSError) as e:
            raise PolicyError(
                f"seccomp: libseccomp bindings unavailable ({e}); install libseccomp2 and "
                f"pyseccomp, or set seccomp.policy = \"none\""
            ) from None
    return mod


def _action(mod: Any, sym: str, action: str) -> int:
    if sym == ALLOW:
        return int(mod.ALLOW)
    if sym.startswith("errno:"):
        return int(mod.ERRNO(int(sym[6:])))
    if action == "kill":
        return int(mod.KILL_PROCESS)
    if action == "log":
        return int(mod.LOG)
    return int(mod.ERRNO(errno.ENOSYS if sym == DEFAULT_MISS else errno.EPERM))


def compile_bpf(spec: SeccompSpec, machine: str) -> bytes:
    """Build the filter with libseccomp and return the raw BPF program."""
    mod = bindings()
    names = native_names(mod, machine)
    default, rules, sockets = resolve(spec, names)
    f = mod.SyscallFilter(_action(mod, default, spec.action))
    badarch = int(mod.KILL_PROCESS) if spec.action == "kill" else int(mod.ERRNO(errno.ENOSYS))
    f.set_attr(mod.Attr.ACT_BADARCH, badarch)
    try:
        f.set_attr(mod.Attr.CTL_OPTIMIZE, _OPTIMIZE_BINARY_TREE)
    except (OSError, AttributeError):
        pass
    default_val = _action(mod, default, spec.action)
    for name in sorted(rules):
        sym, conds_list = rules[name]
        act = _action(mod, sym, spec.action)
        if act == default_val:
            continue
        nr = names[name]
        if conds_list is None:
            f.add_rule(act, nr)
            continue
        for conds in conds_list:
            f.add_rule_exactly(act, nr, *(mod.Arg(a, op, x, y) for a, op, x, y in conds))
    fd = os.memfd_create("sbx-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(fd, "w+b", closefd=False) as fh:
            f.export_bpf(fh)
        body = os.pread(fd, _EXPORT_MAX, 0)
    finally:
        os.close(fd)
    arch = AUDIT_ARCH.get(machine) or int(mod.system_arch())
    reviewed_max = REVIEWED_MAX.get(machine) or _libseccomp_max(mod)
    return prelude(machine, arch, reviewed_max, {names[n]: f for n, f in sockets.items()}) + body


def native_names(mod: Any | None, machine: str) -> dict[str, int]:
    """Syscall name -> number on `machine` (the native one: libseccomp's tables
    are asked where table.py has none)."""
    if machine == "x86_64":
        return X86_64_NAMES
    if mod is None:
        mod = bindings()
    out: dict[str, int] = {}
    for nr in range(_PROBED_NRS):
        try:
            out[mod.resolve_syscall(mod.Arch.NATIVE, nr).decode()] = nr
        except ValueError:
            pass
    return out


def _libseccomp_max(mod: Any) -> int:
    return max(native_names(mod, "?").values())


def known_anywhere(name: str) -> bool:
    """Whether libseccomp knows the name on some architecture."""
    try:
        mod = bindings()
    except PolicyError:
        return False
    try:
        nr = mod.resolve_syscall(mod.Arch.NATIVE, name)
    except (ValueError, OSError):
        return False
    return bool(nr != -1)  # __NR_SCMP_ERROR; other negatives are other arches'


def listing(spec: SeccompSpec, machine: str) -> str:
    """The resolved rules of `spec` as text, one per line, for debugging
    (print it from Python: sbx has no command for it)."""
    mod = bindings()
    names = native_names(mod, machine)
    default, rules, sockets = resolve(spec, names)
    lines = [f"# default: {default}; newer than {REVIEWED_MAX.get(machine)}: ENOSYS"]
    for name, f in sorted(sockets.items()):
        netlink = "any" if f.netlink is None else ", ".join(map(str, f.netlink))
        lines.append(f"# {name}: families {', '.join(map(str, f.families))} (netlink protocols {netlink}), "
                     f"not SOCK_PACKET; others: EAFNOSUPPORT")
    for name in sorted(rules):
        sym, conds_list = rules[name]
        if conds_list is None:
            lines.append(f"{name}: {sym}")
        else:
            for conds in conds_list:
                lines.append(f"{name}({', '.join(cond_text(c) for c in conds)}): {sym}")
    return "\n".join(lines)
