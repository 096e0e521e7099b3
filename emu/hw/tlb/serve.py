"""Lazy mode: one access through a stale translation.

When the tables refuse an access that a stale translation would allow, a
processor that still holds the translation completes the access through it.
To make Unicorn do the same for one instruction, a private copy of the
tables is built in scratch frames: the current root and the tables on the
way to the faulting address are copied, the path's upper entries made
permissive, and the 4 KiB page of the address mapped as the stale
translation maps it (its frame, its rights).  The instruction then runs with
CR3 pointing at the copy; the real tables are never written.
"""

from __future__ import annotations

from array import array

from emu.hw.paging import ADDR_MASK, NX, P, PAGE_SIZE, PAT_LARGE, PS, RW, US, A, D, PagingMode
from emu.hw.phys import PhysMem
from emu.hw.tlb.model import Cached


def scratch_tables(mem: PhysMem, mode: PagingMode, root: int, va: int, rec: Cached, scratch: list[int]) -> int:
    """Fill ``scratch`` (one frame per level) with a copy of the tables at
    ``root`` in which ``va``'s 4 KiB page is mapped by ``rec``; returns the
    copy's root."""
    if len(scratch) < mode.depth:
        raise ValueError(f"{mode.depth} scratch frames are needed, {len(scratch)} given")
    real: int | None = root & ADDR_MASK
    large: tuple[int, int] | None = None        # a large leaf split into the next table: (entry, its size)
    for depth, level in enumerate(mode.levels):
        frame = scratch[depth]
        if real is not None:
            mem.write(frame, mem.read(real, PAGE_SIZE))
        elif large is not None:
            # the large page the path went through, as 512 pages of this level
            entry, size = large
            flags = entry & ~ADDR_MASK & ~(PS | PAT_LARGE if level.is_pte else 0)
            base = entry & ADDR_MASK & ~(size - 1)
            step = level.size
            mem.write(frame, array("Q", range(base | flags, (base | flags) + 512 * step, step)).tobytes())
        else:
            mem.zero(frame, PAGE_SIZE)
        epa = frame + 8 * ((va >> level.shift) & 511)
        if level.is_pte:
            page = (rec.pa + ((va & ~0xFFF) - rec.va)) & ADDR_MASK
            mem.write_u64(epa, page | P | A | D | (RW if rec.writable else 0) | (US if rec.user else 0)
                          | (NX if rec.nx else 0) | (rec.pkey << 59))
            break
        e = mem.read_u64(epa)
        real = e & ADDR_MASK if e & P and not mode.is_leaf(level, e) else None
        large = (e, level.size) if e & P and mode.is_leaf(level, e) else None
        # the leaf alone decides the rights
        mem.write_u64(epa, scratch[depth + 1] | P | RW | US | A | D)
    return scratch[0]
