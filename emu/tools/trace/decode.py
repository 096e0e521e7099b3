"""Static decoding: the bytes of a translated block -> one
:class:`~emu.tools.trace.plans.StaticInsn` per instruction.

Each instruction gets its access plans (which operands touch memory and
through which registers, the implicit stack accesses, string instructions
as ranges), its flags (FLUSH, STALE) and its register effects
(:mod:`emu.tools.trace.effects`).  Which instructions have which implicit
accesses is a table, :data:`PLANS`; every other instruction accesses its
explicit memory operands, as capstone reports them.
"""

from __future__ import annotations

from typing import Callable

import capstone
from capstone import x86_const as CX

from emu.tools.trace.effects import effects
from emu.tools.trace.isa import (CR_REGS, FLUSH, FLUSH_INSNS, IRET, NO_ACCESS, POPF, PUSHF, READ_WRITE,
                                 REP_PREFIXES, RETF, SEG_BASE, SIDE_EFFECTS, STALE, STATE_512, STATE_INSNS,
                                 STRINGS, reg64)
from emu.tools.trace.plans import StaticInsn, StringPlan, mem_plan, stack_plan

# capstone id -> fn(instruction, its memory operands) -> access plans in order
PlanRule = Callable[[object, list], list]
PLANS: dict[int, PlanRule] = {}


def plans_of(*iids: int):
    def deco(fn: PlanRule) -> PlanRule:
        for iid in iids:
            PLANS[iid] = fn
        return fn
    return deco


def _stack_size(ins) -> int:
    """Bytes a push/pop moves: 2 for a 16-bit operand, else 8 (also for FS/GS)."""
    o = ins.operands[0]
    return 2 if o.size == 2 and not (o.type == CX.X86_OP_REG and ins.reg_name(o.reg) in ("fs", "gs")) else 8


@plans_of(CX.X86_INS_PUSH)
def _push(ins, mem):
    n = _stack_size(ins)
    o = ins.operands[0]
    out = [mem_plan(ins, o, (("r", n),))] if o.type == CX.X86_OP_MEM else []   # RSP before the push
    return out + [stack_plan("w", n, -n)]


@plans_of(CX.X86_INS_POP)
def _pop(ins, mem):
    n = _stack_size(ins)
    o = ins.operands[0]
    out = [stack_plan("r", n, 0)]
    if o.type == CX.X86_OP_MEM:
        # SDM POP: an RSP-based destination uses RSP after the increment
        adj = n if o.mem.base and reg64(ins, o.mem.base) == "rsp" else 0
        out.append(mem_plan(ins, o, (("w", n),), base_adjust=adj))
    return out


@plans_of(*PUSHF)
def _pushf(ins, mem):
    return [stack_plan("w", PUSHF[ins.id], -PUSHF[ins.id])]


@plans_of(*POPF)
def _popf(ins, mem):
    return [stack_plan("r", POPF[ins.id], 0)]


@plans_of(CX.X86_INS_CALL)
def _call(ins, mem):
    return [mem_plan(ins, o, (("r", 8),)) for o in mem] + [stack_plan("w", 8, -8)]


@plans_of(CX.X86_INS_RET)
def _ret(ins, mem):
    return [stack_plan("r", 8, 0)]


@plans_of(*RETF)
def _retf(ins, mem):
    return [stack_plan("r", RETF[ins.id], 0)]


@plans_of(*IRET)
def _iret(ins, mem):
    return [stack_plan("r", IRET[ins.id], 0)]


@plans_of(CX.X86_INS_LEAVE)
def _leave(ins, mem):
    return [stack_plan("r", 8, 0, base="rbp")]          # RSP <- RBP; pop RBP


@plans_of(CX.X86_INS_ENTER)
def _enter(ins, mem):
    return [stack_plan("w", 8, -8)]                     # push RBP (nesting level 0)


@plans_of(*NO_ACCESS)
def _no_access(ins, mem):
    return []


def _operands(ins, mem):
    """The explicit memory operands, with the kinds capstone gives them
    (CMPXCHG always writes; FXSAVE/FXRSTOR move 512 bytes)."""
    iid = ins.id
    out = []
    for o in mem:
        acc = 3 if iid in READ_WRITE else (o.access or 1)
        size = 512 if iid in STATE_512 else o.size
        kinds = tuple(k for k, bit in (("r", 1), ("w", 2)) if acc & bit)
        out.append(mem_plan(ins, o, tuple((k, size) for k in kinds)))
    return out


def _string_plans(ins, mem) -> tuple:
    elem, accesses = STRINGS[ins.id]
    rep = ins.prefix[0] in REP_PREFIXES
    src_seg = None
    for o in mem:
        if reg64(ins, o.mem.base) == "rsi":
            src_seg = SEG_BASE.get(o.mem.segment)
    return tuple(StringPlan(kind, elem, reg, src_seg if reg == "rsi" else None, rep, ins.addr_size == 4)
                 for kind, reg in accesses)


def _flags(ins) -> int:
    iid = ins.id
    flags = 0
    if iid in FLUSH_INSNS:
        flags |= FLUSH | STALE
    if iid in STATE_INSNS:
        flags |= STALE
    ops = ins.operands
    if iid == CX.X86_INS_MOV and ops and ops[0].type == CX.X86_OP_REG and ops[0].reg in CR_REGS:
        flags |= FLUSH | STALE       # mov cr3/cr4/cr0: new tables or new control bits
    return flags


def analyse(ins) -> StaticInsn:
    """The access plans and register effects of one capstone instruction (``detail`` on)."""
    iid = ins.id
    text = f"{ins.mnemonic} {ins.op_str}".strip()
    mem = [o for o in ins.operands if o.type == CX.X86_OP_MEM]
    if iid in STRINGS and not any(o.type == CX.X86_OP_REG and ins.reg_name(o.reg).startswith("xmm")
                                  for o in ins.operands):        # (not SSE's movsd)
        ops = _string_plans(ins, mem)
        stores = any(p.kind == "w" for p in ops) or iid in SIDE_EFFECTS
        return StaticInsn(ins.address, ins.size, text, ops, 0, effects(ins, ops), stores)
    ops = tuple(PLANS.get(iid, _operands)(ins, mem))
    stores = any(k == "w" for p in ops for k, _ in p.kinds) or iid in SIDE_EFFECTS
    return StaticInsn(ins.address, ins.size, text, ops, _flags(ins), effects(ins, ops), stores)


_cs: capstone.Cs | None = None
_DECODED: dict[tuple[int, bytes], list[StaticInsn]] = {}


def decode(code: bytes, addr: int) -> list[StaticInsn]:
    """Access plans of the instructions in ``code`` (a block) at ``addr``.

    Cached by (address, bytes) for the whole process: a block is decoded
    once however many machines run it."""
    key = (addr, code)
    hit = _DECODED.get(key)
    if hit is not None:
        return hit
    global _cs
    if _cs is None:
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.detail = True
    out = [analyse(ins) for ins in _cs.disasm(code, addr)]
    if len(_DECODED) > 50_000:
        _DECODED.clear()
    _DECODED[key] = out
    return out
