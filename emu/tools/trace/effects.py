"""Register effects: what one instruction does to the registers that build
addresses, as a tuple of effects the data-flow analysis
(:mod:`emu.tools.trace.dataflow`) applies in order, after the
instruction's accesses (whose addresses use the state before it).

An effect is a tuple whose first item names it:

=========================  ===================================================
``("add", r, c)``          r += c
``("set", r, c)``          r = c
``("copy", d, s)``         d = s
``("sum", d, s, k)``       d += k * s
``("mul", r, c)``          r *= c
``("swap", a, b)``         exchange a and b
``("lea", d, plan)``       d = the plan's effective address (no segment base)
``("load", d, i, n)``      d = the n bytes read by the instruction's plan i
``("entry", d, name)``     d = register ``name`` at the segment's start (mov r, cr3)
``("zx32", r)``            r &= 0xffffffff (a 32-bit result)
``("alu", r, op, src, w)`` r = r op src on w bytes, src ``('imm', c)`` or
                           ``('reg', s)``: known only for constants
``("strstep", r, elem)``   r += elem, or -= elem when RFLAGS.DF is set
``("df", v)``              RFLAGS.DF = v (cld/std)
``("opaque", r)``          r = anything
=========================  ===================================================

Each instruction the analysis follows has a rule in :data:`RULES`; a rule
may decline (None) a form it does not follow, and then, as for every other
instruction, each tracked register it writes becomes opaque.
"""

from __future__ import annotations

from typing import Callable

import capstone
from capstone import x86_const as CX

from emu.tools.trace.isa import DF, LODS, M64, POPF, PUSHF, REP_PREFIXES, STATE_REGS, STRINGS, reg64
from emu.tools.trace.plans import StringPlan, mem_plan

R, I, MEM = CX.X86_OP_REG, CX.X86_OP_IMM, CX.X86_OP_MEM

ALU = {CX.X86_INS_AND: "and", CX.X86_INS_OR: "or", CX.X86_INS_XOR: "xor", CX.X86_INS_SHL: "shl",
       CX.X86_INS_SHR: "shr", CX.X86_INS_SAR: "sar"}

# registers written that capstone's regs_access() leaves out, or that the
# microcode's hooks write (the hypercall port answers in RAX, SYSCALL sets
# RCX/R11, SWAPGS and WRMSR change the GS/FS bases)
EXTRA_WRITES = {
    CX.X86_INS_SYSCALL: ("rcx", "r11", DF), CX.X86_INS_OUT: ("rax",), CX.X86_INS_XLATB: ("rax",),
    CX.X86_INS_SWAPGS: ("gs_base",), CX.X86_INS_WRMSR: ("fs_base", "gs_base"),
    CX.X86_INS_CMPXCHG: ("rax",), CX.X86_INS_CMPXCHG8B: ("rax", "rdx"), CX.X86_INS_CMPXCHG16B: ("rax", "rdx"),
    CX.X86_INS_IRETQ: ("rsp", DF), CX.X86_INS_IRET: ("rsp", DF), CX.X86_INS_IRETD: ("rsp", DF),
    CX.X86_INS_SYSRET: (DF,), CX.X86_INS_RDMSR: ("rax", "rdx"), CX.X86_INS_CPUID: ("rax", "rbx", "rcx", "rdx"),
    CX.X86_INS_RDTSC: ("rax", "rdx"), CX.X86_INS_RDTSCP: ("rax", "rdx", "rcx"),
}

Rule = Callable[[object, tuple], "tuple | None"]
RULES: dict[int, Rule] = {}


def rule(*iids: int):
    def deco(fn: Rule) -> Rule:
        for iid in iids:
            RULES[iid] = fn
        return fn
    return deco


def effects(ins, plans: tuple) -> tuple:
    """The register effects of capstone instruction ``ins`` (``detail`` on)
    whose access plans are ``plans``."""
    fn = RULES.get(ins.id)
    if fn is not None:
        out = fn(ins, plans)
        if out is not None:
            return out
    return opaque_writes(ins)


def opaque_writes(ins) -> tuple:
    """Every tracked register the instruction writes becomes opaque."""
    iid = ins.id
    written = set(EXTRA_WRITES.get(iid, ()))
    try:
        written.update(reg64(ins, r) for r in ins.regs_access()[1])
    except capstone.CsError:
        pass
    written.update(reg64(ins, o.reg) for o in ins.operands if o.type == R and o.access & 2)
    if "fs" in written:
        written.add("fs_base")
    if "gs" in written:
        written.add("gs_base")
    if iid in STRINGS:          # a REP string instruction: its pointers and count move
        written.update(("rsi", "rdi", "rcx"))
    return tuple(("opaque", r) for r in sorted(written) if r in STATE_REGS or r == DF)


def sized(name: str, w: int, *core: tuple) -> tuple:
    """Effects for a w-byte destination: 64-bit exact, 32-bit zero-extended, else opaque."""
    if w == 8:
        return core
    if w == 4:
        return core + (("zx32", name),)
    return (("opaque", name),)


def dest(ins):
    """(64-bit register, width in bytes) of a tracked register first operand, else None."""
    ops = ins.operands
    if ops and ops[0].type == R:
        name = reg64(ins, ops[0].reg)
        if name in STATE_REGS:
            return name, ops[0].size
    return None


def two_operand(ins):
    """(destination, width, source operand, source register or None) of a
    two-operand instruction writing a tracked register, else None."""
    d = dest(ins)
    ops = ins.operands
    if d is None or len(ops) != 2:
        return None
    src = ops[1]
    return d[0], d[1], src, reg64(ins, src.reg) if src.type == R else None


# --- the stack ------------------------------------------------------------------------------
@rule(CX.X86_INS_PUSH, CX.X86_INS_CALL, *PUSHF)
def _push(ins, plans):
    return (("add", "rsp", -plans[-1].kinds[0][1]),)


@rule(CX.X86_INS_POP)
def _pop(ins, plans):
    n = plans[0].kinds[0][1]
    out: tuple = (("add", "rsp", n),)
    op = ins.operands[0]
    if op.type == R:
        name = reg64(ins, op.reg)
        if name in STATE_REGS:
            out += (("load", name, 0, 8) if n == 8 else ("opaque", name),)
        elif name in ("fs", "gs"):
            out += (("opaque", f"{name}_base"),)
    return out


@rule(*POPF)
def _popf(ins, plans):
    return (("add", "rsp", POPF[ins.id]), ("opaque", DF))


@rule(CX.X86_INS_RET)
def _ret(ins, plans):
    ops = ins.operands
    return (("add", "rsp", 8 + (ops[0].imm if ops else 0)),)


@rule(CX.X86_INS_LEAVE)
def _leave(ins, plans):
    return (("copy", "rsp", "rbp"), ("add", "rsp", 8), ("load", "rbp", 0, 8))


@rule(CX.X86_INS_ENTER)
def _enter(ins, plans):
    ops = ins.operands
    if len(ops) == 2 and ops[1].imm == 0:
        return (("add", "rsp", -8), ("copy", "rbp", "rsp"), ("add", "rsp", -ops[0].imm))
    return (("opaque", "rsp"), ("opaque", "rbp"))


# --- flags and strings ------------------------------------------------------------------------
@rule(CX.X86_INS_CLD, CX.X86_INS_STD)
def _direction(ins, plans):
    return (("df", 1 if ins.id == CX.X86_INS_STD else 0),)


@rule(*STRINGS)
def _string_step(ins, plans):
    """One iteration (no REP prefix): the pointers step by one element."""
    if ins.prefix[0] in REP_PREFIXES or not plans or not isinstance(plans[0], StringPlan):
        return None                                  # REP, or an SSE instruction of the same name
    elem, accesses = STRINGS[ins.id]
    out = tuple(("strstep", reg, elem) for _, reg in accesses)
    return out + (("opaque", "rax"),) if ins.id in LODS else out


# --- moves and arithmetic ---------------------------------------------------------------------
@rule(CX.X86_INS_MOV, CX.X86_INS_MOVABS)
def _mov(ins, plans):
    t = two_operand(ins)
    if t is None:
        return None
    d, w, src, src_reg = t
    if src.type == I:
        return sized(d, w, ("set", d, src.imm & M64)) if w != 4 else (("set", d, src.imm & 0xFFFFFFFF),)
    if src.type == R and src_reg in STATE_REGS:
        return sized(d, w, ("copy", d, src_reg))
    if src.type == R and src.reg == CX.X86_REG_CR3:
        return (("entry", d, "cr3"),)
    if src.type == MEM and w in (4, 8) and plans:
        return (("load", d, 0, w),)
    return None


@rule(CX.X86_INS_MOVZX)
def _movzx(ins, plans):
    t = two_operand(ins)
    if t is not None and t[2].type == MEM and t[1] in (4, 8) and plans:
        return (("load", t[0], 0, t[2].size),)
    return None


@rule(CX.X86_INS_LEA)
def _lea(ins, plans):
    t = two_operand(ins)
    if t is None or ins.addr_size != 8:
        return None
    d, w, src, _ = t
    return sized(d, w, ("lea", d, mem_plan(ins, src, ())))


@rule(CX.X86_INS_ADD, CX.X86_INS_SUB)
def _add_sub(ins, plans):
    t = two_operand(ins)
    if t is None:
        return None
    d, w, src, src_reg = t
    sign = 1 if ins.id == CX.X86_INS_ADD else -1
    if src.type == I:
        return sized(d, w, ("add", d, sign * src.imm))
    if src.type == R and src_reg in STATE_REGS:
        if src_reg == d and sign < 0 and w in (4, 8):
            return (("set", d, 0),)                  # sub r, r
        return sized(d, w, ("sum", d, src_reg, sign))
    return None


@rule(*ALU)
def _alu(ins, plans):
    t = two_operand(ins)
    if t is None:
        return None
    d, w, src, src_reg = t
    if ins.id == CX.X86_INS_XOR and src.type == R and src.reg == ins.operands[0].reg and w in (4, 8):
        return (("set", d, 0),)                      # xor r, r
    if src.type not in (I, R):
        return None
    if src.type == R and src_reg not in STATE_REGS:
        return (("opaque", d),)
    operand = ("imm", src.imm) if src.type == I else ("reg", src_reg)
    if ins.id == CX.X86_INS_SHL and src.type == I and w == 8:
        return (("mul", d, 1 << (src.imm & 63)),)
    return sized(d, w, ("alu", d, ALU[ins.id], operand, w))


@rule(CX.X86_INS_XCHG)
def _xchg(ins, plans):
    t = two_operand(ins)
    if t is not None and t[2].type == R and t[3] in STATE_REGS and t[1] == 8:
        return (("swap", t[0], t[3]),)
    return None


@rule(CX.X86_INS_IMUL)
def _imul(ins, plans):
    ops = ins.operands
    d = dest(ins)
    if d is None or len(ops) != 3 or ops[1].type != R or ops[2].type != I or d[1] != 8:
        return None
    src_reg = reg64(ins, ops[1].reg)
    if src_reg not in STATE_REGS:
        return None
    return (("copy", d[0], src_reg), ("mul", d[0], ops[2].imm))


@rule(CX.X86_INS_INC, CX.X86_INS_DEC, CX.X86_INS_NEG)
def _inc_dec_neg(ins, plans):
    d = dest(ins)
    if d is None or len(ins.operands) != 1:
        return None
    name, w = d
    if ins.id == CX.X86_INS_NEG:
        return sized(name, w, ("mul", name, M64))
    return sized(name, w, ("add", name, 1 if ins.id == CX.X86_INS_INC else -1))
