"""Translated blocks as the tracer knows them: decoded once, keyed by
where their bytes are, with the functions compiled for their segments.

A block is found by (address, size, physical address of each page) and
reused while its bytes are unchanged; code that is rewritten in place is
decoded again.  QEMU ends a block inside an instruction it cannot decode
(INVPCID here, which the microcode emulates after #UD): such a block is
decoded whole.
"""

from __future__ import annotations

from types import FunctionType
from typing import NamedTuple

from emu.tools.trace.codegen import Fetch, Options, segment_code
from emu.tools.trace.decode import decode
from emu.tools.trace.plans import StaticInsn
from emu.tools.trace.recorder import Context, Recorder


class SegmentKey(NamedTuple):
    """A compiled segment of a block: instructions [start, end), whether
    its records are emitted (the space filter), and whether the run
    stopped at the REP instruction that ends it, which may not have started."""

    start: int
    end: int
    emit: bool
    unsure: bool


class Block:
    """A translated block: its instructions (decoded once), the functions
    compiled for its segments, the symbols of its instructions."""

    __slots__ = ("addr", "size", "code", "insns", "n", "index", "fetch", "ready", "anchored", "fns", "syms",
                 "rep")

    def __init__(self, addr: int, size: int, code: bytes | None, insns: list[StaticInsn], fetch: Fetch):
        self.addr, self.size, self.code, self.insns, self.n = addr, size, code, insns, len(insns)
        self.index = {ins.addr: i for i, ins in enumerate(insns)}
        self.fetch = fetch
        self.ready = False                 # every anchor it needs is installed
        self.anchored = False              # ... and it has some
        self.fns: dict[SegmentKey, object] = {}   # segment functions
        self.syms: dict[int, list[str]] = {}      # id(process) -> symbol of each instruction
        # QEMU ends a block after the first iteration of a REP string instruction
        self.rep = bool(insns) and insns[-1].rep

    def symbols(self, ctx: Context, symbolize) -> list[str]:
        """The symbol of each instruction, as seen from the context's process."""
        syms = self.syms.get(ctx.pkey)
        if syms is None:
            syms = self.syms[ctx.pkey] = [symbolize(i.addr, ctx.proc) for i in self.insns] or \
                [symbolize(self.addr, ctx.proc)]
        return syms


class Segment:
    """Instructions of ``block`` from index ``start`` run in context
    ``ctx``, whose records are made once it is known how far they ran (the
    registers at ``start`` are the tracer's, read per run); ``syms`` the
    symbols of the block's instructions as that context's process sees
    them; ``whole`` the function of the whole block when the segment is the
    whole block and no anchor splits it, else None.

    The segment of a whole one-page block whose fetch translated is cached
    by its context (``Context.blocks``, valid while the walks are: flushes
    and faults clear both), with ``size`` and ``pa``, where its bytes are,
    to check that they have not changed; a slotted object, made once, so
    that starting a cached block allocates nothing."""

    __slots__ = ("block", "start", "ctx", "syms", "whole", "size", "pa")

    def __init__(self, block: Block, start: int, ctx: Context, syms: list, whole=None, pa: int | None = None):
        self.block, self.start, self.ctx, self.syms, self.whole = block, start, ctx, syms, whole
        self.size, self.pa = block.size, pa


class BlockCache:
    """The blocks of one tracer, and the functions of their segments.  ``helpers``
    are bound to every compiled function (:data:`~emu.tools.trace.codegen.HELPERS`
    without INS, which is the block's own)."""

    def __init__(self, recorder: Recorder, helpers: tuple, want: dict, va_range: tuple | None):
        self.recorder = recorder
        self.blocks: dict[tuple, Block] = {}
        self.helpers = helpers
        self.want = tuple(sorted(want.items()))
        self.va_range = va_range
        self.globals = {"__builtins__": __builtins__}

    def find(self, ctx: Context, addr: int, size: int) -> tuple[Block, int | None]:
        """The block of ``size`` bytes at ``addr`` in the context (decoded
        now if its bytes are new), and the physical address of its bytes
        if they are in one page that translated (then the context may
        cache it as a :class:`CachedBlock`), else None."""
        rec = self.recorder
        walks = ctx.walks[2]
        first = 0x1000 - (addr & 0xFFF)
        pa1 = walks.get(addr >> 12)
        fault1 = None
        if pa1 is None:
            pa1, fault1 = rec.walk(ctx, addr, 2)
        else:
            pa1 |= addr & 0xFFF
        if first >= size:
            first = size
            pa2 = fault2 = None
        else:
            a2 = addr + first
            pa2 = walks.get(a2 >> 12)
            fault2 = None
            if pa2 is None and fault1 is None:
                pa2, fault2 = rec.walk(ctx, a2, 2)
        key = (addr, size, pa1, pa2)
        blk = self.blocks.get(key)
        if blk is not None:
            buf = rec.buf
            if buf[pa1:pa1 + first] != blk.code if pa2 is None else \
                    buf[pa1:pa1 + first] + buf[pa2:pa2 + size - first] != blk.code:
                blk = None             # the code changed: decode again
        if blk is None:
            blk = self._decode(ctx, addr, size, key, Fetch(addr, size, pa1, fault1, pa2, fault2, first))
        cacheable = pa2 is None and fault1 is None and blk.code is not None and len(blk.code) == size
        return blk, (pa1 if cacheable else None)

    def _decode(self, ctx: Context, addr: int, size: int, key: tuple, fetch: Fetch) -> Block:
        rec = self.recorder
        code = rec.code_bytes(ctx, addr, size) if size else None
        insns = decode(code, addr) if code else []
        end = insns[-1].addr + insns[-1].size if insns else addr
        if code and end < addr + size:
            # QEMU ended the block inside an instruction: decode it whole
            more = rec.code_bytes(ctx, addr, size + 15) or code
            insns = [i for i in decode(more, addr) if i.addr < addr + size]
        blk = Block(addr, size, code, insns, fetch)
        one_page = (addr & 0xFFF) + size <= 0x1000
        # cached only when the fetch translated: the x record is then the same every time
        if code is not None and len(code) == size and key[2] is not None and (one_page or key[3] is not None):
            if len(self.blocks) > 20_000:
                self.blocks.clear()
            self.blocks[key] = blk
        return blk

    def compile(self, blk: Block, key: tuple):
        """The function of one segment of ``blk``, :class:`SegmentKey` ``key``
        (compiled once per block and key; the tracer looks functions up with
        plain tuples, which hash and compare as the key does)."""
        key = SegmentKey._make(key)
        code, unresolved = segment_code(blk.insns, key.start, key.end,
                                        Options(key.emit, key.unsure, self.want, self.va_range), blk.fetch)
        self.recorder.unresolved += unresolved
        fn = blk.fns[key] = FunctionType(code, self.globals, "seg", self.helpers + (blk.insns,))
        return fn
