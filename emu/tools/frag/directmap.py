"""The direct map of the fragmentation experiment: the project's page-table
object over all of RAM, the TLB model fed every entry write, and the
figures Linux keeps.

Built as init_64.c builds it (1 GiB pages where aligned, 2 MiB elsewhere:
:func:`emu.linux.directmap.map_direct`), without Global (the default
machine runs PTI, which clears _PAGE_GLOBAL from the kernel's mappings).
Every change goes through :meth:`DirectMap._write`, which tells the TLB
model (:class:`emu.hw.tlb.Tlb`) the old and the new entry, as the stub's
``set_entry`` does.  The operations are arch/x86/mm/pat/set_memory.c's:

* a split is ``__split_large_page``: the new table's entries copy the large
  entry (PAT moved, PSE dropped on 2M->4K), the count moves as
  ``split_page_count`` moves ``direct_pages_count``, and ``flush_tlb_all``;
* removing a page (``set_direct_map_invalid_noflush``) splits down to the
  page's own size and clears P and RW; removing a whole 2 MiB block clears
  its PMD without splitting it (CPA keeps a large page whose whole range
  changes); restoring sets P and RW again (``set_direct_map_default_noflush``:
  more rights, no flush needed);
* ``flush_tlb_kernel_range``: one INVLPG a page up to
  ``tlb_single_page_flush_ceiling`` (33) pages, ``flush_tlb_all`` above;
* a collapse is 41d88484c71c's ``collapse_large_pages``: a table whose 512
  entries map contiguous frames with the same flags becomes one large
  entry again, the TLB is flushed, and only then is the table freed.

The model keeps the PFN of a removed entry as is (Linux and the stub
store it inverted, the L1TF mitigation): a not-present entry is no
translation either way.
"""

from __future__ import annotations

from emu.errors import MappingError
from emu.hw.paging import ADDR_MASK, INVALID_CLEARS, PAGE_KERNEL, PAGE_SIZE, PS, RW, G, P, PageTable, fourk_to_large
from emu.hw.phys import SIZE_2M, PhysMem
from emu.hw.tlb import Tlb
from emu.hw.x86 import CR4_PCIDE, CR4_PGE
from emu.linux.directmap import map_direct
from emu.linux.kvm_abi import GMEM_KMAP_OFFSET
from emu.linux.layout import layout_for

#: arch/x86/mm/tlb.c: flush_tlb_kernel_range flushes everything above this many pages
FLUSH_CEILING = 33
#: the kernel PCID the model's TLB runs under (ASID 0 + 1, as the stub's kernel PCID)
KERNEL_PCID = 1
SHIFTS = (12, 21, 30)
LEVEL_OF = {21: "level2", 30: "level3"}      # the vm events: a split of a 2M page is a level-2 split


class DirectMap:
    """RAM, its direct map and the counters of set_memory.c."""

    def __init__(self, ram: int, check_tlb: bool = True):
        self.mem = mem = PhysMem(ram)
        self.lay = layout_for(4)
        self.base = self.lay.page_offset
        self.pt = PageTable.create(mem, 4, name="direct map", policies=())
        map_direct(self.pt, ram, self.base, PAGE_KERNEL & ~G)
        self.tlb = Tlb(mem, self.pt.mode) if check_tlb else None
        if self.tlb:
            self.tlb.start(self.pt.root | KERNEL_PCID, CR4_PCIDE | CR4_PGE)
        # direct_pages_count (all leaves, present or not) and the present ones (reach)
        self.pages = {s: 0 for s in SHIFTS}
        self.present = {s: 0 for s in SHIFTS}
        for leaf in self.pt.leaves(self.base, self.base + ram):
            s = leaf.size.bit_length() - 1
            self.pages[s] += 1
            self.present[s] += 1
        self.events = {"direct_map_level2_splits": 0, "direct_map_level3_splits": 0,
                       "direct_map_level2_collapses": 0, "direct_map_level3_collapses": 0,
                       "tlb_flush_all": 0, "tlb_flush_pages": 0, "tlb_flush_ranges": 0}
        self.skip_flush = False            # a strategy bug the invariant tests inject
        self.scrub_va = self.lay.vmalloc_start + GMEM_KMAP_OFFSET

    # -- entries ----------------------------------------------------------------------
    def va(self, pa: int) -> int:
        return self.base + pa

    def _write(self, epa: int, new: int) -> None:
        old = self.pt.read_entry(epa)
        self.pt.write_entry(epa, new)
        if self.tlb:
            self.tlb.entry_written(epa, old, new)

    def leaf(self, pa: int) -> tuple[int, int, int]:
        """(shift, entry address, entry) of the direct-map leaf holding ``pa``."""
        hit = self.pt.lookup(self.va(pa))
        if hit is None:
            raise MappingError(f"{pa:#x} is not in the direct map")
        return hit

    def is_mapped(self, pa: int) -> bool:
        return bool(self.leaf(pa)[2] & P)

    def split(self, pa: int) -> None:
        """__split_large_page of the large leaf holding ``pa``, then flush_tlb_all."""
        s, epa, old = self.leaf(pa)
        va = self.va(pa)
        self.pt.write_entry(epa, old)                       # (PageTable.split writes the entry itself)
        self.pt.split(va)
        new = self.pt.read_entry(epa)
        if self.tlb:
            self.tlb.entry_written(epa, old, new)
        self.pages[s] -= 1
        self.pages[s - 9] += 512
        if old & P:
            self.present[s] -= 1
            self.present[s - 9] += 512
        self.events[f"direct_map_{LEVEL_OF[s]}_splits"] += 1
        self.flush_all()

    def _down_to(self, pa: int, shift: int) -> tuple[int, int]:
        """Split until ``pa`` is in a leaf of ``1 << shift`` bytes at most."""
        while True:
            s, epa, e = self.leaf(pa)
            if s <= shift:
                return epa, e
            self.split(pa)

    def make_read_only(self, pa: int) -> None:
        """set_memory_ro's reach into the direct map for the 2 MiB page at
        ``pa`` (cpa_process_alias on the kernel image: its alias loses RW;
        a 1G page above it is split first).  A boot-time change: not counted
        as a flush of the experiment."""
        epa, e = self._down_to(pa, 21)
        self._write(epa, e & ~RW)

    # -- set_direct_map_*_noflush --------------------------------------------------------
    def unmap_page(self, pa: int) -> None:
        epa, e = self._down_to(pa, 12)
        if not e & P:
            raise MappingError(f"{pa:#x} is already out of the direct map")
        self._write(epa, e & ~INVALID_CLEARS)
        self.present[12] -= 1

    def restore_page(self, pa: int) -> None:
        s, epa, e = self.leaf(pa)
        if s != 12 or e & P:
            raise MappingError(f"{pa:#x} is not a removed 4K page of the direct map")
        self._write(epa, e | P | RW)
        self.present[12] += 1

    def unmap_block(self, pa: int) -> None:
        """A whole 2 MiB block: its PMD cleared (a 1G page above it split first)."""
        epa, e = self._down_to(pa, 21)
        s = self.leaf(pa)[0]
        if s != 21 or not e & P:
            raise MappingError(f"{pa:#x}: the 2M block is split or already out of the direct map")
        self._write(epa, e & ~INVALID_CLEARS)
        self.present[21] -= 1

    def restore_block(self, pa: int) -> None:
        s, epa, e = self.leaf(pa)
        if s != 21 or e & P:
            raise MappingError(f"{pa:#x} is not a removed 2M block of the direct map")
        self._write(epa, e | P | RW)
        self.present[21] += 1

    # -- flushes ---------------------------------------------------------------------------
    def flush_range(self, pa: int, size: int) -> None:
        """flush_tlb_kernel_range(__va(pa), __va(pa) + size)."""
        if self.skip_flush:
            return
        self.events["tlb_flush_ranges"] += 1
        n = size // PAGE_SIZE
        if n > FLUSH_CEILING:
            self.flush_all()
            return
        for i in range(n):
            self.events["tlb_flush_pages"] += 1
            if self.tlb:
                self.tlb.invlpg(self.va(pa + i * PAGE_SIZE))

    def scrub(self) -> None:
        """A page out of the direct map cleared through the temporary kernel
        mapping (kernel_stub/guest_memfd.S gmem_kmap): the slot's PTE is
        cleared afterwards and flushed with one INVLPG."""
        self.events["tlb_flush_pages"] += 1
        if self.tlb:
            self.tlb.invlpg(self.scrub_va)

    def flush_all(self) -> None:
        """flush_tlb_all: INVPCID type 2 (everything, globals too)."""
        self.events["tlb_flush_all"] += 1
        if self.tlb:
            self.tlb.invpcid(2, 0, 0)

    # -- collapse (41d88484c71c) ----------------------------------------------------------
    def collapse(self, pa: int) -> int:
        """Collapse the tables holding ``pa`` that map one large page's worth
        of contiguous frames with one set of flags (a PTE table into a 2M
        page, then a PMD table into a 1G page); returns how many."""
        done = 0
        for shift in (21, 30):
            s = self.leaf(pa)[0]
            if s >= shift:
                continue
            if s != shift - 9 or not self._collapse_at(pa, shift):
                break
            done += 1
        return done

    def _collapse_at(self, pa: int, shift: int) -> bool:
        size = 1 << shift
        hit = self._table_entry(pa & ~(size - 1), shift)
        if hit is None:
            return False
        epa, entry = hit
        table = entry & ADDR_MASK
        child = shift - 9
        words = self.mem.page_words(table)
        first = words[0]
        if not first & P or (child != 12 and not first & PS):
            return False
        flags = first & ~ADDR_MASK
        start = first & ADDR_MASK
        if start % size:
            return False
        step = 1 << child
        for i, w in enumerate(words):
            if w & ~ADDR_MASK != flags or w & ADDR_MASK != start + i * step:
                return False
        self._write(epa, start | (fourk_to_large(flags) | PS if child == 12 else flags))
        self.pages[child] -= 512
        self.pages[shift] += 1
        self.present[child] -= 512
        self.present[shift] += 1
        self.events[f"direct_map_{LEVEL_OF[shift]}_collapses"] += 1
        self.flush_all()                                   # before the table goes back
        if self.tlb:
            self.tlb.frame_freed(table, PAGE_SIZE, is_table=True)
        self.mem.frames.free(table)
        return True

    def _table_entry(self, base: int, shift: int) -> tuple[int, int] | None:
        """(address, value) of the entry at ``shift`` for ``base`` when it points at a table."""
        table = self.pt.root
        for level in self.pt.mode.levels:
            epa = table + 8 * ((self.va(base) >> level.shift) & 511)
            e = self.pt.read_entry(epa)
            if not e & P:
                return None
            if level.shift == shift:
                return None if self.pt.mode.is_leaf(level, e) else (epa, e)
            if self.pt.mode.is_leaf(level, e):
                return None
            table = e & ADDR_MASK
        return None

    # -- figures ---------------------------------------------------------------------------
    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo's DirectMap4k/2M/1G (kB), from direct_pages_count."""
        return {"DirectMap4k": self.pages[12] * 4, "DirectMap2M": self.pages[21] * 2048,
                "DirectMap1G": self.pages[30] * 1048576}

    def reach(self) -> int:
        """TLB entries needed to cover the direct map: one per present leaf."""
        return sum(self.present.values())

    def recount(self) -> tuple[dict[int, int], dict[int, int]]:
        """The counters recomputed from the tables (the invariant checks)."""
        pages = {s: 0 for s in SHIFTS}
        present = {s: 0 for s in SHIFTS}
        for leaf in self.pt.leaves(self.base, self.base + self.mem.size, nonpresent=True):
            s = leaf.size.bit_length() - 1
            pages[s] += 1
            if leaf.entry & P:
                present[s] += 1
        return pages, present

    def table_frames(self) -> int:
        return self.mem.frames.counts().get("pgtable", 0)


def block_of(pa: int) -> int:
    return pa & ~(SIZE_2M - 1)


