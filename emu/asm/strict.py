"""Each instruction's bytes against its source (docs/assembler.md,
"Strictness").

Keystone 0.9.2 drops operands, truncates immediates and displacements,
swaps in other registers and turns operands into memory references without
a word.  After linking, every instruction statement is decoded once
(capstone) and compared operand by operand with what
:mod:`emu.asm.syntax` read: registers by name (so by width), memory
operands by segment, size, registers with their factors and displacement,
immediates by value.  A RIP-relative operand that names a label is
relocated like a PC32 relocation, since keystone puts a foreign label's
value in the displacement.
"""

from __future__ import annotations

import struct

from capstone import x86_const as X

from emu.asm.expr import MASK64, ExprError, evaluate, fits, hexs, linear, symbols_of
from emu.asm.image import Stmt
from emu.asm.syntax import SIZES, InsnSyntax, Operand
from emu.errors import AsmError

_SIZE_NAMES = {v: k for k, v in SIZES.items() if k not in ("tword", "oword")}
#: instructions whose memory operand's size keyword says nothing about an access
_SIZELESS = ("lea", "nop", "invlpg", "clflush", "clflushopt", "clwb", "prefetch", "prefetchw",
             "prefetcht0", "prefetcht1", "prefetcht2", "prefetchnta", "lgdt", "lidt", "sgdt", "sidt",
             "fxsave", "fxrstor", "fxsave64", "fxrstor64", "xsave", "xrstor", "xsaveopt", "xsavec",
             "xsaves", "xrstors", "xsave64", "xrstor64")
_STRING = frozenset(f"{base}{w}" for base in ("movs", "stos", "lods", "cmps", "scas", "ins", "outs")
                    for w in "bwdq") | {"xlatb"}
_SHIFTS = ("rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar")
#: operands that may be written in either order (capstone prints one of them)
_COMMUTATIVE = ("xchg", "test")
_REL_BRANCH = X.X86_GRP_BRANCH_RELATIVE


class _Checker:
    def __init__(self, st: Stmt, ins, env, labels, reg_name):
        self.st, self.ins, self.env, self.labels, self.reg_name = st, ins, env, labels, reg_name

    def fail(self, what: str) -> None:
        raise AsmError(f"{self.st.file}:{self.st.line}: {what}: {self.st.text}")

    def encoded(self) -> str:
        return f"{self.ins.mnemonic} {self.ins.op_str}".strip()

    def value(self, node: tuple, i: int) -> int:
        try:
            return evaluate(node, self.env)
        except KeyError as e:
            self.fail(f"unknown symbol {e.args[0]!r}")
        except ExprError as e:
            self.fail(f"operand {i}: {e}")

    def describe(self, op) -> str:
        if op.type == X.X86_OP_REG:
            return self.reg_name(op.reg)
        if op.type == X.X86_OP_IMM:
            return f"the immediate {hexs(op.imm)}"
        return "a memory operand"


def check_insn(st: Stmt, syntax: InsnSyntax, ins, env, labels, reg_name, data: bytearray,
               sec_base: int) -> None:
    """Compare one decoded instruction with its statement; relocate its
    RIP-relative operand in ``data``.  Raises AsmError naming the line."""
    src = syntax.operands
    if not src:
        # nothing written: only a string instruction's implicit operands
        # (movsb, lodsq...) may address memory
        if "[" in ins.op_str and ins.mnemonic.split()[-1] not in _STRING:
            raise AsmError(f"{st.file}:{st.line}: keystone encoded a memory operand the source does not "
                           f"have ('{ins.mnemonic} {ins.op_str}'): {st.text}")
        return
    if syntax.registers_only and ins.op_str == syntax.registers_only:
        # registers only, printed as written: the common case, without
        # building capstone's operand details
        return
    c = _Checker(st, ins, env, labels, reg_name)
    dec = list(ins.operands)
    mnemonic = ins.mnemonic.split()[-1]
    if mnemonic in _STRING and len(dec) > len(src):
        for i, s in enumerate(src, 1):
            if not any(_same_kind(c, s, d) for d in dec):
                c.fail(f"operand {i} ({s.text}) is not in the encoded instruction '{c.encoded()}'")
            if s.kind == "mem":
                _memory(c, i, s, next(d for d in dec if d.type == X.X86_OP_MEM), data, sec_base)
        return
    if mnemonic.startswith("f") and len(dec) != len(src):
        # x87: st(0) is implicit, written or not, printed or not
        src = [s for s in src if s.reg != "st(0)"]
        dec = [d for d in dec if d.type != X.X86_OP_REG or reg_name(d.reg) != "st(0)"]
    if len(src) != len(dec):
        if mnemonic == "imul" and len(src) == 2 and len(dec) == 3 and dec[0].type == dec[1].type == X.X86_OP_REG \
                and dec[0].reg == dec[1].reg:
            dec = [dec[0], dec[2]]          # imul r, imm is imul r, r, imm
        elif mnemonic in _SHIFTS and len(src) == 1 and len(dec) == 2 and dec[1].type == X.X86_OP_IMM \
                and dec[1].imm == 1:
            dec = dec[:1]                   # shl r is shl r, 1
        else:
            c.fail(f"keystone encoded {len(dec)} operand{'s' if len(dec) != 1 else ''} "
                   f"('{c.encoded()}'), the source has {len(src)}")
    if mnemonic in _COMMUTATIVE and len(src) == 2 and not _same_kind(c, src[0], dec[0]):
        dec = dec[::-1]
    branch = _REL_BRANCH in ins.groups
    for i, (s, d) in enumerate(zip(src, dec), 1):
        if s.kind == "reg":
            if d.type != X.X86_OP_REG or reg_name(d.reg) != s.reg:
                c.fail(f"operand {i} is {s.reg}, keystone encoded {c.describe(d)} ('{c.encoded()}')")
        elif s.kind == "mem":
            if d.type != X.X86_OP_MEM:
                c.fail(f"operand {i} is a memory operand, keystone encoded {c.describe(d)} ('{c.encoded()}')")
            _memory(c, i, s, d, data, sec_base)
        else:
            if d.type == X.X86_OP_MEM:
                c.fail(f"keystone turned operand {i} into a memory reference ('{c.encoded()}'); "
                       f"write the value as a number")
            if d.type != X.X86_OP_IMM:
                c.fail(f"operand {i} is a value, keystone encoded {c.describe(d)} ('{c.encoded()}')")
            _immediate(c, i, s, d, branch)


def _same_kind(c: _Checker, s: Operand, d) -> bool:
    if s.kind == "reg":
        return d.type == X.X86_OP_REG and c.reg_name(d.reg) == s.reg
    return d.type == (X.X86_OP_MEM if s.kind == "mem" else X.X86_OP_IMM)


def _immediate(c: _Checker, i: int, s: Operand, d, branch: bool) -> None:
    v = c.value(s.node, i)
    if branch:
        target = d.imm & MASK64
        if v & MASK64 != target:
            c.fail(f"branch to {hexs(v)}, keystone encoded {target:#x}")
        return
    bits = 8 * d.size
    if not fits(v, bits):
        c.fail(f"immediate {hexs(v)} does not fit in {bits} bits")
    if (v - d.imm) % (1 << bits):
        c.fail(f"keystone encoded the immediate {hexs(v)} as {hexs(d.imm)}")


def _memory(c: _Checker, i: int, s: Operand, d, data: bytearray, sec_base: int) -> None:
    ins = c.ins
    seg = c.reg_name(d.mem.segment) if d.mem.segment else None
    want_seg = s.segment if s.segment in ("fs", "gs") else None
    if seg in ("fs", "gs") or want_seg:
        if seg != want_seg:
            c.fail(f"operand {i} uses segment {want_seg or 'none'}, keystone encoded {seg or 'none'}")
    mnemonic = ins.mnemonic.split()[-1]
    if s.size is not None and d.size != s.size and mnemonic not in _SIZELESS:
        c.fail(f"operand {i} is {_SIZE_NAMES.get(s.size, s.size)} ptr, keystone encoded a "
               f"{d.size}-byte access")
    try:
        regs, const = linear(s.node, c.env)
    except KeyError as e:
        c.fail(f"unknown symbol {e.args[0]!r}")
    except ExprError as e:
        c.fail(f"not an address: {e}")
    base = c.reg_name(d.mem.base) if d.mem.base else None
    if base == "rip" or "rip" in regs:
        _rip_relative(c, i, regs, const, s, d, base, data, sec_base)
        return
    got: dict[str, int] = {}
    if base:
        got[base] = 1
    if d.mem.index:
        index = c.reg_name(d.mem.index)
        got[index] = got.get(index, 0) + d.mem.scale
    if got != regs:
        c.fail(f"operand {i} addresses {_fmt(regs)}, keystone encoded {_fmt(got)}")
    if (const - d.mem.disp) & MASK64:
        if not regs and fits(const & MASK64, 64) and d.mem.disp == const & MASK64:
            return
        if not -(1 << 31) <= (const if regs else _signed(const)) < (1 << 31):
            c.fail(f"displacement {hexs(const)} does not fit in 32 bits")
        c.fail(f"keystone encoded the displacement {hexs(const)} as {hexs(d.mem.disp)}")


def _signed(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >> 63 else v


def _fmt(regs: dict[str, int]) -> str:
    return "[" + " + ".join(f"{r}*{f}" if f != 1 else r for r, f in regs.items()) + "]" if regs else "no register"


def _rip_relative(c: _Checker, i: int, regs, const: int, s: Operand, d, base, data, sec_base) -> None:
    """``[rip + LABEL]`` (and an absolute ``[LABEL]`` keystone made
    RIP-relative) reaches LABEL; ``[rip + NUMBER]`` is that displacement
    from the next instruction, as in gas."""
    ins = c.ins
    if base != "rip":
        c.fail(f"operand {i} is RIP-relative, keystone encoded '{c.encoded()}'")
    if set(regs) - {"rip"}:
        c.fail(f"operand {i} addresses {_fmt(regs)}, keystone encoded a RIP-relative operand")
    nxt = ins.address + ins.size
    names_label = bool(symbols_of(s.node) & c.labels)
    if "rip" in regs and not names_label:
        if d.mem.disp != const:
            if not -(1 << 31) <= const < (1 << 31):
                c.fail(f"displacement {hexs(const)} does not fit in 32 bits")
            c.fail(f"keystone encoded the displacement {hexs(const)} as {hexs(d.mem.disp)}")
        return
    wanted = const & MASK64
    if (nxt + d.mem.disp) & MASK64 == wanted:
        return
    disp = _signed(wanted - nxt)
    if not -(1 << 31) <= disp < (1 << 31):
        c.fail(f"{wanted:#x} is beyond the ±2 GiB reach of a RIP-relative operand here; "
               f"load the address into a register")
    # keystone put the label's value, not its distance, in the displacement
    off = ins.address - sec_base + ins.disp_offset
    data[off:off + 4] = struct.pack("<i", disp)
