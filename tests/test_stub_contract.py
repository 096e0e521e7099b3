"""The stub contract (docs/architecture.md): declared sites, checked at link time."""

from __future__ import annotations

import pytest

import emu.asm.linker as linker
from emu.asm import link
from emu.errors import AsmError
from emu.hw.cpu import ends_translation_block
from emu.linux.kernel import link_kernel
from emu.linux.layout import layout_for

KERNEL = {".text": 0xFFFFFFFF81000000, ".data": 0xFFFFFFFF81200000}
REQUIRED = ("cr3_write", "cr4_write", "invlpg")


def sites(src: str, required=REQUIRED):
    return link([("k.S", src)], KERNEL, required_sites=required, cache=False).sites


def test_declared_sites_are_resolved():
    src = """
f:
    mov rax, cr3
    bts rax, 63
    .cr3_write noflush
    mov cr3, rax
    .cr3_write
    mov cr3, rdi
    .invlpg
    invlpg [rdi + 8]
    .cr4_write
    mov cr4, rax
    ret
    .hook exit
g:
    push rbx
    .hook middle
    pop rbx
"""
    got = [(s.kind, s.name, s.operand, s.noflush, s.after, s.line) for s in sites(src)]
    assert got == [
        ("cr3_write", "mov cr3, rax", "rax", True, "bts rax, 0x3f", 5),
        ("cr3_write", "mov cr3, rdi", "rdi", False, "mov cr3, rax", 7),
        ("invlpg", "invlpg byte ptr [rdi + 8]", "byte ptr [rdi + 8]", False, "mov cr3, rdi", 9),
        ("cr4_write", "mov cr4, rax", "rax", False, "invlpg byte ptr [rdi + 8]", 11),
        ("hook", "exit", "", False, "ret", 14),
        ("hook", "middle", "", False, "push rbx", 17),
    ]
    hooks = {s.name: s for s in sites(src) if s.kind == "hook"}
    # the CPU layer: a hook after 'ret' is a block start, after 'push' it is not
    assert ends_translation_block(hooks["exit"].after) and not ends_translation_block(hooks["middle"].after)


@pytest.mark.parametrize("src, message", [
    ("f:\n    mov cr3, rax\n", "k.S:2: 'mov cr3, rax' without a .cr3_write declaration"),
    ("f:\n    mov cr4, rax\n", "k.S:2: 'mov cr4, rax' without a .cr4_write declaration"),
    ("f:\n    invlpg [rax]\n", "k.S:2: 'invlpg byte ptr [rax]' without a .invlpg declaration"),
    ("f:\n    .cr3_write\n    mov rax, cr3\n", "k.S:2: .cr3_write must precede 'mov cr3, ...', not 'mov rax, cr3'"),
    ("f:\n    .invlpg\n    nop\n", "k.S:2: .invlpg must precede 'invlpg ...', not 'nop '"),
    ("f:\n    .cr3_write flush\n    mov cr3, rax\n", "k.S:2: use .cr3_write or .cr3_write noflush"),
    ("f:\n    .cr4_write now\n    mov cr4, rax\n", "k.S:2: .cr4_write takes no arguments"),
    ("f:\n    .hook\n    nop\n", "k.S:2: use .hook NAME"),
    ("f:\n    .hook a\n    nop\n    .hook a\n    nop\n", "k.S:4: hook 'a' is already declared at k.S:2"),
    ("f:\n    nop\n    .hook a\n", "k.S:3: .hook at the end of the source"),
    ("f:\n    .hook a\n    .hook b\n    nop\n", "k.S:3: .hook follows .hook at k.S:2 with no instruction between"),
    (".data\n    .hook a\nx: .quad 1\n", "k.S:2: .hook must be followed by an instruction, not: .quad 1"),
])
def test_declarations_that_are_wrong(src, message):
    with pytest.raises(AsmError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        sites(src)


def test_user_programs_need_no_declarations():
    assert sites("f:\n    mov cr3, rax\n", required=()) == []


def test_macro_declarations_name_the_invocation():
    src = """
.macro SWITCH reg
    .cr3_write noflush
    mov cr3, \\reg
.endm
f:
    SWITCH rax
    SWITCH rcx
"""
    assert [(s.operand, s.line, s.noflush) for s in sites(src)] == [("rax", 7, True), ("rcx", 8, True)]


def test_every_cr3_write_of_the_stub_is_declared():
    for levels in (4, 5):
        img = link_kernel(layout_for(levels))
        cr3 = img.sites_of("cr3_write")
        # 3 in switch_mm, 6 in ASI (__asi_enter; asi_exit and its injected NOFLUSH twin;
        # the 2019 RFC's enter, its injected twin, and its restore), 1 in
        # flush_tlb_mm_local, 5 expansions of the PTI macros (all NOFLUSH-capable, as is
        # switch_mm's reuse of an ASID without a flush, and the two injected twins)
        assert len(cr3) == 15 and sum(s.noflush for s in cr3) == 8
        assert {s.name for s in img.sites_of("hook")} == {
            "exit", "asi_fault_exit", "asi2019_fault_exit", "asi_abort", "asi_critical_access", "asi_flush",
            "syscall_return", "pgtable_write", "return_to_user_sysret", "return_to_user_iret", "unmapped_enter",
            "unmapped_leave"}
        assert all(ends_translation_block(s.after) for s in img.sites_of("hook"))


def test_an_inconsistent_keystone_layout_is_redone_then_refused(monkeypatch):
    """keystone reporting statement addresses that do not match its bytes
    (seen rarely with 0.9.2: a 4 KiB-aligned IDT left unaligned) makes the
    link start over with a new engine; twice in a row is an error."""
    src = ".data\na: .quad 1\n.align 4096\nidt: .zero 16\n"
    real = linker.ks_asm
    calls = {"bad": 0}

    def flaky(text, addr):
        out = real(text, addr)
        if calls["bad"] < budget:
            calls["bad"] += 1
            return out[:-8] + (int.from_bytes(out[-8:], "little") + 0x466).to_bytes(8, "little")
        return out

    monkeypatch.setattr(linker, "ks_asm", flaky)
    budget = 1
    img = link([("t.S", src)], {".data": 0x600000}, cache=False)
    assert img.symbols["idt"] == 0x601000 and calls["bad"] == 1
    budget, calls["bad"] = 1000, 0
    with pytest.raises(AsmError, match="keystone produced an inconsistent layout twice: section .data"):
        link([("t.S", src)], {".data": 0x600000}, cache=False)


# The stub takes PTE bits, masks, CR3 bits and paging geometry from the
# Python definitions (emu/linux/abi.py paging_symbols): these literals, each
# once written in the stub, must not come back.
MAGIC = [
    (r"\b0x0*fffffffff000\b|\b0x000ffffffffff000\b", "PTE_PFN_MASK"),
    (r"\b0xfff0000000000fff\b", "PTE_FLAGS_MASK"),
    (r"\b0x8000000000000063\b", "__PAGE_KERNEL_NOGLOBAL"),
    (r"\bor \w+, 0x(67|63|25|42)\b", "_PAGE_TABLE / _KERNPG_TABLE / _PAGE_USER_*"),
    (r"\btest \w+, 0x80\b", "_PAGE_PSE"),
    (r"\bbt[src]? [\w\[\]: ]+, (63|12|11|7)\b", "a _BIT_ symbol"),
    (r"\b(and|or) [\w\\]+, (-0x1801|0x7ff|0x800|0x1000|-0x104|-0x1081|-0x81|-0x101)\b", "a named mask"),
    (r"\b(mov|cmp) \w+, (39|48)\b", "PGDIR_SHIFT / PS_RESERVED_SHIFT"),
    (r"pgtable_levels\]", "PGDIR_SHIFT (the image is linked for one paging mode)"),
]


def test_no_magic_paging_literals_in_the_stub():
    import pathlib
    import re

    bad = []
    for path in sorted(pathlib.Path(__file__).resolve().parent.parent.glob("kernel_stub/*.S")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            for pattern, name in MAGIC:
                if re.search(pattern, code):
                    bad.append(f"{path.name}:{n}: {line.strip()}  (use {name})")
    assert not bad, "\n".join(bad)


def test_the_magic_check_sees_a_literal(tmp_path, monkeypatch):
    import re
    line = "    movabs rcx, 0x000ffffffffff000"
    assert any(re.search(p, line) for p, _ in MAGIC)
    assert any(re.search(p, "    bts rsi, 63") for p, _ in MAGIC)
    assert not any(re.search(p, "    bts rsi, _PAGE_BIT_NX") for p, _ in MAGIC)


@pytest.mark.parametrize("levels", [4, 5])
def test_the_stubs_alternatives_are_jumps_within_their_section(levels):
    """.alternative emits ``jmp rel32`` (data the linker writes, e9 + a
    displacement from its own address): each must decode as a jmp to a
    label of its section, and the 5 bytes the loader turns into a NOP."""
    import capstone

    img = link_kernel(layout_for(levels))
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    labels = {img.symbols[n] for n in img.labels}
    assert img.alternatives
    for addr, feature in img.alternatives:
        sec = img.section_of(addr)
        code = sec.data[addr - sec.base:addr - sec.base + 5]
        ins = next(cs.disasm(code, addr))
        target = int(ins.op_str, 16)
        assert (ins.mnemonic, ins.size, code[0]) == ("jmp", 5, 0xE9), feature
        assert img.section_of(target) is sec and target in labels, feature


@pytest.mark.parametrize("levels", [4, 5])
def test_no_branch_of_the_stub_lands_after_a_cr3_write(levels):
    """The hooks after each 'mov cr3' (NOFLUSH stripped, the TLB model told,
    the cr3_write event: emu/hw/microcode/cr3.py) take every arrival there
    for the end of that write: no direct branch, call or alternative may
    target the instruction after one."""
    import capstone

    img = link_kernel(layout_for(levels))
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    targets = {int(ins.op_str, 16) for ins in img.insns
               if (ins.mnemonic.startswith("j") or ins.mnemonic == "call") and ins.op_str.startswith("0x")}
    for addr, _ in img.alternatives:
        sec = img.section_of(addr)
        targets.add(int(next(cs.disasm(sec.data[addr - sec.base:addr - sec.base + 5], addr)).op_str, 16))
    assert len(targets) > 100
    after = {s.addr + s.size for s in img.sites_of("cr3_write")}
    assert len(after) == 15 and not after & targets


def test_declared_instructions_are_checked_like_any_other():
    """A site declaration does not exempt its instruction from the strict
    reading (docs/assembler.md)."""
    with pytest.raises(AsmError, match=r"^k.S:3: '\[' without '\]': invlpg \[rdi$"):
        sites("f:\n    .invlpg\n    invlpg [rdi\n")
    with pytest.raises(AsmError, match=r"^k.S:3: not encodable in 64-bit mode: mov cr4, eax$"):
        sites("f:\n    .cr4_write\n    mov cr4, eax\n")
