"""The architectural TLB: PCID-tagged translations, global translations and
paging-structure caches, as the Intel SDM Vol. 3A 4.10 lets a processor keep
them; what it may still hold after the tables change (docs/tlb.md).

Hardware only: it knows nothing of Linux.  The machine feeds it CR3, CR4
and CR0 writes, INVLPG and INVPCID, paging-structure entry writes and frame
frees, and asks it at page faults and at returns to user mode.
"""

from emu.hw.tlb.graph import Leafish, TableGraph, translations
from emu.hw.tlb.model import FINDINGS, GLOBAL, Cached, EntryWrite, Finding, Tlb

__all__ = ["FINDINGS", "GLOBAL", "Cached", "EntryWrite", "Finding", "Leafish", "TableGraph", "Tlb", "translations"]
