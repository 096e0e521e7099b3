"""The TLB model's page-table-write bookkeeping, fast against the way it was
(docs/performance.md, "The TLB model's entry writes"): the asm suite and the
matrix give the same stale records and findings, write by write, with the
reference (the code before, kept here) and with the shortcuts: set_entry's
arguments in one batch read, the kernel stack through a WalkCache, a split
into 512 pages alike decided from its first page (uniform_leaves), and the
sub-trees of table entries remembered while their tables' bytes are unchanged
(TableGraph.translations)."""

from __future__ import annotations

import struct

import pytest

import emu.hw.tlb.model as model
from emu.hw.paging import ADDR_MASK, NX, P, PS, RW, US, G, mode_for
from emu.hw.phys import PhysMem
from emu.hw.tlb.graph import TableGraph, translations, uniform_leaves
from emu.linux.machine import MachineConfig
from emu.linux.tlbcheck import TlbCheck
from emu.tools.asmtest.command import discover
from emu.tools.asmtest.runner import run_variants
from emu.tools.matrix import run_matrix


# --- the reference: the bookkeeping as it was --------------------------------------------
def _stale_from(self, path, depth, epa, old, new, since, write):
    mode = self.mode
    level = mode.levels[depth]
    va = mode.sign_extend(path.base + (((epa & 0xFFF) >> 3) << level.shift))
    old_t = translations(self.mem, mode, depth, va, old, path.eff, path.nx)
    new_t = translations(self.mem, mode, depth, va, new, path.eff, path.nx)
    for o in old_t:
        if model._still_granted(o, new_t):
            if any(n.size < o.size for n in new_t if n.va < o.va + o.size and o.va < n.va + n.size):
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
                self._add(model.Cached("psc", pcid, va, level.size, level.name, old & ADDR_MASK, bool(eff & 4),
                                       bool(eff & 2), path.nx or bool(old >> 63), 0, write))


def _on_entry_write(self, addr):
    m, cpu = self.m, self.m.cpu
    kva, new = cpu.reg("rdi"), cpu.reg("rsi")
    epa = _kva_to_pa(self, kva)
    old = m.mem.read_u64(epa)
    caller = m.mem.read_u64(_kva_to_pa(self, cpu.reg("rsp")))
    self.model.entry_written(epa, old, new, caller)
    table = epa & ~0xFFF
    sh = self.shadow.get(table)
    if sh is not None:
        off = epa - table
        self.shadow[table] = sh[:off] + new.to_bytes(8, "little") + sh[off + 8:]
    if new & P and (new & ADDR_MASK) in self.shadow:
        child = new & ADDR_MASK
        self.shadow[child] = m.mem.read(child, 4096)
    cpu.flush_tlb()


def _kva_to_pa(self, kva):
    lay = self.m.layout
    if lay.page_offset <= kva < lay.page_offset + self.m.mem.size:
        return kva - lay.page_offset
    return self.m.pa_of(kva)


def recording(monkeypatch, reference: bool) -> list:
    """Patch in the reference (or not) and log every stale record the model
    makes and every finding, in order."""
    log: list = []
    if reference:
        monkeypatch.setattr(model.Tlb, "_stale_from", _stale_from)
        monkeypatch.setattr(TlbCheck, "_on_entry_write", _on_entry_write)
    real_add, real_report = model.Tlb._add, TlbCheck._add

    def add(self, rec):
        log.append(("record", self.time, rec.kind, rec.pcid, rec.va, rec.size, rec.level, rec.pa, rec.user,
                    rec.writable, rec.nx, rec.pkey, rec.write.describe()))
        real_add(self, rec)

    def report(self, kind, pcid, va, **more):
        log.append(("finding", kind, pcid, va, sorted(more.items())))
        real_report(self, kind, pcid, va, **more)
    monkeypatch.setattr(model.Tlb, "_add", add)
    monkeypatch.setattr(TlbCheck, "_add", report)
    return log


def both(monkeypatch, run) -> tuple[list, list]:
    logs = []
    for reference in (True, False):
        with monkeypatch.context() as mp:
            log = recording(mp, reference)
            run()
            logs.append(log)
    return logs[0], logs[1]


def test_the_asm_suite_makes_the_same_records_and_findings(monkeypatch):
    paths = discover(["asm/"])

    def run():
        for path in paths:
            for r in run_variants(path):
                assert r.passed, r.failure_lines()
    ref, new = both(monkeypatch, run)
    assert sum(1 for e in new if e[0] == "finding") > 50 and sum(1 for e in new if e[0] == "record") > 5000
    assert any(e[0] == "record" and e[2] == "size" for e in new)     # splits were decided by the shortcut
    assert new == ref


MATRIX = [MachineConfig(), MachineConfig(tlb="lazy"), MachineConfig(pti=False, asi=False),
          MachineConfig(asi=False, inject=frozenset({"secretmem_noflush"})),
          MachineConfig(asi=False, inject=frozenset({"secretmem_noflush"}), tlb="lazy"),
          MachineConfig(asi=False, inject=frozenset({"xpfo_noflush"})),
          MachineConfig(inject=frozenset({"munmap_noflush", "pti_user_noflush"}))]


@pytest.mark.parametrize("cfg", MATRIX, ids=["default", "lazy", "no-pti-no-asi", "secretmem-noflush",
                                             "secretmem-noflush-lazy", "xpfo-noflush", "munmap-pti-noflush"])
def test_the_matrix_makes_the_same_records_and_findings(monkeypatch, cfg):
    cells = []
    ref, new = both(monkeypatch, lambda: cells.append([c.__dict__ for c in run_matrix(cfg).cells]))
    assert new == ref and cells[0] == cells[1] and any(e[0] == "record" for e in new)


# --- the shortcuts on their own ------------------------------------------------------------
MODE = mode_for(4)
PD, PT = 0x3000, 0x4000
FRAME = 0x200000


def table_of(words) -> PhysMem:
    mem = PhysMem(32 << 20)
    for i, w in enumerate(words):
        struct.pack_into("<Q", mem.buf, PT + 8 * i, w)
    return mem


def split(flags=P | RW | G, frame=FRAME):
    return [(frame + i * 4096) | flags for i in range(512)]


def changed(words, i, value):
    words = list(words)
    words[i] = value
    return words


SPLITS = [
    ("alike", split(), True),
    ("alike, read-only and NX", split(P | NX), True),
    ("one page not present", changed(split(), 7, 0), False),
    ("one page read-only", changed(split(), 511, (FRAME + 511 * 4096) | P | G), False),
    ("one frame elsewhere", changed(split(), 3, 0x900000 | P | RW | G), False),
    ("first not present", split(RW), False),
    ("empty", [0] * 512, False),
    ("frames backwards", [(FRAME + (511 - i) * 4096) | P | RW for i in range(512)], False),
]


@pytest.mark.parametrize("name, words, alike", SPLITS, ids=[s[0] for s in SPLITS])
@pytest.mark.parametrize("old", [FRAME | P | RW | PS | G, FRAME | P | PS, 0x400000 | P | RW | PS | G,
                                 FRAME | P | RW | US | PS | G])
def test_uniform_leaves_decides_as_the_512_translations(name, words, alike, old):
    """What _stale_from finds from the first page equals what
    _still_granted and the size test find from all 512."""
    mem = table_of(words)
    va, eff, nx = 0xFFFF888000200000, US | RW, False
    new = PT | P | RW
    first = uniform_leaves(mem, MODE, 2, va, new, eff, nx)
    assert (first is not None) == alike
    if first is None:
        return
    (o,) = translations(mem, MODE, 2, va, old, eff, nx)
    new_t = translations(mem, MODE, 2, va, new, eff, nx)
    assert first == new_t[0] and len(new_t) == 512
    assert o.grants_no_more_than(first) == model._still_granted(o, new_t)


def test_uniform_leaves_only_for_a_table_of_the_last_level():
    mem = table_of(split())
    assert uniform_leaves(mem, MODE, 2, 0, PT | P | RW, 6, False) is not None
    assert uniform_leaves(mem, MODE, 1, 0, PT | P | RW, 6, False) is None       # a PUD entry: PT is a PD
    assert uniform_leaves(mem, MODE, 2, 0, PT | P | RW | PS, 6, False) is None  # a 2 MiB leaf
    assert uniform_leaves(mem, MODE, 2, 0, PT | RW, 6, False) is None           # not present
    assert uniform_leaves(mem, MODE, 2, 0, (64 << 20) | P | RW, 6, False) is None   # outside RAM


def test_remembered_sub_trees_follow_every_change_of_their_tables():
    """A table written behind the graph's back (no entry_changed, as an
    unobserved write before the audit) is seen at the next enumeration."""
    mem = table_of(split())
    struct.pack_into("<Q", mem.buf, PD + 8 * 1, PT | P | RW)
    g = TableGraph(mem, MODE)
    pud_entry = PD | P | RW | US
    fresh = lambda: translations(mem, MODE, 1, 0, pud_entry, 6, False)  # noqa: E731
    assert g.translations(1, 0, pud_entry, 6, False) == fresh() and len(fresh()) == 512
    assert g.translations(1, 0, pud_entry, 6, False) == fresh()          # from the memo
    struct.pack_into("<Q", mem.buf, PT + 8 * 9, 0)                        # a page goes, in the PT
    assert g.translations(1, 0, pud_entry, 6, False) == fresh() and len(fresh()) == 511
    struct.pack_into("<Q", mem.buf, PD + 8 * 2, (FRAME + (1 << 21)) | P | PS)   # a 2 MiB page comes, in the PD
    assert g.translations(1, 0, pud_entry, 6, False) == fresh() and len(fresh()) == 512
    # a loop is never remembered (the walk reports it broken each time)
    struct.pack_into("<Q", mem.buf, PD + 8 * 3, PD | P | RW)
    assert g.translations(1, 0, pud_entry, 6, False) == fresh()
    assert all(k[2] != pud_entry for k in g._memo)


# --- the return to user mode, reached only while there are stale records -------------------------
def watched_always(mp) -> None:
    """The reference: the stub's SYSRET path reaches the return hook at every return."""
    mp.setattr(TlbCheck, "_watch_return", lambda self, on: self.m.kernel.write_percpu("tlb_watch_return", 1))


NO_PTI = [MachineConfig(pti=False), MachineConfig(pti=False, asi=False, inject=frozenset({"munmap_noflush"})),
          MachineConfig(pti=False, asi=False, inject=frozenset({"secretmem_noflush"}), tlb="lazy")]


@pytest.mark.parametrize("cfg", NO_PTI, ids=["no-pti", "munmap-noflush", "secretmem-noflush-lazy"])
def test_the_gated_return_hook_sees_what_every_return_would(monkeypatch, cfg):
    """Without PTI the stub reaches return_to_user_sysret only while the
    model holds stale records (tlb_watch_return): the same records and
    findings as a hook at every return, over the matrix and the asm suite."""
    paths = discover(["asm/tlb", "asm/secretmem", "asm/xpfo"])
    logs, outcomes = [], []
    for always in (True, False):
        with monkeypatch.context() as mp:
            if always:
                watched_always(mp)
            log = recording(mp, False)
            cells = [c.__dict__ for c in run_matrix(cfg).cells]
            overrides = {"pti": "off", "inject": ",".join(sorted(cfg.inject)) or "none", "tlb": cfg.tlb}
            results = [r.report() for p in paths for r in run_variants(p, overrides=overrides)]
            logs.append(log)
            outcomes.append((cells, results))
    assert logs[0] == logs[1] and outcomes[0] == outcomes[1]
    assert any(e[0] == "record" for e in logs[1])
    if "munmap_noflush" in cfg.inject:
        assert any(e[0] == "finding" and e[1] == "stale-at-user-return" for e in logs[1])


def test_a_return_hook_never_reached_misses_the_finding(monkeypatch):
    """The bug the gate could bring (the flag never set): asm/tlb/munmap_noflush.S's
    stale-at-user-return is no longer found, and the test fails."""
    overrides = {"pti": "off", "inject": "munmap_noflush"}
    assert all(r.passed for r in run_variants("asm/tlb/munmap_noflush.S", overrides=overrides))
    monkeypatch.setattr(TlbCheck, "_watch_return", lambda self, on: None)
    got = run_variants("asm/tlb/munmap_noflush.S", overrides=overrides)
    assert not any(r.passed for r in got)
    assert any("stale-at-user-return" in line for r in got for line in r.failure_lines())
