"""The direct map: a linear map of all RAM at page_offset_base, in 1 GiB
pages where aligned and 2 MiB pages elsewhere (arch/x86/mm/init_64.c,
phys_pud_init / phys_pmd_init with PG_LEVEL_1G available)."""

from __future__ import annotations

from emu.hw.paging import PageTable
from emu.hw.phys import SIZE_1G, SIZE_2M


def map_direct(pt: PageTable, ram_size: int, page_offset: int, prot: int) -> None:
    """Map physical [0, ram_size) at ``page_offset`` with leaf flags ``prot``."""
    # whole GiBs in 1 GiB pages, the rest in 2 MiB pages: one map call each
    # (map fills a table's slots in one go)
    gib = ram_size // SIZE_1G * SIZE_1G
    if gib:
        pt.map(page_offset, 0, gib, prot, page_size=SIZE_1G)
    rest = (ram_size - gib) // SIZE_2M * SIZE_2M
    if rest:
        pt.map(page_offset + gib, gib, rest, prot, page_size=SIZE_2M)
