"""The page-table object: map/unmap/protect/split/share and refusals."""

import pytest

from emu.errors import AddressError, MappingError
from emu.hw.paging import (ADDR_MASK, NX, P, PAGE_KERNEL, PAGE_READONLY_EXEC, PAGE_SHARED, PAGE_TABLE, PAT, PAT_LARGE, PS, RW,
                        US, A, D, G, PageTable, iter_leaves, translate)
from emu.hw.phys import FrameKind, PhysMem

DM = 0xFFFF888000000000


@pytest.fixture
def pt(mem):
    return PageTable.create(mem, name="t")


@pytest.mark.parametrize("va,pa,size,page_size,exc,msg", [
    (0x0000800000000000, 0, 4096, None, AddressError, "not canonical"),
    (0x00007FFFFFFFF000, 0, 0x2000, None, AddressError, "not canonical"),
    (0x401000, 0, 0x2000, 2 << 20, MappingError, "virtual address 0x401000 is not aligned to the 2M"),
    (0x400000, 0x1000, 2 << 20, 2 << 20, MappingError, "physical address 0x1000 is not aligned to the 2M"),
    (0x400000, 0, 0x1800, 4096, MappingError, "size 0x1800 is not aligned to the 4K"),
    (0x400000, 63 << 20, 2 << 20, None, MappingError, "outside RAM"),
    (0x400000, 0, 4096, 8192, MappingError, "not 4K, 2M or 1G"),
    (0x400000, 0, 0, None, MappingError, "size must be positive"),
])
def test_map_refusals(pt, va, pa, size, page_size, exc, msg):
    with pytest.raises(exc, match=msg):
        pt.map(va, pa, size, PAGE_SHARED, page_size=page_size)


def test_map_refuses_flags_without_present(pt):
    with pytest.raises(MappingError, match="lack the present bit"):
        pt.map(0x400000, 0x1000, 4096, RW | US)


def test_map_refuses_overlap(pt):
    pt.map(0x400000, 0x1000, 4096, PAGE_SHARED)
    with pytest.raises(MappingError, match="0x400000 is already mapped"):
        pt.map(0x3FF000, 0x5000, 0x2000, PAGE_SHARED)
    pt.map(DM, 0, 2 << 20, PAGE_KERNEL)
    with pytest.raises(MappingError, match="inside a 2M page at 0xffff888000000000"):
        pt.map(DM + 0x1000, 0x1000, 4096, PAGE_KERNEL)
    with pytest.raises(MappingError, match="already mapped .pmd holds a page table"):
        pt.map(0x400000 - 0x0, 0x200000, 2 << 20, PAGE_SHARED, page_size=2 << 20)


def test_map_crossing_user_kernel_boundary(pt):
    with pytest.raises(AddressError, match="not canonical"):
        pt.map(0x00007FFFFFFFF000, 0, 0x2000, PAGE_SHARED)


@pytest.mark.parametrize("size,expect_level,expect_flags", [
    (4096, "pte", P | RW | US | A | NX),
    (2 << 20, "pmd", P | RW | US | A | NX | PS),
    (1 << 30, "pud", P | RW | US | A | NX | PS),
])
def test_map_picks_largest_page(size, expect_level, expect_flags):
    mem = PhysMem(2 << 30)
    pt = PageTable.create(mem)
    va = 1 << 30
    pa = 0 if size == 1 << 30 else 0x200000
    pt.map(va, pa, size, PAGE_SHARED)
    (leaf,) = list(pt.leaves())
    assert (leaf.va, leaf.size, leaf.pa, leaf.level) == (va, size, pa, expect_level)
    assert leaf.entry == pa | expect_flags


def test_pat_bit_moves_for_large_pages(pt):
    pt.map(1 << 30, 0x200000, 2 << 20, P | RW | PAT, page_size=2 << 20)
    s, _, e = pt.lookup(1 << 30)
    assert s == 21 and e & PAT_LARGE and e & PS


def test_intermediate_entries_are_page_table(pt):
    pt.map(0xFFFFFFFF81000000, 0x1000000, 4096, PAGE_KERNEL)
    r = translate(pt.mem, pt.root, 0xFFFFFFFF81000000)
    assert [s.entry & 0xFFF for s in r.steps[:-1]] == [PAGE_TABLE] * 3


def test_unmap_returns_frames_and_refuses_partial_large(pt):
    pt.map(0x400000, 0x1000, 0x3000, PAGE_SHARED)
    assert pt.unmap(0x400000, 0x2000) == [(0x400000, 0x1000), (0x401000, 0x2000)]
    assert translate(pt.mem, pt.root, 0x401000, "r", 3).error_code == 0x4
    assert translate(pt.mem, pt.root, 0x402000, "r", 3).fault is None
    pt.map(DM, 0, 2 << 20, PAGE_KERNEL)
    with pytest.raises(MappingError, match="would cut the 2M page at 0xffff888000000000; split it first"):
        pt.unmap(DM + 0x1000, 0x1000)


def test_protect(pt):
    pt.map(0x400000, 0x1000, 0x2000, PAGE_SHARED)
    assert pt.protect(0x400000, 0x2000, clear=RW) == 2
    assert translate(pt.mem, pt.root, 0x401000, "w", 3).error_code == 0x7
    with pytest.raises(MappingError, match="0x402000 is not mapped"):
        pt.protect(0x401000, 0x2000, set=RW)


@pytest.mark.parametrize("flags,child_flags", [
    # 2M -> 4K: PAT 12 -> 7, PSE dropped, G kept on present entries
    (P | RW | A | D | G | NX | PS | PAT_LARGE, P | RW | A | D | G | NX | PAT),
    (P | A | D | G | PS, P | A | D | G),
    # non-present large entry: G dropped (pgprot_clear_protnone_bits)
    (A | D | G | PS | NX, A | D | NX),
])
def test_split_2m_follows_linux_rules(pt, flags, child_flags):
    pt.map(DM, 0, 2 << 20, PAGE_KERNEL, page_size=2 << 20)
    _, epa, _ = pt.lookup(DM)
    pt.mem.write_u64(epa, 0x200000 | flags)
    table = pt.split(DM)
    assert pt.mem.read_u64(epa) == table | P | RW | A | D            # _KERNPG_TABLE
    assert pt.mem.read_u64(table) == 0x200000 | child_flags
    assert pt.mem.read_u64(table + 8 * 511) == (0x200000 + 511 * 4096) | child_flags


def test_split_1g_keeps_pse():
    pt = PageTable.create(PhysMem(2 << 30))
    pt.map(DM, 0, 1 << 30, PAGE_KERNEL, page_size=1 << 30)
    table = pt.split(DM)
    e = pt.mem.read_u64(table + 8 * 3)
    assert e == (3 << 21) | PAGE_KERNEL | PS
    pt.split(DM + (3 << 21))
    s, _, e4 = pt.lookup(DM + (3 << 21) + 0x5000)
    assert s == 12 and e4 == ((3 << 21) + 0x5000) | PAGE_KERNEL


def test_split_refusal(pt):
    pt.map(0x400000, 0x1000, 4096, PAGE_SHARED)
    with pytest.raises(MappingError, match="not mapped by a 2M or 1G page"):
        pt.split(0x400000)


def test_split_preserves_translations_and_refcounts(mem):
    pt = PageTable.create(mem)
    pa = mem.frames.alloc(FrameKind.USER, 9)
    pt.map(0x40000000, pa, 2 << 20, PAGE_SHARED)
    assert mem.frames.info(pa).refs == 1
    pt.split(0x40000000)
    assert mem.frames.info(pa).refs == 512
    # a user huge page is split under _PAGE_TABLE (THP), not CPA's _KERNPG_TABLE
    assert translate(mem, pt.root, 0x40000000, "r", 3).steps[-2].entry & 0xFFF == PAGE_TABLE
    assert translate(mem, pt.root, 0x40000000 + 0x5123, "w", 3).pa == pa + 0x5123
    pt.unmap(0x40000000, 2 << 20)
    assert mem.frames.info(pa).refs == 0
    mem.frames.free(pa)


def test_share_subtree_at_level(mem):
    kernel = PageTable.create(mem, name="kernel")
    kernel.map(0xFFFFFE0000000000, 0x5000, 4096, PAGE_KERNEL)
    other = PageTable.create(mem, name="other")
    assert other.share(kernel, 0xFFFFFE0000000000, 1 << 39, "pgd") == 1
    # one entry copied: the same lower tables serve both roots
    assert mem.read_u64(other.root + 8 * 508) == mem.read_u64(kernel.root + 8 * 508)
    kernel.map(0xFFFFFE0000001000, 0x6000, 4096, PAGE_KERNEL)   # visible through the share
    assert translate(mem, other.root, 0xFFFFFE0000001000).pa == 0x6000


def test_share_at_pmd_level_and_conflicts(mem):
    kernel = PageTable.create(mem)
    kernel.map(0xFFFFFFFF81200000, 0x1200000, 0x3000, PAGE_KERNEL, page_size=4096)
    user = PageTable.create(mem)
    assert user.share(kernel, 0xFFFFFFFF81200000, 2 << 20, "pmd") == 1
    assert translate(mem, user.root, 0xFFFFFFFF81202000).pa == 0x1202000
    # the PUD and PGD above the shared PMD are the user table's own
    assert mem.read_u64(user.root + 8 * 511) != mem.read_u64(kernel.root + 8 * 511)
    with pytest.raises(MappingError, match="needs 2M alignment"):
        user.share(kernel, 0xFFFFFFFF81201000, 2 << 20, "pmd")
    with pytest.raises(MappingError, match="unknown level 'p4d'"):
        user.share(kernel, 0xFFFFFFFF81200000, 2 << 20, "p4d")


def test_pti_pair_mirrors_user_pgd_entries(mem):
    pgd = PageTable.create(mem, pti=True)
    assert pgd.root % 8192 == 0
    pgd.map(0x400000, 0x7000, 4096, PAGE_READONLY_EXEC)
    kernel_e = mem.read_u64(pgd.root)
    user_e = mem.read_u64(pgd.user_root)
    assert kernel_e == user_e | NX and not user_e & NX     # pti_set_user_pgtbl
    # kernel mappings are not propagated to the user half
    pgd.map(DM, 0, 2 << 20, PAGE_KERNEL)
    assert mem.read_u64(pgd.user_root + 8 * 273) == 0
    # user code run on the kernel CR3 faults on the first fetch
    assert translate(mem, pgd.root, 0x400000, "x", 3).error_code == 0x15
    assert translate(mem, pgd.user_root, 0x400000, "x", 3).fault is None


def test_leaves_effective_permissions(mem):
    pt = PageTable.create(mem)
    pt.map(0x400000, 0x1000, 4096, PAGE_SHARED)
    pt.map(0xFFFFFFFF81000000, 0x2000, 4096, P | A)
    got = [(lf.va, lf.user, lf.writable, lf.nx) for lf in pt.leaves()]
    assert got == [(0x400000, True, True, True), (0xFFFFFFFF81000000, False, False, False)]
    mem.write_u64(pt.lookup(0xFFFFFFFF81000000)[1], 0x12345000 | A)   # make it non-present
    assert [lf.va for lf in pt.leaves()] == [0x400000]
    (np,) = [lf for lf in iter_leaves(mem, pt.root, nonpresent=True) if not lf.present]
    assert (np.va, np.pa) == (0xFFFFFFFF81000000, 0x12345000 & ADDR_MASK)


def test_five_level_table(mem):
    pt = PageTable.create(mem, mode=5)
    va = 0x00F0000000400000
    pt.map(va, 0x3000, 4096, PAGE_SHARED)
    r = pt.translate(va + 0x10, "w", 3)
    assert r.pa == 0x3010 and len(r.steps) == 5
    with pytest.raises(AddressError, match="not canonical for 5-level"):
        pt.map(0x0100000000000000, 0, 4096, PAGE_SHARED)
