"""The oracle's batch paths (emu/dev/mmu_batch.py) against its one-case paths.

The access enumeration (tests/test_mmu_access_enum.py) executes its cases in
batches: one guest program per session, faults handled in a hook that
restores the session and moves on.  Here, on a sample of cases, every
batch outcome must equal what :meth:`MmuOracle.access` reports for the same
case run alone (vector, CR2, the CPU's error code, the physical address the
access touched), and a walker verdict that is wrong for one case of a batch
must be reported, for that case only.

The sample: the enumeration's leaf grid (every PDE x PTE kind: not present,
protection, reserved bits, protection keys, XD) and a hand-made page table
with what the grid lacks (non-canonical addresses, physical memory beyond
RAM, RAM outside the scratch frame, written and undone), under control states
that give every error-code bit, at CPL 0 and CPL 3.
"""

from __future__ import annotations

import pytest

from emu.dev import mmu_batch
from emu.dev.mmu_batch import RECORD_SIZE, encode_program
from emu.dev.mmu_oracle import MmuOracle
from emu.hw.paging import (A, D, FETCH, NX, P, PF_I, PF_P, PF_PK, PF_RSVD, PF_U, PF_W, READ, RW, US, VEC_GP,
                           VEC_PF, WRITE, ControlState, Fault, Translation, translate)
from emu.hw.phys import SIZE_2M, FrameKind, PhysMem
from tests.test_mmu_access_enum import Grid, leaf_grid_spec

RAM = 64 << 20
BEYOND_RAM = 0x40_0000_0000
PKEY1 = 1 << 59
RSVD51 = 1 << 51
S = MmuOracle.CR2_SENTINEL
CTLS = {
    "WP SMEP SMAP NXE PKE, key 1 access-disabled": ControlState(wp=True, smep=True, smap=True, nxe=True,
                                                                 pke=True, pkru=0x4),
    "nothing, AC, PKRU ignored": ControlState(wp=False, smep=False, smap=False, ac=True, nxe=False,
                                              pke=False, pkru=0xC),
    "WP SMAP AC NXE PKE, every key but 1 denied": ControlState(wp=True, smep=False, smap=True, ac=True,
                                                               nxe=True, pke=True, pkru=0xFFFFFFF3),
}
# The hand-made table: PT index -> (what the leaf maps, leaf flags)
PAGES = {
    1: ("scratch", P | RW | US | A | D),
    2: ("scratch", P | US | A | D),                 # user read-only
    3: ("scratch", P | RW | A | D),                 # supervisor
    4: ("scratch", P | RW | US | A | D | NX),
    5: ("beyond RAM", P | RW | US | A | D),
    6: ("scratch", P | RW | US | A | D | PKEY1),
    7: ("ram", P | RW | A | D),                     # supervisor, RAM outside scratch
    8: ("ram", P | RW | US | A | D),                # user, RAM outside scratch
    9: (None, 0),                                   # not present
    10: ("scratch", P | RW | US | A | D | RSVD51),  # reserved bit
    11: ("beyond RAM", P | US | A | D | NX),
}
NONCANONICAL = [1 << 47, 0x8000_0000_0000_1000, 0x0123_4567_89AB_CDEF]


@pytest.fixture(scope="module")
def machine():
    """(mem, oracle, leaf grid root and VAs, hand-made root and VAs, the RAM page)."""
    mem = PhysMem(RAM)
    oracle = MmuOracle(mem, 4)
    grid = Grid(mem, oracle, 4)
    groot, gvas = grid.root_over(leaf_grid_spec(), 21)
    tables = [mem.frames.alloc(FrameKind.PGTABLE) for _ in range(4)]
    for upper, lower in zip(tables, tables[1:]):
        mem.write_u64(upper, lower | P | RW | US | A)
    ram = mem.frames.alloc(FrameKind.USER)
    mem.write(ram, bytes(range(256)) * 16)
    where = {"scratch": oracle.scratch, "beyond RAM": BEYOND_RAM, "ram": ram, None: 0}
    for index, (what, flags) in PAGES.items():
        mem.write_u64(tables[3] + 8 * index, where[what] + (0x1000 * index if what == "scratch" else 0) | flags)
    oracle.install(tables[0])
    hvas = [i * 0x1000 + 0x9C for i in PAGES] + NONCANONICAL
    yield mem, oracle, (groot, gvas), (tables[0], hvas), ram
    mem.close()


def kind(o, acc: int, cpl: int) -> str:
    if o.vector is None:
        return f"ok {'rwx'[acc]} CPL{cpl}"
    if o.vector == VEC_GP:
        return "#GP"
    return f"#PF {o.error_code:#x}"


@pytest.mark.parametrize("sample", ["leaf grid", "hand-made"])
def test_batch_matches_one_case(machine, sample, summary):
    mem, oracle, grid, hand, ram = machine
    root, vas = grid if sample == "leaf grid" else hand
    cases = [(va & 0xFFFFFFFFFFFFFFFF, acc) for va in vas for acc in (READ, WRITE, FETCH)]
    ram_before = mem.read(ram, 0x1000)
    bad, kinds = [], set()
    for name, ctl in CTLS.items():
        for cpl in (0, 3):
            batch = oracle.access_batch(root, cases, cpl, ctl)
            assert mem.read(ram, 0x1000) == ram_before              # every write outside scratch undone
            assert mem.read(oracle.scratch, SIZE_2M) == b"\xcc" * SIZE_2M
            assert oracle.check_batch(root, cases, cpl, ctl) == []  # and the walker agrees
            assert oracle.check_hw_batch(root, cases, cpl, ctl) == []
            for (va, acc), (bo, bpa) in zip(cases, batch):
                o = oracle.access(root, va, acc, cpl, ctl)
                one = (o.vector, o.cr2 if o.vector is not None else S, o.error_code, oracle.last_pa)
                # (a fetch that went through ran its target's code in the one-case path;
                # the batch never runs it, so its CR2 is the sentinel)
                if (bo.vector, bo.cr2, bo.error_code, bpa) != one:
                    bad.append(f"{name} CPL{cpl} {'rwx'[acc]} {va:#x}: batch {bo} pa {bpa}, alone {o} pa "
                               f"{oracle.last_pa}")
                kinds.add(kind(o, acc, cpl))
    assert not bad, f"{len(bad)} differences:\n" + "\n".join(bad[:10])
    oks = {f"ok {a} CPL{c}" for a in "rwx" for c in (0, 3)}
    assert oks <= kinds
    codes = {int(k.split()[1], 16) for k in kinds if k.startswith("#PF")}
    if sample == "leaf grid":
        # every error-code bit, and fetch faults (I/D) of every cause but a key
        for bit in (PF_P, PF_W, PF_U, PF_RSVD, PF_I, PF_PK):
            assert any(c & bit for c in codes), hex(bit)
        assert {0x10, 0x11, 0x14, 0x15, 0x19, 0x1D, 0x25, 0x27} <= codes
    else:
        assert "#GP" in kinds
    summary(f"mmu batch vs one case, {sample}: {len(cases)} cases x {len(CTLS)} control states x 2 CPLs, "
            f"{len(kinds)} kinds of outcome, 0 differences")


def wrong(w, acc: int, oracle):
    """Verdicts the walker could have got wrong: the opposite one, and for a
    #PF another error code, for a translation another address (where the
    CPU's address is seen: not a fetch that ran in RAM, whose address no hook
    reports, in either path)."""
    if w.fault is None:
        other = Translation(w.va, w.pa + 0x1000, w.size, w.user, w.writable, w.nx, w.pkey, w.levels, w.raw)
        return [Fault(w.va, VEC_PF, PF_P)] + ([other] if acc != FETCH or w.pa >= RAM else [])
    if w.vector == VEC_GP:
        return [Fault(w.va, VEC_PF, 0), Translation(w.va, oracle.scratch, 0x1000, True, True, False, 0, 4, ())]
    return [Fault(w.va, VEC_PF, w.error_code ^ PF_W),
            Translation(w.va, oracle.scratch, 0x1000, True, True, False, 0, 4, ())]


@pytest.mark.parametrize("cpl", [0, 3])
def test_batch_reports_an_injected_walker_disagreement(machine, monkeypatch, cpl):
    """For each case of a batch in turn (every outcome kind of the hand-made
    table), the walker is made wrong for that case alone: the batch reports
    exactly that case."""
    mem, oracle, _grid, (root, vas), _ram = machine
    ctl = CTLS["WP SMEP SMAP NXE PKE, key 1 access-disabled"]
    cases = [(va & 0xFFFFFFFFFFFFFFFF, acc) for va in vas for acc in (READ, WRITE, FETCH)]
    assert oracle.check_batch(root, cases, cpl, ctl) == []
    if not oracle.error_codes_available:
        pytest.skip("the CPU's error codes are not readable here")
    lies = set()
    for target in cases:
        true = translate(mem, root, target[0], target[1], cpl, ctl)
        for lie in wrong(true, target[1], oracle):
            lies.add(f"{'ok' if true.fault is None else true.vector} -> {'ok' if lie.fault is None else 'fault'}")
            def walker(mem_, root_, va, acc, cpl_, ctl_, lie=lie, target=target):
                return lie if (va, acc) == target else translate(mem_, root_, va, acc, cpl_, ctl_)

            monkeypatch.setattr(mmu_batch, "translate", walker)
            bad = oracle.check_batch(root, cases, cpl, ctl)
            assert [(d.how, d.va, d.access) for d in bad] == [("batch", *target)], (target, lie)
            assert bad[0].describe().startswith("batch: ")
            # the probes see a fault that is not one, or another address (not error codes)
            seen = (lie.fault is None) != (true.fault is None) or (lie.fault is None and lie.pa != true.pa)
            bad = oracle.check_hw_batch(root, cases, cpl, ctl)
            assert [(d.how, d.va, d.access) for d in bad] == ([("hw_translate", *target)] if seen else [])
    monkeypatch.undo()
    # a success made a fault or another address, a #PF and a #GP made a
    # translation or another fault
    assert lies == {"ok -> fault", "ok -> ok", "14 -> ok", "14 -> fault", "13 -> ok", "13 -> fault"}


def test_batch_program_encoding():
    """The hand-encoded records disassemble to the documented instructions."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    cases = [(0x1234, READ), (0xFFFF_8000_0000_0010, WRITE), (0x7000, FETCH)]
    code = encode_program(cases)
    assert len(code) == RECORD_SIZE * len(cases) + 1
    base = 0xFFFF_FF80_0020_0000
    listing = [f"{i.address - base:#x} {i.mnemonic} {i.op_str}".strip()
               for i in Cs(CS_ARCH_X86, CS_MODE_64).disasm(code, base)]
    assert listing == [
        "0x0 mov r15d, 0", "0x6 movabs rdi, 0x1234", "0x10 mov al, 0xcc", "0x12 mov al, byte ptr [rdi]",
        f"0x14 jmp {base + 0x16:#x}",
        "0x16 mov r15d, 1", "0x1c movabs rdi, 0xffff800000000010", "0x26 mov al, 0xcc",
        "0x28 mov byte ptr [rdi], al", f"0x2a jmp {base + 0x2c:#x}",
        "0x2c mov r15d, 2", "0x32 movabs rdi, 0x7000", "0x3c mov al, 0xcc", "0x3e jmp rdi", "0x40 int3",
        "0x41 int3", "0x42 int3"]


def test_batch_refuses_the_oracles_own_slots(machine):
    _mem, oracle, _grid, (root, _vas), _ram = machine
    for va in (oracle.kernel_va, oracle.user_va + 0x1000, oracle.kernel_va + SIZE_2M):
        with pytest.raises(ValueError, match="own top-level slots"):
            oracle.access_batch(root, [(0x1000, READ), (va, FETCH)], 0)
