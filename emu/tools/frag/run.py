"""Run a workload against each strategy and collect the figures after every step.

The figures (docs/frag.md, "Figures"): /proc/meminfo's DirectMap4k/2M/1G
(kB, from ``direct_pages_count``), the vm events of set_memory.c (level-2
and level-3 splits and collapses), the TLB model's flushes (INVLPG and
full flushes) and the stale or split translations those flushes dropped,
the TLB entries needed to cover the direct map (reach), memory held out of
the direct map in caches or pools but not handed out (stranded), unmapped
memory outside the reserved region (unmovable where ZONE_MOVABLE would
want it), and allocation failures.

After every step the run checks its invariants: every page handed out as
unmapped is out of the direct map, the TLB model holds nothing stale (every
removal was flushed), and (``check='full'``) the counters agree with the
tables and no page is out of the direct map unless handed out or cached.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from emu.errors import ConfigError, IsoemuError
from emu.hw.paging import P
from emu.hw.phys import PAGE_SIZE, SIZE_2M, FrameKind
from emu.tools.frag.directmap import DirectMap
from emu.tools.frag.strategies import STRATEGIES, Strategy
from emu.tools.frag.workload import Step

#: the figures of every step, in table order
FIGURES = ("DirectMap4k", "DirectMap2M", "DirectMap1G", "level2_splits", "level3_splits", "collapses",
           "tlb_full_flushes", "tlb_invlpg", "tlb_entries_invalidated", "reach", "stranded_kB",
           "unmovable_kB", "alloc_failures", "unmapped_kB")

#: strategy bugs the invariant checks must catch (tests/test_frag.py)
INJECTIONS = {
    "noflush": "removals from the direct map are never flushed",
    "mapped": "the page strategy hands out a page without taking it out of the direct map",
}

DEFAULT_RAM = 4 << 30


class InvariantError(IsoemuError):
    """A strategy broke an invariant of the direct map (a bug, or an injected one)."""

    exit_status = 3


@dataclass
class Run:
    """One strategy's run: the figures after boot and after every step."""

    strategy: str
    collapse: bool
    steps: list[list[int]] = field(default_factory=list)     # one row of FIGURES a step (row 0: boot)
    seconds: float = 0.0
    allocations: int = 0                                      # unmapped allocations attempted

    @property
    def total(self) -> dict[str, int]:
        return dict(zip(FIGURES, self.steps[-1]))

    def peak(self, name: str) -> int:
        i = FIGURES.index(name)
        return max(row[i] for row in self.steps)


class Experiment:
    """One strategy over one direct map, step by step."""

    def __init__(self, strategy: str, ram: int = DEFAULT_RAM, collapse: bool = False, pool: int = 0,
                 check: str = "step", inject: frozenset = frozenset()):
        if strategy not in STRATEGIES:
            raise ConfigError(f"unknown strategy {strategy!r}; strategies: {', '.join(STRATEGIES)}")
        for name in inject:
            if name not in INJECTIONS:
                raise ConfigError(f"unknown injection {name!r}; known: {', '.join(INJECTIONS)}")
        self.dm = DirectMap(ram)
        self.dm.skip_flush = "noflush" in inject
        self.s: Strategy = STRATEGIES[strategy](self.dm, collapse, pool)
        if "mapped" in inject:
            self.s.dm = _NoUnmap(self.dm)
        self.check = check
        self.run = Run(strategy, collapse)
        self.live: dict[str, tuple[str, str, list[int]]] = {}      # ID -> (op, owner, pages)
        self.by_owner: dict[str, set[str]] = {}
        self.failures = 0
        self.unmapped = 0                                          # pages handed out
        self.due: list[tuple[int, int, str]] = []                  # (step, seq, ID) of life= frees
        self.s.boot()
        self._check(None, [])
        self.run.steps.append(self.figures())

    # -- steps -------------------------------------------------------------------------------
    def step(self, i: int, st: Step) -> None:
        new: list[int] = []
        if st.op in ("kernel", "alloc"):
            new = self._alloc(st)
            if st.life and new is not None:
                heapq.heappush(self.due, (i + st.life, len(self.due), st.name))
        elif st.op == "free":
            if st.name in self.live:                # (an exit may have freed it already)
                self._free(st.name)
        else:
            for name in sorted(self.by_owner.pop(st.name, ())):
                self._free(name, keep_owner=True)
            self.s.release(st.name)
        while self.due and self.due[0][0] <= i:
            name = heapq.heappop(self.due)[2]
            if name in self.live:
                self._free(name)
        self._check(st, new or [])
        self.run.steps.append(self.figures())

    def _alloc(self, st: Step) -> list[int] | None:
        pages: list[int] = []
        if st.op == "alloc":
            self.run.allocations += 1
            for _ in range(st.pages):
                pa = self.s.alloc(st.owner)
                if pa is None:
                    break
                pages.append(pa)
        else:
            for _ in range(st.pages):
                pa = self.s.buddy(0, FrameKind.KERNEL_DATA, st.owner)
                if pa is None:
                    break
                pages.append(pa)
        if len(pages) < st.pages:                   # all or nothing: give back what was taken
            self.failures += 1
            for pa in pages:
                self._give(st.op, pa, st.owner)
            return None
        self.live[st.name] = (st.op, st.owner, pages)
        self.by_owner.setdefault(st.owner, set()).add(st.name)
        if st.op == "alloc":
            self.unmapped += len(pages)
            return pages
        return []

    def _free(self, name: str, keep_owner: bool = False) -> None:
        op, owner, pages = self.live.pop(name)
        if not keep_owner:
            self.by_owner[owner].discard(name)
        for pa in pages:
            self._give(op, pa, owner)
        if op == "alloc":
            self.unmapped -= len(pages)

    def _give(self, op: str, pa: int, owner: str) -> None:
        if op == "alloc":
            self.s.free(pa, owner)
        else:
            self.s.frames.free(pa)

    # -- figures -------------------------------------------------------------------------------
    def figures(self) -> list[int]:
        dm = self.dm
        ev = dm.events
        stats = dm.tlb.stats if dm.tlb else {}
        held = self.s.stranded()
        rr = self.s.reserved_range()
        unmovable = self.unmapped + held if rr is None else 0
        mi = dm.meminfo()
        return [mi["DirectMap4k"], mi["DirectMap2M"], mi["DirectMap1G"],
                ev["direct_map_level2_splits"], ev["direct_map_level3_splits"],
                ev["direct_map_level2_collapses"] + ev["direct_map_level3_collapses"],
                stats.get("flush_invpcid2", ev["tlb_flush_all"]), stats.get("flush_invlpg", ev["tlb_flush_pages"]),
                stats.get("entries_dropped", 0), dm.reach(), held * 4, unmovable * 4, self.failures,
                self.unmapped * 4]

    # -- invariants ------------------------------------------------------------------------------
    def _check(self, st: Step | None, new: list[int]) -> None:
        where = f"{st.where} ({st.text()})" if st else "boot"
        dm = self.dm
        for pa in new:
            if dm.is_mapped(pa):
                self._broken(where, f"page {pa:#x} is handed out as unmapped but is in the direct map")
        if dm.tlb and any(dm.tlb.records.values()):
            r = next(r for recs in dm.tlb.records.values() for r in recs)
            self._broken(where, f"the TLB may still hold {r.describe()}: a removal was not flushed")
        if dm.tlb and dm.tlb.findings:
            self._broken(where, f"TLB model finding: {dm.tlb.findings[0].line()}")
        if self.check == "full":
            self.check_full(where)

    def check_full(self, where: str = "end") -> None:
        """Counters against the tables, and every page out of the direct map accounted for."""
        dm = self.dm
        pages, present = dm.recount()
        if pages != dm.pages or present != dm.present:
            self._broken(where, f"direct_pages_count {dm.pages} / present {dm.present} but the tables hold "
                                f"{pages} / {present}")
        out = set()
        for leaf in dm.pt.leaves(dm.base, dm.base + dm.mem.size, nonpresent=True):
            if not leaf.entry & P:
                pa = leaf.va - dm.base
                out.update(range(pa, pa + leaf.size, PAGE_SIZE))
        handed = {pa for op, _, pgs in self.live.values() if op == "alloc" for pa in pgs}
        missing = handed - out
        if missing:
            self._broken(where, f"page {min(missing):#x} is handed out as unmapped but is in the direct map")
        extra = out - handed - self.s.held_out()
        if extra:
            self._broken(where, f"page {min(extra):#x} is out of the direct map but neither handed out nor "
                                f"held by the {self.s.name} strategy")

    def _broken(self, where: str, why: str) -> None:
        raise InvariantError(f"frag {self.s.name}: invariant broken at {where}: {why}")


class _NoUnmap:
    """The 'mapped' injection: a direct map whose unmap_page does nothing."""

    def __init__(self, dm: DirectMap):
        self._dm = dm

    def unmap_page(self, pa: int) -> None:
        return None

    def __getattr__(self, name):
        return getattr(self._dm, name)


def run_strategy(steps: list[Step], strategy: str, **kw) -> Run:
    t = time.perf_counter()
    ex = Experiment(strategy, **kw)
    for i, st in enumerate(steps, 1):
        ex.step(i, st)
    if ex.check != "off":
        ex.check_full()
    ex.run.seconds = time.perf_counter() - t
    ex.dm.mem.close()
    return ex.run


def run_all(steps: list[Step], strategies=None, **kw) -> list[Run]:
    return [run_strategy(steps, s, **kw) for s in (strategies or list(STRATEGIES))]


__all__ = ["DEFAULT_RAM", "Experiment", "FIGURES", "INJECTIONS", "InvariantError", "Run", "SIZE_2M",
           "run_all", "run_strategy"]
