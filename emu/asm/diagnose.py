"""Saying what is wrong with a statement keystone refused.

Keystone's own messages are terse ("Invalid operand"); the linker knows
the statement's operands (emu/asm/syntax.py) and tries a few variants to
name the cause: an unknown symbol, an immediate the instruction cannot
encode, registers of different widths.  Only runs on the error path.
"""

from __future__ import annotations

import keystone

from emu.asm.engines import ks_message
from emu.asm.expr import ExprError, evaluate, fits, hexs, symbols_of
from emu.asm.image import Stmt
from emu.asm.syntax import GPR32, GPR64, split_top
from emu.errors import AsmError

_GPR16 = ("ax", "cx", "dx", "bx", "sp", "bp", "si", "di") + tuple(f"r{i}w" for i in range(8, 16))
_GPR8 = ("al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil", "ah", "ch", "dh", "bh") + \
    tuple(f"r{i}b" for i in range(8, 16))
_WIDTH = {**{r: 64 for r in GPR64}, **{r: 32 for r in GPR32}, **{r: 16 for r in _GPR16}, **{r: 8 for r in _GPR8}}
#: instructions whose register operands legitimately differ in width
_MIXED = ("movzx", "movsx", "movsxd", "in", "out", "rol", "ror", "rcl", "rcr", "shl", "shr", "sal", "sar",
          "shld", "shrd", "crc32", "movd", "movq", "bt", "bts", "btr", "btc")


def diagnose(st: Stmt, line: str, err: keystone.KsError, env, try_asm) -> AsmError:
    """An AsmError naming the line and, where the linker can tell, the cause."""
    where = f"{st.file}:{st.line}"
    syntax = st.syntax
    if err.errno == keystone.KS_ERR_ASM_MNEMONICFAIL:
        return AsmError(f"{where}: {ks_message(err)}: {st.text}")
    for op in syntax.operands:
        if op.node is not None:
            for name in sorted(symbols_of(op.node)):
                if name not in env:
                    return AsmError(f"{where}: unknown symbol {name!r}: {st.text}")
    words = line.split(None, len(syntax.prefixes) + 1)
    head = " ".join(words[:len(syntax.prefixes) + 1])
    rest = split_top(words[-1]) if len(words) > len(syntax.prefixes) + 1 else []
    branch = syntax.mnemonic.startswith(("j", "call", "loop"))
    if len(rest) == len(syntax.operands) and not branch:
        for i, op in enumerate(syntax.operands):
            if op.kind != "imm":
                continue
            try:
                v = evaluate(op.node, env)
            except ExprError as e:
                return AsmError(f"{where}: operand {i + 1}: {e}: {st.text}")
            except KeyError:
                continue
            variant = rest[:i] + ["0"] + rest[i + 1:]
            try:
                try_asm(f"{head} {', '.join(variant)}")
            except keystone.KsError:
                continue
            hint = ("; only mov to a 64-bit register takes a 64-bit immediate, other instructions "
                    "sign-extend 32 bits") if fits(v, 64) and not -(1 << 31) <= v < (1 << 31) else ""
            return AsmError(f"{where}: immediate {hexs(v)} does not fit this instruction{hint}: {st.text}")
    if len(rest) == len(syntax.operands):
        for i, op in enumerate(syntax.operands):
            if op.kind != "mem" or op.size is not None:
                continue
            for size in ("byte", "word", "dword", "qword"):
                try:
                    try_asm(f"{head} {', '.join(rest[:i] + [f'{size} ptr {rest[i]}'] + rest[i + 1:])}")
                except keystone.KsError:
                    continue
                return AsmError(f"{where}: the size of operand {i + 1} is not known: write byte, word, "
                                f"dword or qword ptr: {st.text}")
    regs = [op.reg for op in syntax.operands if op.kind == "reg" and op.reg in _WIDTH]
    if syntax.mnemonic not in _MIXED and len({_WIDTH[r] for r in regs}) > 1:
        widths = ", ".join(f"{r} is {_WIDTH[r]}-bit" for r in regs)
        return AsmError(f"{where}: operand sizes differ ({widths}): {st.text}")
    if err.errno == keystone.KS_ERR_ASM_MISSINGFEATURE:
        return AsmError(f"{where}: not encodable in 64-bit mode: {st.text}")
    return AsmError(f"{where}: {ks_message(err)}: {st.text}")
