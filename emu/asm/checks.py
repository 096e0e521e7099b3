"""Checks of what keystone produced: the line table, the decoded
instructions, and keystone's silent mis-encodings turned into errors with
file and line (RIP-relative operands relocated like a PC32 relocation)."""

from __future__ import annotations

import ast
import re
import struct

import capstone

from emu.asm.engines import capstone_engine
from emu.asm.image import Insn, Line, Section, Site, Stmt
from emu.asm.source import REGISTERS
from emu.errors import AsmError

_BRANCH_GROUPS = (capstone.x86_const.X86_GRP_JUMP, capstone.x86_const.X86_GRP_CALL)


def verify(sections: dict[str, Section], addrs: dict[str, list[int]], symbols: dict[str, int]):
    """Per-statement line table; reject keystone's silent mis-encodings."""
    cs = capstone_engine()
    lines: list[Line] = []
    insns: list[Insn] = []
    ranges = [(s.base, s.base + len(s.data)) for s in sections.values()]

    def inside(a: int) -> bool:
        return any(lo <= a < hi for lo, hi in ranges)

    for sec in sections.values():
        sec.data = bytearray(sec.data)
        sa = addrs[sec.name]
        for st in sec.stmts:
            a, b = sa[st.index], sa[st.index + 1]
            if st.kind in ("empty", "const") and a == b:
                continue
            lines.append(Line(a, b - a, st.file, st.line, st.text))
            if st.kind != "insn" or sec.nobits:
                continue
            code = bytes(sec.data[a - sec.base:b - sec.base])
            pos = 0
            for ins in cs.disasm(code, a):
                pos += ins.size
                _relocate_insn(ins, st, inside, symbols, sec.data, sec.base)
                _check_branch(ins, st, inside)
            for ins in cs.disasm(bytes(sec.data[a - sec.base:b - sec.base]), a):
                insns.append(Insn(ins.address, ins.size, ins.mnemonic, ins.op_str, bytes(ins.bytes)))
            if pos != len(code):
                raise AsmError(f"{st.file}:{st.line}: produced bytes capstone cannot decode: {st.text}")
        sec.data = bytes(sec.data)
    return lines, insns


def _operand_target(text: str, symbols: dict[str, int]) -> int | None:
    """The address a memory operand names: ``[SYM + 8]``, ``gs:[OFF]``,
    ``[rip + SYM]`` (rip dropped); None if it involves other registers."""
    m = re.search(r"\[([^\]]+)\]", text)
    if not m:
        return None
    expr = m.group(1)
    expr = re.sub(r"\brip\b\s*\+?", "", expr, flags=re.I).strip()
    if not expr:
        return 0
    try:
        value = _eval(ast.parse(expr, mode="eval").body, symbols)
    except (SyntaxError, ValueError, KeyError):
        return None
    return value & 0xFFFFFFFFFFFFFFFF


def _eval(node, symbols: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in REGISTERS:
            raise ValueError("register")
        return symbols[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, symbols)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
        a, b = _eval(node.left, symbols), _eval(node.right, symbols)
        return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
    raise ValueError("unsupported expression")


_STRING_INSNS = ("movs", "stos", "lods", "cmps", "scas", "ins", "outs", "xlat")


def _relocate_insn(ins, st: Stmt, inside, symbols, data: bytearray, sec_base: int) -> None:
    """Check one instruction; fix keystone's RIP-relative displacements.

    Keystone encodes ``[rip + SYM]`` with a symbol of another section (and
    ``mov r64, [SYM]``) with the symbol's value as the displacement.  Like a
    linker applying a PC32 relocation, the displacement is recomputed from
    what the source names; an address out of ±2 GiB reach is an error.
    """
    from capstone import x86_const as X

    text = st.text.lower()
    if "[" not in text and not ins.mnemonic.split()[-1].startswith(_STRING_INSNS) \
            and any(op.type == X.X86_OP_MEM for op in ins.operands):
        raise AsmError(f"{st.file}:{st.line}: keystone turned an operand of this instruction into a "
                       f"memory reference ({ins.mnemonic} {ins.op_str}); write the value as a number: "
                       f"{st.text}")
    for op in ins.operands:
        if op.type != X.X86_OP_MEM or op.mem.base != X.X86_REG_RIP:
            continue
        nxt = ins.address + ins.size
        target = (nxt + op.mem.disp) & 0xFFFFFFFFFFFFFFFF
        wanted = _operand_target(st.text, symbols)
        if wanted is None:
            if "rip" in text and inside(target):
                continue
            raise AsmError(f"{st.file}:{st.line}: cannot tell which address this RIP-relative operand "
                           f"means; use [rip + LABEL] or a register base: {st.text}")
        if wanted == target:
            continue
        disp = wanted - nxt
        if disp >= 1 << 63:
            disp -= 1 << 64
        if not -(1 << 31) <= disp < (1 << 31):
            raise AsmError(f"{st.file}:{st.line}: {wanted:#x} is beyond the ±2 GiB reach of a RIP-relative "
                           f"operand here; load the address into a register: {st.text}")
        off = ins.address - sec_base + ins.disp_offset
        data[off:off + 4] = struct.pack("<i", disp)


def _check_branch(ins, st: Stmt, inside) -> None:
    from capstone import x86_const as X

    if any(g in _BRANCH_GROUPS for g in ins.groups) and ins.operands and \
            ins.operands[0].type == X.X86_OP_IMM:
        target = ins.operands[0].imm & 0xFFFFFFFFFFFFFFFF
        if not inside(target):
            raise AsmError(f"{st.file}:{st.line}: branch target {target:#x} is outside this program: {st.text}")


# what each declaration must precede, and where its operand is
_SITE_INSNS = {"cr0_write": ("mov", "cr0, "), "cr3_write": ("mov", "cr3, "), "cr4_write": ("mov", "cr4, "),
               "invlpg": ("invlpg", "")}


def _site_kind_of(ins: Insn) -> str | None:
    for kind, (mnemonic, prefix) in _SITE_INSNS.items():
        if ins.mnemonic == mnemonic and ins.op_str.startswith(prefix):
            return kind
    return None


def _before(prev: Insn | None, section_start: bool) -> str:
    """What precedes a site: the instruction, '' at a section start, '?' after
    bytes that are not an instruction of the source (alignment padding...)."""
    if prev is not None:
        return f"{prev.mnemonic} {prev.op_str}".strip()
    return "" if section_start else "?"


def resolve_sites(declared, stmts: list[Stmt], addrs: dict[str, list[int]], insns: list[Insn],
                  required: tuple[str, ...]) -> list[Site]:
    """Declared sites at their addresses, each checked against the
    instruction it declares; with ``required``, an undeclared instruction of
    a required kind is an error naming its line."""
    by_addr = {ins.addr: i for i, ins in enumerate(insns)}
    out: list[Site] = []
    declared_at = set()
    for f, ln, kind, args, idx in declared:
        st = stmts[idx]
        addr = addrs[st.section][st.index]
        i = by_addr.get(addr)
        if i is None:
            raise AsmError(f"{f}:{ln}: .{kind} must precede an instruction in a code section: {st.text}")
        ins = insns[i]
        if kind in _SITE_INSNS and _site_kind_of(ins) != kind:
            mnemonic, prefix = _SITE_INSNS[kind]
            raise AsmError(f"{f}:{ln}: .{kind} must precede '{mnemonic} {prefix}...', not "
                           f"'{ins.mnemonic} {ins.op_str}' ({st.file}:{st.line})")
        prev = insns[i - 1] if i and insns[i - 1].addr + insns[i - 1].size == addr else None
        operand = ins.op_str.split(", ", 1)[1] if kind in ("cr0_write", "cr3_write", "cr4_write") else \
            (ins.op_str if kind == "invlpg" else "")
        name = args[0] if kind == "hook" else f"{ins.mnemonic} {ins.op_str}"
        out.append(Site(kind, name, addr, ins.size, operand, kind == "cr3_write" and args == ["noflush"],
                        _before(prev, addr == addrs[st.section][0]), f, ln))
        declared_at.add(addr)
    if required:
        lines = {}
        for st in stmts:
            for i in range(addrs[st.section][st.index], addrs[st.section][st.index + 1]):
                lines.setdefault(i, st)
        for ins in insns:
            kind = _site_kind_of(ins)
            if kind in required and ins.addr not in declared_at:
                st = lines.get(ins.addr)
                where = f"{st.file}:{st.line}" if st else f"{ins.addr:#x}"
                raise AsmError(f"{where}: '{ins.mnemonic} {ins.op_str}' without a .{kind} declaration "
                               f"(docs/architecture.md, the stub contract)")
    _check_after_sites(out, insns, stmts, addrs)
    out.sort(key=lambda s: s.addr)
    return out


def _check_after_sites(sites: list[Site], insns: list[Insn], stmts: list[Stmt], addrs) -> None:
    """The CPU layer observes a CR3/CR4 write or an INVLPG where the next
    translated block starts (QEMU ends a block after each of them): the
    instruction after one must not also be reached by a jump, or the jump
    would look like the write (docs/architecture.md, the stub contract)."""
    watched = {s.addr + s.size: s for s in sites if s.kind in _SITE_INSNS}
    if not watched:
        return
    for ins in insns:
        if (ins.mnemonic.startswith("j") or ins.mnemonic == "call") and ins.op_str.startswith("0x"):
            s = watched.get(int(ins.op_str, 16))
            if s is not None:
                st = next((st for st in stmts
                           if addrs[st.section][st.index] <= ins.addr < addrs[st.section][st.index + 1]), None)
                src = f"{st.file}:{st.line}" if st else f"{ins.addr:#x}"
                raise AsmError(f"{s.where}: the instruction after this .{s.kind} is also the target of "
                               f"'{ins.mnemonic} {ins.op_str}' at {src}; Python sees the {s.kind.replace('_', ' ')} "
                               f"where the next block starts, so put a 'nop' after '{s.name}'")
