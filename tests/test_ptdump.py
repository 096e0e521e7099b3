"""ptdump output, line for line, against Linux 6.1's dump_pagetables rules.

The expected lines were derived by hand from note_page()/printk_prot():
holes print 30 blank columns, a level change always breaks a run, one
section marker advances per entry (so "LDT remap" prints after the first
kernel line), and the final flush ends the last run at address 0.
"""

import pytest

from emu.hw.paging import (NX, P, PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_READONLY_EXEC, PAT, PCD, PWT, RW, US,
                        A, D, G, PageTable)
from emu.hw.phys import PhysMem
from emu.tools.ptdump import format_prot, format_range, ptdump_lines, ptdump_runs

GOLDEN = """\
---[ User Space ]---
0x0000000000000000-0x0000000000400000           4M                               pmd
0x0000000000400000-0x0000000000401000           4K USR ro                     x  pte
0x0000000000401000-0x0000000000600000        2044K                               pte
0x0000000000600000-0x0000000040000000        1018M                               pmd
0x0000000040000000-0x0000008000000000         511G                               pud
0x0000008000000000-0xffff880000000000   17179745792G                               pgd
---[ Kernel Space ]---
0xffff880000000000-0xffff888000000000         512G                               pgd
---[ LDT remap ]---
0xffff888000000000-0xffff888000200000           2M     RW         PSE     GLB NX pmd
---[ Low Kernel Mapping ]---
0xffff888000200000-0xffff888000400000           2M     RW         PSE     GLB NX pmd
0xffff888000400000-0xffff888040000000        1020M                               pmd
0xffff888040000000-0xffff890000000000         511G                               pud
0xffff890000000000-0xffffc90000000000          64T                               pgd
---[ vmalloc() Area ]---
0xffffc90000000000-0xffffea0000000000          33T                               pgd
---[ Vmemmap ]---
0xffffea0000000000-0xfffffe0000000000          20T                               pgd
---[ CPU entry Area ]---
0xfffffe0000000000-0xffffff0000000000           1T                               pgd
---[ ESPfix Area ]---
0xffffff0000000000-0x0000000000000000           1T                               pgd"""


def test_golden_dump(mem):
    pt = PageTable.create(mem)
    pt.map(0x400000, 0x1000, 4096, PAGE_READONLY_EXEC)
    pt.map(0xFFFF888000000000, 0, 4 << 20, PAGE_KERNEL)
    assert "\n".join(ptdump_lines(mem, pt.root)) == GOLDEN


@pytest.mark.parametrize("flags,level,text", [
    (0, 4, " " * 30 + "pte"),
    (A | D | NX, 4, " " * 30 + "pte"),                               # non-present, non-zero
    (P | RW | US | NX, 4, "USR RW                     NX pte"),
    (P | PWT | PCD | PAT | G, 4, "    ro PWT PCD     PAT GLB x  pte"),
    (P | RW | 0x80 | (1 << 12), 3, "    RW         PSE PAT     x  pmd"),
    (P | 0x80, 4, "    ro             PAT     x  pte"),                   # bit 7 is PAT in a PTE
])
def test_flag_columns(flags, level, text):
    assert format_prot(flags, level) == text
    assert len(format_prot(flags | P, level)) == 30 + len(text.split()[-1])


@pytest.mark.parametrize("start,end,text", [
    (0, 0x1000, "0x0000000000000000-0x0000000000001000           4K "),
    (0, 0x1800, "0x0000000000000000-0x0000000000001800           6K "),
    (0, 0x1234, "0x0000000000000000-0x0000000000001234        4660B "),
    (0, 1 << 47, "0x0000000000000000-0x0000800000000000         128T "),
])
def test_range_column(start, end, text):
    assert format_range(start, end) == text


def test_espfix_section_is_capped_at_16_lines(mem):
    pt = PageTable.create(mem)
    for i in range(20):   # 20 pages separated by holes: 40 runs
        pt.map(0xFFFFFF0000000000 + 0x2000 * i, 0x1000, 4096, PAGE_KERNEL_RO)
    # something past the next marker, so the ESPfix section is closed
    pt.map(0xFFFFFFFF81000000, 0x1000, 4096, PAGE_KERNEL_RO)
    lines = ptdump_lines(mem, pt.root)
    start = lines.index("---[ ESPfix Area ]---")
    end = lines.index("---[ EFI Runtime Services ]---")
    body = lines[start + 1:end]
    # 20 pages + 20 holes + a pmd-level hole + a pud-level hole = 42 runs; 16 shown
    assert len(body) == 16 + 1
    assert body[16] == "... 26 entries skipped ... "


def test_runs_are_structured(mem):
    pt = PageTable.create(mem)
    pt.map(0x400000, 0x1000, 4096, PAGE_READONLY_EXEC)
    runs = [r for r in ptdump_runs(mem, pt.root) if r.present]
    assert [(r.start, r.size, r.level) for r in runs] == [(0x400000, 4096, "pte")]
    assert runs[0].effective & US and not runs[0].effective & NX


def test_five_level_names_p4d(mem):
    pt = PageTable.create(mem, mode=5)
    pt.map(0x400000, 0x1000, 4096, PAGE_READONLY_EXEC)
    lines = ptdump_lines(mem, pt.root, 5)
    assert lines[1].endswith("pmd") and lines[2].endswith("USR ro                     x  pte")
    assert any(line.endswith("p4d") for line in lines)
    assert "---[ LDT remap ]---" in lines        # ff10000000000000 in 5-level


def test_rsvd_loop_is_reported(mem):
    from emu.errors import TableError

    pt = PageTable.create(mem)
    mem.write_u64(pt.root, pt.root | P | RW)           # pgd[0] -> pgd itself
    with pytest.raises(TableError, match="loop in page tables"):
        ptdump_lines(mem, pt.root)


def test_bigger_ram_direct_map(tmp_path):
    mem = PhysMem(2 << 30)
    pt = PageTable.create(mem)
    pt.map(0xFFFF888000000000, 0, 2 << 30, PAGE_KERNEL)       # two 1G pages
    lines = ptdump_lines(mem, pt.root)
    assert "0xffff888040000000-0xffff888080000000           1G     RW         PSE     GLB NX pud" in lines
    mem.close()


# --- memoized subtrees and section markers -------------------------------------------------------
VMALLOC = 0xFFFFC90000000000


@pytest.mark.parametrize("marker_at", [None, VMALLOC + (2 << 20), VMALLOC + (2 << 20) + 0x3000,
                                       VMALLOC + (4 << 20) + 0x1000])
def test_a_replayed_subtree_never_hides_a_marker(marker_at):
    """One pte table referenced by three pmd entries: the second and third
    references are replayed from the first, except where a section marker
    falls inside them (the compressed states would miss its break).  The
    lines equal those of the plain walk wherever the marker is."""
    from emu.linux.layout import layout_for

    mem = PhysMem(32 << 20)
    pt = PageTable.create(mem, policies=())
    pt.map(VMALLOC, 0x100000, 0x1000, PAGE_KERNEL, page_size=4096)
    pt.map(VMALLOC + 0x5000, 0x101000, 0x2000, PAGE_KERNEL_RO, page_size=4096)
    pte_slot = pt.lookup(VMALLOC)[1]
    pte_table = pte_slot & ~0xFFF
    pud = mem.read_u64(pt.root + 8 * ((VMALLOC >> 39) & 511)) & 0x000FFFFFFFFFF000
    pmd_slot = (mem.read_u64(pud + 8 * ((VMALLOC >> 30) & 511)) & 0x000FFFFFFFFFF000) + 8 * ((VMALLOC >> 21) & 511)
    assert mem.read_u64(pmd_slot) & 0x000FFFFFFFFFF000 == pte_table
    for k in (1, 2):
        mem.write_u64(pmd_slot + 8 * k, mem.read_u64(pmd_slot))            # two aliases of the pte table
    lay = layout_for(4)
    if marker_at is not None:
        lay = lay.with_values({"vmemmap_base": marker_at})
    memo = ptdump_lines(mem, pt.root, 4, lay)
    plain = ptdump_lines(mem, pt.root, 4, lay, memoize=False)
    assert memo == plain
    assert sum(1 for line in memo if " RW " in line and line.endswith("GLB NX pte")) == 3
    if marker_at is not None:
        i = memo.index("---[ Vmemmap ]---")
        assert memo[i + 1].startswith(f"0x{marker_at:016x}-")
    mem.close()
