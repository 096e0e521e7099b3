"""Linux's encodings inside page-table entries that the CPU ignores.

A non-present entry is free for the kernel's own use.  Since the L1TF
mitigation (arch/x86/include/asm/pgtable-invert.h) Linux stores the PFN
of a non-present entry that still describes a page inverted, so that a
speculative load through it (L1 Terminal Fault) reaches a frame above any
RAM: ``pfn_pte()`` XORs the PFN field with ``protnone_mask()``, all ones
when ``__pte_needs_invert()`` (non-zero, P clear).  Two kinds of entry are
made so: PROT_NONE user pages (``_PAGE_PROTNONE``, the bit the CPU calls
G) and kernel pages taken out of the direct map (``set_direct_map_invalid_noflush``,
``set_memory_np``: the other flags, A and D among them, kept).  Swap
entries are inverted too but hold a swap offset, not a PFN, and have
neither A nor G (arch/x86/include/asm/pgtable_64.h, SWP_OFFSET_FIRST_BIT).
"""

from __future__ import annotations

from emu.hw.paging import ADDR_MASK, A, G, P

#: bit 51, the top of the PFN field: an inverted small PFN has it set, a real
#: one only at 2 PiB of physical memory
_PFN_TOP = 1 << 51


def inverted_pfn(entry: int) -> int | None:
    """The PFN a non-present entry holds inverted, or None when it holds
    none (zero, present, a swap entry, or a PFN stored as is)."""
    if not entry or entry & P or not entry & (A | G) or not entry & _PFN_TOP:
        return None
    return (~entry & ADDR_MASK) >> 12
