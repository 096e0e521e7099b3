"""Exhaustive access-rights enumeration, walker against the CPU's own MMU.

In the spirit of kvm-unit-tests' x86/access.c: every legal combination of
entry flags at a level, times every control state, access type and CPL.
Each case is compared walker (``emu.hw.paging.translate``) vs ``hw_translate``
(fault or not, physical address), and walker vs a real instruction executed
by the CPU (fault or not, vector, CR2, the CPU's own #PF error code, and
the physical address a successful data access reached).

Two grids, each in one page-table tree:

* leaf grid: every PDE (table: every RW US XD A; 2 MiB leaf: every RW US
  XD A D with pkey 0/1, reserved bit 13, PAT/cache/global/ignored bits;
  non-present, zero or with every other bit set) times every PTE (every
  RW US XD A D with pkey 0/1, reserved bit 51, PAT/cache/global/ignored
  bits; non-present, zero or garbage), one page table shared by all the
  table PDEs;
* upper grid: a reduced set at the PML4E (or PML5E+PML4E) and PDPTE levels
  (RW US XD, non-present, reserved PS / bit 51, 1 GiB leaves with pkeys and
  reserved bits 13/29), over a small PDE/PTE set.

Control states: CR0.WP x CR4.SMEP x CR4.SMAP x RFLAGS.AC x EFER.NXE x
{PKE off with PKRU denying key 1 (must be ignored), PKE on with PKRU 0, AD
for key 1, WD for key 1, AD+WD for key 1, every key but 1 denied} = 192.

The CPU sets A and D bits as it walks; the tables are restored before each
(control state, CPL) session so that every session sees the enumerated bits.
Expected, exactly: zero disagreements, and the walker's #PF error codes
are exactly the set written in ``EXPECTED_CODES`` (``EXPECTED_CODES_NO_ID``
with NXE and SMEP both off).
"""

from __future__ import annotations

import itertools

import pytest

from emu.dev.mmu_oracle import MmuOracle
from emu.hw.paging import (ACCESS_NAMES, translate, NX, PAT, PAT_LARGE, PCD, PS, PWT, A, ControlState, D, G, P,
                        RW, US, sign_extend)
from emu.hw.phys import PAGE_SIZE, SIZE_2M, FrameKind, PhysMem

RAM = 64 << 20
PKEY1 = 1 << 59
BIT13 = 1 << 13               # reserved in a 2M/1G leaf (an address bit below the page size)
BIT29 = 1 << 29               # reserved in a 1G leaf
BIT51 = 1 << 51               # above MAXPHYADDR (40): reserved everywhere
NP_GARBAGE = 0xFFFFFFFFFFFFFFFE  # not present; every other bit set (ignored)
IGNORED = (0x7 << 9) | (0x7F << 52)


def combos(*bits: int) -> list[int]:
    """Every subset of ``bits``, OR-ed together."""
    out = [0]
    for b in bits:
        out += [x | b for x in out]
    return out


# --- the tree specs ------------------------------------------------------------------------
# A table spec is a list of entries (entry bits, child spec or None).  A child
# spec used by several entries is built once: those entries share the table.
PERM = P | RW | US | A        # the permissive table entry on paths that do not vary


def leaf_grid_spec():
    """The PD of the leaf grid: every PDE kind; the table PDEs share one PT
    holding every PTE kind."""
    pte = ([(P | f | pk, None) for f in combos(RW, US, NX, A, D) for pk in (0, PKEY1)]
           + [(0, None), (NP_GARBAGE, None)]
           + [(P | f | A | D | BIT51, None) for f in combos(RW, US, NX)]
           + [(P | f | A | D | G | PAT | PWT | PCD | IGNORED, None) for f in combos(RW, US, NX)])
    return ([(P | f, pte) for f in combos(RW, US, NX, A)]
            + [(0, None), (NP_GARBAGE, None)]
            + [(P | PS | f | pk, None) for f in combos(RW, US, NX, A, D) for pk in (0, PKEY1)]
            + [(P | PS | f | A | D | BIT13, None) for f in combos(RW, US, NX)]
            + [(P | PS | f | A | D | G | PAT_LARGE | PWT | PCD | IGNORED, None) for f in combos(RW, US, NX)])


def upper_grid_spec(levels: int):
    """The root of the upper grid.

    One upper level varies at a time: each PML4E (and PML5E) kind sits over
    ``mini``, a small tree with RW/US/XD leaves of every size; a permissive
    path leads to a PDPT holding every PDPTE kind (tables, holes, reserved
    bits, 1G leaves with pkeys).
    """
    pte = [(P | f | A | D | pk, None) for f in combos(RW, US, NX) for pk in (0, PKEY1)] + [(0, None)]
    pde = [(PERM, pte)] + [(P | PS | f | A | D, None) for f in combos(RW, US, NX)]
    mini = [(PERM, pde)] + [(P | PS | f | A | D, None) for f in combos(RW, US, NX)]
    pdpt = ([(P | f | A, pde) for f in combos(RW, US, NX)]
            + [(0, None), (NP_GARBAGE, None), (PERM | BIT51, pde)]
            + [(P | PS | f | A | D | pk, None) for f in combos(RW, US, NX) for pk in (0, PKEY1)]
            + [(P | PS | RW | US | A | D | b, None) for b in (BIT13, BIT29, BIT51)])

    def variants(child):
        """Every kind of a PML4E/PML5E over ``child``."""
        return ([(P | f | A, child) for f in combos(RW, US, NX)]
                + [(0, None), (NP_GARBAGE, None), (PERM | PS, child), (PERM | BIT51, child)])

    pml4 = variants(mini) + [(PERM, pdpt)]
    if levels == 4:
        return pml4
    return variants([(PERM, mini)]) + [(PERM, pml4)]


class Grid:
    """Builds a spec into tables and lists one VA per path to every entry."""

    def __init__(self, mem: PhysMem, oracle: MmuOracle, levels: int):
        self.mem = mem
        self.oracle = oracle
        self.levels = levels
        self.top_shift = 12 + 9 * (levels - 1)
        self.built: dict[int, tuple[int, list[int]]] = {}
        self.tables: list[int] = []

    def leaf_pa(self, shift: int, index: int) -> int:
        """Leaves map the oracle's scratch frame, so executed accesses are harmless."""
        if shift == 12:
            return self.oracle.scratch + (index % 512) * PAGE_SIZE
        if shift == 21:
            return self.oracle.scratch
        return 0    # a 1G page over all of RAM: its probes land in scratch (see offset)

    def offset(self, shift: int, index: int) -> int:
        """Where inside the span of an entry the probe goes (varied per entry)."""
        if shift == 30:
            return self.oracle.scratch + (index * 0x1040) % SIZE_2M
        return (index * 0x1040 + 0x28) % min(1 << shift, SIZE_2M)

    def build(self, spec, shift: int) -> tuple[int, list[int]]:
        if id(spec) in self.built:
            return self.built[id(spec)]
        t = self.mem.frames.alloc(FrameKind.PGTABLE, 0, "access-enum")
        self.tables.append(t)
        slots = [s for s in range(512) if not (shift == self.top_shift and s in MmuOracle.RESERVED_SLOTS)]
        vas = []
        for index, ((flags, child), slot) in enumerate(zip(spec, slots)):
            base = slot << shift
            if child is None:
                self.mem.write_u64(t + 8 * slot, (self.leaf_pa(shift, index) if flags & P else 0) | flags)
                vas.append(base + self.offset(shift, index))
                continue
            ct, cvas = self.build(child, shift - 9)
            self.mem.write_u64(t + 8 * slot, ct | flags)
            if flags & P and not flags & (BIT51 | PS):
                vas += [base + v for v in cvas]
            else:
                vas.append(base + self.offset(shift, index))   # the walk stops here
        self.built[id(spec)] = (t, vas)
        return t, vas

    def root_for(self, top_spec) -> tuple[int, list[int]]:
        root, vas = self.build(top_spec, self.top_shift)
        self.oracle.install(root)
        return root, [sign_extend(v, self.levels) for v in vas]

    def root_over(self, spec, shift: int) -> tuple[int, list[int]]:
        """A root reaching the table ``spec`` (entries of 2^shift) through permissive entries."""
        while shift < self.top_shift:
            spec = [(PERM, spec)]
            shift += 9
        return self.root_for(spec)

    def save(self) -> list[tuple[int, bytes]]:
        return [(t, self.mem.read(t, PAGE_SIZE)) for t in self.tables]


PK_STATES = [(False, 0xC), (True, 0), (True, 0x4), (True, 0x8), (True, 0xC), (True, 0xFFFFFFF3)]


def ctl_states(levels: int, **fixed: bool) -> list[ControlState]:
    """Every control state of the enumeration, with the bits in ``fixed`` held
    (e.g. ``wp=True``): tests take one slice each, so pytest-xdist can spread them."""
    out = []
    for wp, smep, smap, ac, nxe, (pke, pkru) in itertools.product(
            (False, True), (False, True), (False, True), (False, True), (False, True), PK_STATES):
        ctl = ControlState(wp=wp, smep=smep, smap=smap, ac=ac, nxe=nxe, pke=pke, pkru=pkru,
                           la57=levels == 5)
        if all(getattr(ctl, k) == v for k, v in fixed.items()):
            out.append(ctl)
    return out


def run_grid(oracle: MmuOracle, grid: Grid, root: int, vas: list[int], ctls: list[ControlState]):
    """Every (ctl, cpl, va, access) through hw_translate, then executed.

    Returns (cases, disagreements, the walker's #PF error codes).
    """
    mem = grid.mem
    pristine = grid.save()
    bad, codes = [], set()
    cases = [(va, acc) for va in vas for acc in ACCESS_NAMES]
    for ctl in ctls:
        for cpl in (0, 3):
            for t, data in pristine:        # undo the A/D bits the CPU set
                mem.write(t, data)
            # the walker once per case (the tables are pristine for both oracles:
            # the A/D bits the CPU sets do not change a verdict)
            walks = [translate(mem, root, va, acc, cpl, ctl) for va, acc in cases]
            codes |= {w.error_code for w in walks if w.fault is not None and w.vector == 14}
            # hw_translate first: the CPU stays parked at this CPL and state ...
            bad += oracle.check_hw_batch(root, cases, cpl, ctl, walks)
            # ... then every case as a real instruction, in one guest program
            # (emu/dev/mmu_batch.py: one emu_start for the session)
            bad += oracle.check_batch(root, cases, cpl, ctl, walks)
    return len(ctls) * 2 * len(cases), bad, codes


def report(bad) -> str:
    return f"{len(bad)} disagreements, first ones:\n" + "\n".join(d.describe() for d in bad[:5])


# Every #PF error code a test must produce (the walker's, confirmed by the
# CPU): P W U RSVD I/D PK in all their reachable combinations.
EXPECTED_CODES = (
    {0x0, 0x2, 0x4, 0x6, 0x10, 0x14}        # not present: read/write/fetch at CPL0 and CPL3
    | {0x1, 0x3, 0x5, 0x7, 0x11, 0x15}      # protection
    | {0x9, 0xB, 0xD, 0xF, 0x19, 0x1D}      # reserved bit
    | {0x21, 0x23, 0x25, 0x27}              # protection key: data accesses only
)
# With NXE and SMEP both off, fetch faults carry no I/D bit (SDM 4.7), and
# without SMEP a CPL0 fetch of a user page is allowed.
EXPECTED_CODES_NO_ID = EXPECTED_CODES - {0x10, 0x14, 0x11, 0x15, 0x19, 0x1D}


@pytest.fixture
def machine(request):
    levels = getattr(request, "param", 4)
    mem = PhysMem(RAM)
    oracle = MmuOracle(mem, levels)
    yield mem, oracle, Grid(mem, oracle, levels)
    mem.close()


LEAF_SLICES = list(itertools.product((False, True), repeat=3))   # (WP, NXE, SMEP)
UPPER_SLICES = [(lv, nxe, wp) for lv in (4, 5) for nxe in (False, True) for wp in (False, True)]


def slice_name(**bits: bool) -> str:
    return " ".join(f"{k.upper()}={v:d}" for k, v in bits.items())


@pytest.mark.parametrize("wp,nxe,smep", LEAF_SLICES,
                         ids=[f"wp{w:d}-nxe{x:d}-smep{e:d}" for w, x, e in LEAF_SLICES])
def test_leaf_grid(machine, wp, nxe, smep, summary):
    mem, oracle, grid = machine
    root, vas = grid.root_over(leaf_grid_spec(), 21)
    ctls = ctl_states(4, wp=wp, nxe=nxe, smep=smep)
    n, bad, codes = run_grid(oracle, grid, root, vas, ctls)
    assert not bad, report(bad)
    expected = EXPECTED_CODES if smep or nxe else EXPECTED_CODES_NO_ID
    assert codes == expected, sorted(hex(c) for c in codes ^ expected)
    ec = "with CPU error codes" if oracle.error_codes_available else "vector/CR2 only"
    summary(f"mmu access enum, leaf grid {slice_name(wp=wp, nxe=nxe, smep=smep)}: {len(vas)} PDE x PTE "
            f"paths, {len(ctls)} control states, {n} cases, each probed and executed ({ec}), "
            f"0 disagreements")


@pytest.mark.parametrize("machine,nxe,wp", UPPER_SLICES, indirect=["machine"],
                         ids=[f"{lv}level-nxe{x:d}-wp{w:d}" for lv, x, w in UPPER_SLICES])
def test_upper_grid(machine, nxe, wp, summary):
    mem, oracle, grid = machine
    levels = oracle.levels
    root, vas = grid.root_for(upper_grid_spec(levels))
    ctls = ctl_states(levels, nxe=nxe, wp=wp)
    n, bad, codes = run_grid(oracle, grid, root, vas, ctls)
    assert not bad, report(bad)
    assert codes == EXPECTED_CODES, sorted(hex(c) for c in codes ^ EXPECTED_CODES)
    ec = "with CPU error codes" if oracle.error_codes_available else "vector/CR2 only"
    summary(f"mmu access enum, upper grid {levels}-level {slice_name(nxe=nxe, wp=wp)}: {len(vas)} paths, "
            f"{len(ctls)} control states, {n} cases, each probed and executed ({ec}), 0 disagreements")
