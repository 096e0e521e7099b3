"""Checks of what keystone produced: the line table, the decoded
instructions, each compared with its source (emu/asm/strict.py), branch
targets, and the stub's declared sites."""

from __future__ import annotations

import capstone

from emu.asm.engines import capstone_engine
from emu.asm.image import Insn, Line, Section, Site, Stmt
from emu.asm.source import demangle
from emu.asm.strict import check_insn
from emu.errors import AsmError


def verify(sections: dict[str, Section], addrs: dict[str, list[int]], symbols: dict[str, int],
           labels: set[str]):
    """Per-statement line table and decoded instructions; every instruction
    statement must be exactly one instruction, the one its source says."""
    cs = capstone_engine()
    names: dict[int, str] = {}

    def reg_name(reg: int) -> str:
        name = names.get(reg)
        if name is None:
            name = names[reg] = cs.reg_name(reg)
        return name

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
            lines.append(Line(a, b - a, st.file, st.line, demangle(st.text)))
            if st.kind != "insn" or sec.nobits:
                continue
            if a == b:
                raise AsmError(f"{st.file}:{st.line}: keystone produced no bytes for this instruction: {st.text}")
            code = bytes(sec.data[a - sec.base:b - sec.base])
            decoded = list(cs.disasm(code, a))
            if sum(ins.size for ins in decoded) != len(code):
                raise AsmError(f"{st.file}:{st.line}: produced bytes capstone cannot decode: {st.text}")
            if len(decoded) != 1:
                shown = "; ".join(f"{i.mnemonic} {i.op_str}".strip() for i in decoded)
                raise AsmError(f"{st.file}:{st.line}: keystone produced {len(decoded)} instructions "
                               f"({shown}): {st.text}")
            ins = decoded[0]
            check_insn(st, st.syntax, ins, symbols, labels, reg_name, sec.data, sec.base)
            _check_branch(ins, st, inside)
            patched = bytes(sec.data[a - sec.base:b - sec.base])
            if patched != code:       # a relocated displacement: decode what is there now
                ins = next(cs.disasm(patched, a))
            insns.append(Insn(ins.address, ins.size, ins.mnemonic, ins.op_str, patched))
        sec.data = bytes(sec.data)
    return lines, insns


_BRANCH_GROUPS = (capstone.x86_const.X86_GRP_JUMP, capstone.x86_const.X86_GRP_CALL)


def _check_branch(ins, st: Stmt, inside) -> None:
    from capstone import x86_const as X

    if not ins.mnemonic.split()[-1].startswith(("j", "call", "loop")):
        return          # not a branch: spare building capstone's details
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
        # every instruction statement is exactly one instruction (verify)
        lines = {addrs[st.section][st.index]: st for st in stmts if st.kind == "insn"}
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
