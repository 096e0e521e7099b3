"""What the TLB may still hold: PCID-tagged translations, global translations
and paging-structure caches, per the Intel SDM Vol. 3A 4.10 (docs/tlb.md).

The processor may cache any translation that is valid in the paging
structures while a PCID is current, used or not (4.10.2.1, 4.10.3.1); it
never caches a not-present entry.  So the model does not enumerate what is
cached: it watches the paging-structure entries change.  When an entry
changes so that it grants less than before (not present, another frame,
fewer rights), every PCID that could have cached the old translation since
its last invalidation keeps a *stale* record of it, and a global translation
a global one, until an invalidation covers it (4.10.4.1):

* MOV to CR3: with CR4.PCIDE=0, PCID 0's non-global entries and its
  paging-structure caches; with PCIDE=1 and bit 63 clear, those of the new
  PCID; with bit 63 set, nothing;
* INVLPG: the current PCID's and the global entries for the page, and every
  paging-structure cache entry of the current PCID;
* INVPCID type 0 (address and PCID, not global), 1 (PCID, not global),
  2 (everything), 3 (everything but globals);
* MOV to CR4 changing PGE, or clearing PCIDE, and MOV to CR0 clearing PG:
  everything.

A record more restrictive than the tables is harmless (a spurious #PF
re-walks, 4.10.4.3) and is never made.  Findings come from the records:
``stale-access`` (an access the tables refuse that a record permits),
``freed-while-cached`` and ``table-freed-while-cached`` (a frame, or a
page-table frame, goes back to the allocator while a record of the current
PCID or a global one points at it, or a record of another PCID that is
later made current without an invalidation), ``stale-at-user-return``
(returning to CPL 3 while the entered PCID holds a stale user translation),
``page-size-conflict`` (a translation inside a split larger page changes
while the larger translation may still be cached: 4.10.2.3).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from emu.hw.paging import ADDR_MASK, P, PagingMode, fmt_size, permits
from emu.hw.phys import PhysView
from emu.hw.tlb.graph import Leafish, Path, TableGraph, translations, uniform_leaves
from emu.hw.x86 import CR0_PG, CR3_NOFLUSH, CR4_PCIDE, CR4_PGE

GLOBAL = -1                 # the "PCID" of global translations
FINDINGS = ("stale-access", "freed-while-cached", "table-freed-while-cached", "stale-at-user-return",
            "page-size-conflict")


@dataclass
class EntryWrite:
    """A write of a paging-structure entry."""

    time: int
    epa: int
    old: int
    new: int
    rip: int
    observed: bool = True           # False: found by the audit, not at a declared site

    def describe(self, symbolize: Callable[[int], str] | None = None) -> str:
        where = (symbolize(self.rip) if symbolize else f"{self.rip:#x}") if self.rip else "an unknown place"
        how = "" if self.observed else " (not through a declared site: found by the audit)"
        return f"entry at {self.epa:#x} {self.old:#018x} -> {self.new:#018x} by {where}{how}"


@dataclass
class Cached:
    """Something the TLB may still hold that the tables no longer give."""

    kind: str                       # tlb: a translation; psc: a paging-structure-cache entry;
                                    # size: a larger page now split (same frames and rights: not stale)
    pcid: int                       # GLOBAL for a global translation
    va: int
    size: int
    level: str
    pa: int                         # tlb: the frame; psc: the table the cached entry points at
    user: bool
    writable: bool
    nx: bool
    pkey: int
    write: EntryWrite
    freed: int | None = None        # when pa went back to the allocator while this may be cached
    reported: set = field(default_factory=set)

    def covers(self, va: int) -> bool:
        return self.va <= va < self.va + self.size

    def rights(self) -> str:
        return ("user " if self.user else "supervisor ") + ("RW" if self.writable else "RO") + \
            ("" if self.nx else " X")

    def describe(self) -> str:
        who = "global" if self.pcid == GLOBAL else f"pcid {self.pcid:#05x}"
        if self.kind == "psc":
            return (f"{who} {self.level} cache entry for {self.va:#x}+{fmt_size(self.size)} -> table "
                    f"{self.pa:#x} ({self.rights()})")
        if self.kind == "size":
            return (f"{who} {self.va:#x}+{fmt_size(self.size)} -> {self.pa:#x} ({self.rights()}, {self.level}, "
                    f"since split into smaller pages)")
        return f"{who} {self.va:#x}+{fmt_size(self.size)} -> {self.pa:#x} ({self.rights()}, {self.level})"


@dataclass
class Finding:
    kind: str
    pcid: int
    va: int
    cached: Cached
    now: str                         # what the tables say now
    invalidations: list[str]         # the invalidations since the write that made it stale
    time: int
    served: bool = False             # lazy mode: the access went through the stale translation

    def line(self) -> str:
        who = "global" if self.pcid == GLOBAL else f"pcid {self.pcid:#05x}"
        return f"{self.kind} {who} va {self.va:#x}: cached {self.cached.describe()}; tables: {self.now}"


class Tlb:
    """The model of one logical CPU's TLB and paging-structure caches."""

    def __init__(self, mem: PhysView, mode: PagingMode, report: Callable[[Finding], None] | None = None):
        self.mem = mem
        self.mode = mode
        self.report = report or (lambda f: None)
        self.graph = TableGraph(mem, mode)
        self.time = 0
        self.pcide = False
        self.pge = True
        self.cur_pcid = 0
        self.cur_root: int | None = None
        self.records: dict[int, list[Cached]] = {}
        #: called with True when the first stale record is made, False when
        #: the last one goes (the machine gates its return-to-user hook on it)
        self.on_records: Callable[[bool], None] | None = None
        self.since: dict[int, int] = {}              # entry address -> when it got its value (0: boot)
        self.last_active: dict[int, dict[int, int]] = {}   # pcid -> root -> last time current
        self.root_last: dict[int, int] = {}          # root -> last time current (any PCID)
        self.pge_last = 0                            # last time CR4.PGE was on
        self.flushed: dict[int, int] = {}            # pcid -> last full invalidation (not globals)
        self.psc_flushed: dict[int, int] = {}        # pcid -> last invalidation of its PSC entries
        self.page_inval: dict[int, dict[int, int]] = {}    # pcid -> page -> last invalidation
        self.all_flushed = 0                         # last invalidation of every PCID
        self.global_flushed = 0
        self.global_page_inval: dict[int, int] = {}
        # the last invalidations: (time, format, argument), worded only for a finding
        self.log: deque[tuple[int, str, object]] = deque(maxlen=64)
        self.stats: dict[str, int] = {}
        self.findings: list[Finding] = []

    # -- bookkeeping -----------------------------------------------------------------
    def _tick(self) -> int:
        self.time += 1
        return self.time

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    def _leave(self) -> None:
        if self.cur_root is not None:
            self.last_active.setdefault(self.cur_pcid, {})[self.cur_root] = self.time
            self.root_last[self.cur_root] = self.time

    def _last(self, pcid: int, root: int) -> int | None:
        if pcid == self.cur_pcid and root == self.cur_root:
            return self.time
        return self.last_active.get(pcid, {}).get(root)

    def _drop(self, pcid: int, keep: Callable[[Cached], bool] | None = None) -> None:
        recs = self.records.get(pcid)
        if not recs:
            return
        kept = [r for r in recs if keep is not None and keep(r)]
        self._count("entries_dropped", len(recs) - len(kept))
        if kept:
            self.records[pcid] = kept
        else:
            del self.records[pcid]
            if not self.records and self.on_records is not None:
                self.on_records(False)

    def _flush_pcid(self, pcid: int) -> None:
        """A PCID's non-global entries and paging-structure caches."""
        self._drop(pcid)
        self.flushed[pcid] = self.psc_flushed[pcid] = self.time
        self.page_inval.pop(pcid, None)

    def _flush_all(self, globals_too: bool) -> None:
        for pcid in list(self.records):
            if pcid != GLOBAL:
                self._drop(pcid)
        self.flushed.clear()
        self.psc_flushed.clear()
        self.page_inval.clear()
        self.all_flushed = self.time
        if globals_too:
            self._drop(GLOBAL)
            self.global_flushed = self.time
            self.global_page_inval.clear()

    # -- the CPU's state ------------------------------------------------------------------
    def start(self, cr3: int, cr4: int) -> None:
        """The state at boot (nothing cached, nothing stale)."""
        self.pcide = bool(cr4 & CR4_PCIDE)
        self.pge = bool(cr4 & CR4_PGE)
        self.cur_pcid = cr3 & 0xFFF if self.pcide else 0
        self.cur_root = cr3 & ADDR_MASK
        self.graph.add_root(self.cur_root)

    def add_root(self, root: int) -> None:
        """A root the machine knows (its paths are followed when entries change)."""
        self.graph.add_root(root)

    def cr3_written(self, value: int, rip: int = 0) -> None:
        """MOV to CR3 (SDM 4.10.4.1); ``value`` as written, NOFLUSH included.
        Four of these in every PTI+ASI system call: kept lean."""
        self.time = t = self.time + 1
        cur = self.cur_root
        if cur is not None:                                   # _leave, inline
            active = self.last_active.get(self.cur_pcid)
            if active is None:
                active = self.last_active[self.cur_pcid] = {}
            active[cur] = t
            self.root_last[cur] = t
        if self.pcide:
            pcid, noflush = value & 0xFFF, value & CR3_NOFLUSH
        else:
            pcid, noflush = 0, 0
        stats = self.stats
        if not noflush:
            if pcid in self.records:
                self._drop(pcid)
            self.flushed[pcid] = self.psc_flushed[pcid] = t
            if self.page_inval:
                self.page_inval.pop(pcid, None)
            stats["flush_cr3"] = stats.get("flush_cr3", 0) + 1
            self.log.append((t, "cr3 write pcid {:#05x} (flush)", pcid))
        else:
            stats["cr3_noflush"] = stats.get("cr3_noflush", 0) + 1     # invalidates nothing: not logged
        root = value & ADDR_MASK
        self.cur_pcid, self.cur_root = pcid, root
        if root not in self.graph.roots:
            self.graph.add_root(root)
        if pcid in self.records:
            self._deferred(pcid)

    def cr4_written(self, old: int, new: int) -> None:
        self._tick()
        if self.pge:
            self.pge_last = self.time
        changed = (old ^ new) & CR4_PGE or (old & CR4_PCIDE and not new & CR4_PCIDE)
        self.pge = bool(new & CR4_PGE)
        was_pcide, self.pcide = self.pcide, bool(new & CR4_PCIDE)
        if self.pge:
            self.pge_last = self.time
        if changed:
            self._flush_all(globals_too=True)
            self._count("flush_cr4")
            self.log.append((self.time, "cr4 write (PGE or PCIDE changed: everything)", None))
        if was_pcide and not self.pcide:
            self._leave()
            self.cur_pcid = 0

    def cr0_written(self, old: int, new: int) -> None:
        self._tick()
        if old & CR0_PG and not new & CR0_PG:
            self._flush_all(globals_too=True)
            self._count("flush_cr0")
            self.log.append((self.time, "cr0 write (PG cleared: everything)", None))

    def invlpg(self, va: int) -> None:
        self._tick()
        page = va & ~0xFFF
        pcid = self.cur_pcid
        self._drop(pcid, lambda r: r.kind == "psc" or not r.covers(va))
        self._drop(pcid, lambda r: r.kind != "psc")           # every PSC entry of the current PCID
        self._drop(GLOBAL, lambda r: not r.covers(va))
        self.psc_flushed[pcid] = self.time
        self.page_inval.setdefault(pcid, {})[page] = self.time
        self.global_page_inval[page] = self.time
        self._count("flush_invlpg")
        self.log.append((self.time, "invlpg {0[0]:#x} (pcid {0[1]:#05x})", (va, pcid)))

    def invpcid(self, kind: int, pcid: int, va: int) -> None:
        self._tick()
        if kind == 0:
            self._drop(pcid, lambda r: not r.covers(va))
            self.page_inval.setdefault(pcid, {})[va & ~0xFFF] = self.time
            what = f"invpcid 0 {va:#x} pcid {pcid:#05x}"
        elif kind == 1:
            self._flush_pcid(pcid)
            what = f"invpcid 1 pcid {pcid:#05x}"
        else:
            self._flush_all(globals_too=kind == 2)
            what = f"invpcid {kind} (all{' with globals' if kind == 2 else ''})"
        self._count(f"flush_invpcid{kind}")
        self.log.append((self.time, what, None))

    # -- the tables -------------------------------------------------------------------------
    def entry_written(self, epa: int, old: int, new: int, rip: int = 0, observed: bool = True) -> None:
        """A paging-structure entry changed; ``old`` is what it held."""
        t = self._tick()
        since = self.since.get(epa, 0)
        self.since[epa] = t
        table = epa & ~0xFFF
        paths = self.graph.paths(table)
        depth = paths[0].depth if paths else None
        write = EntryWrite(t, epa, old, new, rip, observed)
        if old & P and depth is not None and old != new:
            for path in paths:
                self._stale_from(path, depth, epa, old, new, since, write)
        self.graph.entry_changed(epa, old, new, depth)

    def _stale_from(self, path: Path, depth: int, epa: int, old: int, new: int, since: int,
                    write: EntryWrite) -> None:
        mode = self.mode
        level = mode.levels[depth]
        va = mode.sign_extend(path.base + (((epa & 0xFFF) >> 3) << level.shift))
        old_t = self.graph.translations(depth, va, old, path.eff, path.nx)
        if len(old_t) == 1 and old_t[0].size == level.size and mode.is_leaf(level, old) and \
                (first := uniform_leaves(self.mem, mode, depth, va, new, path.eff, path.nx)) is not None:
            # a larger page split into 512 pages alike (the common split):
            # what _still_granted and the size test below find, without the
            # 512 translations (they cover the old page, each with the rights
            # and frame offset of the first)
            o = old_t[0]
            if o.grants_no_more_than(first):
                self._remember(path, since, o, write, "size")
            else:
                self._size_conflicts(o)
                self._remember(path, since, o, write, "tlb")
            return
        new_t = self.graph.translations(depth, va, new, path.eff, path.nx)
        for o in old_t:
            if _still_granted(o, new_t):
                if any(n.size < o.size for n in new_t if n.va < o.va + o.size and o.va < n.va + n.size):
                    # split into smaller pages, the same frames and rights: the
                    # larger translation may stay cached beside the new ones
                    self._remember(path, since, o, write, "size")
                continue
            self._size_conflicts(o)
            self._remember(path, since, o, write, "tlb")
        if not level.is_pte and not mode.is_leaf(level, old) and \
                (not new & P or mode.is_leaf(level, new) or new & ADDR_MASK != old & ADDR_MASK
                 or (old & ~new & 0x6) or (new & ~old & (1 << 63))):
            eff = path.eff & old
            for pcid in self._pcids_of(path.root):
                if self._may_cache_psc(pcid, path.root, since):
                    self._add(Cached("psc", pcid, va, level.size, level.name, old & ADDR_MASK, bool(eff & 4),
                                     bool(eff & 2), path.nx or bool(old >> 63), 0, write))

    def _remember(self, path: Path, since: int, o: Leafish, write: EntryWrite, kind: str) -> None:
        """Records of ``o`` for every PCID (or the global set) that may cache it."""
        if o.glob and self.pge_last >= since:
            if self._may_cache_global(path.root, since, o):
                self._add(Cached(kind, GLOBAL, o.va, o.size, o.level, o.pa, o.user, o.writable, o.nx, o.pkey,
                                 write))
            return
        for pcid in self._pcids_of(path.root):
            if self._may_cache(pcid, path.root, since, o.va, o.size):
                self._add(Cached(kind, pcid, o.va, o.size, o.level, o.pa, o.user, o.writable, o.nx, o.pkey,
                                 write))

    def _size_conflicts(self, o: Leafish) -> None:
        """A translation changes inside a larger page that was split while the
        larger translation may still be cached: the TLB may now hold two
        translations of different page sizes that differ, and the processor's
        behaviour is undefined (SDM Vol. 3A 4.10.2.3; why cpa's
        __split_large_page flushes before the attributes change).  The
        larger record becomes an ordinary stale one."""
        for pcid in (self.cur_pcid, GLOBAL, *[p for p in self.records if p not in (self.cur_pcid, GLOBAL)]):
            for r in self.records.get(pcid, ()):
                if r.kind == "size" and r.va < o.va + o.size and o.va < r.va + r.size:
                    r.kind = "tlb"
                    if pcid in (self.cur_pcid, GLOBAL):
                        self._find("page-size-conflict", r, o.va, f"{fmt_size(o.size)} entry at {o.va:#x} "
                                   f"changed; the {fmt_size(r.size)} page it was split from may still be cached")

    def _pcids_of(self, root: int) -> list[int]:
        out = [p for p, roots in self.last_active.items() if root in roots]
        if root == self.cur_root and self.cur_pcid not in out:
            out.append(self.cur_pcid)
        return out

    def _floor(self, pcid: int, since: int, va: int, size: int) -> int:
        floor = max(since, self.all_flushed, self.flushed.get(pcid, 0))
        t = _last_inval(self.page_inval.get(pcid), va, size)
        return t if t > floor else floor

    def _may_cache(self, pcid: int, root: int, since: int, va: int, size: int) -> bool:
        last = self._last(pcid, root)
        return last is not None and last >= self._floor(pcid, since, va, size)

    def _may_cache_psc(self, pcid: int, root: int, since: int) -> bool:
        last = self._last(pcid, root)
        return last is not None and last >= max(since, self.all_flushed, self.psc_flushed.get(pcid, 0))

    def _may_cache_global(self, root: int, since: int, o: Leafish) -> bool:
        last = self.time if root == self.cur_root else self.root_last.get(root)
        if last is None:
            return False
        floor = max(since, self.global_flushed, _last_inval(self.global_page_inval, o.va, o.size))
        return last >= floor

    def _add(self, rec: Cached) -> None:
        if not self.records and self.on_records is not None:
            self.on_records(True)       # (the record below is made whatever happens)
        recs = self.records.setdefault(rec.pcid, [])
        for r in recs:
            if (r.kind, r.va, r.size, r.pa, r.user, r.writable, r.nx) == \
                    (rec.kind, rec.va, rec.size, rec.pa, rec.user, rec.writable, rec.nx):
                return
        recs.append(rec)
        if rec.kind != "size":
            self._count("stale_records")

    # -- frames --------------------------------------------------------------------------------
    def frame_freed(self, pa: int, size: int, is_table: bool = False) -> None:
        """A frame went back to the allocator."""
        self._tick()
        if is_table:
            self.graph.table_freed(pa)
        for pcid, recs in self.records.items():
            for r in recs:
                hit = (r.pa == pa) if r.kind == "psc" else (r.pa < pa + size and pa < r.pa + r.size)
                if not hit or (r.kind == "psc" and not is_table) or r.kind == "size":
                    continue
                kind = "table-freed-while-cached" if r.kind == "psc" else "freed-while-cached"
                if pcid in (GLOBAL, self.cur_pcid):
                    self._find(kind, r, r.va)
                else:
                    r.freed = self.time

    def _deferred(self, pcid: int) -> None:
        """A PCID made current: frames freed while it may still cache them."""
        for r in self.records.get(pcid, ()):
            if r.freed is not None:
                self._find("table-freed-while-cached" if r.kind == "psc" else "freed-while-cached", r, r.va)

    # -- queries ------------------------------------------------------------------------------------
    def stale_for(self, va: int, access: int, cpl: int, ctl) -> Cached | None:
        """A record of the current PCID (or a global one) that would permit
        this access, which the tables refuse."""
        for pcid in (self.cur_pcid, GLOBAL):
            for r in self.records.get(pcid, ()):
                if r.covers(va):
                    if r.kind == "tlb" and permits(r.user, r.writable, r.nx, r.pkey, access, cpl, ctl):
                        return r
                    if r.kind == "psc":
                        t = self._through_psc(r, va)
                        if t is not None and permits(t.user, t.writable, t.nx, t.pkey, access, cpl, ctl):
                            return Cached("tlb", r.pcid, t.va, t.size, t.level, t.pa, t.user, t.writable, t.nx,
                                          t.pkey, r.write)
        return None

    def _through_psc(self, r: Cached, va: int) -> Leafish | None:
        """The translation a stale paging-structure-cache entry leads to: the
        walk goes on in the table it points at, whatever that holds now."""
        depth = next(i for i, lv in enumerate(self.mode.levels) if lv.name == r.level)
        entry = r.pa | P | (2 if r.writable else 0) | (4 if r.user else 0) | ((1 << 63) if r.nx else 0)
        for t in translations(self.mem, self.mode, depth, r.va, entry, 6, False):
            if t.covers(va):
                return t
        return None

    def note_stale_access(self, r: Cached, va: int, now: str, served: bool) -> Finding | None:
        return self._find("stale-access", r, va, now, served=served, once=False)

    def user_return(self, rip: int = 0) -> None:
        """Entering CPL 3: the PCID entered must not hold a stale user
        translation.  Once per system call: nothing to look at without records."""
        if not self.records:
            return
        for pcid in (self.cur_pcid, GLOBAL):
            for r in self.records.get(pcid, ()):
                if r.kind == "tlb" and r.user:
                    self._find("stale-at-user-return", r, r.va)

    def holdings(self) -> list[tuple[int, list[int], list[Cached]]]:
        """What each PCID (and the global set, pcid GLOBAL) may hold now:
        ``(pcid, roots, records)``.  ``roots`` are the page tables whose
        valid translations it may cache, since they were current after its
        last invalidation (4.10.2.1: used or not); ``records`` are its stale
        entries.  Current PCID first."""
        out = []
        pcids = {self.cur_pcid, *self.last_active, *(p for p in self.records if p != GLOBAL)}
        for pcid in sorted(pcids, key=lambda p: (p != self.cur_pcid, p)):
            floor = max(self.all_flushed, self.flushed.get(pcid, 0))
            roots = [r for r, t in self.last_active.get(pcid, {}).items()
                     if t >= floor and not (pcid == self.cur_pcid and r == self.cur_root)]
            if pcid == self.cur_pcid and self.cur_root is not None:
                roots.insert(0, self.cur_root)
            out.append((pcid, roots, list(self.records.get(pcid, ()))))
        groots = [r for r, t in self.root_last.items() if t >= self.global_flushed and self.pge]
        if self.pge and self.cur_root is not None and self.cur_root not in groots:
            groots.insert(0, self.cur_root)
        out.append((GLOBAL, groots, list(self.records.get(GLOBAL, ()))))
        return out

    def cached(self, pcid: int | None = None) -> list[Cached]:
        """The stale records (of one PCID, or all)."""
        if pcid is not None:
            return list(self.records.get(pcid, ()))
        return [r for recs in self.records.values() for r in recs]

    def _find(self, kind: str, r: Cached, va: int, now: str = "", served: bool = False,
              once: bool = True) -> Finding | None:
        if once and kind in r.reported:
            return None
        r.reported.add(kind)
        since = [fmt.format(arg) for t, fmt, arg in self.log if t > r.write.time]
        if len(self.log) == self.log.maxlen and self.log[0][0] > r.write.time:
            since.insert(0, f"(earlier ones: only the last {self.log.maxlen} are kept)")
        f = Finding(kind, r.pcid, va, r, now, since, self.time, served)
        self.findings.append(f)
        self._count(f"finding_{kind}")
        self.report(f)
        return f


def _last_inval(pages: dict[int, int] | None, va: int, size: int) -> int:
    """The last invalidation of a page in [va, va+size) (0: none): a 4 KiB
    range is one look-up, a larger one looks at whichever is smaller, the
    range's pages or the invalidated ones (a long run of INVLPGs without a
    full flush would otherwise make every entry write linear in them)."""
    if not pages:
        return 0
    if size == 0x1000:
        return pages.get(va, 0)
    best = 0
    if size >> 12 < len(pages):
        for page in range(va, va + size, 0x1000):
            t = pages.get(page, 0)
            if t > best:
                best = t
    else:
        for page, t in pages.items():
            if va <= page < va + size and t > best:
                best = t
    return best


def _still_granted(o: Leafish, new: list[Leafish]) -> bool:
    """Do the new translations map all of ``o``'s range the same way, with at
    least its rights?"""
    need = o.va
    end = o.va + o.size
    for n in sorted((n for n in new if n.va < end and o.va < n.va + n.size), key=lambda n: n.va):
        if n.va > need or not o.grants_no_more_than(n):
            return False
        need = n.va + n.size
        if need >= end:
            return True
    return need >= end
