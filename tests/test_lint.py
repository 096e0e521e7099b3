"""Each lint fires on exactly the construction it is about."""

import pytest

from emu.dev.demo import build_demo
from emu.tools.lint import check
from emu.hw.paging import (NX, P, PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_KERNEL_RX, PAGE_READONLY_EXEC, G,
                        PAGE_SHARED, PAGE_SHARED_EXEC, RW, US, A, D, PageTable)
from emu.hw.phys import FrameKind

VMALLOC = 0xFFFFC90000000000


@pytest.fixture(scope="module")
def demo():
    return build_demo(64 << 20)


def test_demo_layout_is_clean(demo):
    assert check(demo.mem, demo.kernel.root) == []


def findings(mem, pt, only=None):
    out = check(mem, pt.root) if only is None else check(mem, pt.root, only=only)
    return [(f.lint, f.va, f.size) for f in out]


@pytest.fixture
def pt(mem):
    return PageTable.create(mem)


def test_wx(mem, pt):
    f = mem.frames.alloc(FrameKind.KERNEL_DATA)
    pt.map(VMALLOC, f, 4096, PAGE_KERNEL | 0)                     # RW NX: fine
    pt.map(VMALLOC + 0x1000, f, 0x2000, P | RW | A | D, page_size=4096)      # RW, executable
    assert findings(mem, pt, ("wx",)) == [("wx", VMALLOC + 0x1000, 0x2000)]


def test_user_kernel_and_vsyscall_exemption(mem, pt):
    f = mem.frames.alloc(FrameKind.KERNEL_DATA)
    pt.map(VMALLOC, f, 4096, PAGE_KERNEL_RO | US)
    pt.map(0xFFFFFFFFFF600000, f, 4096, PAGE_KERNEL_RO | US)      # the vsyscall page
    assert findings(mem, pt, ("user-kernel",)) == [("user-kernel", VMALLOC, 4096)]


@pytest.mark.parametrize("x_va,x_flags,w_va,w_flags,fires", [
    # kernel code writable through another mapping: reported
    (VMALLOC, PAGE_KERNEL_RX, 0xFFFF888000000000, PAGE_KERNEL, True),
    # user code writable at another user address: reported
    (0x400000, PAGE_READONLY_EXEC, 0x600000, PAGE_SHARED, True),
    # user code writable through the kernel's direct map: normal Linux
    (0x400000, PAGE_READONLY_EXEC, 0xFFFF888000000000, PAGE_KERNEL, False),
    # both aliases read-only
    (VMALLOC, PAGE_KERNEL_RX, 0xFFFF888000000000, PAGE_KERNEL_RO, False),
])
def test_alias_wx(mem, pt, x_va, x_flags, w_va, w_flags, fires):
    f = mem.frames.alloc(FrameKind.KERNEL_DATA)
    pt.map(x_va, f, 4096, x_flags)
    pt.map(w_va, f, 4096, w_flags)
    got = [(f_.lint, f_.va, f_.alias) for f_ in check(mem, pt.root, only=("alias-wx",))]
    assert got == ([("alias-wx", x_va, (w_va, f))] if fires else [])


def test_alias_runs_merge(mem, pt):
    f = mem.frames.alloc(FrameKind.KERNEL_DATA, 9)
    pt.map(VMALLOC, f, 0x4000, PAGE_KERNEL_RX, page_size=4096)
    pt.map(VMALLOC + (2 << 20), f, 2 << 20, PAGE_KERNEL)
    got = check(mem, pt.root, only=("alias-wx",))
    assert [(g.va, g.size, g.alias) for g in got] == [(VMALLOC, 0x4000, (VMALLOC + (2 << 20), f))]


@pytest.mark.parametrize("level,bits", [
    ("pte", 1 << 45), ("pmd-leaf", 1 << 14), ("pgd", 0x80),
])
def test_reserved_bits(mem, pt, level, bits):
    if level == "pte":
        pt.map(VMALLOC, 0x5000, 4096, PAGE_KERNEL_RO | bits)
        va = VMALLOC
    elif level == "pmd-leaf":
        pt.map(VMALLOC, 0x200000, 2 << 20, PAGE_KERNEL_RO)
        epa = pt.lookup(VMALLOC)[1]
        mem.write_u64(epa, mem.read_u64(epa) | bits)
        va = VMALLOC
    else:
        pt.map(VMALLOC, 0x5000, 4096, PAGE_KERNEL_RO)
        epa = pt.root + 8 * ((VMALLOC >> 39) & 511)
        mem.write_u64(epa, mem.read_u64(epa) | bits)
        va = VMALLOC & ~((1 << 39) - 1)
    got = check(mem, pt.root, only=("reserved",))
    assert [(g.lint, g.va) for g in got] == [("reserved", va)]
    assert f"reserved bits {bits:#x}" in got[0].message


def test_pgtable_owner(mem, pt):
    pt.map(VMALLOC, 0x5000, 4096, PAGE_KERNEL_RO)
    # point a pmd at a frame that the allocator owns as user data
    bogus = mem.frames.alloc(FrameKind.USER)
    pmd_slot = pt.root
    for sh in (39, 30):
        pmd_slot = (mem.read_u64(pmd_slot + 8 * ((VMALLOC >> sh) & 511)) & ~0xFFF) & ((1 << 52) - 1)
    mem.write_u64(pmd_slot + 8 * 1, bogus | P | RW)
    got = check(mem, pt.root, only=("pgtable-owner",))
    assert [(g.lint, g.va) for g in got] == [("pgtable-owner", VMALLOC + (2 << 20))]
    assert "owned as user" in got[0].message


@pytest.mark.parametrize("value,fires", [
    (0x8000000000000060 | (0x1234 << 12), True),                               # PFN kept: L1TF-exposed
    (0x8000000000000060 | ((~(0x1234 << 12)) & 0x000FFFFFFFFFF000), False),  # inverted, as Linux
    (0, False),
])
def test_l1tf_inversion(mem, pt, value, fires):
    pt.map(VMALLOC, 0x5000, 0x2000, PAGE_KERNEL, page_size=4096)
    mem.write_u64(pt.lookup(VMALLOC + 0x1000)[1], value)
    got = findings(mem, pt, ("l1tf",))
    assert got == ([("l1tf", VMALLOC + 0x1000, 4096)] if fires else [])


def test_l1tf_ignores_user_half(mem, pt):
    pt.map(0x400000, 0x5000, 4096, PAGE_SHARED)
    mem.write_u64(pt.lookup(0x400000)[1], A | D | NX | 0x5000)
    assert findings(mem, pt, ("l1tf",)) == []


def test_clean_pieces_do_not_fire(mem, pt):
    f = mem.frames.alloc(FrameKind.USER)
    pt.map(0x400000, f, 4096, PAGE_SHARED_EXEC & ~RW)
    pt.map(0xFFFF888000000000, 0, mem.size, PAGE_KERNEL)
    assert check(mem, pt.root) == []


# --- on images of real machines -------------------------------------------------------------------
@pytest.mark.parametrize("reserved,fires", [(0, True), (1 << 51, False)])
def test_alias_wx_ignores_leaves_with_reserved_bits(mem, pt, reserved, fires):
    """A leaf with a reserved bit can never be used (PF_RSVD): no alias, no W+X
    through it; the reserved lint alone reports it."""
    f = mem.frames.alloc(FrameKind.KERNEL_DATA)
    pt.map(VMALLOC, f, 4096, PAGE_KERNEL_RX)
    pt.map(0xFFFF888000000000, f, 4096, PAGE_KERNEL | reserved)
    got = [(g.lint, g.va) for g in check(mem, pt.root, only=("alias-wx", "wx", "reserved"))]
    want = [("alias-wx", VMALLOC)] if fires else [("reserved", 0xFFFF888000000000)]
    assert got == want


def _aliased(mem, pt, leaf_flags, user=False):
    """ESPfix's shape: one pte table referenced by every entry of a pmd table,
    that pmd table by four pud entries (arch/x86/kernel/espfix_64.c)."""
    f = mem.frames.alloc(FrameKind.KERNEL_DATA)
    ptes = mem.frames.alloc(FrameKind.PGTABLE)
    for i in range(0, 512, 16):
        mem.write_u64(ptes + 8 * i, f | leaf_flags)
    table = P | RW | A | D | (US if user else 0)
    pmd = mem.frames.alloc(FrameKind.PGTABLE)
    for i in range(512):
        mem.write_u64(pmd + 8 * i, ptes | table)
    pt.map(VMALLOC, f, 4096, PAGE_KERNEL_RO)                   # make the upper levels exist
    pgd_slot = pt.root + 8 * ((VMALLOC >> 39) & 511)
    mem.write_u64(pgd_slot, mem.read_u64(pgd_slot) | (US if user else 0))
    pud = mem.read_u64(pgd_slot) & ~0xFFF & ((1 << 52) - 1)
    for i in range(4):
        mem.write_u64(pud + 8 * (8 + i), pmd | table)
    return f


@pytest.mark.parametrize("flags,count", [
    (P | RW | A | D, 2 * 65536),                 # W+X: wx, and alias-wx (each alias writable at another)
    (P | RW | US | A | D | NX, 65536),           # user-kernel
    (PAGE_KERNEL_RO, 0),                         # ESPfix's own: read-only, NX
])
def test_memoized_lints_equal_the_plain_walk(mem, pt, flags, count):
    """65,536 aliases, findings and all: walked once and repeated, the same
    findings as walking every alias."""
    _aliased(mem, pt, flags, user=bool(flags & US))
    memo = check(mem, pt.root)
    plain = check(mem, pt.root, memoize=False)
    assert memo == plain
    assert len(memo) == count


def test_a_broken_table_is_reported_once(mem, pt):
    """A loop reached through 2,048 aliases is one finding, and the rest is checked."""
    f = _aliased(mem, pt, P | A | D | G)
    pud = mem.read_u64(pt.root + 8 * ((VMALLOC >> 39) & 511)) & ~0xFFF & ((1 << 52) - 1)
    pmd = mem.read_u64(pud + 8 * 8) & ~0xFFF & ((1 << 52) - 1)
    mem.write_u64(pmd + 8 * 3, pud | P | RW)                  # a pmd entry pointing back at the pud
    pt.map(0xFFFF888000000000, f, 4096, P | RW | A | D)       # W+X elsewhere: still found
    got = check(mem, pt.root)
    broken = [g for g in got if g.lint == "broken"]
    assert len(broken) == 1 and "loop in page tables" in broken[0].message
    assert broken[0].message.endswith("not walked (reached through 4 paths)")
    assert [g.va for g in got if g.lint == "wx"] == [0xFFFF888000000000]
