"""The BPF prelude: a few hand-assembled checks run in front of libseccomp's program.

libseccomp cannot express them: a compare on the syscall number as such
(numbers newer than the reviewed table -> ENOSYS, the way runc's patchbpf
does), and the socket family allow-list of lists.py with EAFNOSUPPORT
whatever the action.  Pure Python, no libseccomp.
"""

from __future__ import annotations

import errno
import sys

from .parse import PolicyError
from .table import AF_NETLINK, SOCK_PACKET, SOCK_TYPE_MASK, X32_SYSCALL_BIT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .resolve import FamilyFilter

# Classic BPF opcodes (linux/filter.h)
_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JA = 0x05
_JEQ_K = 0x15
_JGT_K = 0x25
_JGE_K = 0x35
_RET_K = 0x06
_JUMP_MAX = 255  # jt and jf are u8
SECCOMP_RET_ERRNO = 0x00050000

# struct seccomp_data {int nr; u32 arch; u64 instruction_pointer; u64 args[6]}
_NR = 0
_ARCH = 4
_ARGS = 16
_ARG_SIZE = 8

# An instruction with symbolic jump targets (labels; None: the next one),
# or a label: a name alone.
_Insn = tuple[int, int, "str | None", "str | None"]


def _assemble(code: list[_Insn | str]) -> bytes:
    """Resolve labels (forward jumps only, as BPF has) and encode."""
    where: dict[str, int] = {}
    n = 0
    for item in code:
        if isinstance(item, str):
            where[item] = n
        else:
            n += 1
    out = []
    pc = 0
    for item in code:
        if isinstance(item, str):
            continue
        op, k, jt, jf = item
        offs = [0 if label is None else where[label] - pc - 1 for label in (jt, jf)]
        if op == _JA:
            k, offs = offs[0], [0, 0]
        if not all(0 <= o <= _JUMP_MAX for o in offs):
            raise PolicyError("seccomp: too many socket family entries for the filter's prelude")
        out.append(op.to_bytes(2, "little") + bytes(offs) + k.to_bytes(4, "little"))
        pc += 1
    return b"".join(out)


def _low32(arg: int) -> int:
    """Offset of argument `arg`'s low 32 bits in struct seccomp_data."""
    return _ARGS + _ARG_SIZE * arg + (4 if sys.byteorder == "big" else 0)


def prelude(machine: str, arch: int, reviewed_max: int, sockets: dict[int, FamilyFilter]) -> bytes:
    """The BPF run before libseccomp's program, on the native arch only.

    Syscall numbers above reviewed_max -> ENOSYS.  The socket calls
    (`sockets`: syscall number -> filter) -> EAFNOSUPPORT for a family (or
    netlink protocol) off their list, or a type of SOCK_PACKET.  Everything
    else falls through to libseccomp's program ("lib"), which checks the
    arch again and sends other ABIs, and x32 numbers (bit 30 set), to the
    bad-arch action.
    """
    eaf = SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT
    code: list[_Insn | str] = [
        (_LD_W_ABS, _ARCH, None, None),  # A = arch
        (_JEQ_K, arch, None, "lib"),
        (_LD_W_ABS, _NR, None, None),  # A = nr
    ]
    if machine == "x86_64":
        code.append((_JGE_K, X32_SYSCALL_BIT, "lib", None))
    code.append((_JGT_K, reviewed_max, "enosys", None))
    for nr in sorted(sockets):
        code.append((_JEQ_K, nr, f"sock{nr}", None))
    code.append((_JA, 0, "lib", None))
    for nr, f in sorted(sockets.items()):
        code += [
            f"sock{nr}",
            (_LD_W_ABS, _low32(1), None, None),  # A = type
            (_ALU_AND_K, SOCK_TYPE_MASK, None, None),
            (_JEQ_K, SOCK_PACKET, f"eaf{nr}", None),
            (_LD_W_ABS, _low32(0), None, None),  # A = family
        ]
        for family in f.families:
            netlink = family == AF_NETLINK and f.netlink is not None
            code.append((_JEQ_K, family, f"netlink{nr}" if netlink else "lib", None))
        code += [f"eaf{nr}", (_RET_K, eaf, None, None)]
        if AF_NETLINK in f.families and f.netlink is not None:
            code += [f"netlink{nr}", (_LD_W_ABS, _low32(2), None, None)]  # A = protocol
            code += [(_JEQ_K, p, "lib", None) for p in f.netlink]
            code.append((_RET_K, eaf, None, None))
    code += ["enosys", (_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS, None, None), "lib"]
    return _assemble(code)
