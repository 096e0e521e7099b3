"""The direct map: a linear map of all RAM at page_offset_base, in 1 GiB
pages where aligned and 2 MiB pages elsewhere (arch/x86/mm/init_64.c,
phys_pud_init / phys_pmd_init with PG_LEVEL_1G available)."""

from __future__ import annotations

from emu.hw.paging import PageTable
from emu.hw.phys import SIZE_1G, SIZE_2M


def map_direct(pt: PageTable, ram_size: int, page_offset: int, prot: int) -> None:
    """Map physical [0, ram_size) at ``page_offset`` with leaf flags ``prot``."""
    pa = 0
    while pa < ram_size:
        size = SIZE_1G if pa % SIZE_1G == 0 and pa + SIZE_1G <= ram_size else SIZE_2M
        pt.map(page_offset + pa, pa, size, prot, page_size=size)
        pa += size
