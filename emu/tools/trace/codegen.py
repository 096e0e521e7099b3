"""The code generator: a segment of a block -> a small Python function that
makes the segment's records.

The function is ``seg(E, X, seq, ctx, S, *HELPERS)`` and returns the new
``seq``: E holds the registers at the segment's first instruction, X those
where it ended (None for a single instruction whose own accesses need only
E); ctx is the segment's context (CPL, CR3, walk caches:
:class:`~emu.tools.trace.walks.Context`); S the symbols of the block's
instructions; the helpers are the tracer's, bound once per tracer as the
function's defaults (see :data:`HELPERS`).  Addresses come from the
data-flow analysis (:mod:`emu.tools.trace.dataflow`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from emu.tools.trace.dataflow import DEF0, DF_SRC, Access, Address, SegmentState, Value
from emu.tools.trace.isa import FLUSH, M64, RFLAGS, RF_DF_SHIFT, SLOT, STALE
from emu.tools.trace.plans import StaticInsn
from emu.tools.trace.records import ACCESS

# names a compiled segment takes after (E, X, seq, ctx, S): bound per tracer
# as the function's defaults (local variables, faster than globals): the
# record list's append, Tracer.emit/string/load/flush/set_stale, and the
# block's instructions
HELPERS = ("app", "_emit", "_string", "_load", "_flush", "_stale", "INS")


class Fetch(NamedTuple):
    """A block's instruction fetch: ``size`` bytes at ``addr``, the first
    ``first`` of them in one page (at ``pa1``, or ``fault1``), the rest in
    the next (``pa2``/``fault2``; None when the block fits in one page)."""

    addr: int
    size: int
    pa1: int | None
    fault1: dict | None
    pa2: int | None
    fault2: dict | None
    first: int


class Options(NamedTuple):
    """What a segment function is compiled for.  ``emit`` False: numbering
    only (the space filter rejects the context); ``unsure``: the run
    stopped at the REP instruction that ends the range, which may not have
    started (its handler compares RCX with X); ``want``: kind -> recorded;
    ``va_range``: (lo, hi) or None."""

    emit: bool
    unsure: bool
    want: tuple
    va_range: tuple | None


def _hexs(c: int) -> str:
    """A 64-bit constant, signed when that reads better (-0x8 for 0xfff...f8)."""
    return f"-{(1 << 64) - c:#x}" if c >= 1 << 63 else f"{c:#x}"


def _term(src: int, mult: int, regs: str) -> str:
    if src == DF_SRC:
        t = f"(({regs}[{RFLAGS}] >> {RF_DF_SHIFT}) & 1)"
    elif src >= DEF0:
        t = f"d{src - DEF0}"
    else:
        t = f"{regs}[{src}]"
    return t if mult == 1 else f"{t} * {_hexs(mult)}"


def value_code(v: Value, regs: str = "E") -> tuple[str, bool]:
    """(Python expression, already within 64 bits) of an abstract value."""
    terms, off = v
    if not terms:
        return f"{off:#x}", True
    code = " + ".join(_term(s, m, regs) for s, m in terms)
    exact = len(terms) == 1 and terms[0][1] == 1 and off == 0
    if off:
        code += f" + {_hexs(off)}" if off < 1 << 63 else f" - {(1 << 64) - off:#x}"
    return code, exact


def addr_code(a: Address) -> str:
    code, exact = value_code(a.ea)
    if a.addr32:
        code, exact = f"(({code}) & 0xFFFFFFFF)", True
    if a.seg is not None:
        s, _ = value_code(a.seg)
        code, exact = f"{code} + {s}", False
    return code if exact else f"({code}) & {M64:#x}"


class Compiler:
    """Python source for the records of instructions [a, c) of a block.
    ``fetch``: the block's, whose ``x`` record (and seq) a range starting at
    instruction 0 makes first."""

    def __init__(self, insns: list[StaticInsn], a: int, c: int, opts: Options, fetch: Fetch | None = None):
        self.insns, self.a, self.c, self.opts = insns, a, c, opts
        self.want = dict(opts.want)
        self.fetch = fetch if a == 0 else None
        self.seg = SegmentState(insns, a, c)
        self.lines: list[str] = []
        self.unresolved = 0

    def source(self) -> str:
        """The function's source.  Speed matters here (about half the traced
        run's time): registers and repeated addresses go to locals once,
        helpers are default arguments (local variables)."""
        seg, L, emit = self.seg, self.lines, self.opts.emit
        L.append(f"def seg(E, X, seq, ctx, S, {', '.join(HELPERS)}):")
        if emit:
            L.append("    wr, ww, wx = ctx.walks; cpl = ctx.cpl; root = ctx.root; pcid = ctx.pcid; space = ctx.space")
        if self.fetch is not None:
            self._fetch()
        for d in sorted({d for acc in seg.accesses for d in seg.needs(acc)}):
            L.append(f"    d{d} = {self._resolve(d)}")
        by_insn: dict[int, list[Access]] = {}
        for acc in seg.accesses:
            by_insn.setdefault(acc.insn, []).append(acc)
        for i in range(self.a, self.c):
            ins = self.insns[i]
            accs = by_insn.get(i, ())
            if ins.string:
                s = accs[0].string
                x = "X" if self.opts.unsure and i == self.c - 1 else "None"
                cnt = value_code(s.count)[0] if s.count is not None else "None"
                L.append(f"    seq = _string(seq, INS[{i}], S[{i}], ctx, {addr_code(s.src)}, {addr_code(s.dst)}, "
                         f"{cnt}, {value_code(s.df)[0]}, {x}, {emit})")
            elif ins.ops:
                L.append("    seq += 1")
                if emit and accs:
                    self._accesses(i, [(kind, size, acc) for acc in accs
                                       for kind, size in ins.ops[acc.plan].kinds], "    ")
            if ins.flags & FLUSH:
                L.append("    _flush()")
            if ins.flags & STALE:
                L.append("    _stale()")
        L.append("    return seq")
        # E[i] -> a local e<i>, read once
        body = "\n".join(L[1:])
        slots = sorted({int(x) for x in re.findall(r"\bE\[(\d+)\]", body)})
        if slots:
            body = re.sub(r"\bE\[(\d+)\]", r"e\1", body)
            body = "    " + "; ".join(f"e{i} = E[{i}]" for i in slots) + "\n" + body
        return L[0] + "\n" + body + "\n"

    def _fetch(self) -> None:
        """The block's x record: one per page it spans."""
        L = self.lines
        L.append("    seq += 1")
        if not (self.opts.emit and self.want["x"]):
            return
        f = self.fetch
        pieces = [(f.addr, f.first, f.pa1, f.fault1)]
        if f.first < f.size and f.fault1 is None:
            pieces.append((f.addr + f.first, f.size - f.first, f.pa2, f.fault2))
        lo, hi = self.opts.va_range or (0, 1 << 64)
        for va, n, pa, fault in pieces:
            if va < hi and va + n > lo:
                L.append(f"    app((seq, {f.addr:#x}, S[0], cpl, root, pcid, space, 'x', {va:#x}, {n}, "
                         f"{'None' if pa is None else hex(pa)}, {fault!r}))")

    def _resolve(self, d: int) -> str:
        seg = self.seg
        h = seg.held(d, self.c) if self.c > self.a else None
        if h is not None:
            r, off = h
            return f"X[{SLOT[r]}]" if off == 0 else f"(X[{SLOT[r]}] - {_hexs(off)}) & {M64:#x}"
        df = seg.defs[d]
        if df.kind == "load":
            if not seg.replayable(d, self.c):
                self.unresolved += 1        # an anchor should have prevented this: read anyway
            return f"_load(ctx, {addr_code(df.addr)}, {df.size})"
        self.unresolved += 1
        return "0"

    def _accesses(self, i: int, items: list, ind: str) -> None:
        """Records of instruction i's accesses, in order; after one that
        faults (per the walker) the instruction's later accesses are not made."""
        L = self.lines
        rip = self.insns[i].addr
        lo_hi = self.opts.va_range
        prev = None
        for n_item, (kind, size, acc) in enumerate(items):
            last = n_item == len(items) - 1
            code = addr_code(acc.addr)
            if code != prev:      # read-modify-write: the same address again
                L.append(f"{ind}va = {code}")
            prev = code
            L.append(f"{ind}o = va & 0xFFF")
            probe = f"{('wr', 'ww', 'wx')[ACCESS[kind]]}.get(va >> 12)"
            if size > 1:
                probe += f" if o <= {0x1000 - size:#x} else None"
            L.append(f"{ind}p = {probe}")
            fail = "pass" if last else "ok = False"
            if not last:
                L.append(f"{ind}ok = True")
            slow = f"_emit(seq, {rip:#x}, S[{i}], ctx, {kind!r}, va, {size})"
            if self.want[kind]:
                L.append(f"{ind}if p is not None:")
                rec = (f"app((seq, {rip:#x}, S[{i}], cpl, root, pcid, space, {kind!r}, va, {size}, "
                       f"p | o, None))")
                if lo_hi is not None:
                    L.append(f"{ind}    if va < {lo_hi[1]:#x} and va + {size} > {lo_hi[0]:#x}:")
                    L.append(f"{ind}        {rec}")
                else:
                    L.append(f"{ind}    {rec}")
                L.append(f"{ind}elif not {slow}:")
            else:
                L.append(f"{ind}if p is None and not {slow}:")
            L.append(f"{ind}    {fail}")
            if not last:
                L.append(f"{ind}if ok:")
                ind += "    "


_CODE: dict[tuple, tuple] = {}


def segment_code(insns: list[StaticInsn], a: int, c: int, opts: Options,
                 fetch: Fetch | None) -> tuple[object, int]:
    """(code object of the segment function, unresolved count), compiled once
    per process for the same instructions and options: Python's compile()
    costs about 0.3 ms a segment, which short traces feel."""
    f = fetch if a == 0 else None
    cacheable = f is None or not (f.fault1 or f.fault2)        # fault dicts are unhashable, and rare
    key = (id(insns), a, c, opts, f) if cacheable else None
    hit = _CODE.get(key) if cacheable else None
    if hit is not None and hit[0] is insns:
        return hit[1], hit[2]
    comp = Compiler(insns, a, c, opts, fetch)
    src = comp.source()
    name = f"<trace {insns[0].addr if insns else 0:#x}[{a}:{c}]>"
    module = compile(src, name, "exec")
    code = next(k for k in module.co_consts if getattr(k, "co_name", None) == "seg")
    if cacheable:
        if len(_CODE) > 50_000:
            _CODE.clear()
        _CODE[key] = (insns, code, comp.unresolved)
    return code, comp.unresolved
