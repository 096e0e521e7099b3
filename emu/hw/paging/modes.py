"""Paging modes as data (Intel SDM Vol. 3A 4.5: 4-level and 5-level paging).

A mode is its levels, top first, each with Linux's name, the address bit
its index starts at, whether an entry there may map a page (PS=1 in a
PDPTE or PDE; always in a PTE) and whether PS is reserved (PML4E, PML5E);
and the width of linear addresses.  The walker, the tree visitor, the
page-table object, ptdump, the lints and the tools take the geometry from
here and nowhere else.  MAXPHYADDR is a parameter of the control state, not
of the mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.errors import MappingError

MASK64 = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Level:
    name: str          # pgd, p4d, pud, pmd, pte (Linux's names; p4d only with 5 levels)
    shift: int         # the linear-address bit this level's 9-bit index starts at
    leaf_ok: bool      # an entry may map a page here (PS=1 above the PTE level)
    ps_reserved: bool  # PS is a reserved bit here (PML5E, PML4E)

    @property
    def size(self) -> int:
        """Bytes one entry of this level spans."""
        return 1 << self.shift

    @property
    def is_pte(self) -> bool:
        return self.shift == 12


@dataclass(frozen=True)
class PagingMode:
    name: str
    levels: tuple[Level, ...]    # top first
    va_bits: int                 # 48 or 57

    @property
    def depth(self) -> int:
        return len(self.levels)

    @property
    def top(self) -> Level:
        return self.levels[0]

    @property
    def top_shift(self) -> int:
        return self.levels[0].shift

    @property
    def lower_half_end(self) -> int:
        """The first address above the canonical lower half (the user half)."""
        return 1 << (self.va_bits - 1)

    def level(self, name: str) -> Level:
        for lv in self.levels:
            if lv.name == name:
                return lv
        raise MappingError(f"unknown level {name!r}: use one of {', '.join(lv.name for lv in self.levels)}")

    def by_shift(self, shift: int) -> Level:
        for lv in self.levels:
            if lv.shift == shift:
                return lv
        raise MappingError(f"no level of {self.name} paging starts at bit {shift}")

    def index(self, va: int, level: Level) -> int:
        return (va >> level.shift) & 511

    def canonical(self, va: int) -> bool:
        top = (va & MASK64) >> (self.va_bits - 1)
        return top == 0 or top == (1 << (65 - self.va_bits)) - 1

    def sign_extend(self, va: int) -> int:
        """The canonical form of an index-space address (bits above the VA width filled)."""
        if va & (1 << (self.va_bits - 1)):
            va |= (-1 << self.va_bits) & MASK64
        return va

    def strip(self, va: int) -> int:
        """A canonical address as a plain index-space number (the sign extension dropped)."""
        return va & ((1 << self.va_bits) - 1)

    def is_leaf(self, level: Level, entry: int) -> bool:
        """Does a present entry at ``level`` map a page (rather than point at a table)?"""
        return level.is_pte or (level.leaf_ok and bool(entry & 0x80))


def _mode(name: str, names: list[str], va_bits: int) -> PagingMode:
    top = 12 + 9 * (len(names) - 1)
    levels = []
    for i, n in enumerate(names):
        shift = top - 9 * i
        levels.append(Level(n, shift, leaf_ok=shift in (12, 21, 30), ps_reserved=shift >= 39))
    return PagingMode(name, tuple(levels), va_bits)


FOUR_LEVEL = _mode("4-level", ["pgd", "pud", "pmd", "pte"], 48)
FIVE_LEVEL = _mode("5-level", ["pgd", "p4d", "pud", "pmd", "pte"], 57)
MODES = {4: FOUR_LEVEL, 5: FIVE_LEVEL}


def mode_for(levels: int | bool) -> PagingMode:
    """The mode of ``levels`` (4 or 5), or of a CR4.LA57 flag given as a bool."""
    if isinstance(levels, bool):
        return FIVE_LEVEL if levels else FOUR_LEVEL
    if levels not in MODES:
        raise MappingError(f"paging levels must be 4 or 5, not {levels}")
    return MODES[levels]


def level_names(levels: int) -> list[str]:
    """Names from the top: Linux's pgd/p4d/pud/pmd/pte (p4d folded at 4 levels)."""
    return [lv.name for lv in mode_for(levels).levels]
