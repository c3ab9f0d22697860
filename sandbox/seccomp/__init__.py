"""seccomp: the payload's syscall filter, from the reviewed policy to the kernel.

The modules, in the order a filter lives:

    lists.py    SECURITY REVIEW: what each policy allows and denies, and why (data only)
    table.py    kernel numbers: the x86_64 syscall table, the constants a condition may name
    parse.py    the syntax of a profile's allow/deny entries
    resolve.py  the lists and a profile's entries -> one action per syscall (pure)
    compile.py  validation, and the rules -> BPF with libseccomp
    bpf.py      the hand-assembled prelude in front of libseccomp's program
    cache.py    program(): the compiled filter, cached on disk (the supervisor, every run)
    load.py     prepare() and load(): installing it in the payload (ctypes only)
    notify.py   the listener: which syscall a killed payload made

A run whose filter is cached imports this module, cache.py and load.py only: no libseccomp,
hashlib, dataclasses or re.  This module holds what the rest of sbx names: the spec, its error,
and the checks of its fields that need no syscall table.
"""

from __future__ import annotations

from ..errors import SbxError
from ..model.frozen import dataclass

POLICIES = ("default", "strict", "none")
ACTIONS = ("errno", "kill", "log")


class SeccompError(SbxError):
    """A bad [seccomp] table or a filter that cannot be built; one line."""


@dataclass(frozen=True)
class SeccompSpec:
    """The [seccomp] table of a profile.

    policy: "default" (Docker-like deny-list), "strict" (allow-list), "none"; see lists.py.
    allow/deny: syscall names, optionally with argument conditions, e.g.
    "socket(arg0 == AF_NETLINK, arg2 == NETLINK_AUDIT)"; see parse.py.
    action: what a denied syscall gets: "errno" (EPERM; ENOSYS for one a
    strict policy does not list), "kill" (the process is killed, and the
    syscall reported), "log" (allowed, logged by the kernel).
    """

    policy: str = "default"
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    action: str = "errno"


def check_fields(spec: SeccompSpec) -> None:
    """Raise SeccompError for an unknown policy or action, lists that are not
    tuples, or lists with policy "none" (the checks that need no syscall table;
    compile.validate does the rest)."""
    if spec.policy not in POLICIES:
        raise SeccompError(f"seccomp.policy: unknown policy {spec.policy!r} (one of {', '.join(POLICIES)})")
    if spec.action not in ACTIONS:
        raise SeccompError(f"seccomp.action: unknown action {spec.action!r} (one of {', '.join(ACTIONS)})")
    for field in ("allow", "deny"):
        value = getattr(spec, field)
        if not isinstance(value, tuple):
            raise SeccompError(f"seccomp.{field}: must be a list of syscall names")
    if spec.policy == "none" and (spec.allow or spec.deny):
        raise SeccompError('seccomp: allow/deny lists have no effect with policy = "none"')
