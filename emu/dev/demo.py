"""A small kernel-like page-table layout built in pure Python.

Used where page tables are wanted without booting a machine: tests of the
page-table object, the bench's ptdump/walk figures, and examples.  It follows
the Linux layout: a direct map of all RAM (2 MiB pages, 1 GiB where aligned),
a kernel image at __START_KERNEL with per-section permissions, a
cpu_entry_area page, and a user process with text, data and stack.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.linux.directmap import map_direct
from emu.linux.layout import layout_for
from emu.hw.paging import (RW, PAGE_KERNEL, FrameRefs, PAGE_KERNEL_RO, PAGE_KERNEL_RX, PAGE_READONLY_EXEC, PAGE_SHARED,
                     PageTable)
from emu.hw.phys import MiB, SIZE_2M, FrameKind, PhysMem

KERNEL_PHYS = 16 * MiB


@dataclass
class DemoLayout:
    mem: PhysMem
    kernel: PageTable
    user_text: int
    user_data: int
    kernel_text: int
    kernel_data: int

    def spaces(self) -> dict[str, PageTable]:
        return {"demo.kernel": self.kernel}


def build_demo(ram: int = 256 * MiB, levels: int = 4) -> DemoLayout:
    mem = PhysMem(ram)
    lay = layout_for(levels)
    mem.frames.reserve(KERNEL_PHYS, 4 * SIZE_2M, FrameKind.KERNEL_TEXT, "kernel")
    # the direct map pins no frame (a linear map of all RAM)
    refs = FrameRefs(exempt=((lay.page_offset, lay.page_offset + lay.direct_map_size),))
    pt = PageTable.create(mem, levels, name="demo.kernel", owner="kernel", policies=(refs,))
    map_direct(pt, mem.size, lay.page_offset, PAGE_KERNEL)
    # set_memory_ro() on the image also changes its direct-map alias
    # (cpa_process_alias): text and rodata are 2 MiB aligned, so whole pages.
    direct_image = lay.page_offset + KERNEL_PHYS
    pt.split(direct_image)
    pt.protect(direct_image, 2 * SIZE_2M, clear=RW)
    ktext = lay.kernel_text
    kmap = lay.kernel_map
    pt.map(ktext, KERNEL_PHYS, 16 * 4096, PAGE_KERNEL_RX, page_size=4096)
    pt.map(ktext + SIZE_2M, KERNEL_PHYS + SIZE_2M, 4 * 4096, PAGE_KERNEL_RO, page_size=4096)
    kdata = ktext + 2 * SIZE_2M
    pt.map(kdata, KERNEL_PHYS + 2 * SIZE_2M, 8 * 4096, PAGE_KERNEL, page_size=4096)
    assert kmap < ktext
    cea = mem.frames.alloc(FrameKind.KERNEL_DATA, 0, "cpu_entry_area")
    pt.map(lay.cpu_entry_area, cea, 4096, PAGE_KERNEL_RO)
    utext = 0x400000
    udata = 0x600000
    t = mem.frames.alloc(FrameKind.USER, 0, "demo")
    d = mem.frames.alloc(FrameKind.USER, 0, "demo")
    s = mem.frames.alloc(FrameKind.USER, 0, "demo")
    pt.map(utext, t, 4096, PAGE_READONLY_EXEC)
    pt.map(udata, d, 4096, PAGE_SHARED)
    pt.map(0x7FFFFFFFE000, s, 4096, PAGE_SHARED)
    return DemoLayout(mem, pt, utext, udata, ktext, kdata)
