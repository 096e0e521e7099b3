"""The one reader of numbers, addresses, counts and sizes (README: "Numbers").

One rule everywhere, for the command line, the debugger's REPL and the asm
test headers:

* **Addresses and CR3 values are hexadecimal**, with or without ``0x``:
  ``400000`` is 0x400000.  In an address expression every number is
  hexadecimal, offsets included (``USER_DATA + 10`` is 0x600010).
* **Everything else is decimal** (counts, register values, exit statuses,
  vectors), or hexadecimal with ``0x``.  Counts take the SI suffixes
  ``k``/``M``/``G`` (``--budget 10M`` is 10,000,000 instructions); sizes of
  memory the binary ``K``/``M``/``G``/``T`` (``--ram 4G`` is 4 GiB).
* A word that is both a symbol and a hexadecimal number (the label ``bad``,
  the number 0xbad) is the symbol; the reader says so in a note, and
  ``0xbad`` always means the number.

Every refusal is one line naming what was expected and, for numbers out of
range, the range.
"""

from __future__ import annotations

import re
from typing import Callable

from emu.errors import AddressError, ConfigError

MASK64 = (1 << 64) - 1
_HEX = re.compile(r"(?:0[xX])?([0-9a-fA-F]+)")
_DEC_OR_HEX = re.compile(r"(-?)(?:0[xX]([0-9a-fA-F]+)|([0-9]+))")
_COUNT = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kKmMgG]?)")
_SIZE = re.compile(r"(?:0[xX]([0-9a-fA-F]+)|([0-9]+))\s*([kKmMgGtT]?)(?:i?[bB])?")
_GROUPED = re.compile(r"(?:0[xX])?[0-9a-fA-F]+(?:_[0-9a-fA-F]+)+")    # ffff_ffff_8100_0000
_TERM = re.compile(r"[A-Za-z_.$][\w.$@]*(?::[A-Za-z_.$][\w.$@]*)?|\$\w+|(?:0[xX])?[0-9a-fA-F]+(?:_[0-9a-fA-F]+)*")
SI = {"": 1, "k": 10 ** 3, "m": 10 ** 6, "g": 10 ** 9}
BINARY = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}

Resolver = Callable[[str], "int | None"]


def _clean(text) -> str:
    """A number's text without surrounding blanks and ``_`` digit separators."""
    if not isinstance(text, str):
        raise ConfigError(f"expected text, not {type(text).__name__}")
    return text.strip().replace("_", "")


def _range_error(cls, what: str, text: str, lo: int, hi: int, hexa: bool) -> Exception:
    f = (lambda v: f"{v:#x}") if hexa else (lambda v: f"{v:,}")
    return cls(f"{what} {text!r} is out of range ({f(lo)} .. {f(hi)})")


def parse_hex(text: str, what: str = "address", *, lo: int = 0, hi: int = MASK64) -> int:
    """A hexadecimal number, ``0x`` optional: ``ffffffff81000000``, ``0x1000``."""
    t = _clean(text)
    neg = t.startswith("-")
    m = _HEX.fullmatch(t.lstrip("-"))
    if not m:
        raise AddressError(f"bad {what} {text!r}: expected a hexadecimal number like 0xffffffff81000000")
    v = int(m.group(1), 16) * (-1 if neg else 1)
    if not lo <= v <= hi:
        raise _range_error(AddressError, what, text.strip(), lo, hi, True)
    return v


def parse_int(text: str, what: str = "value", *, lo: int = -(1 << 63), hi: int = MASK64) -> int:
    """Decimal (``-22``, ``4096``) or hexadecimal with ``0x`` (``0x1000``)."""
    t = _clean(text)
    m = _DEC_OR_HEX.fullmatch(t)
    if not m:
        raise ConfigError(f"bad {what} {text!r}: expected a decimal number, or hexadecimal with 0x")
    v = int(m.group(2), 16) if m.group(2) is not None else int(m.group(3), 10)
    if m.group(1):
        v = -v
    if not lo <= v <= hi:
        raise _range_error(ConfigError, what, text.strip(), lo, hi, bool(m.group(2)))
    return v


def parse_count(text: str, what: str = "count", *, lo: int = 1, hi: int = 1 << 62) -> int:
    """A decimal count with an optional SI suffix: ``2000``, ``10k``, ``10M``, ``3G``."""
    if isinstance(text, int):
        v = text
    else:
        t = text.strip().replace("_", "").replace(",", "")
        m = _COUNT.fullmatch(t)
        if not m:
            if t.startswith("-") and _COUNT.fullmatch(t[1:]):      # a number, only out of range
                raise _range_error(ConfigError, what, text.strip(), lo, hi, False)
            raise ConfigError(f"bad {what} {text!r}: expected a decimal number such as 2000000 or 10M")
        v = float(m.group(1)) * SI[m.group(2).lower()]
        if v != int(v):
            raise ConfigError(f"bad {what} {text!r}: not a whole number")
        v = int(v)
    if not lo <= v <= hi:
        raise _range_error(ConfigError, what, str(text).strip(), lo, hi, False)
    return v


def parse_size(text: str, what: str = "size", *, lo: int = 0, hi: int = 1 << 62) -> int:
    """Bytes with an optional binary suffix: ``256M``, ``4G``, ``4GiB``, ``0x1000``, ``1048576``."""
    t = _clean(text) if isinstance(text, str) else None
    m = _SIZE.fullmatch(t) if t is not None else None
    if not m:
        raise ConfigError(f"bad {what} {text!r}: use e.g. 256M, 4G or a byte count")
    v = int(m.group(1), 16) if m.group(1) is not None else int(m.group(2), 10)
    v *= BINARY[m.group(3).lower()]
    if not lo <= v <= hi:
        f = lambda x: _fmt_size(x)  # noqa: E731
        raise ConfigError(f"{what} {text.strip()!r} is out of range ({f(lo)} .. {f(hi)})")
    return v


def _fmt_size(v: int) -> str:
    for unit, sh in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if v >= 1 << sh and v % (1 << sh) == 0:
            return f"{v >> sh}{unit}"
    return str(v)


def parse_address(text: str, what: str = "address", resolve: Resolver | None = None,
                  notes: list[str] | None = None) -> int:
    """An address expression: terms joined by ``+`` and ``-``.

    A term is a hexadecimal number (``0x`` optional) or, with ``resolve``, a
    name that ``resolve(name)`` turns into a value (a kernel symbol, a
    program label ``A:_start``, a layout name such as ``USER_DATA``, a
    register ``$rsp``...); ``resolve`` returns None for an unknown name.  A
    term that is both is the name, and a note saying so is appended to
    ``notes``.  The result is taken modulo 2**64 (``KERNEL_TEXT - 8`` wraps
    as the CPU would); a number alone must fit in 64 bits.
    """
    if not isinstance(text, str) or not text.strip():
        raise AddressError(f"bad {what} {text!r}: empty")
    s = text.strip()
    pos = 0
    total = 0
    sign = 1
    expect_term = True
    terms = 0
    while pos < len(s):
        if s[pos].isspace():
            pos += 1
            continue
        if expect_term:
            if s[pos] in "+-" and terms == 0 and s[pos] == "-":
                raise AddressError(f"bad {what} {text!r}: an address cannot be negative")
            m = _TERM.match(s, pos)
            if not m or (m.end() < len(s) and (s[m.end()].isalnum() or s[m.end()] in "_.$:")):
                bad = s[pos:].split()[0] if s[pos:].split() else s[pos:]
                raise AddressError(f"bad {what} {text!r}: {bad!r} is not a hexadecimal number or a name")
            total += sign * _term(m.group(0), what, text, resolve, notes)
            terms += 1
            pos = m.end()
            expect_term = False
        else:
            if s[pos] not in "+-":
                raise AddressError(f"bad {what} {text!r}: expected + or - after {s[:pos].strip()!r}")
            sign = 1 if s[pos] == "+" else -1
            pos += 1
            expect_term = True
    if expect_term:
        raise AddressError(f"bad {what} {text!r}: it ends with an operator")
    if terms == 1 and not 0 <= total <= MASK64:
        raise _range_error(AddressError, what, s, 0, MASK64, True)
    return total & MASK64


def _term(tok: str, what: str, text: str, resolve: Resolver | None, notes: list[str] | None) -> int:
    is_number = bool(_HEX.fullmatch(tok) or _GROUPED.fullmatch(tok))
    value = None
    if resolve is not None and not tok.lower().startswith("0x"):
        value = resolve(tok)
    if value is not None:
        if is_number and notes is not None:
            notes.append(f"{tok!r} is read as the name {tok} ({value & MASK64:#x}); "
                         f"write 0x{tok} for the number")
        return value
    if is_number:
        return int(tok.lower().removeprefix("0x").replace("_", ""), 16)
    if tok.startswith("$"):
        raise AddressError(f"bad {what} {text!r}: unknown register {tok!r}")
    if resolve is None:
        raise AddressError(f"bad {what} {text!r}: expected a hexadecimal number like 0xffffffff81000000")
    raise AddressError(f"bad {what} {text!r}: unknown name {tok!r}")


def parse_range(text: str, what: str = "range", resolve: Resolver | None = None,
                notes: list[str] | None = None) -> tuple[int, int]:
    """``LO-HI`` or ``LO..HI``: the half-open range [LO, HI) of addresses.
    Use ``..`` when an end is an expression with ``-``."""
    s = text.strip()
    if ".." in s:
        lo_t, _, hi_t = s.partition("..")
    elif s.count("-") == 1:
        lo_t, _, hi_t = s.partition("-")
    else:
        raise AddressError(f"bad {what} {text!r}: use LO-HI (e.g. 600000-601000), or LO..HI when an "
                           f"end is an expression")
    lo = parse_address(lo_t, f"{what} start", resolve, notes)
    hi = parse_address(hi_t, f"{what} end", resolve, notes)
    if hi <= lo:
        raise AddressError(f"bad {what} {text!r}: the end {hi:#x} is not above the start {lo:#x}")
    return lo, hi
