"""The reference walker against hand-computed verdicts (SDM Vol. 3A 4.5-4.7).

Each case builds one path of raw entries in its own top-level slot, then
asks for one access.  Expected outcomes are written out by hand: a
translation (page size), #PF with the exact error code, or #GP.
"""

import pytest

from emu.hw.paging import NX, P, PAT_LARGE, PS, RW, US, ControlState, translate

T = P | RW | US           # permissive intermediate entry
K = P | RW                # supervisor intermediate entry
BIT45 = 1 << 45           # above MAXPHYADDR (40): reserved
PKEY1 = 1 << 59

LEAF_PA = 0x200000        # 2M aligned so every page size can use it


def slot_va(slot: int, levels: int = 4) -> int:
    shift = 12 + 9 * (levels - 1)
    va = slot << shift
    if slot >= 256:
        va |= (-1 << (shift + 8)) & 0xFFFFFFFFFFFFFFFF
    return va


# (name, entry flags from the top, access, cpl, control overrides, expected)
# expected: ("ok", page size) | ("pf", error code) | ("gp",)
CASES = [
    # ordinary user pages
    ("user rw read", [T, T, T, P | RW | US], "r", 3, {}, ("ok", 4096)),
    ("user rw write", [T, T, T, P | RW | US], "w", 3, {}, ("ok", 4096)),
    ("user rw fetch", [T, T, T, P | RW | US], "x", 3, {}, ("ok", 4096)),
    ("user ro write at cpl3", [T, T, T, P | US], "w", 3, {}, ("pf", 0x7)),
    ("user ro write at cpl0, WP", [T, T, T, P | US], "w", 0, {"smap": False}, ("pf", 0x3)),
    ("user ro write at cpl0, no WP", [T, T, T, P | US], "w", 0, {"smap": False, "wp": False}, ("ok", 4096)),
    ("user nx fetch", [T, T, T, P | RW | US | NX], "x", 3, {}, ("pf", 0x15)),
    # supervisor pages from CPL3
    ("supervisor read at cpl3", [T, T, T, P | RW], "r", 3, {}, ("pf", 0x5)),
    ("supervisor write at cpl3", [T, T, T, P | RW], "w", 3, {}, ("pf", 0x7)),
    ("supervisor fetch at cpl3", [T, T, T, P | RW], "x", 3, {}, ("pf", 0x15)),
    # effective permissions: U/S and R/W ANDed, XD ORed over the walk
    ("pml4 without U/S", [K, T, T, P | RW | US], "r", 3, {}, ("pf", 0x5)),
    ("pdpt read-only", [T, P | US, T, P | RW | US], "w", 3, {}, ("pf", 0x7)),
    ("pde read-only, cpl0 no WP", [T, T, P | US, P | RW | US], "w", 0, {"wp": False, "smap": False}, ("ok", 4096)),
    ("pml4 XD", [T | NX, T, T, P | RW | US], "x", 3, {}, ("pf", 0x15)),
    ("pde XD, read still ok", [T, T, T | NX, P | RW | US], "r", 3, {}, ("ok", 4096)),
    # supervisor accesses
    ("kernel nx fetch", [K, K, K, P | RW | NX], "x", 0, {}, ("pf", 0x11)),
    ("kernel ro write, WP", [K, K, K, P], "w", 0, {}, ("pf", 0x3)),
    ("kernel ro write, no WP", [K, K, K, P], "w", 0, {"wp": False}, ("ok", 4096)),
    ("kernel fetch", [K, K, K, P], "x", 0, {}, ("ok", 4096)),
    # SMAP / SMEP
    ("SMAP read of user page", [T, T, T, P | RW | US], "r", 0, {}, ("pf", 0x1)),
    ("SMAP write of user page", [T, T, T, P | RW | US], "w", 0, {}, ("pf", 0x3)),
    ("SMAP read with AC", [T, T, T, P | RW | US], "r", 0, {"ac": True}, ("ok", 4096)),
    ("SMAP write with AC", [T, T, T, P | RW | US], "w", 0, {"ac": True}, ("ok", 4096)),
    ("SMAP off", [T, T, T, P | RW | US], "r", 0, {"smap": False}, ("ok", 4096)),
    ("SMEP fetch of user page", [T, T, T, P | RW | US], "x", 0, {}, ("pf", 0x11)),
    ("SMEP fetch even with AC", [T, T, T, P | RW | US], "x", 0, {"ac": True}, ("pf", 0x11)),
    ("SMEP off", [T, T, T, P | RW | US], "x", 0, {"smep": False}, ("ok", 4096)),
    # not present at each level; W/U/I bits still reported
    ("pml4 not present, user read", [0], "r", 3, {}, ("pf", 0x4)),
    ("pml4 not present, kernel write", [0], "w", 0, {}, ("pf", 0x2)),
    ("pdpt not present, user write", [T, 0], "w", 3, {}, ("pf", 0x6)),
    ("pde not present, kernel fetch", [K, K, 0], "x", 0, {}, ("pf", 0x10)),
    ("pte not present, user fetch", [T, T, T, 0], "x", 3, {}, ("pf", 0x14)),
    ("I/D needs NXE or SMEP", [K, K, 0], "x", 0, {"nxe": False, "smep": False}, ("pf", 0x0)),
    ("I/D with SMEP only", [K, K, 0], "x", 0, {"nxe": False, "smep": True}, ("pf", 0x10)),
    ("reserved bits ignored when not present", [K, K, K, BIT45 | RW], "r", 0, {}, ("pf", 0x0)),
    # reserved bits
    ("pte bit 45", [K, K, K, P | RW | BIT45], "r", 0, {}, ("pf", 0x9)),
    ("pml4 bit 45", [K | BIT45, K, K, P | RW], "r", 0, {}, ("pf", 0x9)),
    ("pml4 bit 45, user write", [T | BIT45, T, T, P | RW | US], "w", 3, {}, ("pf", 0xF)),
    ("pml4 PS", [K | PS, K, K, P | RW], "r", 0, {}, ("pf", 0x9)),
    ("XD without NXE", [K, K, K, P | RW | NX], "r", 0, {"nxe": False}, ("pf", 0x9)),
    ("bits 52-58 are ignored", [K, K, K, P | RW | (0x7F << 52)], "r", 0, {}, ("ok", 4096)),
    ("rsvd beats protection", [T, T, T, P | BIT45 | US], "w", 3, {}, ("pf", 0xF)),
    # large pages
    ("2M page", [K, K, P | RW | PS], "r", 0, {}, ("ok", 2 << 20)),
    ("2M page with PAT", [K, K, P | RW | PS | PAT_LARGE], "r", 0, {}, ("ok", 2 << 20)),
    ("2M page bit 13", [K, K, P | RW | PS | (1 << 13)], "r", 0, {}, ("pf", 0x9)),
    ("2M page bit 20", [K, K, P | RW | PS | (1 << 20)], "r", 0, {}, ("pf", 0x9)),
    ("1G page", [K, P | RW | PS], "w", 0, {}, ("ok", 1 << 30)),
    ("1G page bit 29", [K, P | RW | PS | (1 << 29)], "r", 0, {}, ("pf", 0x9)),
    ("1G page read-only from cpl3", [T, P | US | PS], "w", 3, {}, ("pf", 0x7)),
    # protection keys (SDM 4.6.2): user-mode addresses only, data accesses only
    ("PK AD read", [T, T, T, P | RW | US | PKEY1], "r", 3, {"pke": True, "pkru": 0x4}, ("pf", 0x25)),
    ("PK AD write", [T, T, T, P | RW | US | PKEY1], "w", 3, {"pke": True, "pkru": 0x4}, ("pf", 0x27)),
    ("PK AD fetch unaffected", [T, T, T, P | RW | US | PKEY1], "x", 3, {"pke": True, "pkru": 0x4}, ("ok", 4096)),
    ("PK AD supervisor read", [T, T, T, P | RW | US | PKEY1], "r", 0,
     {"pke": True, "pkru": 0x4, "smap": False}, ("pf", 0x21)),
    ("PK WD read ok", [T, T, T, P | RW | US | PKEY1], "r", 3, {"pke": True, "pkru": 0x8}, ("ok", 4096)),
    ("PK WD write", [T, T, T, P | RW | US | PKEY1], "w", 3, {"pke": True, "pkru": 0x8}, ("pf", 0x27)),
    ("PK WD supervisor write, WP", [T, T, T, P | RW | US | PKEY1], "w", 0,
     {"pke": True, "pkru": 0x8, "smap": False}, ("pf", 0x23)),
    ("PK WD supervisor write, no WP", [T, T, T, P | RW | US | PKEY1], "w", 0,
     {"pke": True, "pkru": 0x8, "smap": False, "wp": False}, ("ok", 4096)),
    ("PK other key untouched", [T, T, T, P | RW | US | PKEY1], "w", 3, {"pke": True, "pkru": 0x1}, ("ok", 4096)),
    ("PK not for supervisor pages", [K, K, K, P | RW | PKEY1], "r", 0, {"pke": True, "pkru": 0x4}, ("ok", 4096)),
    ("PK needs CR4.PKE", [T, T, T, P | RW | US | PKEY1], "r", 3, {"pkru": 0x4}, ("ok", 4096)),
    ("PK WD on a read-only page", [T, T, T, P | US | PKEY1], "w", 3, {"pke": True, "pkru": 0x8}, ("pf", 0x27)),
]


@pytest.mark.parametrize("name,flags,access,cpl,ctl_kw,expected", CASES, ids=[c[0] for c in CASES])
def test_walker_case(raw, name, flags, access, cpl, ctl_kw, expected):
    slot = 1 + CASES.index(next(c for c in CASES if c[0] == name)) % 200
    va = slot_va(slot) + 0x123
    leaf_pa = 1 << 30 if len(flags) == 2 else LEAF_PA    # a 1G leaf needs 1G alignment
    raw.chain(va, flags, leaf_pa)
    ctl = ControlState(**ctl_kw)
    r = translate(raw.mem, raw.root, va, access, cpl, ctl)
    if expected[0] == "ok":
        assert r.fault is None, f"expected a translation, got {r.describe()}"
        assert r.size == expected[1]
        assert r.pa == leaf_pa + (va & (expected[1] - 1))
    else:
        assert r.fault is not None, f"expected a fault, got {r}"
        assert (r.vector, r.error_code) == ((14, expected[1]) if expected[0] == "pf" else (13, 0))
        assert r.va == va


def test_walk_records_each_level(raw):
    va = slot_va(3) + 0x5123
    addrs = raw.chain(va, [T, T, T, P | RW | US], LEAF_PA)
    r = translate(raw.mem, raw.root, va, "r", 3)
    assert [s.level for s in r.steps] == ["pgd", "pud", "pmd", "pte"]
    assert [s.entry_pa for s in r.steps] == addrs
    assert [s.index for s in r.steps] == [3, 0, 0, 5]
    assert r.steps[-1].entry == LEAF_PA | P | RW | US
    assert (r.user, r.writable, r.nx) == (True, True, False)


def test_fault_records_levels_up_to_the_fault(raw):
    va = slot_va(4)
    raw.chain(va, [T, T, 0], LEAF_PA)
    r = translate(raw.mem, raw.root, va, "r", 3)
    assert [s.level for s in r.steps] == ["pgd", "pud", "pmd"]
    assert r.steps[-1].entry == LEAF_PA          # present bit clear: the walk stops here


@pytest.mark.parametrize("va,la57,expected", [
    (0x00007FFFFFFFF000, False, None),
    (0x0000800000000000, False, 13),
    (0xFFFF7FFFFFFFFFFF, False, 13),
    (0xFFFF800000000000, False, None),
    (0x0000800000000000, True, None),
    (0x00FFFFFFFFFFF000, True, None),
    (0x0100000000000000, True, 13),
    (0xFF00000000000000, True, None),
    (0xFEFFFFFFFFFFFFFF, True, 13),
])
def test_canonical(mem, va, la57, expected):
    from tests.conftest import RawTables

    raw = RawTables(mem, 5 if la57 else 4)
    r = translate(mem, raw.root, va, "r", 0, ControlState(la57=la57))
    if expected is None:
        assert r.vector == 14 and r.error_code == 0      # canonical, simply not mapped
    else:
        assert (r.vector, r.error_code) == (13, 0)


def test_five_level_walk(mem):
    from tests.conftest import RawTables

    raw = RawTables(mem, 5)
    va = 0x00F0123456789123
    raw.chain(va, [T, T, T, T, P | RW | US], LEAF_PA)
    r = translate(mem, raw.root, va, "w", 3, ControlState(la57=True))
    assert r.fault is None and r.pa == LEAF_PA + 0x123
    assert [s.level for s in r.steps] == ["pgd", "p4d", "pud", "pmd", "pte"]
    assert r.steps[0].index == (va >> 48) & 511
    # the same tables read as 4-level give a different (non-canonical) answer
    assert translate(mem, raw.root, va, "w", 3, ControlState(la57=False)).vector == 13


def test_maxphyaddr_is_a_parameter(raw):
    va = slot_va(5)
    raw.chain(va, [K, K, K, P | RW | (1 << 41)], 0)
    assert translate(raw.mem, raw.root, va, "r", 0, ControlState()).error_code == 0x9
    assert translate(raw.mem, raw.root, va, "r", 0, ControlState(maxphyaddr=46)).fault is None
