"""The TLB model against the SDM's invalidation rules (Vol. 3A 4.10), as a
table of operation sequences and the stale records each leaves, in the
style of kvm-unit-tests' access.c (docs/tlb.md)."""

from __future__ import annotations

import pytest

from emu.hw.paging import (FOUR_LEVEL, NX, PAGE_KERNEL, PAGE_SHARED, RW, US, ControlState, G,
                           PageTable)
from emu.hw.phys import FrameKind, PhysMem
from emu.hw.tlb import GLOBAL, Tlb
from emu.hw.x86 import CR0_PG, CR4_PAE, CR4_PCIDE, CR4_PGE

V = 0x401000                 # a user page in R1 only
K = 0xFFFF888000200000       # a global kernel page, shared by R1 and R2
BIG = 0xFFFF888040000000     # a kernel 2 MiB page


class World:
    """Two address spaces R1 and R2 sharing their kernel half, and a TLB model."""

    def __init__(self, pcide: bool = True):
        self.mem = PhysMem(64 << 20)
        self.r1 = PageTable.create(self.mem, policies=())
        self.r2 = PageTable.create(self.mem, policies=())
        self.f = self.mem.frames.alloc(FrameKind.USER)
        self.r1.map(V, self.f, 4096, PAGE_SHARED)
        kpage = self.mem.frames.alloc(FrameKind.KERNEL_DATA)
        self.r1.map(K, kpage, 4096, PAGE_KERNEL)                 # PAGE_KERNEL has G
        self.r1.map(BIG, 0x200000, 0x200000, PAGE_KERNEL & ~G)
        self.r2.share(self.r1, 0xFFFF800000000000, 1 << 39, "pgd")   # the kernel half, shared
        self.findings = []
        self.tlb = Tlb(self.mem, FOUR_LEVEL, self.findings.append)
        cr4 = CR4_PAE | CR4_PGE | (CR4_PCIDE if pcide else 0)
        self.cr4 = cr4
        self.tlb.start(self.r2.root | (2 if pcide else 0), cr4)       # R2 current at the start
        self.tlb.add_root(self.r1.root)

    def root(self, name: str) -> int:
        return {"R1": self.r1.root, "R2": self.r2.root}[name]

    def slot(self, va: int, level: str) -> int:
        hit = self.r1._slot(va, FOUR_LEVEL.level(level).shift, create=False)
        assert hit is not None
        return hit

    def write(self, epa: int, new: int) -> None:
        old = self.mem.read_u64(epa)
        self.mem.write_u64(epa, new)
        self.tlb.entry_written(epa, old, new)

    def op(self, text: str) -> None:
        w = text.split()
        t = self.tlb
        if w[0] == "cr3":                                   # cr3 R1 1 [noflush]
            value = self.root(w[1]) | int(w[2], 0) | ((1 << 63) if "noflush" in w else 0)
            t.cr3_written(value)
        elif w[0] == "unmap":                               # unmap V|K  (the leaf cleared)
            self.write(self.slot(_va(w[1]), "pte"), 0)
        elif w[0] == "protect":                             # protect V ro|rw|nx|x
            epa = self.slot(_va(w[1]), "pte")
            e = self.mem.read_u64(epa)
            new = {"ro": e & ~RW, "rw": e | RW, "nx": e | NX, "x": e & ~NX, "user": e | US}[w[2]]
            self.write(epa, new)
        elif w[0] == "remap":                               # remap V (another frame)
            epa = self.slot(_va(w[1]), "pte")
            other = self.mem.frames.alloc(FrameKind.USER)
            self.write(epa, (self.mem.read_u64(epa) & ~0x000FFFFFFFFFF000) | other)
        elif w[0] == "unlink":                              # unlink V pmd  (a table pointer cleared)
            self.write(self.slot(_va(w[1]), w[2]), 0)
        elif w[0] == "split":                               # split BIG (2M -> 4K, same rights)
            epa = self.slot(_va(w[1]), "pmd")
            old = self.mem.read_u64(epa)
            self.r1.split(_va(w[1]))
            self.tlb.entry_written(epa, old, self.mem.read_u64(epa))
        elif w[0] == "invlpg":
            t.invlpg(_va(w[1]))
        elif w[0] == "invpcid":                             # invpcid TYPE [PCID [VA]]
            kind = int(w[1])
            t.invpcid(kind, int(w[2], 0) if len(w) > 2 else 0, _va(w[3]) if len(w) > 3 else 0)
        elif w[0] == "pge":                                 # toggle CR4.PGE off and on
            t.cr4_written(self.cr4, self.cr4 & ~CR4_PGE)
            t.cr4_written(self.cr4 & ~CR4_PGE, self.cr4)
        elif w[0] == "nopcide":
            t.cr4_written(self.cr4, self.cr4 & ~CR4_PCIDE)
        elif w[0] == "paging-off":
            t.cr0_written(CR0_PG | 1, 1)
        elif w[0] == "free":                                # free V's frame
            t.frame_freed(self.f, 4096)
        else:
            raise AssertionError(text)

    def cached(self) -> set:
        return {(r.kind, "G" if r.pcid == GLOBAL else r.pcid, _name(r.va)) for r in self.tlb.cached()}


def _va(name: str) -> int:
    return {"V": V, "K": K, "BIG": BIG, "BIG+1000": BIG + 0x1000}[name]


def _name(va: int) -> str:
    return {V: "V", K: "K", BIG: "BIG", BIG + 0x1000: "BIG+1000", V & ~0x1FFFFF: "V-pmd"}.get(va, hex(va))


# (operations, the stale records left: (kind, pcid or G, address))
CASES = [
    # a translation valid while PCID 1 was current, then taken away
    (["cr3 R1 1", "unmap V"], {("tlb", 1, "V")}),
    (["cr3 R1 1", "unmap V", "invlpg V"], set()),
    (["cr3 R1 1", "unmap V", "invlpg K"], {("tlb", 1, "V")}),               # another page
    (["cr3 R1 1", "unmap V", "cr3 R1 1 noflush"], {("tlb", 1, "V")}),       # NOFLUSH keeps it
    (["cr3 R1 1", "unmap V", "cr3 R1 1"], set()),                          # bit 63 clear: PCID 1 flushed
    (["cr3 R1 1", "unmap V", "cr3 R1 2"], {("tlb", 1, "V")}),               # another PCID flushed
    (["cr3 R1 1", "unmap V", "invpcid 0 1 V"], set()),
    (["cr3 R1 1", "unmap V", "invpcid 0 2 V"], {("tlb", 1, "V")}),
    (["cr3 R1 1", "unmap V", "invpcid 1 1"], set()),
    (["cr3 R1 1", "unmap V", "invpcid 1 2"], {("tlb", 1, "V")}),
    (["cr3 R1 1", "unmap V", "invpcid 2"], set()),
    (["cr3 R1 1", "unmap V", "invpcid 3"], set()),
    (["cr3 R1 1", "unmap V", "pge"], set()),
    (["cr3 R1 1", "unmap V", "paging-off"], set()),
    # only rights taken away make a record (a stricter cached entry is harmless)
    (["cr3 R1 1", "protect V ro"], {("tlb", 1, "V")}),
    (["cr3 R1 1", "protect V nx"], set()),                                  # already NX
    (["cr3 R1 1", "protect V ro", "cr3 R1 1", "protect V rw"], set()),
    (["cr3 R1 1", "remap V"], {("tlb", 1, "V")}),
    # which PCIDs could have cached it
    (["cr3 R2 2", "unmap V"], set()),                                       # R1 never current
    (["cr3 R1 1", "cr3 R2 2 noflush", "unmap V"], {("tlb", 1, "V")}),
    (["cr3 R1 1", "invlpg V", "cr3 R2 2", "unmap V"], {("tlb", 1, "V")}),   # re-cached after the invlpg
    (["cr3 R1 1", "cr3 R2 2", "invpcid 0 1 V", "unmap V"], set()),          # invalidated after it left
    (["cr3 R1 1", "cr3 R2 2", "invpcid 1 1", "unmap V"], set()),
    # a global translation: every PCID's CR3 writes keep it
    (["cr3 R1 1", "unmap K"], {("tlb", "G", "K")}),
    (["cr3 R1 1", "unmap K", "cr3 R1 1", "cr3 R2 2"], {("tlb", "G", "K")}),
    (["cr3 R1 1", "unmap K", "invpcid 1 1", "invpcid 3"], {("tlb", "G", "K")}),
    (["cr3 R1 1", "unmap K", "invlpg K"], set()),                           # INVLPG takes globals too
    (["cr3 R1 1", "unmap K", "invpcid 0 1 K"], {("tlb", "G", "K")}),        # type 0 does not
    (["cr3 R1 1", "unmap K", "invpcid 2"], set()),
    (["cr3 R1 1", "unmap K", "pge"], set()),
    (["cr3 R1 1", "unmap K", "nopcide"], set()),
    # paging-structure caches: a table pointer cleared
    (["cr3 R1 1", "unlink V pmd"], {("psc", 1, "V-pmd"), ("tlb", 1, "V")}),
    (["cr3 R1 1", "unlink V pmd", "invlpg K"], {("tlb", 1, "V")}),          # every PSC entry of the PCID
    (["cr3 R1 1", "unlink V pmd", "invlpg V"], set()),
    (["cr3 R1 1", "unlink V pmd", "invpcid 0 1 V"], set()),
    # a split keeps every translation: nothing stale, but the 2 MiB translation
    # may stay cached beside the 4 KiB ones (SDM 4.10.2.3) until invalidated
    (["cr3 R1 1", "split BIG"], {("size", 1, "BIG")}),
    (["cr3 R1 1", "split BIG", "invpcid 2"], set()),
    (["cr3 R1 1", "split BIG", "invlpg BIG+1000"], set()),            # INVLPG: every page size
    (["cr3 R1 1", "split BIG", "invpcid 1 2"], {("size", 1, "BIG")}),
    # then a 4 KiB entry inside changes: the 2 MiB record now grants more than the tables
    (["cr3 R1 1", "split BIG", "unmap BIG+1000"], {("tlb", 1, "BIG"), ("tlb", 1, "BIG+1000")}),
    (["cr3 R1 1", "split BIG", "pge", "unmap BIG+1000"], {("tlb", 1, "BIG+1000")}),
]


@pytest.mark.parametrize("ops, expected", CASES, ids=[" / ".join(c[0]) for c in CASES])
def test_invalidation_rules(ops, expected):
    w = World()
    for op in ops:
        w.op(op)
    assert w.cached() == expected


@pytest.mark.parametrize("ops, expected", [
    (["cr3 R1 0", "unmap V"], {("tlb", 0, "V")}),
    (["cr3 R1 0", "unmap V", "cr3 R1 0"], set()),            # PCIDE=0: every CR3 write flushes PCID 0
    (["cr3 R1 0", "unmap K", "cr3 R2 0"], {("tlb", "G", "K")}),
])
def test_without_pcide(ops, expected):
    w = World(pcide=False)
    for op in ops:
        w.op(op)
    assert w.cached() == expected


@pytest.mark.parametrize("ops, findings", [
    (["cr3 R1 1", "unmap V", "free"], ["freed-while-cached"]),               # current PCID
    (["cr3 R1 1", "unmap V", "invlpg V", "free"], []),
    (["cr3 R1 1", "unmap V", "cr3 R2 2", "free"], []),                      # deferred...
    (["cr3 R1 1", "unmap V", "cr3 R2 2", "free", "cr3 R1 1 noflush"], ["freed-while-cached"]),
    (["cr3 R1 1", "unmap V", "cr3 R2 2", "free", "cr3 R1 1"], []),           # ...flushed on the way back
    (["cr3 R1 1", "unmap V", "cr3 R2 2", "free", "invpcid 0 1 V", "cr3 R1 1 noflush"], []),
])
def test_frees_while_cached(ops, findings):
    w = World()
    for op in ops:
        w.op(op)
    assert [f.kind for f in w.findings] == findings
    if findings:
        f = w.findings[0]
        assert (f.pcid, f.va, f.cached.pa) == (1, V, w.f)


@pytest.mark.parametrize("ops, findings", [
    # Linux's order (cpa: __split_large_page flushes before the attributes change)
    (["cr3 R1 1", "split BIG", "invpcid 2", "unmap BIG+1000"], []),
    (["cr3 R1 1", "split BIG", "unmap BIG+1000"], ["page-size-conflict"]),
    # the split page cached by another PCID only: stale there, used by nobody yet
    (["cr3 R1 1", "split BIG", "cr3 R2 2", "unmap BIG+1000"], []),
])
def test_page_size_conflict(ops, findings):
    w = World()
    for op in ops:
        w.op(op)
    assert [f.kind for f in w.findings] == findings
    if findings:
        f = w.findings[0]
        assert (f.pcid, f.va, f.cached.va, f.cached.size) == (1, BIG + 0x1000, BIG, 0x200000)


def test_stale_access_query():
    w = World()
    for op in ("cr3 R1 1", "protect V ro"):
        w.op(op)
    ctl = ControlState()
    assert w.tlb.stale_for(V + 8, 1, 3, ctl) is not None                  # a write the tables now refuse
    assert w.tlb.stale_for(V + 8, 2, 3, ctl) is None                      # NX then as now
    w.op("cr3 R2 2")
    assert w.tlb.stale_for(V + 8, 1, 3, ctl) is None                      # another PCID is current
