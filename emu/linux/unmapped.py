"""The unmapped allocator's Python side (kernel_stub/unmapped.S, docs/frag.md).

* :func:`boot`: what the kernel does at boot for the switch: the strategy
  and collapse words, and for ``unmapped=reserved`` the pool set aside at
  the top of RAM (as a CMA area is: never handed to the page allocator), its
  2 MiB blocks taken out of the direct map (their PMDs lose P, RW and Global,
  PFN inverted; a 1G page above split once, counted as a level-3 split) and
  entered in the stub's block table.
* :class:`UnmappedFlushes`: the TLB model's flushes issued while the stub
  is inside the allocator (between its ``.hook unmapped_enter`` and
  ``.hook unmapped_leave``), so a run reports what the strategy cost in
  flushes apart from everything else the kernel flushes.
* :func:`stats`: the allocator's counters, by the names ``isoemu stats`` prints.
"""

from __future__ import annotations

from emu.hw.paging import ADDR_MASK, FLAGS_MASK, INVALID_CLEARS, PAT_LARGE
from emu.hw.phys import SIZE_1G, SIZE_2M, FrameKind
from emu.linux import abi
from emu.linux.config import UNMAPPED_STRATEGIES

#: the TLB model's counters a strategy moves (tlbcheck.STAT_KEYS), and the names they get
FLUSH_STATS = {"flush_invpcid2": "unmapped_tlb_full_flushes", "flush_cr4": "unmapped_tlb_cr4_flushes",
               "flush_invlpg": "unmapped_tlb_invlpg", "entries_dropped": "unmapped_tlb_entries_invalidated"}


def pool_range(cfg) -> tuple[int, int]:
    """[lo, hi) of the reserved pool: the top of RAM."""
    return cfg.ram - cfg.unmapped_pool, cfg.ram


def boot(k, cfg) -> None:
    """The boot words, and the reserved pool (before anything else allocates frames)."""
    k.write_data("unmapped_strategy", UNMAPPED_STRATEGIES.index(cfg.unmapped))
    k.write_data("unmapped_collapse_on", int(cfg.collapse))
    if cfg.unmapped != "reserved":
        return
    lo, hi = pool_range(cfg)
    k.mem.frames.reserve(lo, hi - lo, FrameKind.SECRET_POOL, "unmapped pool")
    pt, base = k.init_pgd, k.layout.page_offset
    splits = 0
    table = k.sym("unmapped_blocks")
    for i, pa in enumerate(range(lo, hi, SIZE_2M)):
        shift, epa, e = pt.lookup(base + pa)
        if 1 << shift == SIZE_1G:
            pt.split(base + pa)
            splits += 1
            shift, epa, e = pt.lookup(base + pa)
        # set_direct_map_invalid_noflush over the block: the large page kept
        pt.write_entry(epa, (e & FLAGS_MASK & ~INVALID_CLEARS) | (e & PAT_LARGE) | (~pa & ADDR_MASK & -SIZE_2M))
        blk = table + i * abi.UBLK_SIZE
        k.write_q(blk + abi.UBLK["pa"], pa)
        k.write_q(blk + abi.UBLK["owner"], abi.UNMAPPED_SHARED)
    k.write_data("nr_unmapped_blocks", (hi - lo) // SIZE_2M)
    k.write_data("direct_map_level3_splits", splits)


def stats(k) -> dict[str, int]:
    return {"direct_map_level2_collapses": k.read_data("direct_map_level2_collapses"),
            "direct_map_level3_collapses": k.read_data("direct_map_level3_collapses"),
            "unmapped_blocks": k.read_data("nr_unmapped_blocks")}


#: unmapped_call's operations (the eax the three entry points load)
OPS = ("alloc", "free", "release", "alloc_noflush")


class UnmappedFlushes:
    """The TLB model's counters moved inside the unmapped allocator, and each
    call for whoever listens (``listeners``: fn(op, first argument, second
    argument, result) after the call, with the totals up to date)."""

    def __init__(self, machine, tlb):
        self.machine, self.tlb = machine, tlb
        self.at_enter: dict[str, int] | None = None
        self.call: tuple[str, int, int] = ("", 0, 0)
        self.totals = {name: 0 for name in FLUSH_STATS.values()}
        self.listeners: list = []
        machine.hook_site("unmapped_enter", self._enter)
        machine.hook_site("unmapped_leave", self._leave)

    def _enter(self, addr: int) -> None:
        self.at_enter = self.tlb.stats()
        reg = self.machine.cpu.reg
        self.call = (OPS[reg("rax") & 3], reg("rdi"), reg("rsi"))

    def _leave(self, addr: int) -> None:
        if self.at_enter is None:
            return
        now = self.tlb.stats()
        for key, name in FLUSH_STATS.items():
            self.totals[name] += now[key] - self.at_enter[key]
        self.at_enter = None
        for fn in self.listeners:
            fn(*self.call, self.machine.cpu.reg("rax"))

    def stats(self) -> dict[str, int]:
        return dict(self.totals)
