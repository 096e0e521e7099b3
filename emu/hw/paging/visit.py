"""The tree visitor: every entry of a page-table tree, in address order.

One walk of the structure for everyone who needs more than one
translation: the leaves of a page-table object, ptdump, the lints, the TLB
model.  It handles the geometry (from :mod:`emu.hw.paging.modes`), address
ranges, sign extension, effective permissions (U/S and R/W ANDed down the
levels, XD ORed; SDM Vol. 3A 4.6.1), and malformed tables: a table outside
memory (or in a hole of an image) or a loop (a table that is its own
ancestor) raises :class:`~emu.errors.TableError`, or goes to
:meth:`TableVisitor.broken` when a subclass wants to carry on past it.
Zero entries come in runs (:meth:`TableVisitor.hole_run`), and with
``memoize`` a subtree referenced many times is walked once.

Subclasses override the hooks they need; the others cost nothing per entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import compress
from typing import Iterator

from emu.errors import TableError
from emu.hw.paging.bits import ADDR_MASK, FLAGS_MASK, G, NX, P, RW, US
from emu.hw.paging.modes import Level, PagingMode, mode_for
from emu.hw.phys import PhysView

FULL_RANGE = ((0, 1 << 64),)


class TableVisitor:
    """Walk the tree rooted at ``root``; override :meth:`leaf`,
    :meth:`nonpresent`, :meth:`hole` or :meth:`hole_run` (with ``holes =
    True``), :meth:`table`, :meth:`broken`; and, to walk each distinct
    subtree once, the memoization hooks (``memoize = True``, below)."""

    holes = False           # call hole_run() for every run of zero entries
    #: report consecutive leaves (and non-present entries) with equal flag
    #: bits as one run: leaf_run()/nonpresent_run() instead of leaf()/nonpresent()
    leaf_runs = False
    #: walk a subtree referenced many times once: a later reference with the
    #: same table frame, level and inherited U/S, R/W and XD (and the same
    #: :meth:`subtree_context`) is handed to :meth:`replay` with what
    #: :meth:`begin_subtree`/:meth:`end_subtree` recorded the first time.
    #: ESPfix maps one page-table page 2,048 times (65,536 aliases of one
    #: stack page, arch/x86/kernel/espfix_64.c): walked once.
    memoize = False

    def __init__(self, mem: PhysView, root: int, mode: PagingMode | int):
        self.mem = mem
        self.root = root & ADDR_MASK
        self.mode = mode if isinstance(mode, PagingMode) else mode_for(mode)
        self.broken_count = 0
        self._memo: dict = {}
        self._frames: list[set] = []      # tables seen by each subtree being recorded

    # -- hooks ------------------------------------------------------------------------
    def leaf(self, va: int, level: Level, entry: int, entry_pa: int, eff: int, nx: bool) -> None:
        """A present entry that maps a page; ``eff`` is US|RW after ANDing it."""

    def nonpresent(self, va: int, level: Level, entry: int, entry_pa: int, eff: int, nx: bool) -> None:
        """A non-zero entry with P clear (it maps nothing; its bits may still
        matter); ``eff``/``nx`` combine its bits with the levels above, as for
        a present entry."""

    def hole(self, va: int, level: Level) -> None:
        """A zero entry (only when ``holes`` is set)."""

    def hole_run(self, va: int, level: Level, count: int) -> None:
        """``count`` consecutive zero entries from ``va`` (only when ``holes``
        is set; never across the non-canonical hole).  The default calls
        :meth:`hole` for each."""
        span = level.size
        ext = self.mode.sign_extend
        for k in range(count):
            self.hole(ext(va + k * span), level)

    def leaf_run(self, va: int, level: Level, words, i: int, j: int, table_pa: int, eff: int, nx: bool) -> None:
        """With ``leaf_runs``: the present leaves ``words[i:j]`` of the table at
        ``table_pa``, consecutive and with equal flag bits (so equal ``eff``
        and ``nx``); ``va`` is entry ``i``'s.  The default calls :meth:`leaf`."""
        span = level.size
        for k in range(i, j):
            self.leaf(va + (k - i) * span, level, words[k], table_pa + 8 * k, eff, nx)

    def nonpresent_run(self, va: int, level: Level, words, i: int, j: int, table_pa: int, eff: int,
                       nx: bool) -> None:
        """With ``leaf_runs``: non-present entries ``words[i:j]`` with equal
        flag bits, as :meth:`leaf_run`.  The default calls :meth:`nonpresent`."""
        span = level.size
        for k in range(i, j):
            self.nonpresent(va + (k - i) * span, level, words[k], table_pa + 8 * k, eff, nx)

    def table(self, va: int, level: Level, entry: int, entry_pa: int, eff: int, nx: bool) -> bool:
        """A present entry pointing at a table; return False to skip that subtree."""
        return True

    def broken(self, error: TableError) -> None:
        """A table outside memory (or in a hole of an image) or a loop: raise
        (the default) or return to skip it and go on."""
        raise error

    # -- memoization hooks (with memoize = True) ----------------------------------------
    def subtree_context(self, va: int, span: int):
        """What else the hooks' answers for the subtree at [va, va+span)
        depend on (e.g. the user or kernel half), hashable; None: walk it
        every time."""
        return True

    def begin_subtree(self, va: int):
        """Start recording the subtree at ``va``; returns a token for :meth:`end_subtree`."""

    def end_subtree(self, token):
        """Stop recording; returns the summary :meth:`replay` will be given."""

    def replay(self, summary, va: int, span: int) -> bool:
        """Report a recorded subtree again, at ``va``; False: walk it instead."""
        return False

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

    def _broken(self, error: TableError, va: int, key: tuple) -> None:
        self.broken_count += 1
        error.va = va               # where the skipped part of the tree starts
        error.key = key             # the same for every path that reaches this fault of the tables
        self.broken(error)

    def _table(self, t: int, depth: int, base: int, lo: int, hi: int, eff: int, nx: int, path: tuple) -> None:
        mode = self.mode
        level = mode.levels[depth]
        ents = self.mem.page_words(t)
        if ents is None:
            mem = self.mem
            where = "in a hole of" if 0 <= t < mem.size else "outside"
            self._broken(TableError(f"{level.name} table at {t:#x} (for {mode.sign_extend(base):#x}) is "
                                    f"{where} {mem.name} (size {mem.size:#x})"), mode.sign_extend(base),
                         ("table", t, depth))
            return
        if self._frames:
            self._frames[-1].add(t)
        shift = level.shift
        span = 1 << shift
        first = max(0, (lo - base) >> shift)
        last = min(512, (hi - base + span - 1) >> shift)
        holes = self.holes
        pte = level.is_pte
        may_leaf = level.leaf_ok
        sign = 1 << (mode.va_bits - 1)
        ext = (-1 << mode.va_bits) & 0xFFFFFFFFFFFFFFFF
        # the top table spans the non-canonical hole: a run of holes stops at its middle
        half = 256 if depth == 0 else 512
        prev = first
        runs = self.leaf_runs
        nz = list(compress(range(first, last), ents[first:last]))
        n = len(nz)
        k = 0
        while k < n:
            i = nz[k]
            k += 1
            if holes and i > prev:
                self._hole_run(base, prev, i, span, half, level, sign, ext)
            prev = i + 1
            e = ents[i]
            v = base + i * span
            va = v | ext if v & sign else v
            e_eff = eff & e
            e_nx = nx | (e & NX)
            if not e & P:
                if runs:
                    j = self._run_end(ents, nz, k, i, e & FLAGS_MASK, n)
                    k += j - i - 1
                    prev = j
                    self.nonpresent_run(va, level, ents, i, j, t, e_eff, bool(e_nx))
                else:
                    self.nonpresent(va, level, e, t + 8 * i, e_eff, bool(e_nx))
                continue
            if pte or (may_leaf and e & 0x80):
                if runs:
                    j = self._run_end(ents, nz, k, i, e & FLAGS_MASK, n)
                    k += j - i - 1
                    prev = j
                    self.leaf_run(va, level, ents, i, j, t, e_eff, bool(e_nx))
                else:
                    self.leaf(va, level, e, t + 8 * i, e_eff, bool(e_nx))
                continue
            if not self.table(va, level, e, t + 8 * i, e_eff, bool(e_nx)):
                continue
            child = e & ADDR_MASK
            if child in path:
                self._broken(TableError(f"loop in page tables: the {level.name} entry at {t + 8 * i:#x} "
                                        f"(for {va:#x}) points back to the table at {child:#x}"), va,
                                 ("loop", t + 8 * i, child))
                continue
            clo, chi = max(lo, v), min(hi, v + span)
            if self.memoize and clo == v and chi == v + span:
                self._memo_table(child, depth + 1, v, va, span, e_eff, e_nx, path + (child,))
            else:
                self._table(child, depth + 1, v, clo, chi, e_eff, e_nx, path + (child,))
        if holes and last > prev:
            self._hole_run(base, prev, last, span, half, level, sign, ext)

    @staticmethod
    def _run_end(ents, nz, k, i, flags, n) -> int:
        """The end of the run of entries from ``i`` with these flag bits (nz[k]
        is the next non-zero index): consecutive, non-zero, equal flags."""
        j = i + 1
        while k < n and nz[k] == j and ents[j] & FLAGS_MASK == flags:
            j += 1
            k += 1
        return j

    def _hole_run(self, base, i, j, span, half, level, sign, ext) -> None:
        if i < half < j:
            self._hole_run(base, i, half, span, half, level, sign, ext)
            i = half
        v = base + i * span
        self.hole_run(v | ext if v & sign else v, level, j - i)

    def _memo_table(self, child: int, depth: int, v: int, va: int, span: int, eff: int, nx: int,
                    path: tuple) -> None:
        """A whole subtree: replay it if an equal one was walked, else walk and record it."""
        ctx = self.subtree_context(va, span)
        if ctx is None:
            self._table(child, depth, v, v, v + span, eff, nx, path)
            return
        key = (child, depth, eff & (US | RW), bool(nx), ctx)
        hit = self._memo.get(key)
        # a recorded subtree is replayed only where none of its tables is an
        # ancestor (there the walk would have found a loop instead)
        if hit is not None and not any(p in hit[1] for p in path[:-1]) and self.replay(hit[0], va, span):
            if self._frames:
                self._frames[-1] |= hit[1]
            return
        token = self.begin_subtree(va)
        self._frames.append(set())
        broken = self.broken_count
        try:
            self._table(child, depth, v, v, v + span, eff, nx, path)
        finally:
            frames = self._frames.pop()
            summary = self.end_subtree(token)
        if self._frames:
            self._frames[-1] |= frames
        if self.broken_count == broken:       # a subtree with a skipped part is not reused
            self._memo[key] = (summary, frozenset(frames))


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
