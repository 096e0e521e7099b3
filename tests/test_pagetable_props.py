"""Property tests of the page-table object (emu.hw.paging.PageTable).

Random sequences of map / unmap / protect / split / share on two tables
over one PhysMem are run against a model: a radix tree of Python dicts
whose shared sub-trees are shared objects, as ``share`` shares the tables
below an entry.  After every step, for addresses sampled around every
mapping, the reference walker (``translate``) must give what the model
maps there (physical address, page size, U/S, R/W, NX) and fault where it
maps nothing; the lints report exactly the W+X ranges the model predicts and
no reserved-bit or page-table-owner findings.  A refused operation must be
one the model refuses too, and must change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from emu.errors import MappingError
from emu.hw.paging import NX, P, RW, US, A, D, G, PageTable, mode_for, translate
from emu.hw.paging.walker import ControlState
from emu.hw.phys import PAGE_SIZE, SIZE_1G, SIZE_2M, FrameKind, PhysMem
from emu.tools.lint import check

RAM = 2 * SIZE_1G
PAGE_SIZES = (PAGE_SIZE, SIZE_2M, SIZE_1G)
#: two windows, one per half, each spanning two 1 GiB slots of one PUD table
WINDOWS = (0x0000_0040_0000_0000, 0xFFFF_8880_0000_0000)
#: the bits a leaf may carry here (P always); protect sets and clears these
FLAG_BITS = (RW, US, NX, G, A, D)
MAX_SAMPLED_LEAVES = 48
LINTS = ("wx", "reserved", "pgtable-owner")


# --- the model ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MLeaf:
    pa: int
    size: int
    flags: int          # 4 KiB-convention bits: P | FLAG_BITS


class MTable(dict):
    """index -> MLeaf | MTable.  Identity matters: a shared table is one
    object.  ``user``: the U/S bit of the entries pointing at it (new tables
    are linked as _PAGE_TABLE; split links a kernel-half table as
    _KERNPG_TABLE, without U/S, as CPA's __split_large_page does)."""

    __hash__ = object.__hash__
    __eq__ = object.__eq__
    __ne__ = object.__ne__

    def __init__(self, *a, user: bool = True):
        super().__init__(*a)
        self.user = user


class Refused(Exception):
    pass


class Model:
    def __init__(self, levels: int):
        self.mode = mode_for(levels)
        self.shifts = [lv.shift for lv in self.mode.levels]

    def walk(self, root: MTable, va: int, shift: int, create: bool):
        """The table holding the entry for ``va`` at ``shift`` (None if a
        table on the way is missing and not ``create``); a leaf on the way
        is refused, as the object refuses to walk through a large page."""
        t = root
        for s in self.shifts:
            if s == shift:
                return t
            i = (va >> s) & 511
            e = t.get(i)
            if e is None:
                if not create:
                    return None
                e = t[i] = MTable()
            elif isinstance(e, MLeaf):
                raise Refused(f"{va:#x} is inside a {e.size:#x} page")
            t = e
        raise AssertionError(shift)

    def map(self, root, va, pa, size, flags, ps):
        if pa + size > RAM:
            raise Refused("outside RAM")
        slots = [(v, pa + (v - va)) for v in range(va, va + size, ps)]
        # refusals first: the whole request, before any change
        for v, _ in slots:
            t = self.walk(root, v, _shift(ps), create=False)
            if t is not None and (v >> _shift(ps)) & 511 in t:
                raise Refused(f"{v:#x} is already mapped")
        for v, p in slots:
            self.walk(root, v, _shift(ps), create=True)[(v >> _shift(ps)) & 511] = MLeaf(p, ps, flags)

    def user_path(self, root, va) -> bool:
        """U/S of every table entry on the way to ``va``'s leaf."""
        t, ok = root, True
        for s in self.shifts:
            e = t.get((va >> s) & 511)
            if not isinstance(e, MTable):
                return ok
            ok, t = ok and e.user, e
        raise AssertionError

    def leaf_at(self, root, va):
        t = root
        for s in self.shifts:
            e = t.get((va >> s) & 511)
            if e is None or isinstance(e, MLeaf):
                return e, t, (va >> s) & 511, s
            t = e
        raise AssertionError

    def whole_leaves(self, root, va, size, what):
        """The (table, index, leaf) of every leaf in [va, va+size); a leaf
        that sticks out is refused."""
        out, v = [], va
        while v < va + size:
            e, t, i, s = self.leaf_at(root, v)
            if e is None:
                v = (v | (PAGE_SIZE - 1)) + 1
                continue
            base = v & ~(e.size - 1)
            if base < va or base + e.size > va + size:
                raise Refused(f"{what} would cut the page at {base:#x}")
            out.append((t, i, e))
            v = base + e.size
        return out

    def unmap(self, root, va, size):
        for t, i, _ in self.whole_leaves(root, va, size, "unmap"):
            del t[i]

    def protect(self, root, va, size, set_, clear):
        leaves = self.whole_leaves(root, va, size, "protect")
        covered = sum(e.size for _, _, e in leaves)
        if covered != size:
            raise Refused("protect of a hole")
        for t, i, e in leaves:
            t[i] = MLeaf(e.pa, e.size, (e.flags | set_) & ~clear)

    def split(self, root, va):
        e, t, i, s = self.leaf_at(root, va)
        if e is None or e.size == PAGE_SIZE:
            raise Refused("not a large page")
        child = e.size >> 9
        t[i] = MTable({j: MLeaf(e.pa + j * child, child, e.flags) for j in range(512)},
                      user=va < self.mode.lower_half_end)

    def share(self, dst, src, va, shift):
        st_ = self.walk(src, va, shift, create=False)
        i = (va >> shift) & 511
        if st_ is None or i not in st_:
            return
        e = st_[i]
        old_t = self.walk(dst, va, shift, create=False)
        old = old_t.get(i) if old_t is not None else None
        same = old is e or (isinstance(old, MLeaf) and old == e)     # a table: the same one
        if old is not None and not same:
            raise Refused("slot holds something else")
        self.walk(dst, va, shift, create=True)[i] = e

    def leaves(self, t: MTable, base: int = 0, depth: int = 0):
        """(va, leaf) of every leaf, canonical addresses."""
        s = self.shifts[depth]
        for i, e in sorted(t.items()):
            va = base | (i << s)
            if isinstance(e, MLeaf):
                yield self.mode.sign_extend(va), e
            else:
                yield from self.leaves(e, va, depth + 1)


def _shift(size: int) -> int:
    return size.bit_length() - 1


def _merge(intervals):
    out = []
    for lo, hi in sorted(intervals):
        if out and out[-1][1] == lo:
            out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


# --- the state machine ---------------------------------------------------------------------------------
addr_index = st.tuples(st.sampled_from(WINDOWS), st.integers(0, 1), st.integers(0, 2), st.integers(0, 2),
                       st.integers(508, 511) | st.integers(0, 2))
flags_st = st.sets(st.sampled_from(FLAG_BITS)).map(lambda s: P | sum(s))


def _va(ix, ps):
    w, g, m, k, p = ix
    va = w + g * SIZE_1G
    if ps <= SIZE_2M:
        va += m * SIZE_2M
    if ps == PAGE_SIZE:
        va += (k * 64 + p) * PAGE_SIZE if p < 3 else (p * PAGE_SIZE)
    return va


class PageTableMachine(RuleBasedStateMachine):
    @initialize(levels=st.sampled_from((4, 5)))
    def boot(self, levels):
        self.mem = PhysMem(RAM)
        self.model = Model(levels)
        self.levels = levels
        self.tables = [PageTable.create(self.mem, levels, name=n) for n in ("A", "B")]
        self.roots = [MTable(), MTable()]
        self.ctl = ControlState(smap=False, smep=False, la57=levels == 5)

    def teardown(self):
        if hasattr(self, "mem"):
            self.mem.close()

    def _do(self, what, impl, model):
        """Run one operation on both; refused by both or by neither, and a
        refusal changes nothing, even of a request that spans several page
        tables (test_a_refusal_changes_nothing below pins that down)."""
        before = self._snapshot()
        try:
            model()
            want = None
        except Refused as e:
            want = e
        try:
            impl()
            got = None
        except MappingError as e:
            got = e
        assert (got is None) == (want is None), f"{what}: object {got!r}, model {want!r}"
        if got is not None:
            assert self._snapshot() == before, f"{what}: refused, but the tables changed"

    def _snapshot(self):
        """Which frames are page tables, and what they hold."""
        kinds = bytes(self.mem.frames.kind)
        lo, hi = kinds.find(FrameKind.PGTABLE), kinds.rfind(FrameKind.PGTABLE) + 1
        return kinds, bytes(self.mem.buf[lo * PAGE_SIZE:hi * PAGE_SIZE])

    @rule(t=st.integers(0, 1), ix=addr_index, ps=st.sampled_from(PAGE_SIZES), n=st.integers(1, 3),
          pa_ix=st.integers(0, 3), flags=flags_st)
    def map(self, t, ix, ps, n, pa_ix, flags):
        va, size = _va(ix, ps), ps * n
        pa = (pa_ix * ps) % RAM
        self._do(f"map {va:#x}+{size:#x} -> {pa:#x} {flags:#x}",
                 lambda: self.tables[t].map(va, pa, size, flags, page_size=ps),
                 lambda: self.model.map(self.roots[t], va, pa, size, flags, ps))

    def _run_of_leaves(self, t, pick, span):
        """[va, end) of up to ``span`` adjacent leaves from a picked one, or None."""
        leaves = sorted(self.model.leaves(self.roots[t]), key=lambda le: le[0])
        if not leaves:
            return None
        i = pick % len(leaves)
        va, end = leaves[i][0], leaves[i][0] + leaves[i][1].size
        for nva, e in leaves[i + 1:i + span]:
            if nva != end:
                break
            end += e.size
        return va, end - va

    @rule(t=st.integers(0, 1), pick=st.integers(0, 1 << 16), span=st.integers(1, 3), whole=st.booleans(),
          ix=addr_index)
    def unmap(self, t, pick, span, whole, ix):
        run = self._run_of_leaves(t, pick, span)
        if whole and run:
            va, size = run
        else:
            va, size = _va(ix, PAGE_SIZE), PAGE_SIZE
        self._do(f"unmap {va:#x}+{size:#x}", lambda: self.tables[t].unmap(va, size),
                 lambda: self.model.unmap(self.roots[t], va, size))

    @rule(t=st.integers(0, 1), pick=st.integers(0, 1 << 16), span=st.integers(1, 3), whole=st.booleans(),
          ix=addr_index, set_=st.sets(st.sampled_from((RW, US, NX, G))),
          clear=st.sets(st.sampled_from((RW, US, NX, G))))
    def protect(self, t, pick, span, whole, ix, set_, clear):
        run = self._run_of_leaves(t, pick, span)
        if whole and run:
            va, size = run
        else:
            va, size = _va(ix, PAGE_SIZE), PAGE_SIZE
        s, c = sum(set_), sum(clear)
        self._do(f"protect {va:#x}+{size:#x} +{s:#x} -{c:#x}",
                 lambda: self.tables[t].protect(va, size, set=s, clear=c),
                 lambda: self.model.protect(self.roots[t], va, size, s, c))

    @rule(t=st.integers(0, 1), pick=st.integers(0, 1 << 16), ix=addr_index)
    def split(self, t, pick, ix):
        large = [va for va, e in self.model.leaves(self.roots[t]) if e.size > PAGE_SIZE]
        va = large[pick % len(large)] if large and pick % 4 else _va(ix, PAGE_SIZE)
        self._do(f"split {va:#x}", lambda: self.tables[t].split(va),
                 lambda: self.model.split(self.roots[t], va))

    @rule(dst=st.integers(0, 1), ix=addr_index, level=st.sampled_from(("pud", "pmd")))
    def share(self, dst, ix, level):
        lv = self.model.mode.level(level)
        va = _va(ix, lv.size if lv.size <= SIZE_1G else SIZE_1G) & ~(lv.size - 1)
        src = 1 - dst
        self._do(f"share {level} {va:#x} into {'AB'[dst]}",
                 lambda: self.tables[dst].share(self.tables[src], va, lv.size, level),
                 lambda: self.model.share(self.roots[dst], self.roots[src], va, lv.shift))

    @invariant()
    def translate_agrees(self):
        if not hasattr(self, "mem"):
            return
        for t in (0, 1):
            leaves = list(self.model.leaves(self.roots[t]))
            # every leaf of a small tree; of a large one (after splits) an
            # even selection, first and last included
            step = max(1, len(leaves) // MAX_SAMPLED_LEAVES)
            samples = {}
            for va, e in leaves[::step] + leaves[-1:]:
                for off in (0, e.size // 2 + 0x123, e.size - 8):
                    samples[va + off] = (va, e)
                samples.setdefault(va + e.size, None)
                samples.setdefault(va - PAGE_SIZE, None)
            for w in WINDOWS:
                samples.setdefault(w + 0x5000, None)
            for va, hit in samples.items():
                if hit is None:
                    e, *_ = self.model.leaf_at(self.roots[t], va)
                    hit = None if e is None else (va & ~(e.size - 1), e)
                r = translate(self.mem, self.tables[t].root, va, 0, 0, self.ctl)
                if hit is None:
                    assert r.fault is not None and r.error_code & 1 == 0, f"{'AB'[t]} {va:#x}: {r!r}"
                    continue
                base, e = hit
                assert r.fault is None, f"{'AB'[t]} {va:#x}: {r!r}, model {e}"
                assert (r.pa, r.size, r.user, r.writable, r.nx) == \
                    (e.pa + va - base, e.size, bool(e.flags & US) and self.model.user_path(self.roots[t], va),
                     bool(e.flags & RW), bool(e.flags & NX)), \
                    f"{'AB'[t]} {va:#x}: {r!r}, model {e}"

    @invariant()
    def lints_agree(self):
        if not hasattr(self, "mem"):
            return
        for t in (0, 1):
            findings = check(self.mem, self.tables[t].root, self.levels, only=LINTS)
            assert [f for f in findings if f.lint != "wx"] == []
            got = _merge((f.va, f.va + f.size) for f in findings)
            want = _merge((va, va + e.size) for va, e in self.model.leaves(self.roots[t])
                          if e.flags & RW and not e.flags & NX)
            assert got == want


TestPageTable = PageTableMachine.TestCase
TestPageTable.settings = settings(max_examples=60, stateful_step_count=20, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow], derandomize=True)



# --- the property test catches injected bugs --------------------------------------------------------
def _split_drops_nx(self, va):
    t = _real_split(self, va)
    for i in range(512):                                   # the new leaves lose NX
        self.write_entry(t + 8 * i, self.read_entry(t + 8 * i) & ~NX)
    return t


def _protect_ignores_clear(self, va, size, set=0, clear=0):
    return _real_protect(self, va, size, set=set, clear=0)


def _share_copies_nothing(self, src, va, size, level):
    return 0


_real_split, _real_protect = PageTable.split, PageTable.protect


@pytest.mark.parametrize("name,bug", [("split", _split_drops_nx), ("protect", _protect_ignores_clear),
                                      ("share", _share_copies_nothing)])
def test_an_injected_bug_is_caught(monkeypatch, name, bug):
    from hypothesis import Phase
    from hypothesis.stateful import run_state_machine_as_test

    monkeypatch.setattr(PageTable, name, bug)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(PageTableMachine, settings=settings(
            max_examples=200, stateful_step_count=20, deadline=None, derandomize=True,
            phases=[Phase.generate], suppress_health_check=list(HealthCheck)))


# --- a refused request that spans several tables ------------------------------------------------------
W = WINDOWS[1]
# (operation, what is mapped first, the refused request): each request is
# refused by its second part; the first part lies in another page table (map)
# or is a leaf before the one that refuses (unmap, protect)
REFUSALS = [
    ("map", [(W + SIZE_2M, 0x100000, PAGE_SIZE, PAGE_SIZE)],
     lambda pt: pt.map(W + SIZE_2M - PAGE_SIZE, 0x200000, 2 * PAGE_SIZE, P | RW, page_size=PAGE_SIZE)),
    ("unmap", [(W + SIZE_2M - PAGE_SIZE, 0x100000, PAGE_SIZE, PAGE_SIZE), (W + SIZE_2M, 0, SIZE_2M, SIZE_2M)],
     lambda pt: pt.unmap(W + SIZE_2M - PAGE_SIZE, 2 * PAGE_SIZE)),
    ("protect", [(W + SIZE_2M - PAGE_SIZE, 0x100000, PAGE_SIZE, PAGE_SIZE), (W + SIZE_2M, 0, SIZE_2M, SIZE_2M)],
     lambda pt: pt.protect(W + SIZE_2M - PAGE_SIZE, 2 * PAGE_SIZE, clear=RW)),
]


@pytest.mark.parametrize("op,before,refused", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refusal_changes_nothing(op, before, refused):
    mem = PhysMem(64 << 20)
    try:
        pt = PageTable.create(mem, 4)
        for va, pa, size, ps in before:
            pt.map(va, pa, size, P | RW, page_size=ps)
        first = W + SIZE_2M - PAGE_SIZE
        was = translate(mem, pt.root, first)
        was = (was.fault is None, getattr(was, "writable", None))
        with pytest.raises(MappingError):
            refused(pt)
        now = translate(mem, pt.root, first)
        assert (now.fault is None, getattr(now, "writable", None)) == was
    finally:
        mem.close()
