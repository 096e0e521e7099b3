"""The tree visitor: every entry of a page-table tree, in address order.

One walk of the structure for everyone who needs more than one
translation: the leaves of a page-table object, ptdump, the lints, the TLB
model.  It handles the geometry (from :mod:`emu.hw.paging.modes`), address
ranges, sign extension, effective permissions (U/S and R/W ANDed down the
levels, XD ORed; SDM Vol. 3A 4.6.1), and malformed tables: a table outside
memory or a loop (a table that is its own ancestor) raises
:class:`~emu.errors.TableError`, or goes to :meth:`TableVisitor.broken` when
a subclass wants to carry on past it.

Subclasses override the hooks they need; the others cost nothing per entry.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Iterator

from emu.errors import TableError
from emu.hw.paging.bits import ADDR_MASK, G, NX, P, PAGE_SIZE, RW, US
from emu.hw.paging.modes import Level, PagingMode, mode_for
from emu.hw.phys import PhysView

FULL_RANGE = ((0, 1 << 64),)


class TableVisitor:
    """Walk the tree rooted at ``root``; override :meth:`leaf`,
    :meth:`nonpresent`, :meth:`hole` (with ``holes = True``), :meth:`table`."""

    holes = False           # call hole() for every zero entry

    def __init__(self, mem: PhysView, root: int, mode: PagingMode | int):
        self.mem = mem
        self.root = root & ADDR_MASK
        self.mode = mode if isinstance(mode, PagingMode) else mode_for(mode)

    # -- hooks ------------------------------------------------------------------------
    def leaf(self, va: int, level: Level, entry: int, entry_pa: int, eff: int, nx: bool) -> None:
        """A present entry that maps a page; ``eff`` is US|RW after ANDing it."""

    def nonpresent(self, va: int, level: Level, entry: int, entry_pa: int, eff: int, nx: bool) -> None:
        """A non-zero entry with P clear (it maps nothing; its bits may still
        matter); ``eff``/``nx`` combine its bits with the levels above, as for
        a present entry."""

    def hole(self, va: int, level: Level) -> None:
        """A zero entry (only when ``holes`` is set)."""

    def table(self, va: int, level: Level, entry: int, entry_pa: int, eff: int, nx: bool) -> bool:
        """A present entry pointing at a table; return False to skip that subtree."""
        return True

    def broken(self, error: TableError) -> None:
        """A table outside memory or a loop: raise (the default) or return to skip it."""
        raise error

    # -- the walk ---------------------------------------------------------------------
    def walk(self, ranges=FULL_RANGE) -> None:
        """Visit the entries covering each canonical range [lo, hi), in order."""
        mode = self.mode
        mask = (1 << mode.va_bits) - 1
        for lo, hi in ranges:
            if hi <= lo:
                continue
            self._table(self.root, 0, 0, lo & mask, ((hi - 1) & mask) + 1, US | RW, 0, (self.root,))

    def walk_entry(self, depth: int, va: int, entry: int, entry_pa: int, eff: int = US | RW, nx: bool = False) -> None:
        """Visit one entry as if reached at ``depth`` (0 = top) for ``va``
        with the permissions ``eff``/``nx`` of the levels above: what a
        sub-tree maps, without walking from a root."""
        mode = self.mode
        level = mode.levels[depth]
        strip = mode.strip(va)
        if not entry:
            if self.holes:
                self.hole(va, level)
            return
        e_eff = eff & entry
        e_nx = (NX if nx else 0) | (entry & NX)
        if not entry & P:
            self.nonpresent(va, level, entry, entry_pa, e_eff, bool(e_nx))
        elif mode.is_leaf(level, entry):
            self.leaf(va, level, entry, entry_pa, e_eff, bool(e_nx))
        elif self.table(va, level, entry, entry_pa, e_eff, bool(e_nx)):
            child = entry & ADDR_MASK
            self._table(child, depth + 1, strip, strip, strip + level.size, e_eff, e_nx, (child,))

    def _entries(self, t: int, depth: int, base: int):
        mem = self.mem
        if not mem.contains(t, PAGE_SIZE):
            self.broken(TableError(f"{self.mode.levels[depth].name} table at {t:#x} (for "
                                   f"{self.mode.sign_extend(base):#x}) is outside {mem.name} "
                                   f"(size {mem.size:#x})"))
            return None
        return array("Q", mem.buf[t:t + PAGE_SIZE])

    def _table(self, t: int, depth: int, base: int, lo: int, hi: int, eff: int, nx: int, path: tuple) -> None:
        ents = self._entries(t, depth, base)
        if ents is None:
            return
        mode = self.mode
        level = mode.levels[depth]
        shift = level.shift
        span = 1 << shift
        first = max(0, (lo - base) >> shift)
        last = min(512, (hi - base + span - 1) >> shift)
        holes = self.holes
        pte = level.is_pte
        may_leaf = level.leaf_ok
        sign = 1 << (mode.va_bits - 1)
        ext = (-1 << mode.va_bits) & 0xFFFFFFFFFFFFFFFF
        for i in range(first, last):
            e = ents[i]
            v = base + i * span
            if not e:
                if holes:
                    self.hole(v | ext if v & sign else v, level)
                continue
            va = v | ext if v & sign else v
            e_eff = eff & e
            e_nx = nx | (e & NX)
            if not e & P:
                self.nonpresent(va, level, e, t + 8 * i, e_eff, bool(e_nx))
                continue
            if pte or (may_leaf and e & 0x80):
                self.leaf(va, level, e, t + 8 * i, e_eff, bool(e_nx))
                continue
            if not self.table(va, level, e, t + 8 * i, e_eff, bool(e_nx)):
                continue
            child = e & ADDR_MASK
            if child in path:
                self.broken(TableError(f"loop in page tables: the {level.name} entry at {t + 8 * i:#x} "
                                       f"(for {va:#x}) points back to the table at {child:#x}"))
                continue
            self._table(child, depth + 1, v, max(lo, v), min(hi, v + span), e_eff, e_nx, path + (child,))


# --- the leaves of a tree ---------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    """A leaf mapping as seen from the root: effective permissions included."""

    va: int
    size: int
    pa: int
    level: str
    entry: int
    entry_pa: int
    user: bool
    writable: bool
    nx: bool

    @property
    def present(self) -> bool:
        return bool(self.entry & P)

    @property
    def global_(self) -> bool:
        return bool(self.entry & G)

    def __repr__(self):
        return (f"Leaf(va={self.va:#x}, size={self.size:#x}, pa={self.pa:#x}, level={self.level!r}, "
                f"entry={self.entry:#x}, entry_pa={self.entry_pa:#x}, user={self.user}, "
                f"writable={self.writable}, nx={self.nx})")


class _Leaves(TableVisitor):
    def __init__(self, mem, root, mode, nonpresent: bool):
        super().__init__(mem, root, mode)
        self.out: list[Leaf] = []
        self.want_nonpresent = nonpresent

    def leaf(self, va, level, entry, entry_pa, eff, nx):
        span = level.size
        self.out.append(Leaf(va, span, entry & ADDR_MASK & ~(span - 1), level.name, entry, entry_pa,
                             bool(eff & US), bool(eff & RW), nx))

    def nonpresent(self, va, level, entry, entry_pa, eff, nx):
        if self.want_nonpresent:
            self.out.append(Leaf(va, level.size, entry & ADDR_MASK, level.name, entry, entry_pa,
                                 False, False, False))


def iter_leaves(mem: PhysView, root: int, levels: int | PagingMode = 4, lo: int = 0, hi: int = 1 << 64,
                nonpresent: bool = False) -> Iterator[Leaf]:
    """Every leaf (and with ``nonpresent``, every non-zero non-present entry)
    reachable from ``root`` overlapping [lo, hi), in address order, with
    effective U/S, R/W and XD.  Raises TableError for malformed tables."""
    v = _Leaves(mem, root, levels, nonpresent)
    v.walk(((lo, hi),))
    return iter(v.out)
