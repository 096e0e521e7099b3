"""The keystone-based linker (emu/asm.py): encodings keystone gets wrong on
its own, the directives we implement, and errors with file:line."""

import capstone
import pytest

from emu.asm import link
from emu.errors import AsmError

TEXT, DATA = 0x400000, 0x600000
LAYOUT = {".text": TEXT, ".data": DATA, ".bss": 0x700000}
CONST = {"EFAULT": 14, "SYS_exit": 60, "BIG": 0xFFFF800000000000}


def disasm(img, label):
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    sec = img.sections[".text"]
    addr = img.symbols[label]
    ins = next(cs.disasm(sec.data[addr - sec.base:], addr, 1))
    return ins


def target_of(ins):
    """The effective address of a RIP-relative or absolute memory operand."""
    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    d = next(cs.disasm(bytes(ins.bytes), ins.address, 1))
    for op in d.operands:
        if op.type == capstone.x86_const.X86_OP_MEM:
            base = d.address + d.size if op.mem.base == capstone.x86_const.X86_REG_RIP else 0
            return (base + op.mem.disp) & 0xFFFFFFFFFFFFFFFF
    raise AssertionError("no memory operand")


# (source line at label 'x', expected disassembly of the instruction at x)
ENCODINGS = [
    ("mov rax, -EFAULT", "mov rax, 0xfffffffffffffff2"),      # keystone: a load from [14]
    ("push -EFAULT", "push -0xe"),                              # keystone: RIP-relative push
    ("mov eax, SYS_exit", "mov eax, 0x3c"),
    ("mov rax, BIG", "movabs rax, 0xffff800000000000"),
]


@pytest.mark.parametrize("line,want", ENCODINGS)
def test_predefined_constants_encode_as_numbers(line, want):
    img = link([("t.S", f"x:\n    {line}\n")], LAYOUT, CONST, cache=False)
    ins = disasm(img, "x")
    assert f"{ins.mnemonic} {ins.op_str}" == want


# memory operands naming a label in another section: keystone puts the
# label's value in the displacement; the linker relocates
@pytest.mark.parametrize("line", [
    "lea rax, [rip + var]",
    "mov rax, qword ptr [rip + var]",
    "mov qword ptr [rip + var], rbx",
    "inc qword ptr [rip + var + 8]",
])
def test_rip_relative_operands_reach_the_label(line):
    img = link([("t.S", f"x:\n    {line}\n.data\n.zero 24\nvar: .quad 1, 2\n")], LAYOUT, cache=False)
    ins = disasm(img, "x")
    want = img.symbols["var"] + (8 if "+ 8" in line else 0)
    assert target_of(ins) == want


# (directive, address of the label after it, fill byte)
ALIGNS = [
    (".align 16", TEXT + 16, 0x90),
    (".balign 64", TEXT + 64, 0x90),
    (".p2align 12", TEXT + 4096, 0x90),
]


@pytest.mark.parametrize("directive,addr,fill", ALIGNS)
def test_alignment_is_padded_with_nops_in_code(directive, addr, fill):
    img = link([("t.S", f"nop\n{directive}\nafter:\n    ret\n")], LAYOUT, cache=False)
    assert img.symbols["after"] == addr
    data = img.sections[".text"].data
    assert set(data[1:addr - TEXT]) == {fill}


def test_alignment_in_data_pads_with_zeros_and_converges_with_labels():
    src = "x: jmp later\n.data\n.byte 7\n.align 4096\npage: .quad later\n.text\n.zero 300\nlater: ret\n"
    img = link([("t.S", src)], LAYOUT, cache=False)
    assert img.symbols["page"] == DATA + 4096
    d = img.sections[".data"].data
    assert d[0] == 7 and set(d[1:4096]) == {0}
    assert int.from_bytes(d[4096:4104], "little") == img.symbols["later"]


def test_macros_arguments_defaults_and_unique_labels():
    src = """
.macro ADDN reg, n=1
    add \\reg, \\n
.Lm\\@:
.endm
x:
    ADDN rax
y:
    ADDN rbx, 5
"""
    img = link([("t.S", src)], LAYOUT, cache=False)
    assert [f"{i.mnemonic} {i.op_str}" for i in img.insns] == ["add rax, 1", "add rbx, 5"]


def test_extable_and_alternatives():
    src = """
x:
    mov al, byte ptr [rdi]
fix:
    ret
alt:
.alternative feature_smap, skip
    jmp skip
    nop
skip:
    ret
.extable x, fix
"""
    img = link([("t.S", src)], LAYOUT, cache=False)
    assert img.extable == [(img.symbols["x"], img.symbols["fix"], 0)]
    assert img.alternatives == [(img.symbols["alt"], "feature_smap")]


def test_lines_and_symbolize():
    img = link([("prog.S", "_start:\n    nop\n    nop\nsecond:\n    ret\n")], LAYOUT, cache=False)
    ln = img.line_at(TEXT + 1)
    assert (ln.file, ln.line, ln.text) == ("prog.S", 3, "nop")
    assert img.symbolize(TEXT + 1) == "_start+0x1"
    assert img.symbolize(TEXT + 2) == "second"
    assert img.symbolize(0x1234) is None


# (source, message prefix): each bad input is one AsmError naming file:line
ERRORS = [
    ("x:\n    movq rax, bogus\n", "t.S:2: "),
    ("x:\n    mov rax, [undefined_symbol]\n", "t.S:2: unknown symbol 'undefined_symbol'"),
    ("x:\n    nop\nx:\n    nop\n", "t.S:3: label 'x' already defined at t.S:1"),
    ("EFAULT:\n    nop\n", "t.S:1: label 'EFAULT' shadows a predefined symbol"),
    (".section .weird\n    nop\n", "t.S:2: section .weird has no place in this program's layout"),
    (".bss\n.quad 5\n", "t.S:2: .bss holds only zeros"),
    (".align 12\n", "t.S:1: alignment must be a power of two"),
    (".macro M a\n    nop\n", "t.S:1: .macro M has no .endm"),
    ("    .extable nowhere, x\nx: nop\n", "t.S:1: .extable names unknown label 'nowhere'"),
    ('.include "missing.S"\n', "t.S:1: "),
]


@pytest.mark.parametrize("src,prefix", ERRORS, ids=[e[1].split(": ", 1)[-1][:30] or "x" for e in ERRORS])
def test_errors_name_file_and_line(src, prefix):
    with pytest.raises(AsmError) as e:
        link([("t.S", src)], LAYOUT, CONST, cache=False)
    msg = str(e.value)
    assert msg.startswith(prefix), msg
    assert "\n" not in msg


def test_include_is_relative_to_the_including_file(tmp_path):
    (tmp_path / "inc.S").write_text("from_include:\n    ret\n")
    main = tmp_path / "main.S"
    img = link([(str(main), '.include "inc.S"\n_start:\n    call from_include\n')], LAYOUT, cache=False)
    assert img.symbols["from_include"] == TEXT
    assert img.symbols["_start"] == TEXT + 1
