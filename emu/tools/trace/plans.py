"""Access plans: what one instruction does to memory, independent of
register values (the decoder's output, :mod:`emu.tools.trace.decode`)."""

from __future__ import annotations

from typing import NamedTuple

from emu.tools.trace.isa import SEG_BASE, reg64


class MemPlan(NamedTuple):
    """An operand's accesses: ``kinds`` ``((kind, size), ...)`` in the order
    the CPU performs them, at ``seg`` base + ``base`` + ``index`` * ``scale``
    + ``disp`` (64-bit register names or None; RIP-relative operands have
    the address folded into ``disp``; ``seg`` is ``'fs'``, ``'gs'`` or None,
    the other segments having base 0 in 64-bit mode), truncated to 32 bits
    when ``addr32`` (an address-size prefix)."""

    kinds: tuple
    seg: str | None
    base: str | None
    index: str | None
    scale: int
    disp: int
    addr32: bool


class StringPlan(NamedTuple):
    """One operand of a string instruction: ``elem``-byte elements at
    ``reg`` (``rsi``/``rdi``, plus the ``seg`` base), RCX of them if ``rep``."""

    kind: str
    elem: int
    reg: str
    seg: str | None
    rep: bool
    addr32: bool


class StaticInsn:
    """What one instruction does to memory and to address registers,
    independent of register values: ``ops`` its plans (in the order of its
    accesses), ``flags`` FLUSH/STALE (:mod:`emu.tools.trace.isa`), ``eff``
    its register effects (:mod:`emu.tools.trace.effects`), ``stores``
    whether it may change memory (so a value loaded before it cannot be
    read again after it)."""

    __slots__ = ("addr", "size", "text", "ops", "flags", "eff", "stores", "string", "rep")

    def __init__(self, addr: int, size: int, text: str, ops: tuple, flags: int, eff: tuple = (),
                 stores: bool = False):
        self.addr, self.size, self.text, self.ops, self.flags = addr, size, text, ops, flags
        self.eff, self.stores = eff, stores
        self.string = bool(ops) and isinstance(ops[0], StringPlan)
        self.rep = self.string and ops[0].rep

    def __repr__(self):
        return f"StaticInsn({self.addr:#x} {self.text!r} ops={self.ops} flags={self.flags})"


def mem_plan(ins, op, kinds: tuple, *, base_adjust: int = 0) -> MemPlan:
    """The plan of capstone memory operand ``op``."""
    m = op.mem
    seg = SEG_BASE.get(m.segment)
    base = reg64(ins, m.base) if m.base else None
    index = reg64(ins, m.index) if m.index else None
    disp = m.disp + base_adjust
    if base == "rip":
        base, disp = None, ins.address + ins.size + m.disp     # RIP-relative: RIP of the next instruction
    return MemPlan(kinds, seg, base, index, m.scale, disp, ins.addr_size == 4)


def stack_plan(kind: str, size: int, disp: int, base: str = "rsp") -> MemPlan:
    """An implicit stack access of ``size`` bytes at ``base`` + ``disp``."""
    return MemPlan(((kind, size),), None, base, None, 1, disp, False)
