"""The reviewed lists and a profile's entries -> one action per syscall (pure Python).

How entries combine (libseccomp silently drops or rejects rules whose
conditions overlap with a different action, so sbx resolves them first and
hands libseccomp per syscall one action only):

- an unconditional `allow` removes every built-in rule for that syscall
  (`default`) or allows it outright (`strict`);
- an unconditional `deny` denies the syscall outright;
- a conditional `deny` adds a deny rule under `default`; under `strict` it
  is an error (list the allowed forms in `allow` instead);
- a conditional `allow` adds an allow rule under `strict`; under `default`
  it may only lift a built-in argument rule exactly, else it is an error;
- the socket family allow-list is lifted only by naming a family:
  `socket(arg0 == AF_VSOCK)`, `socket(arg0 == AF_NETLINK, arg2 ==
  NETLINK_SOCK_DIAG)` (per syscall: `socketpair(...)` likewise), never by an
  unconditional `allow = ["socket"]`.  Under `default` a conditional allow
  of `socket`/`socketpair` must have exactly that form; under `strict` any
  allow entry pinning arg0 (and arg2) to a value adds that family (protocol),
  and the entry's other conditions are the libseccomp rule's.
"""

from __future__ import annotations

import errno

from ..model.frozen import dataclass
from .lists import (
    ALLOW_STRICT,
    CLONE_FLAGS_DENIED,
    COMPAT_ERRNO,
    DENY,
    IOCTL_DENIED,
    IOCTL_STRICT,
    NETLINK_OK,
    PERSONALITY_OK,
    SOCKET_CALLS,
    SOCKET_FAMILIES_OK,
    STRICT_COMPAT_ERRNO,
)
from .parse import EQ, LOW32, MASKED_EQ, Conds, PolicyError, cond_text, parse_entry
from .table import AF_NETLINK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from . import SeccompSpec


@dataclass(frozen=True)
class FamilyFilter:
    """What one of SOCKET_CALLS may name: families, and netlink protocols
    (None: every protocol, when a profile allows AF_NETLINK outright)."""

    families: tuple[int, ...]
    netlink: tuple[int, ...] | None


# Symbolic actions, turned into libseccomp values by compile.py.
ALLOW = "allow"
VIOLATION = "violation"  # the spec's action (deny entries)
DEFAULT_MISS = "miss"  # strict: a syscall not listed


def _errno_action(name: str) -> str:
    return f"errno:{getattr(errno, name)}"


Resolved = tuple[str, "dict[str, tuple[str, list[Conds] | None]]", "dict[str, FamilyFilter]"]


def resolve(spec: SeccompSpec, names: dict[str, int]) -> Resolved:
    """Apply the spec's lists to the base policy.

    Returns (default action, {syscall: (action, conditions or None)},
    {socket call: FamilyFilter}), with symbolic actions.  `names` are the
    syscalls of the native architecture; entries for syscalls that do not
    exist there are dropped after checking.
    """
    rules: dict[str, tuple[str, list[Conds] | None]] = {}
    strict = spec.policy == "strict"
    if strict:
        default = DEFAULT_MISS
        for n in ALLOW_STRICT:
            rules[n] = (ALLOW, None)
        rules["clone"] = (ALLOW, [((0, MASKED_EQ, sum(CLONE_FLAGS_DENIED), 0),)])
        rules["ioctl"] = (ALLOW, [((1, MASKED_EQ, LOW32, c),) for c in IOCTL_STRICT])
        rules["personality"] = (ALLOW, [((0, MASKED_EQ, LOW32, v),) for v in PERSONALITY_OK])
        for n, e in STRICT_COMPAT_ERRNO.items():
            rules[n] = (_errno_action(e), None)
    else:
        default = ALLOW
        for n in DENY:
            rules[n] = (VIOLATION, None)
        rules["clone"] = (VIOLATION, [((0, MASKED_EQ, f, f),) for f in CLONE_FLAGS_DENIED])
        rules["ioctl"] = (VIOLATION, [((1, MASKED_EQ, LOW32, c),) for c in IOCTL_DENIED])
        rules["personality"] = (VIOLATION, [((0, MASKED_EQ, m, d),) for m, d in personality_deny_masks()])
        for n, e in COMPAT_ERRNO.items():
            rules[n] = (_errno_action(e), None)

    allow = [parse_entry(e, "seccomp.allow", deny=False) for e in spec.allow]
    deny = [parse_entry(e, "seccomp.deny", deny=True) for e in spec.deny]
    sockets = family_filters(allow, strict)
    uncond_allow = {n for n, c in allow if not c}
    for n, c in deny:
        if not c and n in uncond_allow:
            raise PolicyError(f"seccomp: {n!r} is in both allow and deny")

    for name, conds in allow:
        where = f"seccomp.allow: {name}"
        cur = rules.get(name)
        if not conds:
            if strict:
                rules[name] = (ALLOW, None)
            else:
                rules.pop(name, None)
            continue
        if strict:
            if cur is None or cur[0] != ALLOW:
                rules[name] = (ALLOW, [conds])
            elif cur[1] is not None and conds not in cur[1]:
                cur[1].append(conds)
            continue
        # default policy: a conditional allow may only lift a built-in rule
        if cur is None:
            continue  # already allowed
        lifted = _lift(cur, conds)
        if lifted is None:
            raise PolicyError(
                f"{where}({', '.join(cond_text(c) for c in conds)}) does not match a built-in rule exactly; "
                f"allow {name!r} entirely, or use policy = \"strict\" to allow it with conditions"
            )
        if lifted[1] == []:
            rules.pop(name)
        else:
            rules[name] = lifted

    for name, conds in deny:
        cur = rules.get(name)
        if not conds:
            rules[name] = (VIOLATION, None)
            continue
        if strict:
            if cur is None or cur[0] != ALLOW:
                continue  # not allowed anyway
            raise PolicyError(
                f"seccomp.deny: {name}({', '.join(cond_text(c) for c in conds)}): under policy \"strict\" "
                f"a syscall is allowed with conditions or not at all; list the allowed forms in seccomp.allow"
            )
        if cur is None:
            rules[name] = (VIOLATION, [conds])
        elif cur[0] != VIOLATION:
            continue  # clone3, io_uring_*: already refused for every argument
        elif cur[1] is not None and conds not in cur[1]:
            cur[1].append(conds)

    return default, {n: r for n, r in rules.items() if n in names}, {n: f for n, f in sockets.items() if n in names}


def family_filters(allow: list[tuple[str, Conds]], strict: bool) -> dict[str, FamilyFilter]:
    """The socket family allow-list of each of SOCKET_CALLS, widened by the
    allow entries that name a family (see the module docstring)."""
    out: dict[str, FamilyFilter] = {}
    for call in SOCKET_CALLS:
        families = set(SOCKET_FAMILIES_OK)
        netlink: set[int] | None = set(NETLINK_OK)
        for name, conds in allow:
            if name != call or not conds:
                continue
            named = _named_family(conds, strict)
            if named is None:
                if strict:
                    continue  # allowed for the families already on the list only
                raise PolicyError(
                    f"seccomp.allow: {name}({', '.join(cond_text(c) for c in conds)}): under policy \"default\" "
                    f"{name} is allowed for a family, nothing narrower: {name}(arg0 == AF_VSOCK) or "
                    f"{name}(arg0 == AF_NETLINK, arg2 == NETLINK_SOCK_DIAG)"
                )
            family, protocol = named
            families.add(family)
            if family == AF_NETLINK:
                if protocol is None:
                    netlink = None
                elif netlink is not None:
                    netlink.add(protocol)
        out[call] = FamilyFilter(tuple(sorted(families)), None if netlink is None else tuple(sorted(netlink)))
    return out


def _named_family(conds: Conds, strict: bool) -> tuple[int, int | None] | None:
    """(family, netlink protocol or None) when `conds` pin arg0 (and for
    netlink maybe arg2) to one 32-bit value; under `default` nothing else
    may be in `conds`."""

    def pinned(arg: int) -> int | None:
        for a, op, x, y in conds:
            if a == arg and op == EQ and x <= LOW32:
                return x
            if a == arg and op == MASKED_EQ and x == LOW32:
                return y
        return None

    family = pinned(0)
    if family is None:
        return None
    protocol = pinned(2) if family == AF_NETLINK else None
    if not strict and len(conds) != 1 + (protocol is not None):
        return None
    return family, protocol


def _lift(cur: tuple[str, list[Conds] | None], conds: Conds) -> tuple[str, list[Conds]] | None:
    """Remove the built-in conditional rule equal to `conds` (an allow entry).

    An allow entry's `argN == V` (64-bit) matches a built-in rule's
    `argN & 0xffffffff == V`.
    """
    action, lst = cur
    if lst is None:
        return None
    as_masked = tuple(
        sorted((a, MASKED_EQ, LOW32, x) if op == EQ and x <= LOW32 else (a, op, x, y) for a, op, x, y in conds)
    )
    for i, c in enumerate(lst):
        if c == conds or c == as_masked:
            return action, lst[:i] + lst[i + 1 :]
    return None


def personality_deny_masks() -> list[tuple[int, int]]:
    """Masked-equality rules that match every 32-bit personality value except
    PERSONALITY_OK (0, 0x8, 0x20000, 0x20008, 0xffffffff).

    libseccomp allows one comparison per argument in a rule, so "not in a
    set" is written as a union of single masked compares.  Rule R(b, c) =
    "bit b set and bit c clear", for each bit b other than 3 and 17 with
    c = b + 1 (mod 32); plus "bit 2, 3 set and 4 clear" and "bit 16, 17 set
    and 18 clear".  Proof of cover: take v != 0xffffffff with a bit outside
    {3, 17}; from such a set bit walk upwards (cyclically) over set bits to
    the first clear bit c; its predecessor p is set: if p is outside
    {3, 17} R(p, c) matches, else p - 1 (2 or 16) was walked over, so the
    three-bit rule matches.  None matches an allowed value: those have no
    set bit outside {3, 17}, or (0xffffffff) no clear bit.  Only the low 32
    bits are compared: the kernel takes an unsigned int.
    """
    allowed_bits = (3, 17)
    out: list[tuple[int, int]] = []
    for b in range(32):
        if b in allowed_bits:
            continue
        c = (b + 1) % 32
        out.append(((1 << b) | (1 << c), 1 << b))
    for p in allowed_bits:
        m = (1 << (p - 1)) | (1 << p) | (1 << (p + 1))
        out.append((m, (1 << (p - 1)) | (1 << p)))
    return out

