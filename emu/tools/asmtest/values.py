"""Values in expectations: numbers, names and ``+``/``-`` expressions.

A value is terms joined by ``+`` and ``-``, with an optional leading ``-``:
``14``, ``0x600000``, ``-EFAULT``, ``USER_DATA+8``, ``128+SIGSEGV``.  A
number follows the number rule of emu/parse.py: decimal,
or hexadecimal with ``0x`` (``010`` is ten); ``_`` may group digits.  A name
is a predefined symbol of the program (emu.linux.program.user_symbols) or a
label of its own process.  Blanks are not allowed inside a value (a header
separates its words with blanks).

Register checks, as written after a label:

    REG=VALUE       REG!=VALUE      REG=LO..HI      REG!=LO..HI
    REG&MASK=VALUE  ... (a mask on any of them)

``LO..HI`` holds for LO <= value < HI (HI excluded).  A range whose LO is
negative compares the register as a signed 64-bit number, otherwise as an
unsigned one.  A masked check compares ``REG & MASK``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from emu.errors import ConfigError
from emu.hw.x86 import USER_REGISTERS
from emu.parse import parse_int

MASK64 = (1 << 64) - 1
_TERM = re.compile(r"(0[xX][0-9a-fA-F_]+|[0-9][0-9A-Za-z_]*|[A-Za-z_.$][\w.$@]*)")
_CHECK = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:&([^=!]+))?(!=|=)(.*)")

Resolver = Callable[[str], "int | None"]


class BadValue(ValueError):
    """A value that cannot be read, or whose names cannot be resolved."""


def fmt_value(v: int) -> str:
    """Errno-like and small values in decimal, addresses and masks in hex."""
    return str(v) if -4096 < v < 256 else hex(v & MASK64)


def signed(v: int) -> int:
    v &= MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass(frozen=True)
class Expr:
    """``-EFAULT+0``: (sign, term) pairs; a term is an int or a name."""

    text: str
    terms: tuple[tuple[int, int | str], ...]

    @property
    def names(self) -> list[str]:
        return [t for _, t in self.terms if isinstance(t, str)]

    def canonical(self, hexa: bool = False) -> str:
        """A number in canonical form (``0xe`` is ``14``; hex with ``hexa``);
        an expression with names as written."""
        if self.names:
            return self.text
        v = self.value(lambda n: None)
        return hex(v & MASK64) if hexa else fmt_value(v)

    def value(self, resolve: Resolver) -> int:
        """The value; BadValue naming an unknown name."""
        total = 0
        for sign, t in self.terms:
            if isinstance(t, str):
                v = resolve(t)
                if v is None:
                    raise BadValue(f"unknown name {t!r}")
                t = v
            total += sign * t
        return total


def parse_expr(text: str, what: str) -> Expr:
    """``what`` names the value in messages (``rax=...``)."""
    s = text
    if not s:
        raise BadValue(f"{what}: a value is missing")
    pos = 0
    sign = 1
    terms = []
    if s.startswith("-"):
        sign, pos = -1, 1
    while True:
        m = _TERM.match(s, pos)
        if not m:
            if pos == len(s):
                raise BadValue(f"{what}: a term is missing at the end")
            raise BadValue(f"{what}: expected a number or a name at {s[pos:]!r}")
        tok = m.group(0)
        if tok[0].isdigit():
            try:
                value: int | str = parse_int(tok, "number", lo=0, hi=1 << 128)
            except ConfigError:
                raise BadValue(f"{what}: {tok!r} is not a number (decimal, or hexadecimal with 0x)") \
                    from None
        else:
            value = tok
        terms.append((sign, value))
        pos = m.end()
        if pos == len(s):
            return Expr(text, tuple(terms))
        if s[pos] not in "+-":
            raise BadValue(f"{what}: unexpected {s[pos:]!r} (a value is terms joined by + and -)")
        sign = 1 if s[pos] == "+" else -1
        pos += 1


@dataclass(frozen=True)
class RegCheck:
    """One ``REG[&MASK](=|!=)VALUE-or-LO..HI``."""

    reg: str
    mask: Expr | None
    negate: bool
    lo: Expr
    hi: Expr | None            # a range LO..HI

    def describe(self) -> str:
        mask = "" if self.mask is None else "&" + self.mask.canonical(hexa=True)
        val = self.lo.canonical() + ("" if self.hi is None else ".." + self.hi.canonical())
        return f"{self.reg}{mask}{'!=' if self.negate else '='}{val}"

    @property
    def names(self) -> list[str]:
        return [n for e in (self.mask, self.lo, self.hi) if e is not None for n in e.names]

    def resolve(self, resolve: Resolver) -> "Resolved":
        """The check with numbers; BadValue for values that cannot hold."""
        w = self.describe()
        try:
            mask = MASK64 if self.mask is None else self.mask.value(resolve)
            lo = self.lo.value(resolve)
            hi = None if self.hi is None else self.hi.value(resolve)
        except BadValue as e:
            raise BadValue(f"{w}: {e}") from None
        if self.mask is not None and not 0 < mask <= MASK64:
            raise BadValue(f"{w}: the mask {fmt_value(mask)} is not a 64-bit mask")
        for v in (lo, hi):
            if v is not None and not -(1 << 63) <= v <= MASK64:
                raise BadValue(f"{w}: {v} does not fit in 64 bits")
        if hi is None:
            if lo & MASK64 & ~mask:
                raise BadValue(f"{w}: {fmt_value(lo)} has bits outside the mask {mask:#x}, so this "
                                  f"can never hold")
        elif (signed(hi) if lo < 0 else hi) <= lo:
            raise BadValue(f"{w}: the end {fmt_value(hi)} is not above the start {fmt_value(lo)}")
        return Resolved(self, mask, lo, hi, self._shown(lo, hi))

    def _shown(self, lo: int, hi: int | None) -> str:
        """The check as written, with its value when names are involved."""
        w = self.describe()
        if not self.names:
            return w
        val = fmt_value(lo) + ("" if hi is None else ".." + fmt_value(hi))
        return f"{w} ({val})"


@dataclass(frozen=True)
class Resolved:
    check: RegCheck
    mask: int
    lo: int
    hi: int | None
    shown: str

    def holds(self, value: int) -> bool:
        x = value & self.mask
        if self.hi is None:
            ok = x == self.lo & MASK64
        else:
            v = signed(x) if self.lo < 0 else x
            ok = self.lo <= v < (signed(self.hi) if self.lo < 0 else self.hi)
        return ok != self.check.negate


def parse_check(word: str) -> RegCheck:
    """One register check; BadValue with the reason."""
    m = _CHECK.fullmatch(word)
    if not m:
        raise BadValue(f"{word!r} is not REG=VALUE")
    reg = m.group(1).lower()
    if reg not in USER_REGISTERS:
        raise BadValue(f"unknown register {reg!r} (use {', '.join(USER_REGISTERS)})")
    mask = None
    if m.group(2) is not None:
        mask = parse_expr(m.group(2), f"{reg}&{m.group(2)}")
    text = m.group(4)
    what = f"{reg}{m.group(3)}{text}" if mask is None else word.lower()
    if ".." in text:
        lo_t, _, hi_t = text.partition("..")
        lo, hi = parse_expr(lo_t, what), parse_expr(hi_t, what)
    else:
        lo, hi = parse_expr(text, what), None
    for e in (lo, hi, mask):
        if e is not None and not e.names:
            v = e.value(lambda n: None)
            if not -(1 << 63) <= v <= MASK64:
                raise BadValue(f"{what}: does not fit in 64 bits")
    return RegCheck(reg, mask, m.group(3) == "!=", lo, hi)
