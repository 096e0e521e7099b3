"""What breakpoints name: syscalls, exception vectors, kinds of address space.

Numbers follow the rule of emu/parse.py: a vector or a syscall number is
decimal, or hexadecimal with ``0x``.
"""

from __future__ import annotations

from emu.errors import IsoemuError
from emu.hw.x86 import VECTOR_BY_NAME
from emu.linux import abi
from emu.parse import parse_int
from emu.tools.debug.errors import DebugError

# Linux, arch/x86/entry/calling.h: CR3 bit 12 selects the PTI user PGD of the
# 8 KiB pair, bit 11 the user PCID; bit 63 is NOFLUSH (only with PCIDE).
PTI_USER_PGTABLE_BIT = 1 << 12
PTI_USER_PCID_BIT = 1 << 11
X86_CR3_PCID_NOFLUSH = 1 << 63

_SYSCALL_NAMES = {nr: name for name, nr in abi.SYSCALLS.items()}


def syscall_name(nr: int) -> str:
    """``getpid`` for 39; ``?`` for a number the stub does not know."""
    return _SYSCALL_NAMES.get(nr, "?")


def parse_syscall(text: str | int) -> int:
    """A syscall by name (``getpid``) or number (``39``, ``0x27``)."""
    if isinstance(text, int):
        return _in_range(text, "syscall number", 0, (1 << 64) - 1)
    t = text.strip()
    if t in abi.SYSCALLS:
        return abi.SYSCALLS[t]
    if t[:1].isdigit() or t[:1] == "-":
        return _parse(t, "syscall number", 0, (1 << 64) - 1)
    raise DebugError(f"unknown syscall {text!r}: give a number or one of {', '.join(abi.SYSCALLS)}")


def parse_vector(text: str | int) -> int:
    """An exception vector by number (``14``, ``0xe``) or name (``#PF``, ``PF``, ``gp``)."""
    if isinstance(text, int):
        return _in_range(text, "vector", 0, 255)
    t = text.strip()
    if t[:1].isdigit() or t[:1] == "-":
        return _parse(t, "vector", 0, 255)
    v = VECTOR_BY_NAME.get(t.lstrip("#").upper())
    if v is None:
        raise DebugError(f"unknown vector {text!r}: give a number (14) or a name (#PF, GP, UD...)")
    return v


def _parse(text: str, what: str, lo: int, hi: int) -> int:
    try:
        return parse_int(text, what, lo=lo, hi=hi)
    except IsoemuError as e:
        raise DebugError(str(e)) from None


def _in_range(v: int, what: str, lo: int, hi: int) -> int:
    if not lo <= v <= hi:
        raise DebugError(f"{what} {v} is out of range ({lo} .. {hi})")
    return v


def is_asi_space(name: str) -> bool:
    """An ASI restricted space: a process's ``P.asi`` or ``asi.global``."""
    return name.endswith(".asi") or name == "asi.global"
