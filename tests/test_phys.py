"""Guest RAM and the frame allocator."""

import os

import pytest

from emu.errors import AllocError, ConfigError
from emu.hw.paging import PAGE_SHARED, FrameRefs, PageTable
from emu.hw.phys import FrameKind, PhysMem
from emu.parse import parse_size
from emu.linux.layout import LAYOUT_4LEVEL


@pytest.mark.parametrize("text,value", [
    ("256M", 256 << 20), ("4G", 4 << 30), ("4GiB", 4 << 30), ("1048576", 1 << 20),
    ("0x2000000", 0x2000000), ("512k", 512 << 10),
])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("size,msg", [
    (3 << 20, "not a multiple of 2 MiB"),
    (16 << 20, "out of range"),
    (2 << 40, "out of range"),
])
def test_ram_size_refused(size, msg):
    with pytest.raises(ConfigError, match=msg):
        PhysMem(size)


def test_bad_size_text():
    with pytest.raises(ConfigError, match="bad size"):
        parse_size("lots")


@pytest.mark.parametrize("order,align", [(0, 4096), (9, 2 << 20), (18, 1 << 30)])
def test_alloc_is_aligned_zeroed_and_labelled(order, align):
    mem = PhysMem(2 << 30)
    pa = mem.frames.alloc(FrameKind.USER, order, owner="A")
    assert pa % align == 0 and pa != 0
    assert mem.read(pa, 64) == bytes(64)
    info = mem.frames.info(pa + align - 4096)        # any frame inside resolves to the head
    assert (info.pa, info.kind, info.order, info.owner, info.refs) == (pa, FrameKind.USER, order, "A", 0)
    assert mem.frames.counts()["user"] == align // 4096
    mem.close()


@pytest.mark.parametrize("order", [0, 9])
def test_a_freed_frame_keeps_its_contents_until_reallocated_zeroed(mem, order):
    """As Linux's buddy allocator without init_on_free: what a stale TLB
    entry would read after the free is what the frame held (docs/tlb.md)."""
    pa = mem.frames.alloc(FrameKind.KERNEL_DATA, order)
    last = pa + (4096 << order) - 8
    mem.write(pa, b"secret!!")
    mem.write(last, b"tail!!!!")
    mem.frames.free(pa)
    assert mem.frames.kind_of(pa) == FrameKind.FREE
    assert mem.read(pa, 8) == b"secret!!" and mem.read(last, 8) == b"tail!!!!"
    assert mem.frames.alloc(FrameKind.KERNEL_DATA, order) == pa
    assert mem.read(pa, 8) == bytes(8) and mem.read(last, 8) == bytes(8)


def test_double_free(mem):
    pa = mem.frames.alloc(FrameKind.USER)
    mem.frames.free(pa)
    with pytest.raises(AllocError, match=f"double free of frame {pa:#x}"):
        mem.frames.free(pa)


def test_free_tail_of_large_frame(mem):
    pa = mem.frames.alloc(FrameKind.USER, 9)
    with pytest.raises(AllocError, match="inside the 2 MiB frame"):
        mem.frames.free(pa + 4096)


def test_free_frame_still_mapped(mem):
    pt = PageTable.create(mem)
    pa = mem.frames.alloc(FrameKind.USER)
    pt.map(0x400000, pa, 4096, PAGE_SHARED)
    pt.map(0x500000, pa, 4096, PAGE_SHARED)
    with pytest.raises(AllocError, match="still referenced by 2 page-table entries"):
        mem.frames.free(pa)
    pt.unmap(0x400000, 4096)
    with pytest.raises(AllocError, match="still referenced by 1 page-table entry"):
        mem.frames.free(pa)
    pt.unmap(0x500000, 4096)
    mem.frames.free(pa)


def test_free_linked_page_table(mem):
    pt = PageTable.create(mem)
    pt.map(0x400000, mem.frames.alloc(FrameKind.USER), 4096, PAGE_SHARED)
    pud_table = mem.read_u64(pt.root) & 0x000FFFFFFFFFF000     # linked from pgd[0]
    assert mem.frames.kind_of(pud_table) == FrameKind.PGTABLE
    with pytest.raises(AllocError, match="still referenced by 1 page-table entry"):
        mem.frames.free(pud_table)


def test_direct_map_does_not_pin_frames(mem):
    """A FrameRefs policy exempting the direct map: the linear map never holds
    references, other leaves still do."""
    base = LAYOUT_4LEVEL.page_offset
    pt = PageTable.create(mem, policies=(FrameRefs(exempt=((base, base + LAYOUT_4LEVEL.direct_map_size),)),))
    pa = mem.frames.alloc(FrameKind.USER)
    pinned = mem.frames.alloc(FrameKind.USER)
    pt.map(base, 0, mem.size, 0x8000000000000063)
    pt.map(0x400000, pinned, 4096, PAGE_SHARED)
    mem.frames.free(pa)
    with pytest.raises(AllocError, match="still referenced by 1 page-table entry"):
        mem.frames.free(pinned)


def test_tables_without_policies_pin_nothing(mem):
    pt = PageTable.create(mem, policies=())
    pa = mem.frames.alloc(FrameKind.USER)
    pt.map(0x400000, pa, 4096, PAGE_SHARED)
    mem.frames.free(pa)


def test_out_of_memory():
    mem = PhysMem(32 << 20)
    mem.frames.alloc(FrameKind.USER, 9)
    with pytest.raises(AllocError, match="out of guest memory: no free 1048576 KiB frame"):
        mem.frames.alloc(FrameKind.USER, 18)
    n = 0
    with pytest.raises(AllocError, match="out of guest memory: no free 4 KiB frame"):
        while True:
            mem.frames.alloc(FrameKind.USER)
            n += 1
    assert n == (32 << 20) // 4096 - 512 - 1          # frame 0 is never handed out
    mem.close()


@pytest.mark.parametrize("pa,size,msg", [
    (0x1000, 0x800, "not page aligned"),
    (0x1000, 64 << 20, "beyond RAM"),
])
def test_reserve_refused(mem, pa, size, msg):
    with pytest.raises(AllocError, match=msg):
        mem.frames.reserve(pa, size, FrameKind.KERNEL_TEXT)


def test_reserve_busy(mem):
    pa = mem.frames.alloc(FrameKind.USER)
    with pytest.raises(AllocError, match="not free"):
        mem.frames.reserve(pa, 4096, FrameKind.KERNEL_TEXT)


def test_reserve_marks_each_frame():
    """reserve() as one slice and one dict update: every frame of the range
    gets the kind and the owner, exactly what a loop over the frames gave,
    and nothing else changes (frames around it, frames reserved with no owner)."""
    mem = PhysMem(32 << 20)
    f = mem.frames
    kind0, owner0 = bytes(f.kind), dict(f.owner)
    f.reserve(0x10000, 0x5000, FrameKind.KERNEL_TEXT, "kernel")
    f.reserve(0x20000, 0x2000, FrameKind.SECRET_POOL)
    want_kind = bytearray(kind0)
    want_owner = dict(owner0)
    for p in range(0x10, 0x15):                # the loop reserve() used to run
        want_kind[p] = FrameKind.KERNEL_TEXT
        want_owner[p] = "kernel"
    for p in range(0x20, 0x22):
        want_kind[p] = FrameKind.SECRET_POOL
    assert f.kind == want_kind and f.owner == want_owner
    assert list(f.owner) == list(want_owner)   # the same order too
    assert f.info(0x14000).owner == "kernel" and f.info(0x15000).kind == FrameKind.FREE
    mem.close()


def _rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_four_gib_guest_stays_small():
    before = _rss_kib()
    mem = PhysMem(4 << 30)
    pa = mem.frames.alloc(FrameKind.USER, 18)
    mem.write(pa + (1 << 29), b"x")
    assert mem.read(pa + (1 << 29), 1) == b"x"
    grown = _rss_kib() - before
    assert grown < 64 << 10, f"RSS grew by {grown} KiB for a 4 GiB guest"
    mem.close()
