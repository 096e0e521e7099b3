"""The :class:`Tracer`: hooks on a machine, and when each block's records
are made (see the package's documentation, :mod:`emu.tools.trace`)."""

from __future__ import annotations

from typing import Iterable, Iterator, NamedTuple

from emu.errors import AddressError, ConfigError
from emu.hw.cpu import REG_IDS, OneReg, RegBatch
from emu.hw.paging import ADDR_MASK, PF_I, VEC_PF
from emu.linux.machine import DEFAULT_BUDGET, BudgetExhausted, Interrupted, KernelPanic, Machine
from emu.tools.trace.blocks import Block, BlockCache, Segment
from emu.tools.trace.isa import CR3, CS, M64, RCX, RFLAGS, TRACKED
from emu.tools.trace.dataflow import block_anchors
from emu.tools.trace.plans import StaticInsn
from emu.tools.trace.recorder import RFLAGS_AC, Context, Recorder
from emu.tools.trace.records import KINDS, Record, parse_kinds

DEFAULT_CHUNK = 200_000          # instructions per Machine.step while iterating

_new = tuple.__new__             # a Record without a call to its (tuple's) __new__


class RepIteration(NamedTuple):
    """An iteration of the REP string instruction at ``pc`` (QEMU runs
    each in a block of its own): in page tables ``root``, with RCX (under
    ``mask``, the address size) at ``rcx`` when it starts."""

    pc: int
    root: int
    rcx: int
    mask: int


class FrameOwner(NamedTuple):
    """The instruction an exception frame being delivered belongs to."""

    rip: int | None
    seq: int


class Tracer:
    """Memory-access records of a :class:`~emu.linux.machine.Machine`.

    ``kinds``: any of ``"rwx"``; ``space``: keep only accesses made through
    that space's page tables (a name from ``Machine.spaces()``);
    ``va_range``: ``(lo, hi)``, keep accesses overlapping ``[lo, hi)``.
    Filters never change ``seq`` numbers.

    Use as a context manager (or :meth:`attach`/:meth:`detach`); records
    accumulate in :attr:`records` (complete whenever the machine is not
    running); :meth:`drain` takes them; :meth:`run` runs the machine in
    chunks and yields them.  After editing page tables or registers from
    Python in the middle of a run, call :meth:`flush`.

    Records are kept as plain tuples until looked at: CPython's garbage
    collector stops tracking a plain tuple of numbers and strings, but never
    a tuple subclass such as :class:`Record`, and rescanning hundreds of
    thousands of live records cost about 0.5 µs each (measured here).
    """

    def __init__(self, machine: Machine, kinds: str | Iterable[str] = KINDS, space: str | None = None,
                 va_range: tuple[int, int] | None = None):
        self.machine = machine
        self.kinds = parse_kinds(kinds)
        self.space = space
        if va_range is not None:
            lo, hi = va_range
            if not 0 <= lo < hi <= 1 << 64:
                raise AddressError(f"empty or out-of-range address range {lo:#x}-{hi:#x}")
        self.va_range = va_range
        self.executed = 0                    # instructions run by run() so far
        self._raw: list[tuple] = []          # records as plain tuples, in order
        self._records: list[Record] = []     # ... those already made Records (they come first)
        self._want = {k: k in self.kinds for k in KINDS}
        self._attached = False
        self._hooks: list[int] = []
        self._anchors: dict[int, int | None] = {}    # address -> code hook (None while detached)
        # made at the first attach (the machine boots then): the CPU, two
        # register vectors, the one a pending segment started from (E) and
        # the one read when it ends (X), which starts the next; single
        # register readers; the recorder and the block cache
        self._cpu = None
        self._reads: tuple = ()
        self._regs: tuple = ()
        self._batches: tuple = ()                    # keeps the vectors' buffers alive
        self._cur = 0                                # the vector of the latest read
        self._read_cr0 = self._read_cr4 = self._read_rip = None
        self._buf = None                             # guest RAM
        self._recorder: Recorder | None = None
        self._cache: BlockCache | None = None
        # the context of the latest registers, and the CR3, CS, RFLAGS behind it
        self._ctx: Context | None = None
        self._kcr3 = self._kcs = self._kfl = None
        self._stale = True
        self._seq = 0
        self._icount = 0                             # instructions run by this emu_start
        self._pend: Segment | None = None            # the segment whose records are not made yet,
        self._entry = None                           # ... the registers where it started
        self._pcont: RepIteration | None = None      # ... or the REP iteration pending
        self._rep: RepIteration | None = None        # the REP iteration expected next
        self._last_rip = None                        # the instruction of the last exception event
        self._frame_owner: FrameOwner | None = None  # of the exception being delivered
        self._soft_from: Block | None = None         # the block an INT n event interrupted

    # -- attach / detach ----------------------------------------------------------------
    def attach(self) -> "Tracer":
        """Install the hooks (boots the machine if needed).  Re-attaching
        continues the ``seq`` numbering and keeps the decoded blocks."""
        if self._attached:
            return self
        m = self.machine
        m.boot()
        if self._cpu is None:
            self._setup()
        self.flush()
        cpu = self._cpu
        self._hooks = [cpu.add_block_hook(self._on_block)]
        self._install_anchors(list(self._anchors))
        cpu.run_observers.append(self._on_run)
        m.on_event(self._on_event)
        self._attached = True
        return self

    def _setup(self) -> None:
        m = self.machine
        space_root = None
        if self.space is not None:
            spaces = m.spaces()
            if self.space not in spaces:
                raise ConfigError(f"unknown space {self.space!r}: choose from {', '.join(sorted(spaces))}")
            space_root = spaces[self.space] & ADDR_MASK
        cpu = m.cpu
        ids = [REG_IDS[n] for n in TRACKED]
        batches = (RegBatch(cpu, ids), RegBatch(cpu, ids))
        self._reads = tuple(b.read for b in batches)
        # memoryview indexing is several times cheaper than a ctypes array's
        self._regs = tuple(memoryview(b.vals).cast("B").cast("Q") for b in batches)
        self._batches = batches
        self._buf = m.mem.buf
        self._read_cr0, self._read_cr4, self._read_rip = (OneReg(cpu, REG_IDS[n]).read
                                                          for n in ("cr0", "cr4", "rip"))
        rec = self._recorder = Recorder(m, self._raw, self._want, self.va_range, space_root)
        # what compiled segments call (emu.tools.trace.codegen.HELPERS; INS is per block)
        helpers = (self._raw.append, rec.emit, self._string, rec.load, self.flush, self._set_stale)
        self._cache = BlockCache(rec, helpers, self._want, self.va_range)
        self._cpu = cpu

    def detach(self) -> None:
        if not self._attached:
            return
        if self._pend is not None or self._pcont is not None:
            self._on_run(False)                      # detached from a hook, mid-run
        cpu = self._cpu
        for h in self._hooks:
            cpu.del_code_hook(h)
        self._hooks = []
        for addr, h in self._anchors.items():
            if h is not None:
                cpu.del_code_hook(h)
            self._anchors[addr] = None
        cpu.run_observers.remove(self._on_run)
        self.machine.off_event(self._on_event)
        # blocks translated while attached still call into the hook list: retranslate
        cpu.flush_code_cache()
        self._attached = False

    def __enter__(self) -> "Tracer":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- records ---------------------------------------------------------------------------
    @property
    def records(self) -> list[Record]:
        """The records made since the last :meth:`drain`, in order."""
        raw = self._raw
        if raw:
            self._records.extend(map(Record, raw))
            raw.clear()              # the same list: compiled segments hold its append
        return self._records

    def drain(self) -> list[Record]:
        """The records so far, removed from :attr:`records`."""
        out = self.records
        self._records = []
        return out

    def discard(self) -> int:
        """Forget the records so far; returns how many there were."""
        n = len(self._raw) + len(self._records)
        self._raw.clear()
        self._records = []
        return n

    @property
    def anchor_count(self) -> int:
        """How many code-hook anchors the block plans needed so far."""
        return len(self._anchors)

    @property
    def unresolved(self) -> int:
        """Values an anchor should have given but did not (expect 0)."""
        return self._recorder.unresolved if self._recorder is not None else 0

    def _stream(self) -> Iterator[Record]:
        """Drain, one Record at a time (none is kept here: cheap for the GC)."""
        done, self._records = self._records, []
        yield from done
        raw = self._raw[:]
        self._raw.clear()
        for t in raw:
            yield _new(Record, t)

    def flush(self) -> None:
        """Forget cached walks and register state (after host-side edits)."""
        if self._recorder is not None:
            self._recorder.flush()
        self._stale = True

    def _set_stale(self) -> None:
        self._stale = True

    # -- running ---------------------------------------------------------------------------
    def run(self, budget: int = DEFAULT_BUDGET, chunk: int = DEFAULT_CHUNK) -> Iterator[Record]:
        """Run the machine until it halts, yielding records as they come.

        After yielding what was recorded, raises
        :class:`~emu.linux.machine.BudgetExhausted` when ``budget``
        instructions do not suffice, :class:`~emu.linux.machine.Interrupted`
        when Ctrl-C (SIGINT) stopped the machine, and
        :class:`~emu.linux.machine.KernelPanic` on a stub panic; an error
        raised while the machine runs (:class:`~emu.hw.microcode.TripleFault`)
        also comes after the records made up to it.  :attr:`executed`
        counts the instructions of the chunks run."""
        if budget <= 0:
            raise ConfigError(f"the budget must be a positive number of instructions, not {budget}")
        self.attach()
        m = self.machine
        self.executed = 0
        while self.executed < budget:
            n = min(chunk, budget - self.executed)
            self.flush()
            try:
                reason = m.step(n)
            except Exception:
                # a triple fault, say: the records up to it first (the CPU's
                # run observers completed the pending segment)
                yield from self._stream()
                raise
            if reason == "budget":
                self.executed += n
            yield from self._stream()
            if reason == "interrupted":
                raise Interrupted(f"interrupted at {m.where()}, after at least "
                                  f"{self.executed + m.cpu.executed:,} instructions")
            if reason == "halt" and m.kernel.read_data("panic_flag"):
                tail = bytes(m.console).decode(errors="replace").strip().splitlines()
                raise KernelPanic("kernel panic: " + (" / ".join(tail[-3:]) if tail else "no message"))
            if reason != "budget":
                return                  # halted, or a hook stopped the machine
        raise BudgetExhausted(f"instruction budget of {budget:,} exhausted at {m.where()}")

    # -- register state ----------------------------------------------------------------------
    def _refresh(self, regs) -> Context:
        """The context of register vector ``regs``."""
        cr3, cs, fl = regs[CR3], regs[CS], regs[RFLAGS]
        self._kcr3, self._kcs, self._kfl = cr3, cs, fl
        self._stale = False
        ctx = self._ctx = self._recorder.context(cr3, cs, fl, self._read_cr0(), self._read_cr4())
        return ctx

    def _read(self):
        """Read the registers into the vector not holding the pending segment's entry."""
        cur = self._cur ^ 1
        self._reads[cur]()
        self._cur = cur
        return self._regs[cur]

    # -- blocks: where a segment starts --------------------------------------------------------------
    def _on_block(self, addr: int, size: int) -> None:
        """A translated block starts: the block before ran to its end."""
        cur = self._cur ^ 1                      # (self._read(), inlined: once per block)
        self._reads[cur]()
        regs = self._regs[cur]
        self._cur = cur
        seg = self._pend
        if seg is not None:
            whole = seg.whole
            if whole is not None:
                self._seq = whole(self._entry, regs, self._seq, seg.ctx, seg.syms)
                self._icount += seg.block.n
            else:
                self._finish(regs)
            self._pend = None
        elif self._pcont is not None:
            self._finish_rep(True)
        ctx = self._ctx
        if self._stale or regs[CR3] != self._kcr3 or regs[CS] != self._kcs or \
                (regs[RFLAGS] ^ self._kfl) & RFLAGS_AC:
            ctx = self._refresh(regs)
        rep = self._rep
        if rep is not None and rep.pc == addr and rep.root == ctx.root and regs[RCX] & rep.mask == rep.rcx:
            # the next iteration of a REP string instruction (QEMU: one per
            # block): its records came with the first
            self._pcont = rep
            return
        seg = ctx.blocks.get(addr)
        if seg is not None:
            pa = seg.pa
            if seg.size == size and self._buf[pa:pa + size] == seg.block.code:
                self._pend = seg
                self._entry = regs
                return
        self._new_block(ctx, addr, size, regs)

    def _new_block(self, ctx: Context, addr: int, size: int, regs) -> None:
        """A block not seen in this context since its walks were flushed, or
        whose bytes changed: find or decode it, check its anchors."""
        blk, pa = self._cache.find(ctx, addr, size)
        if not blk.ready and not self._prepare(blk):
            return
        syms = blk.symbols(ctx, self.machine.symbolize)
        whole = None
        if blk.n and not blk.anchored:        # else anchors split it: no whole-block function
            key = (0, blk.n, ctx.ok, False)
            whole = blk.fns.get(key) or self._cache.compile(blk, key)
        seg = self._pend = Segment(blk, 0, ctx, syms, whole, pa)
        self._entry = regs
        if pa is not None:
            ctx.blocks[addr] = seg

    # -- anchors: code hooks where a block needs the registers mid-way ------------------------------
    def _prepare(self, blk: Block) -> bool:
        """Make sure every anchor ``blk`` needs is installed.  A missing one
        is added with the CPU stopped before the block's first instruction
        (a code hook added after translation fires only after the
        translation cache is flushed: docs/unicorn-notes.md); the run then
        goes on from there.  False then."""
        have = {i for i, ins in enumerate(blk.insns) if ins.addr in self._anchors}
        new = {blk.insns[k].addr for k in block_anchors(blk.addr, blk.insns, have)}
        if not new:
            blk.ready = True
            blk.anchored = any(i > 0 for i in have)
            return True
        for a in new:
            self._anchors[a] = None
        self._cpu.rerun(self._icount, lambda: self._install_anchors(sorted(new)))
        return False

    def _install_anchors(self, addrs) -> None:
        for a in addrs:
            if self._anchors.get(a) is None:
                self._anchors[a] = self._cpu.add_code_hook(a, self._on_anchor)

    def _on_anchor(self, addr: int) -> None:
        pend = self._pend
        if pend is None:
            return
        blk = pend.block
        k = blk.index.get(addr)
        if k is None or k <= pend.start:
            return                    # another block's anchor, or this block starts here
        regs = self._read()
        self._finish(regs, k)
        ctx = self._context(regs)
        self._pend = Segment(blk, k, ctx, blk.symbols(ctx, self.machine.symbolize))
        self._entry = regs

    def _context(self, regs) -> Context:
        """The context of the registers just read (cheap when unchanged)."""
        if self._stale or regs[CR3] != self._kcr3 or regs[CS] != self._kcs or \
                (regs[RFLAGS] ^ self._kfl) & RFLAGS_AC:
            return self._refresh(regs)
        return self._ctx

    # -- segments: their records, once it is known how far they ran ------------------------------------
    def _finish(self, X, cut: int | None = None, faulted: bool = False, unsure: bool = False) -> bool:
        """Records of the pending segment, run up to instruction ``cut``
        (None: to the block's end) with registers X there; ``faulted``: the
        instruction at ``cut`` faulted (its accesses are computed from X);
        ``unsure``: the run stopped at the block's closing REP instruction,
        which may not have started.  Returns whether the faulting instruction
        has a ``seq`` of its own (it has memory operands)."""
        seg = self._pend
        blk, a, ctx, syms = seg.block, seg.start, seg.ctx, seg.syms
        n = blk.n
        end = n if cut is None else cut
        if end > a or n == 0:            # (nothing decodable: the fetch record alone)
            key = (a, end, ctx.ok, unsure)
            fn = blk.fns.get(key) or self._cache.compile(blk, key)
            self._seq = fn(self._entry, X, self._seq, ctx, syms)
            self._icount += end - a
        if not (faulted and end < n):
            return False
        self._icount += 1
        key = (end, end + 1, ctx.ok, False)
        fn = blk.fns.get(key) or self._cache.compile(blk, key)
        self._seq = fn(X, None, self._seq, ctx, syms)
        return bool(blk.insns[end].ops)

    def _finish_rep(self, ran: bool) -> None:
        """The pending REP iteration: ``ran`` if it executed."""
        it = self._pcont
        self._pcont = None
        if ran:
            self._icount += 1
            self._rep = RepIteration(it.pc, it.root, (it.rcx - 1) & it.mask, it.mask) if it.rcx else None

    def _on_run(self, starting: bool) -> None:
        """Before each emu_start: count its instructions from 0.  After:
        the pending segment ran up to RIP."""
        if starting:
            self._icount = 0
            return
        if self._pend is None and self._pcont is None:
            return
        X = self._read()
        rip = self._read_rip()
        if self._pcont is not None:
            it = self._pcont
            self._finish_rep(rip != it.pc or X[RCX] & it.mask != it.rcx)
            return
        blk, a = self._pend.block, self._pend.start
        k = blk.index.get(rip)
        if k is None:
            self._finish(X)                      # RIP left the block: it ran to its end
        elif blk.rep and k == blk.n - 1 and k >= a:
            self._finish(X, unsure=True)         # RIP stays on a REP instruction while it iterates
        else:
            self._finish(X, max(k, a))
        self._pend = None

    def _string(self, seq: int, ins: StaticInsn, sym: str, ctx: Context, src: int, dst: int, rcx: int | None,
                df: int, X, emit: bool) -> int:
        """A string instruction: one range per operand (REP: RCX elements,
        downwards when RFLAGS.DF is set).  QEMU runs a REP instruction one
        iteration per block; only the first iteration makes records.  ``X``:
        the registers where the run stopped on this instruction, which has
        not started if RCX is unchanged."""
        first_op = ins.ops[0]
        elem = first_op.elem
        count = 1
        if first_op.rep:
            mask = 0xFFFFFFFF if first_op.addr32 else M64
            rcx &= mask
            if X is not None and X[RCX] & mask == rcx:
                return seq
            self._rep = RepIteration(ins.addr, ctx.root, (rcx - 1) & mask, mask) if rcx else None
            if not rcx:
                return seq
            count = rcx
        seq += 1
        if not emit:
            return seq
        emit_access = self._recorder.emit
        for op in ins.ops:
            start = src if op.reg == "rsi" else dst
            first = (start - (count - 1) * elem) if df else start
            if not emit_access(seq, ins.addr, sym, ctx, op.kind, first & M64, elem * count):
                break
        return seq

    # -- events: faults cut segments short; exception frames and fetch faults -------------------------
    def _on_event(self, ev) -> None:
        kind = ev.kind
        if kind == "exception" or kind == "interrupt":
            self._stale = True
            d = ev.data
            rip = d.get("rip")
            fetch = kind == "exception" and d.get("vector") == VEC_PF and bool((d.get("error_code") or 0) & PF_I)
            software = bool(d.get("software"))
            made = self._cut(rip, kind == "exception" and not (fetch or software))
            if kind == "exception":
                self._rep = None          # a retried REP iteration makes records again
            if fetch:
                # a faulting instruction fetch never reaches the hooks: record it here
                self._seq += 1
                self._recorder.fetch_fault(self._seq, d, self._read_cr4())
            else:
                if software:
                    # INT n / INT3 report the next RIP: name the instruction itself
                    rip = self._insn_before(rip)
                if made is None:
                    # nothing ran since the last event: a fault delivering a fault
                    made = rip == self._last_rip
                if kind == "interrupt" or software or not made:
                    # nothing of this instruction was recorded (INT3, UD2, an interrupt...)
                    self._seq += 1
            self._last_rip = rip                  # the instruction that has seq self._seq
            self._frame_owner = FrameOwner(rip, self._seq)
        elif kind == "frame_write":
            owner = self._frame_owner or FrameOwner(None, self._seq)
            self._recorder.frame_write(ev.data, owner.rip, owner.seq, self._read_cr0(), self._read_cr4())

    def _cut(self, rip: int, faulting: bool) -> bool | None:
        """An exception or interrupt with RIP at ``rip``: the pending segment
        ran up to there (and, if ``faulting``, the instruction at ``rip``
        faulted).  Returns whether that instruction has a seq of its own
        (None: nothing was pending)."""
        self._soft_from = None
        if self._pend is None and self._pcont is None:
            return None
        X = self._read()                 # the registers at the fault: delivery has not written them yet
        if self._pcont is not None:
            self._finish_rep(False)
            self._icount += 1
            return True                   # a REP iteration: the REP's records have its seq
        blk, a = self._pend.block, self._pend.start
        self._soft_from = blk
        k = blk.index.get(rip)
        made = False
        if k is None:
            self._finish(X)
        else:
            made = self._finish(X, max(k, a), faulted=faulting)
        self._pend = None
        return made

    def _insn_before(self, rip: int) -> int:
        """The instruction ending at ``rip`` (INT n: the last of its block)."""
        blk = self._soft_from
        if blk is not None:
            for ins in blk.insns:
                if ins.addr + ins.size == rip:
                    return ins.addr
        return rip
