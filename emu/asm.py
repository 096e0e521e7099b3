"""Assembler and linker: keystone underneath, file:line errors on top.

Sources are Intel syntax.  ``;``, ``#`` and ``//`` start comments (keystone
itself would read ``;`` as a statement separator, ARCHITECTURE fact 10).
On top of what keystone accepts, the preprocessor handles:

``.include "file"``         textual include (relative to the including file)
``.section NAME``           also ``.text``, ``.data``, ``.rodata``, ``.bss``
``.macro`` / ``.endm``      expanded here (``\\arg``, ``arg=default``, ``\\@``),
                            usable from every file; errors name the invocation
``.extable FROM, TO[, T]``  an exception-table entry (as Linux's _ASM_EXTABLE)
``.alternative FEATURE, TARGET``
                            a 5-byte ``jmp TARGET`` (a label of the same
                            section) that the loader turns into a NOP when
                            FEATURE is on, as Linux's
                            ``ALTERNATIVE "jmp TARGET", "", FEATURE``

Every label is a global symbol except ``.L`` labels, which are local to
their file.  Each section is assembled in one keystone call at its final
address; labels of other sections and predefined constants reach it as
``.equ`` definitions.  Keystone's symbol-resolver callback is not used: it
encodes PC-relative references to resolved symbols 4 bytes off.

After assembly every instruction is checked: keystone silently turns an
absolute memory operand into a RIP-relative one (only right within ±2 GiB),
and encodes ``[rip + SYM]`` with a symbol from another section as an
absolute displacement.  Both are reported as errors with file and line.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import struct
from bisect import bisect_right
from dataclasses import dataclass, field

import capstone
import keystone

from emu.errors import AsmError

_IDENT = re.compile(r"[A-Za-z_.$][\w.$@]*")
_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$@]*)\s*:(?!:)")
_DATA_DIRECTIVES = {".byte", ".word", ".short", ".value", ".long", ".int", ".quad", ".ascii",
                    ".asciz", ".string", ".zero", ".space", ".skip", ".fill", ".align", ".balign",
                    ".p2align"}
_IGNORED_DIRECTIVES = {".globl", ".global", ".type", ".size", ".intel_syntax", ".code64", ".file"}
_SECTION_ALIASES = {".text": ".text", ".data": ".data", ".rodata": ".rodata", ".bss": ".bss"}
_KEYWORDS = {"byte", "word", "dword", "qword", "xmmword", "ymmword", "tbyte", "ptr", "offset", "rip",
             "short", "near", "far", "rel", "abs"}


def _registers() -> set[str]:
    from capstone import x86_const
    regs = set()
    for name in dir(x86_const):
        if name.startswith("X86_REG_") and name != "X86_REG_ENDING":
            regs.add(name[8:].lower())
    return regs


_REGS = _registers()
_SYM_PREFIX = "__isoemu_s"


@dataclass
class Stmt:
    file: str
    line: int
    text: str           # the statement without labels and comments
    labels: list[str]
    kind: str           # insn | data | const | empty
    section: str
    index: int = 0      # position within its section


@dataclass
class Section:
    name: str
    base: int
    stmts: list[Stmt] = field(default_factory=list)
    data: bytes = b""
    size: int = 0        # bytes occupied (a .bss section has size but no data)
    nobits: bool = False


@dataclass(frozen=True)
class Line:
    addr: int
    size: int
    file: str
    line: int
    text: str


@dataclass(frozen=True)
class Insn:
    addr: int
    size: int
    mnemonic: str
    op_str: str
    bytes: bytes


@dataclass
class Image:
    """A linked program: section bytes at their addresses, symbols, tables."""

    sections: dict[str, Section]
    symbols: dict[str, int]
    lines: list[Line]
    extable: list[tuple[int, int, int]]          # (insn, fixup, type), sorted
    alternatives: list[tuple[int, str]]          # (address of a 5-byte jmp, feature)
    insns: list[Insn]                            # every decoded instruction of code sections
    digest: str = ""
    labels: frozenset[str] = frozenset()         # the names that are labels (not constants)
    _sym_sorted: list[tuple[int, str]] = field(default_factory=list, repr=False)
    _line_addrs: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self):
        names = self.labels or self.symbols.keys()
        self._sym_sorted = sorted((self.symbols[n], n) for n in names
                                  if not n.startswith(".L") and not n.startswith(_SYM_PREFIX))
        self.lines.sort(key=lambda ln: ln.addr)
        self._line_addrs = [ln.addr for ln in self.lines]

    def symbolize(self, addr: int, limit: int = 1 << 20) -> str | None:
        """``name+0xoff`` for an address inside the image, else None."""
        i = bisect_right(self._sym_sorted, (addr, "\uffff")) - 1
        if i < 0:
            return None
        a, name = self._sym_sorted[i]
        if addr - a > limit or not self.contains(addr):
            return None
        return name if addr == a else f"{name}+{addr - a:#x}"

    def contains(self, addr: int) -> bool:
        return any(s.base <= addr < s.base + s.size for s in self.sections.values())

    def line_at(self, addr: int) -> Line | None:
        i = bisect_right(self._line_addrs, addr) - 1
        if i >= 0 and addr < self.lines[i].addr + max(self.lines[i].size, 1):
            return self.lines[i]
        return None

    def section_of(self, addr: int) -> Section | None:
        for s in self.sections.values():
            if s.base <= addr < s.base + s.size:
                return s
        return None


# --- parsing ---------------------------------------------------------------------
def strip_comment(line: str) -> str:
    """Drop ``;``, ``#`` and ``//`` comments outside string literals."""
    out = []
    quote = None
    i = 0
    while i < len(line):
        c = line[i]
        if quote:
            out.append(c)
            if c == "\\" and i + 1 < len(line):
                out.append(line[i + 1])
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
            out.append(c)
        elif c in ";#" or line.startswith("//", i):
            break
        else:
            out.append(c)
        i += 1
    return "".join(out).rstrip()


def _literal_problem(s: str) -> str | None:
    """Why keystone cannot be handed this statement (it hangs on an
    unterminated string and mis-assembles control characters), or None."""
    quote = None
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\t" and (ord(c) < 0x20 or ord(c) == 0x7F):
            return f"control character U+{ord(c):04X} in the source"
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        i += 1
    return "unterminated string literal" if quote else None


class _Parser:
    def __init__(self, include_dirs: list[str]):
        self.include_dirs = include_dirs
        self.macros: dict[str, tuple] = {}   # name -> (file, line, [(param, default)], body lines)
        self._counter = 0
        self.stmts: list[Stmt] = []
        self.extable: list[tuple[str, int, str, str, int]] = []
        self.alternatives: list[tuple[str, int, str, int]] = []   # (file, line, feature, stmt)
        self._file_ids: dict[str, int] = {}

    def parse(self, name: str, text: str, section: str, depth: int = 0) -> str:
        if depth > 16:
            raise AsmError(f"{name}: .include nested too deeply")
        fid = self._file_ids.setdefault(name, len(self._file_ids))
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            lineno = i + 1
            raw = strip_comment(lines[i])
            i += 1
            # file-local labels: .Lname -> .L<fid>_name
            raw = re.sub(r"(?<![\w.$])\.L(\w+)", lambda m: f".L{fid}_{m.group(1)}", raw)
            s = raw.strip()
            if not s:
                continue
            word = s.split()[0].lower()
            if word == ".macro":
                parts = s[len(".macro"):].replace(",", " ").split()
                if not parts:
                    raise AsmError(f"{name}:{lineno}: .macro needs a name")
                params = [(p.split("=")[0], p.split("=", 1)[1] if "=" in p else None) for p in parts[1:]]
                body = []
                start = lineno
                while True:
                    if i >= len(lines):
                        raise AsmError(f"{name}:{start}: .macro {parts[0]} has no .endm")
                    b = re.sub(r"(?<![\w.$])\.L(\w+)", lambda m: f".L{fid}_{m.group(1)}",
                               strip_comment(lines[i]))
                    i += 1
                    if b.strip().lower() == ".endm":
                        break
                    body.append(b)
                if parts[0] in self.macros:
                    f0, l0, _, _ = self.macros[parts[0]]
                    raise AsmError(f"{name}:{start}: macro {parts[0]!r} already defined at {f0}:{l0}")
                self.macros[parts[0]] = (name, start, params, body)
                continue
            if word == ".include":
                m = re.match(r'\.include\s+"([^"]+)"', s)
                if not m:
                    raise AsmError(f'{name}:{lineno}: use .include "file"')
                path = self._find(m.group(1), name)
                if path is None:
                    raise AsmError(f"{name}:{lineno}: cannot find include file {m.group(1)!r}")
                with open(path) as f:
                    section = self.parse(path, f.read(), section, depth + 1)
                continue
            if word == ".section":
                parts = s.split()
                if len(parts) < 2:
                    raise AsmError(f"{name}:{lineno}: .section needs a name")
                section = parts[1].rstrip(",")
                continue
            if word in _SECTION_ALIASES:
                section = _SECTION_ALIASES[word]
                continue
            if word in _IGNORED_DIRECTIVES:
                continue
            if word in (".extable", ".alternative"):
                self._directive_or_statement(s, name, lineno, section, 0)
                continue
            self._statement(s, name, lineno, section, 0)
        return section

    def _statement(self, s: str, name: str, lineno: int, section: str, depth: int) -> None:
        labels = []
        while True:
            m = _LABEL.match(s)
            if not m:
                break
            labels.append(m.group(1))
            s = s[m.end():].strip()
        if s and s.split()[0] in self.macros:
            if labels:
                self.stmts.append(Stmt(name, lineno, "", labels, "empty", section))
            for line in self._expand(s, name, lineno, depth):
                self._directive_or_statement(line, name, lineno, section, depth + 1)
            return
        bad = _literal_problem(s)
        if bad:
            # keystone 0.9.2 never returns on an unterminated string literal
            shown = re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", s)
            raise AsmError(f"{name}:{lineno}: {bad}: {shown}")
        self.stmts.append(Stmt(name, lineno, s, labels, self._kind(s, name, lineno), section))

    def _directive_or_statement(self, s: str, name: str, lineno: int, section: str, depth: int) -> None:
        s = s.strip()
        if not s:
            return
        word = s.split()[0].lower()
        if word == ".extable":
            self._extable(s, name, lineno)
        elif word == ".alternative":
            self._alternative(s, name, lineno, section)
        else:
            self._statement(s, name, lineno, section, depth)

    def _expand(self, s: str, name: str, lineno: int, depth: int) -> list[str]:
        """Expand one macro invocation: \\arg, arg=default, and \\@ (unique per expansion)."""
        if depth > 16:
            raise AsmError(f"{name}:{lineno}: macros nested too deeply")
        mname, _, rest = s.partition(" ")
        _, _, params, body = self.macros[mname]
        args = [a.strip() for a in rest.split(",")] if rest.strip() else []
        if len(args) > len(params):
            raise AsmError(f"{name}:{lineno}: macro {mname} takes {len(params)} arguments: {s}")
        values = {}
        for i, (pname, default) in enumerate(params):
            if i < len(args) and args[i]:
                values[pname] = args[i]
            elif default is not None:
                values[pname] = default
            else:
                raise AsmError(f"{name}:{lineno}: macro {mname} needs argument {pname!r}: {s}")
        self._counter += 1
        out = []
        for line in body:
            for pname in sorted(values, key=len, reverse=True):
                line = line.replace("\\" + pname, values[pname])
            out.append(line.replace("\\@", str(self._counter)).replace("\\()", ""))
        return out

    def _extable(self, s: str, name: str, lineno: int) -> None:
        args = [a.strip() for a in s[len(".extable"):].split(",")]
        if len(args) not in (2, 3) or not all(args):
            raise AsmError(f"{name}:{lineno}: use .extable FROM, TO[, TYPE]")
        self.extable.append((name, lineno, args[0], args[1], args[2] if len(args) == 3 else "0"))

    def _alternative(self, s: str, name: str, lineno: int, section: str) -> None:
        args = [a.strip() for a in s[len(".alternative"):].split(",")]
        if len(args) != 2 or not all(args):
            raise AsmError(f"{name}:{lineno}: use .alternative FEATURE, TARGET")
        # e9 rel32, computed from the statement's own address (@SELF@)
        self.alternatives.append((name, lineno, args[0], len(self.stmts)))
        self.stmts.append(Stmt(name, lineno, f".byte 0xe9\n.long {args[1]} - @SELF@ - 5", [], "data",
                               section))

    def _kind(self, s: str, name: str, lineno: int) -> str:
        if not s:
            return "empty"
        w = s.split()[0].lower().rstrip(",")
        if w.startswith("."):
            if w in _DATA_DIRECTIVES:
                return "data"
            if w in (".equ", ".set"):
                return "const"
            if w in (".rept", ".endr", ".irp", ".endm", ".if", ".endif"):
                raise AsmError(f"{name}:{lineno}: {w} is not supported (write a .macro instead)")
            raise AsmError(f"{name}:{lineno}: unsupported directive {w}: {s}")
        if re.match(r"^[A-Za-z_.$][\w.$@]*\s*=", s):
            return "const"
        return "insn"

    def _find(self, rel: str, including: str) -> str | None:
        for d in [os.path.dirname(including)] + self.include_dirs:
            p = os.path.join(d, rel)
            if os.path.isfile(p):
                return p
        return None


# --- linking -----------------------------------------------------------------------
_ks = None
_cs = None


def _keystone() -> keystone.Ks:
    global _ks
    if _ks is None:
        _ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    return _ks


def _capstone() -> capstone.Cs:
    global _cs
    if _cs is None:
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.detail = True
    return _cs


def _ks_asm(text: str, addr: int) -> bytes:
    enc, _ = _keystone().asm(text, addr)
    return bytes(enc or b"")


def _ks_message(e: keystone.KsError) -> str:
    msg = str(e)
    return msg.split(" (KS_ERR")[0] if " (KS_ERR" in msg else msg


_IMAGE_CACHE: dict[str, Image] = {}


def link(sources: list[tuple[str, str]], layout: dict[str, int], predefined: dict[str, int] | None = None,
         include_dirs: list[str] | None = None, default_section: str = ".text",
         nobits: tuple[str, ...] = (".bss",), cache: bool = True) -> Image:
    """Assemble and link ``sources`` (name, text) into an :class:`Image`.

    ``layout`` maps each section name to its base address.  ``predefined``
    are constants visible to every file (syscall numbers, struct offsets...).
    Identical inputs return the cached image.
    """
    predefined = dict(predefined or {})
    key = hashlib.sha256(repr((sources, sorted(layout.items()), sorted(predefined.items()),
                               include_dirs, default_section, nobits)).encode()).hexdigest()
    if cache and key in _IMAGE_CACHE:
        return _IMAGE_CACHE[key]
    p = _Parser(include_dirs or [])
    for name, text in sources:
        p.parse(name, text, default_section)
    # group statements by section, in source order
    sections: dict[str, Section] = {}
    for st in p.stmts:
        if st.section not in layout:
            raise AsmError(f"{st.file}:{st.line}: section {st.section} has no place in this "
                           f"program's layout ({', '.join(layout)})")
        sec = sections.setdefault(st.section, Section(st.section, layout[st.section],
                                                      nobits=st.section in nobits))
        st.index = len(sec.stmts)
        sec.stmts.append(st)
    # where each label is defined
    where: dict[str, Stmt] = {}
    for st in p.stmts:
        for lab in st.labels:
            if lab in where:
                o = where[lab]
                raise AsmError(f"{st.file}:{st.line}: label {lab!r} already defined at {o.file}:{o.line}")
            if lab in predefined:
                raise AsmError(f"{st.file}:{st.line}: label {lab!r} shadows a predefined symbol")
            where[lab] = st
    label_section = {lab: st.section for lab, st in where.items()}
    # pass 1 uses each foreign label's section base; later passes real values
    values: dict[str, int] = {lab: layout[sec] for lab, sec in label_section.items()}
    addrs: dict[str, list[int]] = {}
    # .align is padded by the linker, not keystone: its padding is computed
    # from the statement's address and converges with the labels
    aligns = {(st.section, st.index): n for st in p.stmts if (n := _alignment(st, predefined))}
    pads: dict[tuple[str, int], int] = {k: 0 for k in aligns}
    for _ in range(8):
        new_values = dict(values)
        new_pads = dict(pads)
        for sec in sections.values():
            stmt_addrs, data = _assemble_section(sec, p, values, predefined, label_section, pads)
            addrs[sec.name] = stmt_addrs
            sec.data = data
            for st in sec.stmts:
                for lab in st.labels:
                    new_values[lab] = stmt_addrs[st.index]
                n = aligns.get((sec.name, st.index))
                if n:
                    new_pads[(sec.name, st.index)] = -stmt_addrs[st.index] % n
        if new_values == values and new_pads == pads:
            break
        values, pads = new_values, new_pads
    else:
        raise AsmError("layout did not converge after 8 passes (instruction sizes keep changing)")
    symbols = dict(predefined)
    symbols.update(values)
    for sec in sections.values():
        sec.size = len(sec.data)
        if sec.nobits:
            if any(b for b in sec.data):
                st = next(s for s in sec.stmts if s.kind in ("data", "insn"))
                raise AsmError(f"{st.file}:{st.line}: {sec.name} holds only zeros (use .zero/.space)")
            sec.data = b""
    lines, insns = _verify(sections, addrs, symbols)
    extable = []
    for f, ln, frm, to, etype in p.extable:
        for sym in (frm, to):
            if sym not in symbols:
                raise AsmError(f"{f}:{ln}: .extable names unknown label {sym!r}")
        try:
            et = symbols[etype] if etype in symbols else int(etype, 0)
        except ValueError:
            raise AsmError(f"{f}:{ln}: .extable type {etype!r} is not a number or symbol") from None
        extable.append((symbols[frm], symbols[to], et))
    extable.sort()
    alternatives = []
    for f, ln, feature, idx in p.alternatives:
        st = p.stmts[idx]
        a = addrs[st.section][st.index]
        target = a + 5 + struct.unpack_from("<i", sections[st.section].data, a - sections[st.section].base + 1)[0]
        if not sections[st.section].base <= target < sections[st.section].base + sections[st.section].size:
            raise AsmError(f"{f}:{ln}: .alternative target must be a label in the same section")
        alternatives.append((a, feature))
    img = Image(sections, symbols, lines, extable, alternatives, insns, key, frozenset(values))
    if cache:
        _IMAGE_CACHE[key] = img
    return img


def _foreign_equs(text: str, own: set[str], values: dict[str, int]) -> list[str]:
    """``.equ`` lines for the labels of other sections that ``text`` uses."""
    return [f".equ {tok}, {values[tok]:#x}" for tok in set(_IDENT.findall(text))
            if tok not in own and tok in values]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def substitute_constants(text: str, constants: dict[str, int]) -> str:
    """Replace predefined constants by their numbers, outside string literals.

    Keystone mis-assembles a symbol under unary minus: ``mov rax, -EFAULT``
    becomes a load from address 14 and ``push -ENOSYS`` a RIP-relative push.
    Numbers are safe.
    """
    if not constants:
        return text

    def repl(m: re.Match) -> str:
        v = constants.get(m.group(0))
        if v is None:
            return m.group(0)
        return str(v) if -(1 << 31) <= v < (1 << 31) else hex(v & 0xFFFFFFFFFFFFFFFF)

    parts = _STRING.split(text)
    strings = _STRING.findall(text)
    out = []
    for i, part in enumerate(parts):
        out.append(_IDENT.sub(repl, part))
        if i < len(strings):
            out.append(strings[i])
    return "".join(out)


_ALIGN_RE = re.compile(r"^\.(align|balign|p2align)\s+(.*)$", re.I)


def _alignment(st: Stmt, predefined: dict[str, int]) -> int | None:
    """The byte alignment an .align/.balign/.p2align statement asks for."""
    m = _ALIGN_RE.match(st.text.strip())
    if not m:
        return None
    arg = substitute_constants(m.group(2).split(",")[0].strip(), predefined)
    try:
        v = int(arg, 0)
    except ValueError:
        raise AsmError(f"{st.file}:{st.line}: alignment must be a number: {st.text}") from None
    n = 1 << v if m.group(1).lower() == "p2align" and 0 <= v < 32 else v
    if n <= 0 or n & (n - 1):
        raise AsmError(f"{st.file}:{st.line}: alignment must be a power of two: {st.text}")
    return n


def _assemble_section(sec: Section, p: _Parser, values: dict[str, int], predefined: dict[str, int],
                      label_section: dict[str, str], pads: dict[tuple[str, int], int]) -> tuple[list[int], bytes]:
    own = {lab for st in sec.stmts for lab in st.labels}
    body = []
    fill = ".fill {}, 1, 0x90" if "text" in sec.name else ".zero {}"     # NOPs in code, as gas does
    for st in sec.stmts:
        labels = "".join(f"{lab}: " for lab in st.labels)
        pad = pads.get((sec.name, st.index))
        if pad is not None:
            body.append(f"{_SYM_PREFIX}{st.index}: {labels}{fill.format(pad)}")
            continue
        text = substitute_constants(st.text.replace("@SELF@", f"{_SYM_PREFIX}{st.index}"), predefined)
        body.append(f"{_SYM_PREFIX}{st.index}: {labels}{text}")
    n = len(sec.stmts)
    body.append(f"{_SYM_PREFIX}{n}:")
    text_body = "\n".join(body)
    equs = _foreign_equs(text_body, own, values)
    trailer = "\n".join(f".quad {_SYM_PREFIX}{i}" for i in range(n + 1))
    full = "\n".join(equs + [text_body, trailer])
    try:
        out = _ks_asm(full, sec.base)
    except keystone.KsError as e:
        raise _locate_error(sec, p, values, predefined, own, e) from None
    tail = 8 * (n + 1)
    if len(out) < tail:
        raise AsmError(f"{sec.name}: keystone returned too few bytes")
    stmt_addrs = list(struct.unpack_from(f"<{n + 1}Q", out, len(out) - tail))
    data = out[:len(out) - tail]
    end = stmt_addrs[-1] - sec.base
    return stmt_addrs, data[:end]


def _locate_error(sec: Section, p: _Parser, values, predefined, own, err) -> AsmError:
    """Find the statement keystone choked on by assembling them one at a time."""
    placeholder = {lab: values.get(lab, sec.base) for lab in own}
    known = set(values) | set(predefined) | own
    consts = [st.text for st in sec.stmts if st.kind == "const"]
    for st in sec.stmts:
        if st.kind in ("empty", "const"):
            continue
        toks = set(_IDENT.findall(st.text))
        text = substitute_constants(st.text.replace("@SELF@", "0"), predefined)
        equs = [f".equ {t}, {placeholder[t]:#x}" for t in toks if t in placeholder]
        equs += _foreign_equs(text, own, values)
        try:
            _ks_asm("\n".join(equs + [substitute_constants(c, predefined) for c in consts] + [text]),
                    sec.base)
        except keystone.KsError as e:
            unknown = sorted(t for t in toks - known - _REGS - _KEYWORDS
                             if not t.startswith(".") and not _is_mnemonic(st.text, t))
            if unknown and e.errno == keystone.KS_ERR_ASM_SYMBOL_MISSING:
                return AsmError(f"{st.file}:{st.line}: unknown symbol {unknown[0]!r}: {st.text}")
            return AsmError(f"{st.file}:{st.line}: {_ks_message(e)}: {st.text}")
    first = next((st for st in sec.stmts if st.kind != "empty"), None)
    where = f"{first.file}" if first else sec.name
    return AsmError(f"{where}: {_ks_message(err)} in section {sec.name}")


def _is_mnemonic(text: str, tok: str) -> bool:
    return text.split()[0] == tok if text.split() else False


# --- verification ---------------------------------------------------------------------
_BRANCH_GROUPS = (capstone.x86_const.X86_GRP_JUMP, capstone.x86_const.X86_GRP_CALL)


def _verify(sections: dict[str, Section], addrs: dict[str, list[int]], symbols: dict[str, int]):
    """Per-statement line table; reject keystone's silent mis-encodings."""
    cs = _capstone()
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
        if node.id in _REGS:
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
