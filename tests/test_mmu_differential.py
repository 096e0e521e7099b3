"""The reference walker against the CPU's own MMU, on randomized page tables.

Each seed builds a few random page-table trees (4-level, or 5-level with
LA57) in one guest RAM and asks, for many (va, access, CPL, control state)
cases, what the walker (``emu.hw.paging.translate``) says and what Unicorn's
MMU says:

* every case through ``hw_translate`` (``uc_vmem_translate`` with the CPU
  really at that CPL and state): fault or not, and the physical address;
* a large deterministic subset also as a real instruction executed by the
  CPU: fault or not, vector, CR2 and the CPU's own #PF error code.

The trees mix 4K/2M/1G leaves, holes at every level (zero or with garbage
bits), sub-trees linked from two places, reserved bits (bits 40-51, PS in
a PML4E/PML5E, low address bits of large leaves, XD with NXE=0) and every
flag (P RW US PWT PCD A D PS G PAT, XD, protection keys, ignored bits
9-11 and 52-58).  Leaf addresses are arbitrary; only table pointers must
be in RAM.  For executed accesses to be harmless, a leaf maps either
physical memory beyond RAM (the CPU reports an unmapped access: the
translation itself succeeded) or the oracle's scratch frame of int3 bytes.

Expected result, exactly: zero disagreements.  Any disagreement is printed
with the full walk, the control state and both verdicts.
"""

from __future__ import annotations

import random

import pytest

from emu.dev.mmu_oracle import MmuOracle
from emu.hw.paging import (ACCESS_NAMES, MAXPHYADDR, NX, PAT, PAT_LARGE, PCD, PF_PK, PF_P, PF_RSVD,
                        PKEY_SHIFT, PS, PWT, VEC_GP, A, ControlState, D, G, P, RW, US, sign_extend)
from emu.hw.phys import SIZE_2M, FrameKind, PhysMem

RAM = 64 << 20
PHYS_LIMIT = 1 << MAXPHYADDR
ACCESSES = tuple(ACCESS_NAMES)  # 0 r, 1 w, 2 x

# (levels, seed): several items so pytest-xdist can spread them
SEEDS = [(4, s) for s in range(10)] + [(5, s) for s in range(100, 106)]
ROOTS_PER_SEED = 5
VAS_PER_ROOT = 300
CTLS_PER_ROOT = 6
EXECUTE_ONE_IN = 2            # executed subset: every other (va, access) of a session

# What the walker must have answered, across one seed's cases: every page
# size translated, and every kind of fault.
EXPECTED_KINDS = {"4K", "2M", "1G", "#GP", "not present", "protection", "reserved bit",
                  "protection key"}


def kind_of(w) -> str:
    if w.fault is None:
        return {1 << 12: "4K", 1 << 21: "2M", 1 << 30: "1G"}[w.size]
    if w.vector == VEC_GP:
        return "#GP"
    ec = w.error_code
    if ec & PF_RSVD:
        return "reserved bit"
    if ec & PF_PK:
        return "protection key"
    return "protection" if ec & PF_P else "not present"


class TreeGen:
    """Random page-table trees: each table gets a handful of random slots.

    ``targets`` collects, per tree, the regions worth probing: every entry
    written, with its span and whether it is a leaf (a present leaf entry)
    or anything else (a hole, or a table entry whose sub-tree is mostly
    empty or whose reserved bits fault the whole span).
    """

    def __init__(self, rng: random.Random, mem: PhysMem, oracle: MmuOracle):
        self.rng = rng
        self.mem = mem
        self.oracle = oracle
        self.levels = oracle.levels
        self.top_shift = 12 + 9 * (self.levels - 1)
        # tables already built, per shift, for sub-tree sharing:
        # (table address, its targets relative to the table's base)
        self.pool: dict[int, list[tuple[int, list]]] = {}
        self.tables = 0

    # -- entries -----------------------------------------------------------------
    def _flags(self, leaf: bool, shift: int) -> int:
        r = self.rng.random
        f = P
        f |= RW if r() < 0.85 else 0
        f |= US if r() < 0.8 else 0
        f |= NX if r() < 0.12 else 0
        for bit in (PWT, PCD, A, D, G):
            f |= bit if r() < 0.3 else 0
        if r() < 0.3:
            f |= self.rng.getrandbits(3) << 9           # ignored (software) bits
        if r() < 0.3:
            f |= self.rng.getrandbits(7) << 52          # ignored bits 52-58
        if leaf:
            if r() < 0.6:
                f |= self.rng.getrandbits(4) << PKEY_SHIFT
            if shift == 12:
                f |= PAT if r() < 0.3 else 0
            else:
                f |= PS | (PAT_LARGE if r() < 0.3 else 0)
        elif r() < 0.3:
            f |= self.rng.getrandbits(4) << PKEY_SHIFT  # ignored in non-leaf entries
        if r() < 0.04:
            f |= self._reserved(leaf, shift)
        return f

    def _reserved(self, leaf: bool, shift: int) -> int:
        """One reserved bit that fits the entry's kind."""
        choices = [1 << self.rng.randrange(40, 52)]           # above MAXPHYADDR
        if not leaf and shift >= 39:
            choices.append(PS)                                  # PS in a PML4E/PML5E
        if leaf and shift > 12:
            choices.append(1 << self.rng.randrange(13, shift))  # low bits of a large leaf
        return self.rng.choice(choices)

    def _leaf_pa(self, shift: int) -> int:
        """Beyond RAM (anywhere below 2^40), or in the oracle's scratch frame."""
        size = 1 << shift
        if shift < 30 and self.rng.random() < 0.4:
            pa = self.oracle.scratch + (self.rng.randrange(SIZE_2M // size) << shift)
        else:
            pa = self.rng.randrange(-(-RAM // size), PHYS_LIMIT // size) << shift
        assert self.oracle.safe_pa(pa, size)
        return pa

    def _hole(self) -> int:
        if self.rng.random() < 0.5:
            return 0
        return self.rng.getrandbits(64) & ~P                # non-present, garbage elsewhere

    # -- tables ------------------------------------------------------------------
    def table(self, shift: int, depth_budget: int) -> tuple[int, list]:
        """Build a table whose entries map 2^shift bytes each; returns
        (address, targets) with target VAs relative to the table's base."""
        t = self.mem.frames.alloc(FrameKind.PGTABLE, 0, "differential")
        self.tables += 1
        rng = self.rng
        top = shift == self.top_shift
        targets = []
        n = rng.randint(3, 7) if shift > 21 else rng.randint(4, 12)
        slots = rng.sample([s for s in range(512) if not (top and s in MmuOracle.RESERVED_SLOTS)], n)
        for slot in slots:
            base = slot << shift
            kind = rng.random()
            if kind < 0.15:
                e = self._hole()
            elif shift > 12 and depth_budget > 0 and (kind < 0.55 or shift > 30):
                child_shift = shift - 9
                pool = self.pool.setdefault(child_shift, [])
                if pool and rng.random() < 0.3:
                    child, child_targets = rng.choice(pool)     # a shared sub-tree
                else:
                    child, child_targets = self.table(child_shift, depth_budget - 1)
                    pool.append((child, child_targets))
                e = child | self._flags(False, shift)
                targets.extend((base + off, span, leaf) for off, span, leaf in child_targets)
            elif shift <= 30:
                e = self._leaf_pa(shift) | self._flags(True, shift)
            else:
                e = self._hole()
            targets.append((base, 1 << shift, bool(e & P) and (shift == 12 or bool(e & PS))))
            self.mem.write_u64(t + 8 * slot, e)
        return t, targets

    def tree(self) -> tuple[int, list[int]]:
        """A new root with the oracle's slots installed; returns (root, target VAs)."""
        root, targets = self.table(self.top_shift, self.levels)
        self.oracle.install(root)
        return root, targets


def sample_vas(rng: random.Random, targets: list, levels: int, n: int) -> list[int]:
    """Mostly inside the tree's leaves, then its other entries; a few
    anywhere, a few non-canonical."""
    bits = 12 + 9 * levels
    out = []
    reserved = MmuOracle.RESERVED_SLOTS
    leaves = [t for t in targets if t[2]]
    others = [t for t in targets if not t[2]]
    while len(out) < n:
        x = rng.random()
        if x < 0.9:
            base, span, _ = rng.choice(leaves if leaves and (x < 0.6 or not others) else others)
            va = sign_extend(base + rng.randrange(span), levels)
        elif x < 0.96:
            va = sign_extend(rng.getrandbits(bits), levels)
            if (va >> (bits - 9)) & 511 in reserved:
                continue                        # the oracle's own code lives there
        else:
            va = rng.getrandbits(64)
            if sign_extend(va & ((1 << bits) - 1), levels) == va:
                continue                        # only non-canonical ones here
        out.append(va)
    return out


def random_ctl(rng: random.Random, levels: int) -> ControlState:
    r = rng.random
    pkru = rng.choice([0, rng.getrandbits(32), rng.getrandbits(32), 0x55555554, 0xAAAAAAA8])
    return ControlState(wp=r() < 0.6, smep=r() < 0.6, smap=r() < 0.6, ac=r() < 0.4, nxe=r() < 0.85,
                        pke=r() < 0.6, pkru=pkru, la57=levels == 5)


@pytest.mark.parametrize("levels,seed", SEEDS, ids=[f"{lv}level-seed{s}" for lv, s in SEEDS])
def test_walker_matches_cpu_mmu(levels, seed, summary):
    rng = random.Random(seed * 1000 + levels)
    mem = PhysMem(RAM)
    try:
        oracle = MmuOracle(mem, levels)
        gen = TreeGen(rng, mem, oracle)
        bad = []
        kinds = set()
        n_hw = n_exec = n_fault = n_ok = 0
        for _ in range(ROOTS_PER_SEED):
            root, targets = gen.tree()
            vas = sample_vas(rng, targets, levels, VAS_PER_ROOT)
            for _ in range(CTLS_PER_ROOT):
                ctl = random_ctl(rng, levels)
                for cpl in (0, 3):
                    cases = [(va, acc) for va in vas for acc in ACCESSES]
                    # every case through hw_translate first (one CPU state per session) ...
                    for va, acc in cases:
                        d = oracle.check_hw(root, va, acc, cpl, ctl)
                        if d:
                            bad.append(d)
                        kinds.add(kind_of(oracle.last_walk))
                    n_hw += len(cases)
                    # ... then a deterministic subset executed for real
                    for va, acc in cases[rng.randrange(EXECUTE_ONE_IN)::EXECUTE_ONE_IN]:
                        d = oracle.check_access(root, va, acc, cpl, ctl)
                        if d:
                            bad.append(d)
                        elif oracle.last_outcome.vector is not None:
                            n_fault += 1
                        else:
                            n_ok += 1
                        n_exec += 1
        assert not bad, f"{len(bad)} disagreements, first ones:\n" + "\n".join(d.describe() for d in bad[:5])
        # the generator must produce every kind of verdict, and executed
        # successes and faults in bulk, or the test proves little
        assert kinds == EXPECTED_KINDS, kinds ^ EXPECTED_KINDS
        assert n_fault > n_exec // 10 and n_ok > n_exec // 10, (n_fault, n_ok)
        ec = "CPU error codes" if oracle.error_codes_available else "vector/CR2 only"
        summary(f"mmu differential {levels}-level seed {seed}: {n_hw} cases ({n_exec} executed: "
                f"{n_ok} ok, {n_fault} faults, {ec}), {gen.tables} tables, 0 disagreements")
    finally:
        mem.close()


# --- the oracle itself, on hand-written cases with exact expectations ------------------
# One 4-level tree: PML4[0] -> PDPT[0] -> PD[0] -> PT, one page per PT index.
BEYOND_RAM = 0x40_0000_0000          # a physical address beyond RAM (and below 2^40)
PKEY1 = 1 << 59
KNOWN_PAGES = {                      # PT index -> (what the leaf maps, leaf flags)
    1: ("scratch", P | RW | US | A | D),          # user read-write
    2: ("scratch", P | US | A | D),               # user read-only
    3: ("scratch", P | RW | A | D),               # supervisor read-write
    4: ("scratch", P | RW | US | A | D | NX),     # user no-execute
    5: ("beyond RAM", P | RW | US | A | D),
    6: ("scratch", P | RW | US | A | D | PKEY1),  # user, protection key 1
    7: ("ram", P | RW | A | D),                   # supervisor, over RAM outside scratch
    8: (None, 0),                                 # not present
}
NONCANON = 1 << 47
S = MmuOracle.CR2_SENTINEL

# (name, PT index or va, access, cpl, control overrides, expected (vector, CR2, error code),
#  hw_translate translates)
KNOWN_CASES = [
    ("user read", 1, "r", 3, {}, (None, S, None), True),
    ("user write to read-only", 2, "w", 3, {}, (14, "va", 0x7), False),
    ("kernel write to read-only, WP", 2, "w", 0, {"smap": False}, (14, "va", 0x3), False),
    ("kernel write to read-only, no WP", 2, "w", 0, {"smap": False, "wp": False}, (None, S, None), True),
    ("SMAP read", 1, "r", 0, {}, (14, "va", 0x1), False),
    ("SMAP read with AC", 1, "r", 0, {"ac": True}, (None, S, None), True),
    ("SMEP fetch", 1, "x", 0, {}, (14, "va", 0x11), False),
    ("user fetch of NX page", 4, "x", 3, {}, (14, "va", 0x15), False),
    ("user fetch of a supervisor page", 3, "x", 3, {}, (14, "va", 0x15), False),
    ("user fetch, ok", 1, "x", 3, {}, (None, S, None), True),
    ("read beyond RAM", 5, "r", 3, {}, (None, S, None), True),
    ("fetch beyond RAM", 5, "x", 3, {}, (None, S, None), True),
    ("PK access-disable, user read", 6, "r", 3, {"pke": True, "pkru": 0x4}, (14, "va", 0x25), False),
    ("PK write-disable, kernel write, WP", 6, "w", 0, {"pke": True, "pkru": 0x8, "smap": False},
     (14, "va", 0x23), False),
    ("PKRU ignored without CR4.PKE", 6, "r", 3, {"pkru": 0x4}, (None, S, None), True),
    ("not present, user write", 8, "w", 3, {}, (14, "va", 0x6), False),
    ("not present, kernel fetch, NXE off, SMEP off", 8, "x", 0, {"nxe": False, "smep": False},
     (14, "va", 0x0), False),
    ("non-canonical read: #GP, CR2 untouched", NONCANON, "r", 0, {}, (13, S, 0), False),
    ("non-canonical fetch: #GP", NONCANON, "x", 3, {}, (13, S, 0), False),
    ("kernel write over RAM: done, then undone", 7, "w", 0, {}, (None, S, None), True),
]


@pytest.fixture(scope="module")
def known_tree():
    """(mem, oracle, root, {PT index: leaf physical address}, the RAM page of index 7)."""
    mem = PhysMem(RAM)
    oracle = MmuOracle(mem, 4)
    tables = [mem.frames.alloc(FrameKind.PGTABLE) for _ in range(4)]
    for upper, lower in zip(tables, tables[1:]):
        mem.write_u64(upper, lower | P | RW | US | A)
    ram_page = mem.frames.alloc(FrameKind.USER)
    mem.write(ram_page, bytes(range(256)) * 16)
    where = {"scratch": lambda i: oracle.scratch + i * 4096, "beyond RAM": lambda i: BEYOND_RAM,
             "ram": lambda i: ram_page, None: lambda i: 0}
    leaf_pa = {}
    for index, (what, flags) in KNOWN_PAGES.items():
        leaf_pa[index] = where[what](index)
        mem.write_u64(tables[3] + 8 * index, leaf_pa[index] | flags)
    oracle.install(tables[0])
    yield mem, oracle, tables[0], leaf_pa, ram_page
    mem.close()


@pytest.mark.parametrize("name,page,access,cpl,ctl_kw,expected,hw_ok", KNOWN_CASES,
                         ids=[c[0] for c in KNOWN_CASES])
def test_oracle_known_case(known_tree, name, page, access, cpl, ctl_kw, expected, hw_ok):
    mem, oracle, root, leaf_pa, ram_page = known_tree
    va = page if page >= 4096 else page * 4096 + 0x9C
    ctl = ControlState(**ctl_kw)
    before = mem.read(ram_page, 4096)
    out = oracle.access(root, va, access, cpl, ctl)
    touched = oracle.last_pa
    vector, cr2, ec = expected
    assert out == (vector, va if cr2 == "va" else cr2, ec if oracle.error_codes_available else None)
    # the physical address the access reached, where the memory hooks can see it
    # (data accesses, and fetches beyond RAM; a fetch from scratch just runs int3)
    seen = vector is None and (access != "x" or page == 5)
    assert touched == (leaf_pa[page] + 0x9C if seen else None)
    # the CPU's MMU agrees when probed at the same CPL and control state
    hw = oracle.hw_translate(root, va, access, cpl, ctl)
    assert hw == (leaf_pa[page] + 0x9C if hw_ok else None)
    assert mem.read(ram_page, 4096) == before          # the safety net undid any write there
