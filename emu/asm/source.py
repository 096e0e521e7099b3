"""Reading sources: comments, includes, sections, macros and the project's
directives, into statements (see the package docstring for the syntax)."""

from __future__ import annotations

import hashlib

import os
import re

from emu.asm.expr import parse_expr
from emu.asm.image import Stmt
from emu.asm.syntax import (REGISTERS, DataSyntax, SyntaxProblem, non_ascii_problem, parse_const, parse_data,
                            parse_insn)
from emu.errors import AsmError

IDENT = re.compile(r"[A-Za-z_.$][\w.$@]*")
LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$@]*)\s*:(?!:)")
DATA_DIRECTIVES = {".byte", ".word", ".short", ".value", ".long", ".int", ".quad", ".ascii",
                    ".asciz", ".string", ".zero", ".space", ".skip", ".fill", ".align", ".balign",
                    ".p2align"}
#: declarations about the next instruction (docs/architecture.md, "The stub contract")
SITE_DIRECTIVES = {".cr0_write", ".cr3_write", ".cr4_write", ".invlpg", ".hook"}
IGNORED_DIRECTIVES = {".globl", ".global", ".type", ".size", ".intel_syntax", ".code64", ".file"}
SECTION_ALIASES = {".text": ".text", ".data": ".data", ".rodata": ".rodata", ".bss": ".bss"}
KEYWORDS = {"byte", "word", "dword", "qword", "xmmword", "ymmword", "tbyte", "ptr", "offset", "rip",
             "short", "near", "far", "rel", "abs"}


SYM_PREFIX = "__isoemu_s"


_COMMENT = re.compile(r"[;#]|//")
_SPECIAL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\"']")


_MANGLED = re.compile(r"(?<![\w.$])\.L\d+_")


def demangle(text: str) -> str:
    """A statement as written: file-local labels lose the file number the
    reader gave them (``.L3_loop`` is ``.Lloop`` in the source)."""
    return _MANGLED.sub(".L", text) if ".L" in text else text


def strip_comment(line: str) -> str:
    """Drop ``;``, ``#`` and ``//`` comments outside string literals."""
    if '"' not in line and "'" not in line:
        m = _COMMENT.search(line)
        return (line[:m.start()] if m else line).rstrip()
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


def literal_problem(s: str) -> str | None:
    """Why keystone cannot be handed this statement (it hangs on an
    unterminated string and mis-assembles control characters), or None."""
    if not _SPECIAL.search(s):
        return None
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


class SourceParser:
    def __init__(self, include_dirs: list[str]):
        self.include_dirs = include_dirs
        self.macros: dict[str, tuple] = {}   # name -> (file, line, [(param, default)], body lines)
        self._counter = 0
        self.stmts: list[Stmt] = []
        self.extable: list[tuple[str, int, str, str, int]] = []
        self.alternatives: list[tuple[str, int, str, int]] = []   # (file, line, feature, stmt)
        # declared sites: (file, line, kind, args, index of the instruction's statement)
        self.sites: list[tuple[str, int, str, list[str], int]] = []
        self.pending_site: tuple | None = None
        self.hook_names: dict[str, tuple[str, int]] = {}
        self._file_ids: dict[str, int] = {}
        self.included: dict[str, str] = {}      # every .include'd file: path -> sha256 (the image cache)

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
            if not raw.isascii():
                bad = non_ascii_problem(raw)
                if bad:
                    raise AsmError(f"{name}:{lineno}: {bad}: {raw.strip()}")
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
                    bad = non_ascii_problem(b) if not b.isascii() else None
                    if bad:
                        raise AsmError(f"{name}:{i}: {bad}: {b.strip()}")
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
                    text = f.read()
                self.included[path] = hashlib.sha256(text.encode()).hexdigest()
                section = self.parse(path, text, section, depth + 1)
                continue
            if word == ".section":
                parts = s.split()
                if len(parts) < 2:
                    raise AsmError(f"{name}:{lineno}: .section needs a name")
                section = parts[1].rstrip(",")
                continue
            if word in SECTION_ALIASES:
                section = SECTION_ALIASES[word]
                continue
            if word in IGNORED_DIRECTIVES:
                continue
            if word in (".extable", ".alternative") or word in SITE_DIRECTIVES:
                self._directive_or_statement(s, name, lineno, section, 0)
                continue
            self._statement(s, name, lineno, section, 0)
        return section

    def _statement(self, s: str, name: str, lineno: int, section: str, depth: int) -> None:
        labels = []
        while True:
            m = LABEL.match(s)
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
        bad = literal_problem(s)
        if bad:
            # keystone 0.9.2 never returns on an unterminated string literal
            shown = re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", s)
            raise AsmError(f"{name}:{lineno}: {bad}: {shown}")
        kind = self._kind(s, name, lineno)
        syntax = self._syntax(kind, s, name, lineno)
        if self.pending_site is not None and kind != "empty":
            f, ln, word, args = self.pending_site
            if kind != "insn":
                raise AsmError(f"{f}:{ln}: {word} must be followed by an instruction, not: {s}")
            self.sites.append((f, ln, word[1:], args, len(self.stmts)))
            self.pending_site = None
        self.stmts.append(Stmt(name, lineno, s, labels, kind, section, syntax=syntax))

    @staticmethod
    def _syntax(kind: str, s: str, name: str, lineno: int):
        """The statement read strictly (emu/asm/syntax.py), or an AsmError."""
        try:
            if kind == "insn":
                return parse_insn(s)
            if kind == "data":
                return parse_data(s)
            if kind == "const":
                return parse_const(s)
        except SyntaxProblem as e:
            raise AsmError(f"{name}:{lineno}: {e}: {s}") from None
        return None

    def finish(self) -> None:
        """After the last source: a declaration with nothing after it is an error."""
        if self.pending_site is not None:
            f, ln, word, _ = self.pending_site
            raise AsmError(f"{f}:{ln}: {word} at the end of the source: it declares the next instruction")

    def _directive_or_statement(self, s: str, name: str, lineno: int, section: str, depth: int) -> None:
        s = s.strip()
        if not s:
            return
        word = s.split()[0].lower()
        if word == ".extable":
            self._extable(s, name, lineno)
        elif word == ".alternative":
            self._alternative(s, name, lineno, section)
        elif word in SITE_DIRECTIVES:
            self._site(word, s, name, lineno)
        else:
            self._statement(s, name, lineno, section, depth)

    def _site(self, word: str, s: str, name: str, lineno: int) -> None:
        """``.cr3_write [noflush]``, ``.cr0_write``, ``.cr4_write``, ``.invlpg``, ``.hook NAME``:
        a declaration about the next instruction (docs/architecture.md, "The
        stub contract")."""
        if self.pending_site is not None:
            f, ln, w, _ = self.pending_site
            raise AsmError(f"{name}:{lineno}: {word} follows {w} at {f}:{ln} with no instruction between")
        args = s[len(word):].replace(",", " ").split()
        kind = word[1:]
        if kind == "cr3_write":
            if args not in ([], ["noflush"]):
                raise AsmError(f"{name}:{lineno}: use .cr3_write or .cr3_write noflush: {s}")
        elif kind == "hook":
            if len(args) != 1 or not re.fullmatch(r"[A-Za-z_][\w]*", args[0]):
                raise AsmError(f"{name}:{lineno}: use .hook NAME (letters, digits and _): {s}")
            if args[0] in self.hook_names:
                f, ln = self.hook_names[args[0]]
                raise AsmError(f"{name}:{lineno}: hook {args[0]!r} is already declared at {f}:{ln}")
            self.hook_names[args[0]] = (name, lineno)
        elif args:
            raise AsmError(f"{name}:{lineno}: {word} takes no arguments: {s}")
        self.pending_site = (name, lineno, word, args)

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
        try:
            target = parse_expr(f"{args[1]} - @SELF@ - 5", REGISTERS)
        except Exception:
            raise AsmError(f"{name}:{lineno}: .alternative TARGET must be a label: {s}") from None
        # e9 rel32, computed from the statement's own address (@SELF@)
        self.alternatives.append((name, lineno, args[0], len(self.stmts)))
        data = DataSyntax(".alternative", [("int", 1, ("num", 0xE9)), ("int", 4, target)])
        self.stmts.append(Stmt(name, lineno, s, [], "data", section, syntax=data))

    def _kind(self, s: str, name: str, lineno: int) -> str:
        if not s:
            return "empty"
        w = s.split()[0].lower().rstrip(",")
        if w.startswith("."):
            if w in DATA_DIRECTIVES:
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
