"""The keystone-based linker (emu/asm/, docs/assembler.md): encodings
keystone gets wrong on its own, the directives we implement, errors with
file:line, and the strictness tables: malformed statements refused,
well-formed ones (and every source the project links) kept."""

import ast
import glob
import os
import pickle
import struct

import capstone
import pytest

import emu.asm.linker as linker
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
    # asked again (the memo), and after a pickle round trip (the image cache drops the memo)
    again = pickle.loads(pickle.dumps(img))
    assert "_derived" not in again.__dict__
    assert [i.symbolize(a) for i in (img, again) for a in (TEXT + 1, TEXT + 2, 0x1234)] == \
        ["_start+0x1", "second", None] * 2
    # a value derived from the image: computed once, kept with it, not pickled
    calls = []
    assert img.derived("n", lambda i: calls.append(i) or len(i.insns)) == 3 == img.derived("n", len)
    assert calls == [img] and "_derived" not in pickle.loads(pickle.dumps(img)).__dict__


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


# --- strictness: a statement's bytes are what its source says, or an error ---------------
# (docs/assembler.md, "Strictness").  Each line goes in as line 2 of t.S (after
# "x:" for an instruction, ".data" for a directive); the error is exactly
# "t.S:2: WHAT: LINE".
MALFORMED = [
    # missing, doubled, stray operands and commas
    ("add rax,", "operand 2 is empty"),
    ("mov rax,, rbx", "operand 2 is empty"),
    ("xor eax,eax,", "operand 3 is empty"),
    (", add rax, rbx", "expected an instruction"),
    ("mov rax rbx", "operand 1: unexpected 'rbx' after 'rax' (a missing ','?)"),
    ("mov rax, rbx rcx", "operand 2: unexpected 'rcx' after 'rbx' (a missing ','?)"),
    ("movzx eax, bl bl", "operand 2: unexpected 'bl' after 'bl' (a missing ','?)"),
    ("mov rax, rbx, rcx", "Invalid operand"),
    ("add", "Invalid operand"),
    ("push rax, rbx", "Invalid operand"),
    ("nop rax", "Invalid operand"),
    ("lea rax, rbx", "Invalid operand"),
    ("movv rax, 1", "Invalid mnemonic"),
    ("sl rdx, cl", "Invalid mnemonic"),                  # not "operand sizes differ"
    ("jnz .Lnowhere", "unknown symbol '.Lnowhere'"),     # as written, not as renamed per file
    ("nop nop", "unknown symbol 'nop'"),
    ("mov rax, undefined_symbol", "unknown symbol 'undefined_symbol'"),
    ("mov rax, [undefined_symbol]", "unknown symbol 'undefined_symbol'"),
    # immediates keystone truncates (or cannot encode)
    ("mov eax, 0x1ffffffff", "immediate 0x1ffffffff does not fit in 32 bits"),
    ("mov al, 0x1234", "immediate 0x1234 does not fit in 8 bits"),
    ("mov al, 256", "immediate 0x100 does not fit in 8 bits"),
    ("mov al, -129", "immediate -0x81 does not fit in 8 bits"),
    ("mov ax, 0x10000", "immediate 0x10000 does not fit in 16 bits"),
    ("mov ax, -32769", "immediate -0x8001 does not fit in 16 bits"),
    ("mov byte ptr [rax], 0x100", "immediate 0x100 does not fit in 8 bits"),
    ("mov dword ptr [rax], 0x100000000", "immediate 0x100000000 does not fit in 32 bits"),
    ("cmp al, 300", "immediate 0x12c does not fit in 8 bits"),
    ("test eax, 0x100000000", "immediate 0x100000000 does not fit in 32 bits"),
    ("mov eax, 0xffffffff81000000", "immediate 0xffffffff81000000 does not fit in 32 bits"),
    ("push 0x80000000", "immediate 0x80000000 does not fit in 16 bits"),   # keystone: push imm16 0
    ("push 0xffff", "keystone encoded the immediate 0xffff as -0x1"),
    ("ret 0x10000", "keystone encoded the immediate 0x10000 as 0x0"),
    ("enter 0x10000, 0", "keystone encoded the immediate 0x10000 as 0x0"),
    ("int 0x100", "immediate 0x100 does not fit this instruction"),
    ("add rax, 0x100000000", "immediate 0x100000000 does not fit this instruction; only mov to a 64-bit "
                             "register takes a 64-bit immediate, other instructions sign-extend 32 bits"),
    ("mov qword ptr [rax], 0x80000000", "immediate 0x80000000 does not fit this instruction; only mov to a "
                                        "64-bit register takes a 64-bit immediate, other instructions "
                                        "sign-extend 32 bits"),
    ("mov rax, 0x10000000000000000", "operand 2: the number 0x10000000000000000 does not fit in 64 bits"),
    # registers of the wrong width
    ("mov eax, rbx", "operand sizes differ (eax is 32-bit, rbx is 64-bit)"),
    ("mov rax, ebx", "operand sizes differ (rax is 64-bit, ebx is 32-bit)"),
    ("mov cr3, eax", "not encodable in 64-bit mode"),
    ("push eax", "not encodable in 64-bit mode"),
    # memory operands
    ("mov rax, qword ptr [", "'[' without ']'"),
    ("mov bl, byte ptr [rax", "'[' without ']'"),      # keystone: a RIP-relative read of 0
    ("mov rax, rbx]", "']' without '['"),
    ("mov rax, [[rbx]]", "'[' inside '[...]'"),
    ("mov rax, []", "empty memory operand []"),
    ("mov rax, qword ptr [rbx + ]", "operand 2: the expression ends early"),
    ("mov [rax*3], rbx", "scale 3 of rax: an index is scaled by 1, 2, 4 or 8"),
    ("mov rax, [rbx + rax*3]", "scale 3 of rax: an index is scaled by 1, 2, 4 or 8"),
    ("mov rax, [rbx + rcx*16]", "scale 16 of rcx: an index is scaled by 1, 2, 4 or 8"),
    ("mov rax, [rip*2]", "scale 2 of rip: an index is scaled by 1, 2, 4 or 8"),
    ("lea rax, [rbx*4 + rbx*3]", "rbx*7 cannot be encoded: an address is base + index*(1, 2, 4 or 8)"),
    ("mov rax, [rbx+rcx+rdx]", "[rbx + rcx + rdx]: an address has at most a base and a scaled index"),
    ("mov rax, [rbx - rcx]", "rcx is subtracted; an address adds its registers"),
    ("mov rax, [rbx * rcx]", "not an address: a register times a register"),
    ("mov rax, [rbx << 1]", "not an address: a register under '<<'"),
    ("mov rax, [rbx + eax]", "rbx and eax: an address uses registers of one width"),
    ("lea rax, [rip + rbx]", "rip cannot be combined with another register"),
    ("mov rax, [ax]", "ax cannot address memory"),
    ("mov rax, [xmm0]", "xmm0 cannot address memory"),
    ("mov rax, [2*(rbx + 8)]", "operand 2 addresses [rbx*2], keystone encoded [rbx]"),
    ("mov rax, [rax+rsp]", "operand 2 addresses [rax + rsp], keystone encoded [rax + riz]"),
    ("mov rax, [rsp*2]", "operand 2 addresses [rsp*2], keystone encoded [riz*2]"),
    ("mov rax, [rbx][rcx]", "write a memory operand as [base + index*scale + disp]: '[rbx][rcx]'"),
    ("mov rax, [rbx]+8", "write a memory operand as [base + index*scale + disp]: '[rbx]+8'"),
    ("mov rax, 8[rbx]", "write a memory operand as [base + index*scale + disp]: '8[rbx]'"),
    ("mov rax, gs:0x10", "write a memory operand in brackets: gs:[...]"),
    ("lea rax, [rax + rbx*8 + 0x100000000]", "displacement 0x100000000 does not fit in 32 bits"),
    ("mov rax, [rax + 0x80000000]", "displacement 0x80000000 does not fit in 32 bits"),
    ("mov rbx, [0x100000000]", "displacement 0x100000000 does not fit in 32 bits"),
    ("mov rax, qword ptr rbx", "'qword ptr' needs a memory operand in brackets: 'qword ptr rbx'"),
    ("mov rax, qword ptr", "'qword ptr' names no memory operand"),
    ("mov rax, qword rbx", "write 'qword ptr' (keystone drops 'qword' without 'ptr')"),
    ("mov rax, qword [rax]", "write 'qword ptr' (keystone drops 'qword' without 'ptr')"),
    ("mov [rax], 5", "the size of operand 1 is not known: write byte, word, dword or qword ptr"),
    ("inc [rax]", "the size of operand 1 is not known: write byte, word, dword or qword ptr"),
    ("mov rax, rbx + 1", "operand 2 mixes a register into a value: 'rbx + 1'"),
    # mnemonics keystone assembles at another size than gas
    ("popf", "keystone assembles popf as the 16-bit popfw (gas: popfq); write popfq"),
    ("pushf", "keystone assembles pushf as the 16-bit pushfw (gas: pushfq); write pushfq"),
    ("sysret", "gas assembles sysret as the 32-bit sysretl (keystone: sysretq); write sysretq"),
    ("iret", "keystone assembles iret as the 16-bit iretw (gas: iretl); write iretq or iretd"),
    # expressions
    ("mov eax, 4 + 1 << 2", "operand 2: add parentheses around '+' next to '<<': gas and keystone group "
                            "them differently"),
    ("mov eax, 1 << 4 | 3", "operand 2: add parentheses around '<<' next to '|': gas and keystone group "
                            "them differently"),
    ("mov eax, 6 & 3 | 1", "operand 2: add parentheses around '&' next to '|': gas and keystone group "
                           "them differently"),
    ("mov rax, 0x12g", "operand 2: cannot read the number '0x12g'"),
    ("mov rax, 0x", "operand 2: cannot read the number '0x'"),
    ("mov rax, 08", "operand 2: 08 has a leading zero (octal to keystone, decimal elsewhere in isoemu): "
                    "write 8"),
    ("mov al, 010", "operand 2: 010 has a leading zero (octal to keystone, decimal elsewhere in isoemu): "
                    "write 8 or 10"),
    ("mov rax, 1_000", "operand 2: cannot read the number '1_000'"),
    ("mov rax, (1 + 2", "operand 2: the expression ends early"),
    ("mov eax, 1 +", "operand 2: the expression ends early"),
    ("mov eax, 1 /* c */", "operand 2: unexpected '*'"),
    ("mov al, 'ab'", "operand 2: character literal 'ab' is not one byte"),
    ("mov al, '\u00e9'", "operand 2: character literal '\u00e9' is not one byte"),
    ("mov eax, 1 << 64", "operand 2: shift count 64 is outside 0..63"),
    ("mov eax, 5 / 0", "operand 2: division by zero"),
    ("jmp short x", "operand 1: unexpected 'x' after 'short' (a missing ','?)"),
    ("mov rax, offset x", "operand 2: unexpected 'x' after 'offset' (a missing ','?)"),
    # data directives: keystone truncates, drops or hangs on these
    (".byte 256", "0x100 does not fit in 8 bits"),
    (".byte -129", "-0x81 does not fit in 8 bits"),
    (".word 0x10000", "0x10000 does not fit in 16 bits"),                  # keystone: no bytes
    (".word 0x10000, 5", "0x10000 does not fit in 16 bits"),               # keystone: hangs
    (".short -32769", "-0x8001 does not fit in 16 bits"),
    (".long 0x100000000", "0x100000000 does not fit in 32 bits"),
    (".long 0xffffffff81000000", "0xffffffff81000000 does not fit in 32 bits"),   # keystone: truncates
    (".int -0x80000001", "-0x80000001 does not fit in 32 bits"),
    (".quad 0x10000000000000000", "value 1: the number 0x10000000000000000 does not fit in 64 bits"),
    (".quad 0xffffffffffffffff + 1", "0x10000000000000000 does not fit in 64 bits"),    # keystone: 0
    (".quad -0x8000000000000001", "-0x8000000000000001 does not fit in 64 bits"),
    (".byte 1,,2", "value 2 of .byte is empty"),                           # keystone: hangs
    (".byte 1,", "value 2 of .byte is empty"),
    (".byte", ".byte needs at least one value"),
    (".quad 1 2", "value 1: unexpected '2' after '1' (a missing ','?)"),
    (".byte \"a\"", ".byte takes numbers; strings go in .ascii"),
    (".quad undefined_symbol", "unknown symbol 'undefined_symbol'"),
    (".zero -1", "negative count -1"),                                     # keystone: hangs
    (".zero", "use .zero COUNT[, FILL]"),
    (".space 4, 0x1ff", "fill value 0x1ff does not fit in 8 bits"),        # keystone: truncates
    (".skip 1, 2, 3", "use .skip COUNT[, FILL]"),
    (".fill 2, 2, 0x10000", "fill value 0x10000 does not fit in 16 bits"),
    (".fill 3, 9, 0", ".fill SIZE is a number from 0 to 8"),
    (".fill", "use .fill COUNT[, SIZE[, VALUE]]"),
    (".ascii \"\\q\"", "unknown escape \\q in a string"),
    (".ascii \"\\x414\"", "write \\x with one or two hex digits in a string"),
    (".asciz \"\\777\"", "octal escape \\777 is more than a byte in a string"),
    (".ascii \"a\" \"b\"", "separate strings with commas in .ascii"),
    (".ascii abc", "argument 1 of .ascii is not a \"string\""),
    (".ascii", ".ascii needs a string"),
    (".equ X", "use .equ NAME, VALUE"),
    (".equ X, undefined_symbol", "unknown symbol 'undefined_symbol'"),
    # non-ASCII outside strings (a copy-paste from a web page)
    ("mov eax,\u00a05", "non-ASCII character U+00A0 (NO-BREAK SPACE) outside a string"),
    ("mov rax\uff0c rbx", "non-ASCII character U+FF0C (FULLWIDTH COMMA) outside a string"),
    ("nop\u200b", "non-ASCII character U+200B (ZERO WIDTH SPACE) outside a string"),
    (".quad \u2212" + "1", "non-ASCII character U+2212 (MINUS SIGN) outside a string"),
]


def _place(line: str) -> str:
    return (".data\n" if line.startswith(".") else "x:\n    ") + line + "\n"


@pytest.mark.parametrize("line,what", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_statements_are_errors_with_file_and_line(line, what):
    with pytest.raises(AsmError) as e:
        link([("t.S", _place(line))], LAYOUT, CONST, cache=False)
    assert str(e.value) == f"t.S:2: {what}: {line}"


def test_malformed_table_names_each_input_once():
    lines = [m[0] for m in MALFORMED]
    assert len(lines) == len(set(lines))


# (line at 'x', decoded instruction): inputs that must keep assembling, each
# exactly as written (keystone's aliases and implicit operands are accepted)
WELL_FORMED = [
    ("xchg rax, rbx", "xchg rbx, rax"),
    ("test rbx, qword ptr [rax]", "test qword ptr [rax], rbx"),
    ("imul rax, 5", "imul rax, rax, 5"),
    ("shl rax", "shl rax, 1"),
    ("sal rax, 3", "shl rax, 3"),
    ("rep movsb", "rep movsb byte ptr [rdi], byte ptr [rsi]"),
    ("rep stosq qword ptr [rdi], rax", "rep stosq qword ptr [rdi], rax"),
    ("lodsq", "lodsq rax, qword ptr [rsi]"),
    ("fadd st(0), st(1)", "fadd st(1)"),
    ("and eax, 0xffffff80", "and eax, 0xffffff80"),
    ("and rax, -4096", "and rax, 0xfffffffffffff000"),
    ("and rax, 0xfffffffffffff000", "and rax, 0xfffffffffffff000"),
    ("cmp eax, 0xffffffff", "cmp eax, -1"),
    ("cmp al, -1", "cmp al, 0xff"),
    ("mov eax, -1", "mov eax, 0xffffffff"),
    ("mov rax, 0xffffffff", "movabs rax, 0xffffffff"),
    ("mov rax, 0x8000000000000000", "movabs rax, 0x8000000000000000"),
    ("push -0x80000000", "push -0x80000000"),
    ("push 0x7fffffff", "push 0x7fffffff"),
    ("lea rax, [rbx + rbx*2]", "lea rax, [rbx + rbx*2]"),
    ("lea rax, [8*rcx + rdx - 16]", "lea rax, [rdx + rcx*8 - 0x10]"),
    ("mov rax, qword ptr [rbx*1]", "mov rax, qword ptr [rbx]"),
    ("mov rax, [rsp + 8*3]", "mov rax, qword ptr [rsp + 0x18]"),
    ("mov rax, [rax + 0xffffffffffffffff]", "mov rax, qword ptr [rax - 1]"),
    ("mov rax, qword ptr [eax + ecx*4]", "mov rax, qword ptr [eax + ecx*4]"),
    ("mov rax, qword ptr fs:[rax + 8]", "mov rax, qword ptr fs:[rax + 8]"),
    ("mov rbx, [0xffffffff81000000]", "mov rbx, qword ptr [0xffffffff81000000]"),
    ("mov rax, [rip + 8]", "mov rax, qword ptr [rip + 8]"),        # a number: the displacement, as gas
    ("mov al, 0ffh", "mov al, 0xff"),
    ("mov al, 0", "mov al, 0"),
    ("mov al, 0b101", "mov al, 5"),
    ("mov al, 'a'", "mov al, 0x61"),
    ("mov al, '\\n'", "mov al, 0xa"),
    ("mov eax, (1 << 4) | 3", "mov eax, 0x13"),
    ("mov eax, 2 + 3 * 4", "mov eax, 0xe"),
    ("mov eax, -7 / 2", "mov eax, 0xfffffffd"),                    # division truncates
    ("mov eax, ~0", "mov eax, 0xffffffff"),
    ("sysretq", "sysretq"),
    ("invlpg byte ptr [rdi + 8]", "invlpg byte ptr [rdi + 8]"),
    ("nop dword ptr [rax]", "nop dword ptr [rax]"),
    ("lea rax, byte ptr [rax]", "lea rax, [rax]"),
    ("mov al,byte ptr[rax+8]", "mov al, byte ptr [rax + 8]"),
    ("MOV RAX, QWORD PTR [RBX]", "mov rax, qword ptr [rbx]"),
]


@pytest.mark.parametrize("line,want", WELL_FORMED, ids=[w[0] for w in WELL_FORMED])
def test_well_formed_statements_assemble_as_written(line, want):
    img = link([("t.S", f"x:\n    {line}\n")], LAYOUT, CONST, cache=False)
    assert [f"{i.mnemonic} {i.op_str}".strip() for i in img.insns] == [want]


# (source data statements, bytes): the linker writes data itself
DATA_STATEMENTS = [
    (".byte 0x7f, -128, 255, 'a'", "7f80ff61"),
    (".word 0xffff, -32768", "ffff0080"),
    (".long -1, 0x80000000", "ffffffff00000080"),
    (".quad -1, 1 << 63", "ffffffffffffffff" "0000000000000080"),
    (".quad 0xffffffffffffffff", "ffffffffffffffff"),
    (".ascii \"a\\tb\\n\\\"\\\\\\101\\x41\"", "6109620a225c4141"),
    (".asciz \"x\", \"y\"", "78007900"),
    (".string \"z\"", "7a00"),
    (".ascii \"h\u00e9\"", "68c3a9"),                          # UTF-8 (keystone: a traceback)
    (".asciz \"na\u00efve\"", "6e61c3af766500"),
    (".zero 2 * 2", "00000000"),
    (".skip 2, 0xff", "ffff"),
    (".space 2, -1", "ffff"),
    (".fill 2, 4, 0x41", "4100000041000000"),
    (".fill 1, 8, -2", "feffffffffffffff"),
    (".byte 1 ; a comment with \u00e9", "01"),
]


@pytest.mark.parametrize("line,want", DATA_STATEMENTS, ids=[d[0] for d in DATA_STATEMENTS])
def test_data_directives_are_written_by_the_linker(line, want):
    img = link([("t.S", f".data\n{line}\n")], LAYOUT, CONST, cache=False)
    assert img.sections[".data"].data.hex() == want


def test_data_refers_to_labels_and_its_own_address():
    src = "x: jmp later\n.data\nd: .quad later, d + 8\n.long later - x\n.text\n.zero 300\nlater: ret\n"
    img = link([("t.S", src)], LAYOUT, cache=False)
    later, d = img.symbols["later"], img.symbols["d"]
    assert img.sections[".data"].data == struct.pack("<QQI", later, d + 8, later - TEXT)


def test_constants_are_numbers_for_keystone():
    """.equ/.set/= are evaluated by the linker and reach keystone as numbers
    (keystone would read ``-FOO`` as a memory operand)."""
    src = ".equ FOO, 5\n.set BAR, FOO * 2\nBAZ = end - x\nx:\n    mov rax, -FOO\n    mov eax, BAR\n" \
          "    mov ecx, BAZ\nend:\n.data\n.quad -BAR\n"
    img = link([("t.S", src)], LAYOUT, cache=False)
    assert [f"{i.mnemonic} {i.op_str}" for i in img.insns] == [
        "mov rax, 0xfffffffffffffffb", "mov eax, 0xa", "mov ecx, 0x11"]
    assert img.symbols["BAZ"] == 17
    assert img.sections[".data"].data == struct.pack("<q", -10)


@pytest.mark.parametrize("src,message", [
    (".equ FOO, 1\n.equ FOO, 2\n", "t.S:2: constant 'FOO' already defined at t.S:1"),
    ("FOO:\n.equ FOO, 2\n", "t.S:2: constant 'FOO' is already a label"),
    (".equ EFAULT, 2\n", "t.S:1: constant 'EFAULT' is already a predefined symbol"),
    ("x:\n    .equ FOO, 300\n    mov al, FOO\n", "t.S:3: immediate 0x12c does not fit in 8 bits: mov al, FOO"),
    ("x: nop\n    caf\u00e9: nop\n", "t.S:2: non-ASCII character U+00E9 (LATIN SMALL LETTER E WITH ACUTE) "
                                    "outside a string: caf\u00e9: nop"),
    (".macro M\n    mov eax,\u00a01\n.endm\n", "t.S:2: non-ASCII character U+00A0 (NO-BREAK SPACE) outside "
                                            "a string: mov eax,\u00a01"),
])
def test_constant_and_line_errors(src, message):
    with pytest.raises(AsmError) as e:
        link([("t.S", src)], LAYOUT, CONST, cache=False)
    assert str(e.value) == message


# keystone getting a statement wrong, injected: the linker hands keystone the
# statement's text; here keystone sees REPLACEMENT instead, as if it had
# mis-encoded the line.  Each must be caught by the decoded comparison.
MISENCODED = [
    ("mov rax, rbx", "mov rax, rcx", "operand 2 is rbx, keystone encoded rcx ('mov rax, rcx')"),
    ("add eax, ebx", "add al, bl", "operand 1 is eax, keystone encoded al ('add al, bl')"),
    ("test rax, rax", "neg rax", "keystone encoded 1 operand ('neg rax'), the source has 2"),
    ("mov rax, qword ptr [rbx]", "mov rax, rbx", "operand 2 is a memory operand, keystone encoded rbx "
                                               "('mov rax, rbx')"),
    ("mov rax, qword ptr [rbx + 8]", "mov rax, qword ptr [rcx + 8]",
     "operand 2 addresses [rbx], keystone encoded [rcx]"),
    ("mov rax, qword ptr [rbx + rcx*2]", "mov rax, qword ptr [rbx + rcx*4]",
     "operand 2 addresses [rbx + rcx*2], keystone encoded [rbx + rcx*4]"),
    ("mov rax, qword ptr [rbx + 8]", "mov rax, qword ptr [rbx + 16]",
     "keystone encoded the displacement 0x8 as 0x10"),
    ("mov rax, qword ptr [rip + 8]", "mov rax, qword ptr [rip + 16]",
     "keystone encoded the displacement 0x8 as 0x10"),
    ("mov rax, qword ptr gs:[8]", "mov rax, qword ptr fs:[8]", "operand 2 uses segment gs, keystone encoded fs"),
    ("mov byte ptr [rax], 1", "mov word ptr [rax], 1", "operand 1 is byte ptr, keystone encoded a 2-byte access"),
    ("mov eax, 5", "mov eax, 6", "keystone encoded the immediate 0x5 as 0x6"),
    ("push 5", "push qword ptr [rax]", "keystone turned operand 1 into a memory reference "
                                       "('push qword ptr [rax]'); write the value as a number"),
    ("jmp x", "jmp y", "branch to 0x400002, keystone encoded 0x400000"),
    ("ret", "inc qword ptr [rax]", "keystone encoded a memory operand the source does not have "
                                   "('inc qword ptr [rax]')"),
    ("add rax, rbx", "", "keystone produced no bytes for this instruction"),
    ("nop", "nop; nop", "keystone produced 2 instructions (nop; nop)"),
]


@pytest.mark.parametrize("line,replacement,what", MISENCODED, ids=[m[0] + " -> " + m[1] for m in MISENCODED])
def test_misencoded_statements_are_caught(monkeypatch, line, replacement, what):
    real = linker.ks_asm

    def keystone_gets_it_wrong(text, addr):
        return real(text.replace(f"x: {line}\n", f"x: {replacement}\n", 1), addr)

    monkeypatch.setattr(linker, "ks_asm", keystone_gets_it_wrong)
    src = f"y:\n    nop\n    nop\nx: {line}\n"
    with pytest.raises(AsmError) as e:
        link([("t.S", src)], LAYOUT, CONST, cache=False)
    assert str(e.value) == f"t.S:4: {what}: {line}"


def test_misencoded_statements_link_without_the_injection():
    """Each statement above links as written: the errors come from the
    injected encodings, not from the statements."""
    for line, _, _ in MISENCODED:
        link([("t.S", f"y:\n    nop\n    nop\nx: {line}\n")], LAYOUT, CONST, cache=False)


# --- every source the project links keeps linking (no false refusals) -------------------
def _repo(*parts: str) -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)


def _embedded_sources(path: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """Assembly sources assigned to ``names`` in a module, read from its
    text (some are private to it)."""
    tree = ast.parse(open(path).read())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for t in node.targets:
                if isinstance(t, ast.Name) and t.id in names:
                    out.append((t.id, node.value.value))
    assert sorted(n for n, _ in out) == sorted(names)
    return out


def _link_asm_test(path: str) -> None:
    """Each process of an asm test in each of its configurations, alone and
    with the test runtime, as the runner links them."""
    from emu.linux.layout import layout_for
    from emu.tools.asmtest import parse_file
    from emu.tools.asmtest.runtime import assemble_user, include_dirs, link_process

    t = parse_file(path)
    dirs = include_dirs(t.real_path or path)
    for levels in sorted({v.config.levels for v in t.variants()}):
        lay = layout_for(levels)
        for spec in t.processes:
            user = assemble_user(spec.source, t.path, lay, dirs, spec.line, spec.name)
            link_process(spec.source, t.path, lay, user, [], dirs)


ASM_TESTS = sorted(glob.glob(_repo("asm", "**", "*.S"), recursive=True))


@pytest.mark.parametrize("path", ASM_TESTS, ids=[os.path.relpath(p, _repo()) for p in ASM_TESTS])
def test_every_asm_test_links(path):
    _link_asm_test(path)


@pytest.mark.parametrize("levels", [4, 5])
def test_the_stub_links(levels):
    from emu.linux.kernel import link_kernel
    from emu.linux.layout import layout_for

    img = link_kernel(layout_for(levels))
    assert img.sites and img.insns


def test_the_matrix_probe_links():
    from emu.linux.layout import layout_for
    from emu.linux.program import assemble_program
    from emu.tools.matrix import PROGRAM

    # as MatrixMachine builds it: the program, user_ret, one probe_table row
    src = open(PROGRAM).read() + "\n.text\nuser_ret:\n    ret\n" + \
        ".data\n.align 64\nprobe_table:\n    .quad 0x1000, 0, 0, 0, 0, 0, 0, 0\n"
    for levels in (4, 5):
        assemble_program(src, "matrix_probe.S", layout_for(levels), {"PROBE_COUNT": 3})


@pytest.mark.parametrize("name,src", _embedded_sources(_repo("emu", "dev", "bench", "machine.py"), ("SOURCE",))
                         + _embedded_sources(_repo("emu", "dev", "bare.py"), ("LOOP_KERNEL", "LOOP_USER")))
def test_the_bench_and_bare_sources_link(name, src):
    link([(name, src + "\n__trampoline:\n    iretq\n")], {".text": 0xFFFFFFFF81000000}, cache=False)


def test_the_bench_program_links():
    from emu.dev.bench import BENCH_PROGRAM
    from emu.linux.layout import layout_for
    from emu.linux.program import assemble_program

    assemble_program(BENCH_PROGRAM, "bench", layout_for(4))


# keystone 0.9.2 on its own (docs/assembler.md, "Keystone's traps"): if an
# upgrade changes one of these, the table in the docs needs a look.  The
# inputs that hang keystone are not run.
KEYSTONE_ALONE = [
    ("nop\nadd rax,\nnop", "9090"),                       # the statement vanishes
    ("mov rax, qword ptr rbx", ""),
    ("mov rax, qword [rax]", ""),
    ("mov eax, 0x1ffffffff", "b8ffffffff"),
    ("mov al, 0x1234", "b034"),
    ("ret 0x10000", "c20000"),
    ("push 0x80000000", "66680000"),
    ("push 0xffff", "6aff"),
    ("mov rax, qword ptr [", "48a10000000000000000"),
    ("lea rax, [rax + rbx*8 + 0x100000000]", "488d44d800"),       # disp8 0
    ("mov rax, [rax+rsp]", "488b0420"),
    (".word 0x10000", ""),
    (".long 0xffffffff81000000", "00000081"),
    (".space 4, 0x1ff", "ffffffff"),
    ("popf", "669d"),
    ("iret", "66cf"),
    ("sysret", "480f07"),
    ("mov eax, 4 + 1 << 2", "b814000000"),
]


@pytest.mark.parametrize("text,want", KEYSTONE_ALONE, ids=[k[0] for k in KEYSTONE_ALONE])
def test_keystone_alone_still_gets_these_wrong(text, want):
    import keystone

    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    enc, _ = ks.asm(text, 0x400000)
    assert bytes(enc or b"").hex() == want
