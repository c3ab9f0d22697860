"""The syntax of a profile's seccomp allow/deny entries: text -> (name, conditions).

`allow`/`deny` entries are syscall names, optionally with argument
conditions: `socket(arg0 == AF_NETLINK, arg2 == NETLINK_AUDIT)`,
`ioctl(arg1 & 0xffffffff == 0x5412)`, `mmap(arg2 != 7)`.  Operators
`== != < <= > >=`, and `argN & MASK == VALUE`.  At most one condition per
argument (a libseccomp limit).  `argN == V` compares the low 32 bits in a
deny entry (the kernel truncates int arguments, so a 64-bit compare could
be bypassed by setting the high half) and all 64 bits in an allow entry
(never wider than written).  Values are integers (0x, 0o, 0b prefixes) or
one of the names in table.CONSTANTS.

Pure Python: the profile parser checks entries with it, without libseccomp.
Whether a name is a syscall, and how entries combine, is resolve.py's.
"""

from __future__ import annotations

from .table import CONSTANTS

# libseccomp comparison operators (enum scmp_compare)
NE, LT, LE, EQ, GE, GT, MASKED_EQ = 1, 2, 3, 4, 5, 6, 7
_OPS = {"==": EQ, "!=": NE, "<": LT, "<=": LE, ">": GT, ">=": GE}
_OP_TEXT = {v: k for k, v in _OPS.items()}
LOW32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF
_ARGS = 6  # struct seccomp_data has args[6]

# A condition: (arg, op, datum_a, datum_b), as libseccomp's scmp_arg_cmp.
Cond = tuple[int, int, int, int]
Conds = tuple[Cond, ...]


class PolicyError(ValueError):
    """A bad profile entry; the message is one line."""


def cond_text(c: Cond) -> str:
    arg, op, a, b = c
    if op == MASKED_EQ:
        return f"arg{arg} & {a:#x} == {b:#x}"
    return f"arg{arg} {_OP_TEXT[op]} {a:#x}"


def _value(text: str, where: str) -> int:
    t = text.strip()
    if t in CONSTANTS:
        return CONSTANTS[t]
    try:
        v = int(t, 0)
    except ValueError:
        raise PolicyError(f"{where}: bad value {t!r} (an integer or one of AF_*, NETLINK_*, CLONE_NEW*, TIOC*)") from None
    if not 0 <= v <= U64:
        raise PolicyError(f"{where}: value {t!r} out of range")
    return v


def parse_entry(entry: str, where: str, deny: bool) -> tuple[str, Conds]:
    """`name` or `name(cond, ...)` -> (name, conditions); names not checked."""
    if not isinstance(entry, str):
        raise PolicyError(f"{where}: entries must be strings, got {entry!r}")
    text = entry.strip()
    name, paren, rest = text.partition("(")
    name = name.strip()
    if not name or not all(c.isalnum() or c == "_" for c in name):
        raise PolicyError(f"{where}: bad entry {entry!r} (a syscall name, optionally with (argN == VALUE, ...))")
    if not paren:
        return name, ()
    if not rest.endswith(")"):
        raise PolicyError(f"{where}: {entry!r}: missing ')'")
    body = rest[:-1].strip()
    if not body:
        raise PolicyError(f"{where}: {entry!r}: empty condition list")
    conds: list[Cond] = []
    seen: set[int] = set()
    for part in body.split(","):
        c = _parse_cond(part, f"{where}: {entry!r}", deny)
        if c[0] in seen:
            raise PolicyError(f"{where}: {entry!r}: more than one condition on arg{c[0]}")
        seen.add(c[0])
        conds.append(c)
    return name, tuple(sorted(conds))


def _parse_cond(part: str, where: str, deny: bool) -> Cond:
    p = part.strip()
    for op_text in ("==", "!=", "<=", ">=", "<", ">"):
        left, sep, right = p.partition(op_text)
        if sep:
            break
    else:
        raise PolicyError(f"{where}: bad condition {p!r} (argN OP VALUE, OP one of == != < <= > >=)")
    left = left.strip()
    mask = None
    if "&" in left:
        left, _, mask_text = left.partition("&")
        left = left.strip()
        mask = _value(mask_text, where)
        if op_text != "==":
            raise PolicyError(f"{where}: a masked condition must use == ({p!r})")
    if not (left.startswith("arg") and left[3:].isascii() and left[3:].isdigit() and int(left[3:]) < _ARGS):
        raise PolicyError(f"{where}: bad condition {p!r}: the left side must be arg0..arg5")
    arg = int(left[3:])
    value = _value(right, where)
    if mask is not None:
        return (arg, MASKED_EQ, mask, value & mask)
    if op_text == "==" and deny and value <= LOW32:
        # The kernel truncates int arguments: deny on the low 32 bits.
        return (arg, MASKED_EQ, LOW32, value)
    return (arg, _OPS[op_text], value, 0)
