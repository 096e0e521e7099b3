"""The per-segment data-flow analysis: where each access of a block goes,
as a function of registers the tracer reads.

:class:`SegmentState` runs the instructions of a *segment* of a block (a
run of instructions that starts with a register read) over an abstract
register state, so that every access's address is known as a function of
the registers at the segment's start (``E``), of the registers when the
segment ended (``X``), or of memory:

* a register is ``E[reg] + k``, a sum of such terms, or a constant, as
  long as the block only moves, adds, subtracts, scales or pushes/pops it;
* anything else (a load, an ``and``, a ``cpuid``...) makes a *definition*
  ``d``.  Its value is recovered from ``X`` when some register still holds
  ``d + k`` wherever the segment may have ended after its first use, or by
  reading the loaded bytes again when no store follows the load in the
  segment.  Failing both, the instruction that needs it becomes an
  *anchor*: a code hook there starts a new segment with fresh registers
  (:func:`analyse_block` says where).

``E`` and ``X`` are register vectors in the order of
:data:`~emu.tools.trace.isa.TRACKED`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from emu.tools.trace.isa import DF, M64, SLOT, STALE, STATE_REGS
from emu.tools.trace.plans import MemPlan, StaticInsn

DF_SRC = -1            # a term source meaning "RFLAGS.DF at the segment's start"
DEF0 = 1000            # term sources >= DEF0 are definitions (index - DEF0)


# --- abstract values ------------------------------------------------------------------------
class Value(NamedTuple):
    """``off + sum(mult * source)`` mod 2**64; ``terms`` is a sorted tuple
    of ``(source, mult)``, a source being a TRACKED slot (the register at
    the segment's start), :data:`DF_SRC`, or :data:`DEF0` + a definition's
    index.  No terms: the constant ``off``."""

    terms: tuple
    off: int


def const(c: int) -> Value:
    return Value((), c & M64)


def plus(v: Value, c: int) -> Value:
    return Value(v.terms, (v.off + c) & M64)


def combine(a: Value, b: Value, k: int = 1) -> Value:
    """a + k * b."""
    terms = dict(a.terms)
    for src, mult in b.terms:
        terms[src] = (terms.get(src, 0) + k * mult) & M64
    return Value(tuple(sorted((s, m) for s, m in terms.items() if m)), (a.off + k * b.off) & M64)


def times(v: Value, c: int) -> Value:
    c &= M64
    return Value(tuple((s, m * c & M64) for s, m in v.terms if m * c & M64), v.off * c & M64)


def alu(op: str, a: int, b: int, w: int) -> int:
    """x86 and/or/xor/shl/shr/sar on w-byte constants (the result before zero-extension)."""
    a &= (1 << 8 * w) - 1
    n = b & (63 if w == 8 else 31)
    if op == "sar":
        sign = 1 << (8 * w - 1)
        return ((a ^ sign) - sign) >> n
    return _ALU_OPS[op](a, b, n)


_ALU_OPS: dict[str, Callable[[int, int, int], int]] = {
    "and": lambda a, b, n: a & b, "or": lambda a, b, n: a | b, "xor": lambda a, b, n: a ^ b,
    "shl": lambda a, b, n: a << n, "shr": lambda a, b, n: a >> n}


class Address(NamedTuple):
    """An access's address: effective address, truncated to 32 bits when
    ``addr32``, plus the segment base ``seg`` (None: base 0)."""

    ea: Value
    addr32: bool
    seg: Value | None


class StringAccess(NamedTuple):
    """The operands of a string instruction: source and destination
    addresses, the element count (None without REP) and RFLAGS.DF."""

    src: Address
    dst: Address
    count: Value | None
    df: Value


class Def:
    """A value made inside a segment that the linear state cannot follow:
    ``load`` (the ``size`` bytes at ``addr``, an :class:`Address`) or ``opaque``."""

    __slots__ = ("index", "insn", "kind", "addr", "size")

    def __init__(self, index: int, insn: int, kind: str, addr: Address | None = None, size: int = 0):
        self.index, self.insn, self.kind, self.addr, self.size = index, insn, kind, addr, size


class Access:
    """One planned access of a segment: instruction index, plan index, and
    its :class:`Address`; for a string instruction its :class:`StringAccess`."""

    __slots__ = ("insn", "plan", "addr", "string")

    def __init__(self, insn: int, plan: int, addr: Address | None = None, string: StringAccess | None = None):
        self.insn, self.plan, self.addr, self.string = insn, plan, addr, string

    def values(self) -> list[Value]:
        if self.string is not None:
            s = self.string
            return [v for v in (s.src.ea, s.src.seg, s.dst.ea, s.count, s.df) if v is not None]
        return [self.addr.ea] + ([self.addr.seg] if self.addr.seg is not None else [])


# --- the abstract run of a segment ---------------------------------------------------------------
class SegmentState:
    """The abstract run of instructions [a, b) of a block from their entry
    state: ``states[i - a]`` is the state before instruction i
    (``states[b - a]`` after the last), ``accesses`` in order, ``defs``."""

    def __init__(self, insns: list[StaticInsn], a: int, b: int):
        self.insns, self.a, self.b = insns, a, b
        st = {r: Value(((SLOT[r], 1),), 0) for r in STATE_REGS}
        st[DF] = Value(((DF_SRC, 1),), 0)
        self.defs: list[Def] = []
        self.accesses: list[Access] = []
        self.states = [dict(st)]
        for i in range(a, b):
            st = self._step(i, st)
            self.states.append(dict(st))

    def new_def(self, i: int, kind: str, addr: Address | None = None, size: int = 0) -> Value:
        d = Def(len(self.defs), i, kind, addr, size)
        self.defs.append(d)
        return Value(((DEF0 + d.index, 1),), 0)

    def ea(self, st: dict, plan: MemPlan, with_seg: bool = True) -> Address | None:
        """The address of ``plan`` in state ``st`` (None: a register the state
        does not follow, such as a vector index: not traced)."""
        v = const(plan.disp)
        for reg, k in ((plan.base, 1), (plan.index, plan.scale)):
            if reg is None:
                continue
            if reg not in st:
                return None
            v = combine(v, st[reg], k)
        segv = st[f"{plan.seg}_base"] if plan.seg and with_seg else None
        return Address(v, plan.addr32, segv)

    def _step(self, i: int, st: dict) -> dict:
        ins = self.insns[i]
        addrs: list[Address | None] = []
        if ins.string:
            p = ins.ops[0]
            src = Address(st["rsi"], p.addr32, st[f"{p.seg}_base"] if p.seg else None)
            dst = Address(st["rdi"], p.addr32, None)
            self.accesses.append(Access(i, 0, string=StringAccess(src, dst, st["rcx"] if p.rep else None, st[DF])))
        else:
            for j, plan in enumerate(ins.ops):
                a = self.ea(st, plan)
                addrs.append(a)
                if a is not None:
                    self.accesses.append(Access(i, j, addr=a))
        st = dict(st)
        for e in ins.eff:
            APPLY[e[0]](self, st, e, i, addrs)
        return st

    # -- where a definition's value can come from -------------------------------------------------
    def held(self, d: int, c: int):
        """(register, offset) with register = def d + offset in the state
        before instruction c, or None."""
        src = DEF0 + d
        for r in STATE_REGS:
            terms, off = self.states[c - self.a][r]
            if len(terms) == 1 and terms[0] == (src, 1):
                return r, off
        return None

    def replayable(self, d: int, end: int) -> bool:
        """Def d is a load, and nothing in [its instruction, end) may have
        changed the bytes it read."""
        df = self.defs[d]
        return df.kind == "load" and not any(self.insns[i].stores for i in range(df.insn, end))

    @staticmethod
    def sources(v: Value) -> list[int]:
        return [s - DEF0 for s, _ in v.terms if s >= DEF0]

    def needs(self, acc: Access) -> list[int]:
        """Every definition the access's address needs, replayed loads' included."""
        out: list[int] = []
        todo = [d for v in acc.values() for d in self.sources(v)]
        while todo:
            d = todo.pop()
            if d in out:
                continue
            out.append(d)
            df = self.defs[d]
            if df.kind == "load":
                todo.extend(x for v in (df.addr.ea, df.addr.seg) if v is not None for x in self.sources(v))
        return sorted(out)


# --- the effects (emu.tools.trace.effects), applied to a state --------------------------------------
# fn(segment, state, effect, instruction index, addresses of its plans); changes the state
Apply = Callable[[SegmentState, dict, tuple, int, list], None]


def _add(seg, st, e, i, addrs):
    st[e[1]] = plus(st[e[1]], e[2])


def _set(seg, st, e, i, addrs):
    st[e[1]] = const(e[2])


def _copy(seg, st, e, i, addrs):
    st[e[1]] = st[e[2]]


def _sum(seg, st, e, i, addrs):
    st[e[1]] = combine(st[e[1]], st[e[2]], e[3])


def _mul(seg, st, e, i, addrs):
    st[e[1]] = times(st[e[1]], e[2])


def _swap(seg, st, e, i, addrs):
    st[e[1]], st[e[2]] = st[e[2]], st[e[1]]


def _lea(seg, st, e, i, addrs):
    a = seg.ea(st, e[2], with_seg=False)
    st[e[1]] = a.ea if a is not None and not a.addr32 else seg.new_def(i, "opaque")


def _load(seg, st, e, i, addrs):
    a = addrs[e[2]] if e[2] < len(addrs) else None
    st[e[1]] = seg.new_def(i, "load" if a is not None else "opaque", a, e[3])


def _entry(seg, st, e, i, addrs):
    st[e[1]] = Value(((SLOT[e[2]], 1),), 0)


def _zx32(seg, st, e, i, addrs):
    v = st[e[1]]
    st[e[1]] = const(v.off & 0xFFFFFFFF) if not v.terms else seg.new_def(i, "opaque")


def _alu(seg, st, e, i, addrs):
    _, r, op, (kind, x), w = e
    v = st[r]
    y = st.get(x) if kind == "reg" else const(x)
    st[r] = const(alu(op, v.off, y.off, w)) if not v.terms and y is not None and not y.terms \
        else seg.new_def(i, "opaque")


def _strstep(seg, st, e, i, addrs):
    df = st[DF]
    st[e[1]] = plus(st[e[1]], -e[2] if df.off else e[2]) if not df.terms else seg.new_def(i, "opaque")


def _df(seg, st, e, i, addrs):
    st[DF] = const(e[1])


def _opaque(seg, st, e, i, addrs):
    st[e[1]] = seg.new_def(i, "opaque")


APPLY: dict[str, Apply] = {"add": _add, "set": _set, "copy": _copy, "sum": _sum, "mul": _mul, "swap": _swap,
                           "lea": _lea, "load": _load, "entry": _entry, "zx32": _zx32, "alu": _alu,
                           "strstep": _strstep, "df": _df, "opaque": _opaque}


# --- anchors -------------------------------------------------------------------------------------
_ANCHORS: dict[tuple, tuple] = {}


def block_anchors(addr: int, insns: list[StaticInsn], cuts: set[int]) -> frozenset[int]:
    """:func:`analyse_block`, cached for the process by the block's
    instructions (decode() shares them for the same address and bytes)."""
    key = (addr, id(insns), frozenset(cuts))
    hit = _ANCHORS.get(key)
    if hit is None or hit[0] is not insns:
        if len(_ANCHORS) > 50_000:
            _ANCHORS.clear()
        hit = _ANCHORS[key] = (insns, frozenset(analyse_block(insns, cuts)))
    return hit[1]


def analyse_block(insns: list[StaticInsn], cuts: set[int]) -> set[int]:
    """Where a block needs anchors, given those it has (``cuts``, instruction
    indices): a definition needed at instruction k must be recoverable
    wherever the segment may end after k (the next cut or the block's end,
    or earlier: a fault or a stop), from X or by reading memory again.
    Also after an instruction that changes CPL/CR3/control bits, should one
    not end the block (QEMU ends it there).  Returns the new anchor indices.

    One pass from the left: a cut only shortens the segment before it, in
    which what was recoverable stays so."""
    n = len(insns)
    new = {i + 1 for i in range(n - 1) if insns[i].flags & STALE} - set(cuts)
    ends = sorted((set(cuts) | new | {n}) - {0})
    a = 0
    while a < n:
        b = next(c for c in ends if c > a)
        seg = SegmentState(insns, a, b)
        k = next((acc.insn for acc in seg.accesses if acc.insn > a and any(
            not (seg.replayable(d, b) or all(seg.held(d, c) for c in range(acc.insn + 1, b + 1)))
            for d in seg.needs(acc))), None)
        if k is None:
            a = b
        else:
            new.add(k)             # instruction k starts a segment of its own
            a = k
    return new
