"""The page-table object: a first-class ``pg_table`` with pluggable policies.

A tree rooted at a physical frame, independent of any process (Rapoport's
"restricted kernel address spaces" proposal), with map / unmap / protect /
split and sub-tree sharing at a chosen level (what ``pti_clone_pgtable`` and
``asi_clone_p4d`` do in Linux).  What Linux layers on top is a policy object
given at construction, not knowledge of Linux ranges inside the table:

* :class:`PtiMirror`: creating a user-half top-level entry mirrors it into
  the user PGD of an 8 KiB pair while the kernel copy gets NX
  (``__pti_set_user_pgtbl``, arch/x86/mm/pti.c);
* :class:`FrameRefs`: leaves and tables hold references on their frames in
  the frame allocator, except in ranges that pin nothing (the direct map).

The geometry comes from the paging mode (:mod:`emu.hw.paging.modes`); the
user half is the canonical lower half.
"""

from __future__ import annotations

import struct
from array import array
from typing import Iterator

from emu.errors import AddressError, MappingError
from emu.hw.paging.bits import (ADDR_MASK, KERNPG_TABLE, NX, P, PAGE_SIZE, PAGE_TABLE, PAT_LARGE, PS, READ, US,
                                fmt_size, fourk_to_large, large_to_4k)
from emu.hw.paging.modes import PagingMode, mode_for
from emu.hw.paging.visit import Leaf, iter_leaves
from emu.hw.paging.walker import ControlState, translate
from emu.hw.phys import SIZE_1G, SIZE_2M, FrameKind, PhysMem

_Q = struct.Struct("<Q")
_SIZE_TO_SHIFT = {PAGE_SIZE: 12, SIZE_2M: 21, SIZE_1G: 30}


class Policy:
    """What a page-table object does beyond writing entries (a no-op base)."""

    def top_entry(self, pt: "PageTable", epa: int, value: int, va: int) -> int:
        """A top-level entry for ``va`` is about to become ``value``: write any
        mirror, and return the value for the table itself."""
        return value

    def mapped(self, pt: "PageTable", va: int, pa: int, size: int, delta: int) -> None:
        """Leaves mapping [pa, pa+size) at ``va`` were added (+1) or removed (-1)."""

    def table_added(self, pt: "PageTable", table_pa: int) -> None:
        """A new table frame was linked into the tree."""


class PtiMirror(Policy):
    """PTI's user PGD: the second frame of an 8 KiB pair mirrors the user
    half; the kernel copy of a present user entry gets NX when NX is supported."""

    def top_entry(self, pt, epa, value, va):
        if va < pt.mode.lower_half_end:
            pt.write_entry(epa + PAGE_SIZE, value)      # the user PGD gets the entry as is
            if value & P and value & US and pt.pte_mask & NX:
                value |= NX                              # kernel copy: NX (pti.c)
        return value


class FrameRefs(Policy):
    """Reference counts in the frame allocator: a frame cannot be freed
    while a leaf or a table link of this tree points at it.  ``exempt`` are
    (lo, hi) virtual ranges whose leaves pin nothing: the direct map, the
    linear map of all RAM, as in Linux."""

    def __init__(self, exempt: tuple[tuple[int, int], ...] = ()):
        self.exempt = exempt

    def mapped(self, pt, va, pa, size, delta):
        if not any(lo <= va < hi for lo, hi in self.exempt):
            pt.mem.frames.ref_range(pa, size, delta)

    def table_added(self, pt, table_pa):
        pt.mem.frames.get_ref(table_pa)


class PageTable:
    """A page-table tree rooted at a physical frame (a ``pg_table``).

    ``mode`` is a :class:`PagingMode` or 4/5.  ``policies`` default to
    :class:`FrameRefs` over everything (Python-built tables); ``pti=True``
    adds :class:`PtiMirror`.  ``table_flags`` are the flags of new
    intermediate entries (``_PAGE_TABLE``: x86 Linux populates kernel tables
    so too, pgalloc.h; PTI's user-table walk uses ``_KERNPG_TABLE``);
    ``pte_mask`` is ``__supported_pte_mask`` (without NX, bit 63 is reserved
    and Linux drops it from every protection).
    """

    def __init__(self, mem: PhysMem, root: int, mode: PagingMode | int = 4, name: str = "",
                 owner: str | None = None, pti: bool = False, policies: tuple[Policy, ...] | None = None,
                 table_flags: int = PAGE_TABLE, pte_mask: int = ~0):
        self.mem = mem
        self.root = root
        self.mode = mode if isinstance(mode, PagingMode) else mode_for(mode)
        self.levels = self.mode.depth
        self.name = name or f"pgd@{root:#x}"
        self.owner = owner or self.name
        if policies is None:
            policies = (FrameRefs(),)
        self.policies = tuple(policies) + ((PtiMirror(),) if pti and not any(
            isinstance(p, PtiMirror) for p in policies) else ())
        self.table_flags = table_flags
        self.pte_mask = pte_mask

    @classmethod
    def create(cls, mem: PhysMem, mode: PagingMode | int = 4, name: str = "", owner: str | None = None,
               pti: bool = False, **kw) -> "PageTable":
        """Allocate a zeroed root: an order-1 pair with PTI (``pti`` or a
        :class:`PtiMirror` among the policies)."""
        pair = pti or any(isinstance(p, PtiMirror) for p in kw.get("policies") or ())
        root = alloc_pgd_pair(mem, owner or name) if pair else mem.frames.alloc(FrameKind.PGTABLE, 0, owner or name)
        return cls(mem, root, mode, name, owner, pti, **kw)

    @property
    def pti(self) -> bool:
        return any(isinstance(p, PtiMirror) for p in self.policies)

    @property
    def user_root(self) -> int:
        """The user PGD of a PTI pair (CR3 bit 12 set)."""
        return self.root | PAGE_SIZE

    @property
    def top_shift(self) -> int:
        return self.mode.top_shift

    # -- entries ---------------------------------------------------------------
    def read_entry(self, pa: int) -> int:
        return _Q.unpack_from(self.mem.buf, pa)[0]

    def write_entry(self, pa: int, v: int) -> None:
        _Q.pack_into(self.mem.buf, pa, v)

    def _check_va(self, va: int, size: int) -> None:
        mode = self.mode
        if size <= 0:
            raise MappingError(f"size must be positive, got {size:#x}")
        if not mode.canonical(va) or not mode.canonical(va + size - 1):
            raise AddressError(f"{va:#x}..{va + size - 1:#x} is not canonical for {mode.name} paging")
        half = mode.lower_half_end
        if (va < half) != (va + size - 1 < half):
            raise AddressError(f"{va:#x}+{size:#x} crosses the user/kernel boundary")

    def _new_table(self) -> int:
        return self.mem.frames.alloc(FrameKind.PGTABLE, 0, self.owner)

    def _set(self, epa: int, value: int, va: int, shift: int) -> None:
        """Write an entry; a top-level one goes through the policies."""
        if shift == self.top_shift:
            for pol in self.policies:
                value = pol.top_entry(self, epa, value, va)
        self.write_entry(epa, value)

    def _mapped(self, va: int, pa: int, size: int, delta: int) -> None:
        for pol in self.policies:
            pol.mapped(self, va, pa, size, delta)

    def _slot(self, va: int, shift: int, create: bool) -> int | None:
        """Physical address of the entry for ``va`` at ``shift``, walking down.

        Creates missing intermediate tables when ``create``.  Refuses to walk
        through a large leaf.
        """
        table = self.root
        mode = self.mode
        for level in mode.levels:
            s = level.shift
            if s == shift:
                return table + 8 * ((va >> shift) & 511)
            epa = table + 8 * ((va >> s) & 511)
            e = self.read_entry(epa)
            if not e & P:
                if e:
                    raise MappingError(f"{va:#x}: non-present {level.name} entry {e:#x} is in the way")
                if not create:
                    return None
                t = self._new_table()
                value = t | self.table_flags
                self._set(epa, value, va, s)
                for pol in self.policies:
                    pol.table_added(self, t)
                e = value
            elif mode.is_leaf(level, e):
                raise MappingError(f"{va:#x} is inside a {fmt_size(level.size)} page at "
                                   f"{va & ~(level.size - 1):#x} ({level.name} entry {e:#x}); split it first")
            table = e & ADDR_MASK
        raise MappingError(f"no level of {mode.name} paging starts at bit {shift}")

    # -- map / unmap / protect ------------------------------------------------
    def map(self, va: int, pa: int, size: int, flags: int, page_size: int | None = None) -> None:
        """Map ``[va, va+size)`` to ``[pa, pa+size)`` with leaf ``flags``.

        ``flags`` are 4 KiB-convention leaf bits (PAT in bit 7); large leaves
        get PS and the PAT bit moved to bit 12.  ``page_size`` None picks the
        largest size the alignment of va, pa and size allows.
        """
        self._check_va(va, size)
        if not flags & P:
            raise MappingError(f"map {va:#x}: flags {flags:#x} lack the present bit")
        if page_size is None:
            page_size = PAGE_SIZE
            for ps in (SIZE_1G, SIZE_2M):
                if va % ps == 0 and pa % ps == 0 and size % ps == 0:
                    page_size = ps
                    break
        if page_size not in _SIZE_TO_SHIFT:
            raise MappingError(f"page size {page_size:#x} is not 4K, 2M or 1G")
        for what, x in (("virtual address", va), ("physical address", pa), ("size", size)):
            if x % page_size:
                raise MappingError(f"{what} {x:#x} is not aligned to the {fmt_size(page_size)} page size")
        if pa < 0 or pa + size > self.mem.size:
            raise MappingError(f"physical range {pa:#x}..{pa + size - 1:#x} is outside RAM "
                               f"(size {self.mem.size:#x})")
        shift = _SIZE_TO_SHIFT[page_size]
        level = self.mode.by_shift(shift)
        flags &= self.pte_mask
        leaf = flags if shift == 12 else fourk_to_large(flags)
        buf = self.mem.buf
        end = va + size
        # check every slot first: a refused request changes nothing
        v = va
        while v < end:
            n = min((end - v) >> shift, 512 - ((v >> shift) & 511))
            first = self._slot(v, shift, create=False)
            if first is not None:
                self._refuse_busy(first, n, v, shift, level)
            v += n << shift
        v, p = va, pa
        while v < end:
            # fill as many slots of one table as possible at once
            first = self._slot(v, shift, create=True)
            n = min((end - v) >> shift, 512 - ((v >> shift) & 511))
            span = n * 8
            entries = array("Q", range(p | leaf, (p | leaf) + (n << shift), 1 << shift))
            if shift == self.top_shift:
                for i in range(n):
                    self._set(first + 8 * i, entries[i], v + (i << shift), shift)
            else:
                buf[first:first + span] = entries.tobytes()
            self._mapped(v, p, n << shift, +1)
            v += n << shift
            p += n << shift

    def _refuse_busy(self, first: int, n: int, v: int, shift: int, level) -> None:
        """MappingError if any of the ``n`` slots from ``first`` is in use."""
        span = n * 8
        old = self.mem.buf[first:first + span]
        if old.count(0) != span:
            busy = next(i for i in range(n) if old[8 * i:8 * i + 8] != bytes(8))
            bva = v + (busy << shift)
            e = self.read_entry(first + 8 * busy)
            what = "a page table" if e & P and not self.mode.is_leaf(level, e) else f"entry {e:#x}"
            raise MappingError(f"{bva:#x} is already mapped ({level.name} holds {what})")

    def lookup(self, va: int) -> tuple[int, int, int] | None:
        """The leaf slot for ``va``: (shift, entry address, entry), or None.

        Returns the slot at the level where the walk stops: a present leaf,
        or a non-present non-zero entry (e.g. an inverted-PFN PTE).
        """
        table = self.root
        mode = self.mode
        for level in mode.levels:
            epa = table + 8 * ((va >> level.shift) & 511)
            e = self.read_entry(epa)
            if not e & P:
                return (level.shift, epa, e) if e else None
            if mode.is_leaf(level, e):
                return level.shift, epa, e
            table = e & ADDR_MASK
        return None

    def _whole_leaf(self, va: int, lo: int, hi: int, what: str):
        hit = self.lookup(va)
        if hit is None:
            return None
        s, epa, e = hit
        lsize = 1 << s
        base = va & ~(lsize - 1)
        if base < lo or base + lsize > hi:
            raise MappingError(f"{what} {lo:#x}+{hi - lo:#x} would cut the {fmt_size(lsize)} page at "
                               f"{base:#x}; split it first")
        return s, epa, e, base, lsize

    def unmap(self, va: int, size: int) -> list[tuple[int, int]]:
        """Clear the leaves covering ``[va, va+size)``; returns (va, pa) of each.
        Holes are skipped.  A large page only partly inside the range is
        refused: split it first."""
        self._check_va(va, size)
        if va % PAGE_SIZE or size % PAGE_SIZE:
            raise MappingError(f"unmap {va:#x}+{size:#x}: not page aligned")
        hits = []                          # every leaf first: a refused request changes nothing
        v, end = va, va + size
        while v < end:
            hit = self._whole_leaf(v, va, end, "unmap")
            if hit is None:
                v = (v | 0xFFF) + 1
                continue
            hits.append(hit)
            v = hit[3] + hit[4]
        out = []
        for s, epa, e, base, lsize in hits:
            self.write_entry(epa, 0)
            if e & P:
                pa = e & ADDR_MASK & ~(lsize - 1)
                out.append((base, pa))
                self._mapped(base, pa, lsize, -1)
        return out

    def protect(self, va: int, size: int, set: int = 0, clear: int = 0) -> int:
        """Set/clear bits on every leaf in ``[va, va+size)``; returns the count.
        A hole is refused (there is nothing to protect)."""
        self._check_va(va, size)
        hits = []                          # every leaf first: a refused request changes nothing
        v, end = va, va + size
        while v < end:
            hit = self._whole_leaf(v, va, end, "protect")
            if hit is None:
                raise MappingError(f"protect: {v:#x} is not mapped")
            hits.append(hit)
            v = hit[3] + hit[4]
        for s, epa, e, base, lsize in hits:
            self.write_entry(epa, (e | (set & self.pte_mask)) & ~clear)
        return len(hits)

    def split(self, va: int) -> int:
        """Split the large leaf covering ``va`` one level down (1G→2M or 2M→4K).

        Follows ``__split_large_page`` (arch/x86/mm/pat/set_memory.c): flags are
        copied; on 2M→4K the PAT bit moves from 12 to 7 and PS is dropped; 1G→2M
        keeps PSE; Global is kept only if the entry is present.  Returns the
        new table's physical address.
        """
        hit = self.lookup(va)
        if hit is None or hit[0] == 12 or not hit[2] & PS:
            raise MappingError(f"split: {va:#x} is not mapped by a 2M or 1G page")
        s, epa, e = hit
        size = 1 << s
        base_pa = e & ADDR_MASK & ~(size - 1)
        flags = (e & ~ADDR_MASK) | (e & PAT_LARGE)   # every non-address bit, PAT included
        child = s - 9
        # 2M -> 4K: pgprot_large_2_4k; 1G -> 2M keeps PSE (and PAT at bit 12)
        cflags = large_to_4k(flags) if child == 12 else flags
        if not cflags & P:
            cflags &= ~(1 << 8)               # pgprot_clear_protnone_bits: no Global
        t = self._new_table()
        entries = array("Q", range(base_pa | cflags, (base_pa | cflags) + (512 << child), 1 << child))
        self.mem.write(t, entries.tobytes())
        for pol in self.policies:
            pol.table_added(self, t)
        base_va = va & ~(size - 1)
        # one reference per new leaf instead of one for the large leaf
        self._mapped(base_va, base_pa, size, -1)
        for i in range(512):
            self._mapped(base_va + (i << child), base_pa + (i << child), 1 << child, +1)
        # CPA's __split_large_page installs a kernel table as _KERNPG_TABLE;
        # a user huge page is split by __split_huge_pmd under _PAGE_TABLE.
        self.write_entry(epa, t | (PAGE_TABLE if va < self.mode.lower_half_end else KERNPG_TABLE))
        return t

    def share(self, src: "PageTable", va: int, size: int, level: str) -> int:
        """Make this table use ``src``'s entries at ``level`` for ``[va, va+size)``.

        The entries are copied, so everything below them (tables or pages) is
        shared, as ``pti_clone_pgtable`` / ``asi_clone_p4d`` do.  Returns the
        number of entries copied; an occupied slot holding something else is
        refused.
        """
        self._check_va(va, size)
        if src.mode is not self.mode:
            raise MappingError("cannot share between 4-level and 5-level tables")
        lv = self.mode.level(level)
        shift, gran = lv.shift, lv.size
        if va % gran or size % gran:
            raise MappingError(f"share at {level} needs {fmt_size(gran)} alignment: {va:#x}+{size:#x}")
        n = 0
        for v in range(va, va + size, gran):
            sslot = src._slot(v, shift, create=False)
            if sslot is None:
                continue
            e = src.read_entry(sslot)
            if not e:
                continue
            dslot = self._slot(v, shift, create=True)
            old = self.read_entry(dslot)
            if old and old != e:
                raise MappingError(f"share {v:#x}: {level} slot already holds {old:#x}")
            if not old:
                self._set(dslot, e, v, shift)
                if e & P:
                    if self.mode.is_leaf(lv, e):
                        self._mapped(v, e & ADDR_MASK & ~(gran - 1), gran, +1)
                    else:
                        for pol in self.policies:
                            pol.table_added(self, e & ADDR_MASK)
            n += 1
        return n

    # -- iteration ---------------------------------------------------------------
    def leaves(self, lo: int = 0, hi: int = 1 << 64, nonpresent: bool = False) -> Iterator[Leaf]:
        return iter_leaves(self.mem, self.root, self.mode, lo, hi, nonpresent)

    def translate(self, va: int, access=READ, cpl: int = 0, ctl: ControlState | None = None):
        ctl = ctl or ControlState(la57=self.levels == 5)
        return translate(self.mem, self.root, va, access, cpl, ctl)


def alloc_pgd_pair(mem: PhysMem, owner: str) -> int:
    """An order-1 (8 KiB aligned, two frames) PGD, as PGD_ALLOCATION_ORDER=1."""
    frames = mem.frames
    held = []
    try:
        while True:
            a = frames.alloc(FrameKind.PGTABLE, 0, owner)
            if a % (2 * PAGE_SIZE) == 0 and frames.kind_of(a + PAGE_SIZE) == FrameKind.FREE:
                frames.reserve(a + PAGE_SIZE, PAGE_SIZE, FrameKind.PGTABLE, owner)
                return a
            held.append(a)
    finally:
        for h in held:
            frames.free(h)
