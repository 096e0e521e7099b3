"""The strict reading of one statement, before keystone sees it
(docs/assembler.md, "Strictness").

An instruction is split into prefixes, mnemonic and operands; each operand
is a register, a memory operand ``[SIZE ptr] [SEG:][expr]`` or an immediate
expression.  A data directive becomes chunks of bytes the linker emits
itself; ``.equ``/``.set``/``NAME = expr`` a constant.  Anything malformed is
a :class:`SyntaxProblem` (the caller adds ``file:line`` and the text).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from emu.asm.expr import ExprError, has_register, linear, parse_expr, parse_number, unescape


class SyntaxProblem(Exception):
    pass


class _Registers:
    """Every x86 register name capstone knows, and st(0)..st(7): read at the
    first question, so that loading a linked image from the cache never loads
    capstone (docs/performance.md)."""

    _names: frozenset[str] | None = None

    def _get(self) -> frozenset[str]:
        if self._names is None:
            from capstone import x86_const
            regs = {name[8:].lower() for name in dir(x86_const)
                    if name.startswith("X86_REG_") and name != "X86_REG_ENDING"}
            regs |= {f"st({i})" for i in range(8)}
            self._names = frozenset(regs)
        return self._names

    def __contains__(self, name) -> bool:
        return name in self._get()

    def __iter__(self):
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


REGISTERS = _Registers()
GPR64 = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi") + tuple(f"r{i}" for i in range(8, 16))
GPR32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi") + tuple(f"r{i}d" for i in range(8, 16))
#: registers a memory operand may name
ADDRESS_REGISTERS = frozenset(GPR64 + GPR32 + ("rip",))
SEGMENTS = ("cs", "ds", "es", "ss", "fs", "gs")
SIZES = {"byte": 1, "word": 2, "dword": 4, "fword": 6, "qword": 8, "tbyte": 10, "tword": 10,
         "oword": 16, "xmmword": 16, "ymmword": 32, "zmmword": 64}
PREFIXES = ("rep", "repe", "repz", "repne", "repnz", "lock")
#: mnemonics keystone assembles at another operand size than gas does: refused, with the spelling to use
AMBIGUOUS_MNEMONICS = {
    "pushf": "keystone assembles pushf as the 16-bit pushfw (gas: pushfq); write pushfq",
    "popf": "keystone assembles popf as the 16-bit popfw (gas: popfq); write popfq",
    "iret": "keystone assembles iret as the 16-bit iretw (gas: iretl); write iretq or iretd",
    "sysret": "gas assembles sysret as the 32-bit sysretl (keystone: sysretq); write sysretq",
}
#: spellings keystone lacks, and what it calls them
KEYSTONE_SPELLINGS = {"sysretq": "sysret", "sysexitq": "sysexit"}

_SIZE_PTR = re.compile(r"(" + "|".join(SIZES) + r")\s+ptr\b\s*", re.I)
_SIZE_WORD = re.compile(r"(" + "|".join(SIZES) + r")\b", re.I)
_MEMORY = re.compile(r"(?:(" + "|".join(SEGMENTS) + r")\s*:\s*)?\[(.*)\]", re.I | re.S)
_MNEMONIC = re.compile(r"[A-Za-z][\w.]*$")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"', re.S)


@dataclass
class Operand:
    kind: str                      # reg | mem | imm
    text: str
    reg: str | None = None         # reg: the register (lower case)
    size: int | None = None        # mem: the SIZE ptr keyword's bytes, if written
    segment: str | None = None     # mem: the segment override, if written
    node: tuple | None = None      # mem: the expression inside [], imm: the expression


@dataclass
class InsnSyntax:
    prefixes: tuple[str, ...]
    mnemonic: str
    operands: list[Operand]
    #: "rax, rbx" when every operand is a register (capstone's op_str for it), else ""
    registers_only: str = ""


@dataclass
class DataSyntax:
    """Chunks the linker emits: ("bytes", b), ("int", size, node),
    ("fill", count node, size, value node)."""

    directive: str
    chunks: list[tuple] = field(default_factory=list)


@dataclass
class ConstSyntax:
    name: str
    node: tuple


def non_ascii_problem(line: str) -> str | None:
    """A non-ASCII character outside string and character literals (and
    comments: ``;``, ``#``, ``//``)."""
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in ";#" or line.startswith("//", i):
            break
        elif ord(c) > 0x7F:
            name = unicodedata.name(c, None)            # (control characters have none)
            return f"non-ASCII character U+{ord(c):04X}" + (f" ({name})" if name else "") + " outside a string"
        i += 1
    return None


def split_top(text: str) -> list[str]:
    """Split at commas outside brackets, parentheses and literals."""
    parts, depth, quote, start = [], 0, None, 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "[(":
            depth += 1
        elif c in "])":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def _brackets(text: str) -> None:
    depth = 0
    quote = None
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "[":
            if depth:
                raise SyntaxProblem("'[' inside '[...]'")
            depth = 1
        elif c == "]":
            if not depth:
                raise SyntaxProblem("']' without '['")
            depth = 0
        i += 1
    if depth:
        raise SyntaxProblem("'[' without ']'")


class _Unknown(Exception):
    pass


class _NoSymbols(dict):
    """At parse time symbol values are unknown: checks that need them wait."""

    def __missing__(self, key):
        raise _Unknown(key)


def _check_address(node: tuple) -> None:
    """The shape of [base + index*scale + disp], as far as it is known
    before symbols have values."""
    written = _registers_in(node)
    for reg in written:
        if reg not in ADDRESS_REGISTERS:
            raise SyntaxProblem(f"{reg} cannot address memory")
    widths = {r: (32 if r in GPR32 else 64) for r in written}
    if len(set(widths.values())) > 1:
        raise SyntaxProblem(f"{' and '.join(dict.fromkeys(written))}: an address uses registers of one width")
    try:
        regs, _ = linear(node, _NoSymbols())
    except _Unknown:
        return
    except ExprError as e:
        raise SyntaxProblem(f"not an address: {e}") from None
    for reg, factor in regs.items():
        if factor < 0:
            raise SyntaxProblem(f"{reg} is subtracted; an address adds its registers")
    if len(regs) == 1 and len(written) == 2 and written[0] == written[1] != "rip":
        # [rbx + rbx*2]: the register is both base and index
        (reg, factor), = regs.items()
        if factor not in (1, 2, 4, 8) and factor - 1 not in (1, 2, 4, 8):
            raise SyntaxProblem(f"{reg}*{factor} cannot be encoded: an address is base + index*(1, 2, 4 "
                                f"or 8)")
        return
    scaled = [(r, f) for r, f in regs.items() if f != 1]
    for reg, factor in scaled:
        if factor not in (2, 4, 8) or reg == "rip":
            raise SyntaxProblem(f"scale {factor} of {reg}: an index is scaled by 1, 2, 4 or 8")
    if len(regs) > 2 or len(scaled) > 1:
        desc = " + ".join(f"{r}*{f}" if f != 1 else r for r, f in regs.items())
        raise SyntaxProblem(f"[{desc}]: an address has at most a base and a scaled index")
    if "rip" in regs and len(regs) > 1:
        raise SyntaxProblem("rip cannot be combined with another register")


def _registers_in(node: tuple) -> list[str]:
    if node[0] == "reg":
        return [node[1]]
    out = []
    for c in node[1:]:
        if isinstance(c, tuple):
            out += _registers_in(c)
    return out


# a statement's reading depends on its text alone: kept per process (the
# stub repeats its macro expansions, and every machine links it again)
_INSN_CACHE: dict[str, InsnSyntax] = {}
_OPERAND_CACHE: dict[str, Operand] = {}
_CACHE_LIMIT = 50000
_SIMPLE = re.compile(r"(0x[0-9a-fA-F]+|[1-9][0-9]*|0)$|[A-Za-z_.$][\w.$@]*$")


def parse_operand(text: str, index: int) -> Operand:
    if not text:
        raise SyntaxProblem(f"operand {index} is empty")
    op = _OPERAND_CACHE.get(text)
    if op is None:
        op = _parse_operand(text, index)
        if len(_OPERAND_CACHE) > _CACHE_LIMIT:
            _OPERAND_CACHE.clear()
        _OPERAND_CACHE[text] = op
    return op


def _parse_operand(text: str, index: int) -> Operand:
    low = text.lower()
    if low in REGISTERS:
        return Operand("reg", text, reg=low)
    m = _SIMPLE.match(text)
    if m:            # a number or a name: most immediates
        try:
            node = ("num", parse_number(text)) if m.group(1) else ("sym", text)
        except ExprError as e:
            raise SyntaxProblem(f"operand {index}: {e}") from None
        if node[0] == "sym" and (low in SIZES or low in ("ptr", "offset", "short", "near", "far")):
            raise SyntaxProblem(f"operand {index}: {text!r} is a keyword, not a value")
        return Operand("imm", text, node=node)
    t = text
    size = None
    m = _SIZE_PTR.match(t)
    if m:
        size = SIZES[m.group(1).lower()]
        t = t[m.end():]
        if not t:
            raise SyntaxProblem(f"'{m.group().strip()}' names no memory operand")
    elif _SIZE_WORD.match(t) and t[_SIZE_WORD.match(t).end():].strip():
        w = _SIZE_WORD.match(t).group(1).lower()
        raise SyntaxProblem(f"write '{w} ptr' (keystone drops '{w}' without 'ptr')")
    if "[" in t or "]" in t:
        m = _MEMORY.fullmatch(t.strip())
        if not m or "[" in m.group(2) or "]" in m.group(2):
            raise SyntaxProblem(f"write a memory operand as [base + index*scale + disp]: {text!r}")
        inner = m.group(2)
        if not inner.strip():
            raise SyntaxProblem("empty memory operand []")
        try:
            node = parse_expr(inner, REGISTERS)
        except ExprError as e:
            raise SyntaxProblem(f"operand {index}: {e}") from None
        _check_address(node)
        seg = m.group(1).lower() if m.group(1) else None
        return Operand("mem", text, size=size, segment=seg, node=node)
    if size is not None:
        raise SyntaxProblem(f"'{text[:m.end()].strip()}' needs a memory operand in brackets: {text!r}")
    low = t.strip().lower()
    if low in REGISTERS:
        return Operand("reg", text, reg=low)
    if re.match(r"(" + "|".join(SEGMENTS) + r")\s*:", low):
        raise SyntaxProblem(f"write a memory operand in brackets: {low.split(':')[0]}:[...]")
    try:
        node = parse_expr(t, REGISTERS)
    except ExprError as e:
        raise SyntaxProblem(f"operand {index}: {e}") from None
    if has_register(node):
        raise SyntaxProblem(f"operand {index} mixes a register into a value: {text!r}")
    return Operand("imm", text, node=node)


def parse_insn(text: str) -> InsnSyntax:
    syntax = _INSN_CACHE.get(text)
    if syntax is None:
        syntax = _parse_insn(text)
        if len(_INSN_CACHE) > _CACHE_LIMIT:
            _INSN_CACHE.clear()
        _INSN_CACHE[text] = syntax
    return syntax


def _parse_insn(text: str) -> InsnSyntax:
    _brackets(text)
    words = text.split(None, 1)
    prefixes = []
    while words and words[0].lower() in PREFIXES and len(words) > 1:
        prefixes.append(words[0].lower())
        words = words[1].split(None, 1)
    mnemonic = words[0]
    if not _MNEMONIC.match(mnemonic):
        raise SyntaxProblem("expected an instruction")
    low = mnemonic.lower()
    if low in AMBIGUOUS_MNEMONICS:
        raise SyntaxProblem(AMBIGUOUS_MNEMONICS[low])
    rest = words[1].strip() if len(words) > 1 else ""
    operands = []
    if rest:
        operands = [parse_operand(p, i + 1) for i, p in enumerate(split_top(rest))]
    regs = ", ".join(op.reg for op in operands) if operands and all(op.kind == "reg" for op in operands) else ""
    return InsnSyntax(tuple(prefixes), low, operands, regs)


def keystone_insn_text(text: str, syntax: InsnSyntax) -> str:
    """The statement as keystone must be given it (its own spellings)."""
    alt = KEYSTONE_SPELLINGS.get(syntax.mnemonic)
    if alt is None:
        return text
    return re.sub(r"\b" + syntax.mnemonic + r"\b", alt, text, count=1, flags=re.I)


_DATA_SIZES = {".byte": 1, ".word": 2, ".short": 2, ".value": 2, ".long": 4, ".int": 4, ".quad": 8}


def _expr(text: str, what: str) -> tuple:
    try:
        node = parse_expr(text, REGISTERS)
    except ExprError as e:
        raise SyntaxProblem(f"{what}: {e}") from None
    if has_register(node):
        raise SyntaxProblem(f"{what} names a register")
    return node


_DATA_CACHE: dict[str, DataSyntax | None] = {}


def parse_data(text: str) -> DataSyntax | None:
    """A data directive as chunks; None for the .align family (the linker
    pads those itself)."""
    if text in _DATA_CACHE:
        return _DATA_CACHE[text]
    syntax = _parse_data(text)
    if len(_DATA_CACHE) > _CACHE_LIMIT:
        _DATA_CACHE.clear()
    _DATA_CACHE[text] = syntax
    return syntax


def _parse_data(text: str) -> DataSyntax | None:
    word, _, rest = text.strip().partition(" ")
    d = word.lower()
    if d in (".align", ".balign", ".p2align"):
        return None
    rest = rest.strip()
    out = DataSyntax(d)
    args = split_top(rest) if rest else []
    if d in _DATA_SIZES:
        if not args:
            raise SyntaxProblem(f"{d} needs at least one value")
        for i, a in enumerate(args):
            if not a:
                raise SyntaxProblem(f"value {i + 1} of {d} is empty")
            if a.startswith('"'):
                raise SyntaxProblem(f"{d} takes numbers; strings go in .ascii")
            out.chunks.append(("int", _DATA_SIZES[d], _expr(a, f"value {i + 1}")))
        return out
    if d in (".ascii", ".asciz", ".string"):
        if not args:
            raise SyntaxProblem(f"{d} needs a string")
        for i, a in enumerate(args):
            m = _STRING.fullmatch(a)
            if not m:
                if a and a[0] == '"' and _STRING.match(a):
                    raise SyntaxProblem(f"separate strings with commas in {d}")
                raise SyntaxProblem(f"argument {i + 1} of {d} is not a \"string\"")
            try:
                b = unescape(m.group(1), "a string")
            except ExprError as e:
                raise SyntaxProblem(str(e)) from None
            out.chunks.append(("bytes", b + (b"\0" if d != ".ascii" else b"")))
        return out
    if d in (".zero", ".skip", ".space"):
        if len(args) not in (1, 2) or not all(args):
            raise SyntaxProblem(f"use {d} COUNT[, FILL]")
        fill = _expr(args[1], "the fill byte") if len(args) == 2 else ("num", 0)
        out.chunks.append(("fill", _expr(args[0], "the count"), 1, fill))
        return out
    if d == ".fill":
        if not 1 <= len(args) <= 3 or not all(args):
            raise SyntaxProblem("use .fill COUNT[, SIZE[, VALUE]]")
        size_node = _expr(args[1], "the size") if len(args) > 1 else ("num", 1)
        if size_node[0] != "num" or not 0 <= size_node[1] <= 8:
            raise SyntaxProblem(".fill SIZE is a number from 0 to 8")
        value = _expr(args[2], "the value") if len(args) > 2 else ("num", 0)
        out.chunks.append(("fill", _expr(args[0], "the count"), size_node[1], value))
        return out
    raise SyntaxProblem(f"unsupported data directive {d}")


_CONST = re.compile(r"^\.(equ|set)\s+([A-Za-z_.$][\w.$@]*)\s*,\s*(.*)$|^([A-Za-z_.$][\w.$@]*)\s*=\s*(.*)$",
                    re.I | re.S)


def parse_const(text: str) -> ConstSyntax:
    m = _CONST.match(text.strip())
    if not m:
        raise SyntaxProblem("use .equ NAME, VALUE")
    name = m.group(2) or m.group(4)
    value = m.group(3) if m.group(2) else m.group(5)
    if name.lower() in REGISTERS:
        raise SyntaxProblem(f"{name} is a register")
    return ConstSyntax(name, _expr(value.strip(), f"the value of {name}"))
