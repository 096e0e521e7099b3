"""Paging modes as data and the tree visitor (emu/hw/paging/modes.py, visit.py)."""

from __future__ import annotations

import random

import pytest

from emu.errors import TableError
from emu.hw.paging import (FIVE_LEVEL, FOUR_LEVEL, NX, P, PAGE_KERNEL, PAGE_SHARED, RW, US, ControlState,
                           PageTable, TableVisitor, iter_leaves, translate)
from emu.hw.phys import SIZE_1G, SIZE_2M, FrameKind, PhysMem


@pytest.mark.parametrize("mode, rows, va_bits", [
    (FOUR_LEVEL, [("pgd", 39, False, True), ("pud", 30, True, False), ("pmd", 21, True, False),
                  ("pte", 12, True, False)], 48),
    (FIVE_LEVEL, [("pgd", 48, False, True), ("p4d", 39, False, True), ("pud", 30, True, False),
                  ("pmd", 21, True, False), ("pte", 12, True, False)], 57),
])
def test_modes_are_the_sdm_tables(mode, rows, va_bits):
    """SDM Vol. 3A 4.5: PS may map a 1 GiB page in a PDPTE and a 2 MiB page
    in a PDE, and is reserved in a PML4E/PML5E."""
    assert [(lv.name, lv.shift, lv.leaf_ok, lv.ps_reserved) for lv in mode.levels] == rows
    assert mode.va_bits == va_bits
    assert mode.lower_half_end == 1 << (va_bits - 1)


@pytest.mark.parametrize("mode, va, canonical, extended", [
    (FOUR_LEVEL, 0x00007FFFFFFFFFFF, True, 0x00007FFFFFFFFFFF),
    (FOUR_LEVEL, 0x0000800000000000, False, 0xFFFF800000000000),
    (FOUR_LEVEL, 0xFFFF800000000000, True, 0xFFFF800000000000),
    (FIVE_LEVEL, 0x0000800000000000, True, 0x0000800000000000),
    (FIVE_LEVEL, 0x0100000000000000, False, 0xFF00000000000000),
])
def test_canonical_and_sign_extension(mode, va, canonical, extended):
    assert mode.canonical(va) is canonical
    assert mode.sign_extend(va) == extended


def _random_tree(mem, mode, rng) -> PageTable:
    pt = PageTable.create(mem, mode, policies=())
    half = mode.lower_half_end
    windows = (half - (64 << 30), mode.sign_extend(half))      # the top of the user half, the kernel's start
    for _ in range(60):
        size = rng.choice([4096, 4096, SIZE_2M, SIZE_1G])
        base = rng.choice(windows) + rng.randrange(0, (32 << 30) // size) * size
        flags = rng.choice([PAGE_SHARED, PAGE_KERNEL, P | US, P | RW | US, P])
        pa = rng.randrange(0, mem.size // size) * size
        try:
            pt.map(base, pa, size, flags, page_size=size)
        except Exception:       # an overlap with an earlier mapping: skip it
            continue
    return pt


@pytest.mark.parametrize("mode", [FOUR_LEVEL, FIVE_LEVEL], ids=["4-level", "5-level"])
@pytest.mark.parametrize("seed", range(4))
def test_visitor_leaves_agree_with_the_walker(mode, seed):
    """Every leaf the visitor reports translates as reported; every page
    between leaves faults not-present."""
    rng = random.Random(seed)
    mem = PhysMem(4 << 30)                  # sparse: costs what is touched
    pt = _random_tree(mem, mode, rng)
    ctl = ControlState(la57=mode is FIVE_LEVEL, nxe=True)
    leaves = list(pt.leaves())
    assert len(leaves) >= 20 and {lf.size for lf in leaves} == {4096, SIZE_2M, SIZE_1G}
    assert leaves == sorted(leaves, key=lambda leaf: leaf.va)
    for leaf in leaves:
        for off in (0, leaf.size - 1):
            t = translate(mem, pt.root, leaf.va + off, 0, 0, ctl.replace(smap=False))
            assert not t.fault, (leaf, t)
            assert (t.pa, t.size, t.user, t.writable, t.nx) == (leaf.pa + off, leaf.size, leaf.user,
                                                                leaf.writable, leaf.nx)
        gap = leaf.va + leaf.size
        if not any(lf.va <= gap < lf.va + lf.size for lf in leaves) and mode.canonical(gap):
            f = translate(mem, pt.root, gap, 0, 0, ctl)
            assert f.fault and f.error_code == 0
    mem.close()


def test_range_limits_and_holes():
    mem = PhysMem(32 << 20)
    pt = PageTable.create(mem, policies=())
    for va in (0x400000, 0x401000, 0x600000, 0xFFFF888000000000):
        pt.map(va, 0x200000, 4096, PAGE_SHARED if va < 1 << 47 else PAGE_KERNEL)

    class Count(TableVisitor):
        holes = True

        def __init__(self, *a):
            super().__init__(*a)
            self.leaves, self.holes_seen = [], 0

        def leaf(self, va, level, e, epa, eff, nx):
            self.leaves.append((va, level.name, bool(eff & US), nx))

        def hole(self, va, level):
            self.holes_seen += 1

    v = Count(mem, pt.root, FOUR_LEVEL)
    v.walk([(0x401000, 0x600001)])
    assert v.leaves == [(0x401000, "pte", True, True), (0x600000, "pte", True, True)]
    assert [leaf.va for leaf in iter_leaves(mem, pt.root, 4, 1 << 47, 1 << 64)] == [0xFFFF888000000000]
    assert v.holes_seen > 0
    mem.close()


def test_loops_and_tables_outside_memory():
    mem = PhysMem(32 << 20)
    root = mem.frames.alloc(FrameKind.PGTABLE)
    mem.write_u64(root, root | P | RW | US)                    # pgd[0] points at the pgd itself
    big = mem.size + 0x1000
    mem.write_u64(root + 8, big | P | RW | US)                  # pgd[1] outside RAM
    with pytest.raises(TableError, match="loop in page tables: the pgd entry at"):
        list(iter_leaves(mem, root))

    class Carry(TableVisitor):
        def __init__(self, *a):
            super().__init__(*a)
            self.errors = []

        def broken(self, error):
            self.errors.append(str(error))

    v = Carry(mem, root, FOUR_LEVEL)
    v.walk()
    assert len(v.errors) == 2
    assert v.errors[0].startswith("loop in page tables")
    assert v.errors[1] == f"pud table at {big:#x} (for 0x8000000000) is outside RAM (size {mem.size:#x})"
    mem.close()


def test_effective_permissions_combine_down_the_levels():
    """U/S and R/W ANDed, XD ORed (SDM Vol. 3A 4.6.1)."""
    mem = PhysMem(32 << 20)
    pt = PageTable.create(mem, policies=(), table_flags=P | US | RW)
    pt.map(0x400000, 0x200000, 4096, P | US | RW)
    pud = mem.read_u64(pt.root) & ~0xFFF
    mem.write_u64(pt.root, pud | P | US | NX)                   # pgd: read-only, XD
    (leaf,) = pt.leaves()
    assert (leaf.user, leaf.writable, leaf.nx) == (True, False, True)
    mem.close()
