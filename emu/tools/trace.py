"""Memory-access tracing: one record per access of every executed instruction.

A :class:`Tracer` attached to a :class:`~emu.linux.machine.Machine` reports, for
each instruction that touches memory, which virtual address it touched, how
(``r``/``w``/``x``), in which address space, and what the page tables made
of it (the physical address, or the fault)::

    for rec in iter_trace("prog.S", kinds="w"):
        print(rec.as_dict())

How the records are made (ARCHITECTURE.md fact 7: Unicorn's memory hooks
see physical addresses, so virtual ones come from decoding):

* One Python callback per executed translated block (UC_HOOK_BLOCK), not
  per instruction: it reads every register the addresses need in one C
  batch call.  Each block is decoded once with capstone into access plans
  (:mod:`emu.tools.trace_code`; cached by address, physical address and bytes,
  and reused while the bytes are unchanged) and the plans of a block are
  compiled into a small Python function that computes each access's
  address from the registers at the block's start, following in-block
  register changes (pushes, moves, adds...).
* A block hook fires on entry, also for a block that then runs no
  instruction or only some (an instruction budget, a stop, a fault).  So a
  block's records are made *after* it ran: when the next block starts, at
  an ``exception``/``interrupt`` event (RIP says where it stopped; the
  faulting instruction's accesses are computed from the registers at the
  fault), or when the run stops (RIP again).  The registers read then also
  give values loaded inside the block that later addresses use.  Where
  neither they nor memory can tell such a value, an *anchor* (a code hook
  on that instruction) reads the registers there; a block that needs a new
  anchor is stopped before its first instruction and run again once the
  hook is in (:meth:`~emu.hw.microcode.System.rerun`).
* Each piece of an access (split at page boundaries) is translated with the
  reference walker (:func:`emu.hw.paging.translate`) through the CR3 of the
  block; walks are cached per page and flushed on CR3/CR4 writes,
  ``invlpg``/``invpcid``, after a fault on the page (x86 never caches a
  faulting translation) and at each :meth:`Tracer.run` chunk.
* The exception frame written by the microcode arrives as a ``frame_write``
  event and becomes ``w`` records of the faulting instruction (same
  ``seq``); a faulting instruction fetch arrives as an ``exception`` event
  and becomes an ``x`` record with its fault.

Not recorded: the CPU's page walks and A/D-bit updates, the descriptor
reads of IRETQ, the IDT/TSS reads of exception delivery (Python reads them
for the microcode).  Register writes that Python hooks make in the middle of
a block are not followed, except the stub's hypercall result (RAX after
``out``) and the microcode's SYSCALL (RCX, R11).

Tracing off costs nothing: no hook exists until :meth:`Tracer.attach`, and
:meth:`Tracer.detach` removes them and drops the instrumented translations.
"""

from __future__ import annotations

import os
from operator import itemgetter
from types import FunctionType
from typing import Iterable, Iterator

from emu.hw.cpu import REG_IDS, OneReg, RegBatch
from emu.errors import AddressError, ConfigError
from emu.linux.machine import DEFAULT_BUDGET, BudgetExhausted, KernelPanic, Machine, MachineConfig
from emu.hw.paging import (ADDR_MASK, CR0_WP, CR4_LA57, CR4_PKE, CR4_SMAP, CR4_SMEP, PF_I, VEC_PF, ControlState,
                     control_state_of, translate)
from emu.tools.spaces import parse_address
from emu.tools.trace_code import (CR3, CS, M64, RCX, RFLAGS, TRACKED, StaticInsn, analyse, block_anchors, decode,
                         segment_code)

__all__ = ["KINDS", "FIELDS", "Record", "Tracer", "StaticInsn", "analyse", "decode", "parse_kinds",
           "parse_range", "load_machine", "iter_trace", "trace_program"]

KINDS = "rwx"
FIELDS = ("seq", "rip", "symbol", "cpl", "cr3", "pcid", "space", "kind", "va", "size", "pa", "fault")
DEFAULT_CHUNK = 200_000          # instructions per Machine.step while iterating

_ACCESS = {"r": 0, "w": 1, "x": 2}
_M64 = M64
_CR4_BITS = CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_LA57
_CR4_PCIDE = 1 << 17
_RF_AC = 1 << 18


# --- records -----------------------------------------------------------------------
class Record(tuple):
    """One access.  ``seq`` numbers the executed blocks and memory-touching
    instructions in order (all records of one instruction share it, its
    exception frame included); ``rip``/``symbol`` name the instruction (for
    ``x``, the block's start); ``cpl`` is the privilege of the access (0 for
    the frame written by exception delivery); ``cr3`` is the page-table base
    and ``pcid`` CR3's low 12 bits when CR4.PCIDE is set (else None);
    ``fault`` is None or ``{"vector": v, "error_code": ec}``, and then ``pa``
    is None."""

    __slots__ = ()

    seq = property(itemgetter(0))
    rip = property(itemgetter(1))
    symbol = property(itemgetter(2))
    cpl = property(itemgetter(3))
    cr3 = property(itemgetter(4))
    pcid = property(itemgetter(5))
    space = property(itemgetter(6))
    kind = property(itemgetter(7))
    va = property(itemgetter(8))
    size = property(itemgetter(9))
    pa = property(itemgetter(10))
    fault = property(itemgetter(11))

    def as_dict(self, hex_addresses: bool = False) -> dict:
        """Exactly the keys of :data:`FIELDS`; ``hex_addresses`` writes rip,
        cr3, va and pa as ``0x...`` strings (as the CLI's JSON does)."""
        d = dict(zip(FIELDS, self))
        if d["fault"] is not None:
            d["fault"] = dict(d["fault"])
        if hex_addresses:
            for k in ("rip", "cr3", "va", "pa"):
                if d[k] is not None:
                    d[k] = f"{d[k]:#x}"
        return d

    def __repr__(self):
        where = f"pa={self.pa:#x}" if self.fault is None else \
            f"fault=#{self.fault['vector']}({self.fault['error_code']:#x})"
        return (f"Record(#{self.seq} {self.symbol} cpl{self.cpl} {self.space} {self.kind} "
                f"va={self.va:#x}+{self.size} {where})")


_new = tuple.__new__


# --- the tracer ---------------------------------------------------------------------------
class _Ctx:
    """What the registers say about where accesses go: CPL, CR3, control bits."""

    __slots__ = ("cpl", "root", "pcid", "space", "ctl", "ok", "walks", "proc", "pkey", "blocks")

    def __init__(self, cpl, root, pcid, space, ctl, ok, proc):
        self.cpl, self.root, self.pcid, self.space, self.ctl = cpl, root, pcid, space, ctl
        self.ok, self.proc = ok, proc
        self.pkey = id(proc)                     # processes are not hashable
        # address -> (size, pa, block, symbols, compiled block) of one-page
        # blocks whose fetch walk is cached (see Tracer._on_block)
        self.blocks: dict[int, tuple] = {}
        # per access (r, w, x): virtual page number -> physical page address
        self.walks: tuple[dict[int, int], ...] = ({}, {}, {})


class _Block:
    """A translated block: its instructions (decoded once), the functions
    compiled for its segments, the symbols of its instructions."""

    __slots__ = ("addr", "size", "code", "insns", "n", "index", "fetch", "ready", "anchored", "fns", "syms",
                 "rep")

    def __init__(self, addr: int, size: int, code: bytes | None, insns: list[StaticInsn], fetch: tuple):
        self.addr, self.size, self.code, self.insns, self.n = addr, size, code, insns, len(insns)
        self.index = {ins.addr: i for i, ins in enumerate(insns)}
        self.fetch = fetch                 # (addr, size, pa1, fault1, pa2, fault2, bytes in page 1)
        self.ready = False                 # every anchor it needs is installed
        self.anchored = False              # ... and it has some
        self.fns: dict[tuple, object] = {}  # (start, end, emit, unsure) -> compiled segment
        self.syms: dict = {}               # id(process) -> symbol of each instruction
        # QEMU ends a block after the first iteration of a REP string instruction
        self.rep = bool(insns) and insns[-1].rep


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
        self._raw: list[tuple] = []          # records as plain tuples, in order
        self._records: list[Record] = []     # ... those already made Records (they come first)
        self._attached = False
        self._hooks: list[int] = []
        self._anchors: dict[int, int | None] = {}    # address -> code hook (None while detached)

    # -- attach / detach ----------------------------------------------------------------
    def attach(self) -> "Tracer":
        """Install the hooks (boots the machine if needed).  Re-attaching
        continues the ``seq`` numbering and keeps the decoded blocks."""
        if self._attached:
            return self
        m = self.machine
        m.boot()
        if not hasattr(self, "_cpu"):
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
        cpu = self._cpu = m.cpu
        self._space_root = None
        if self.space is not None:
            spaces = m.spaces()
            if self.space not in spaces:
                raise ConfigError(f"unknown space {self.space!r}: choose from {', '.join(sorted(spaces))}")
            self._space_root = spaces[self.space] & ADDR_MASK
        self._mem = m.mem
        self._buf = m.mem.buf
        # two register vectors: the one a pending segment started from (E),
        # and the one read when it ends (X), which starts the next
        ids = [REG_IDS[n] for n in TRACKED]
        batches = (RegBatch(cpu, ids), RegBatch(cpu, ids))
        self._reads = tuple(b.read for b in batches)
        # memoryview indexing is several times cheaper than a ctypes array's
        self._regs = tuple(memoryview(b.vals).cast("B").cast("Q") for b in batches)
        self._batches = batches                       # keeps the buffers alive
        self._cur = 0                                 # the vector of the latest read
        self._rd = {n: OneReg(cpu, REG_IDS[n]).read for n in ("cr0", "cr4")}
        self._rip = OneReg(cpu, REG_IDS["rip"]).read
        self._nxe = bool(m.config.nx)
        self._ctxs: dict[tuple, _Ctx] = {}
        self._ctx: _Ctx | None = None
        self._kcr3 = self._kcs = self._kfl = None     # CR3, CS, RFLAGS behind self._ctx
        self._stale = True
        self._blocks: dict[tuple, _Block] = {}
        self._seq = 0
        self._last_rip = None                        # the instruction of the last exception event
        self._frame_owner = None                     # (rip, seq) of the exception being delivered
        self._soft_from = None                       # the block an INT n event interrupted
        self._rep = None                             # (pc, root, RCX at the next iteration, mask)
        self._icount = 0                             # instructions run by this emu_start
        self._unresolved = 0                         # values an anchor should have given (expect 0)
        # the pending segment: (block, first instruction, registers there,
        # context, symbols, the compiled whole block if it started at 0); or
        # a pending REP iteration (_pcont: pc, RCX, mask, root)
        self._pend: tuple | None = None
        self._pcont: tuple | None = None
        self._halts = {i.addr for i in m.kernel.image.insns if i.mnemonic == "hlt"}
        self._want = {k: k in self.kinds for k in KINDS}
        self._lo, self._hi = self.va_range if self.va_range else (0, 1 << 64)
        # what compiled segments call (emu.tools.trace_code.HELPERS, INS added per block)
        self._helpers = (self._raw.append, self._emit, self._string, self._load, self.flush, self._set_stale)
        self._globals = {"__builtins__": __builtins__}

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
        for ctx in getattr(self, "_ctxs", {}).values():
            for w in ctx.walks:
                w.clear()
            ctx.blocks.clear()
        self._stale = True

    def _set_stale(self) -> None:
        self._stale = True

    # -- running ---------------------------------------------------------------------------
    def run(self, budget: int = DEFAULT_BUDGET, chunk: int = DEFAULT_CHUNK) -> Iterator[Record]:
        """Run the machine until it halts, yielding records as they come.

        Raises :class:`~emu.linux.machine.BudgetExhausted` (after yielding what was
        recorded) when ``budget`` instructions do not suffice, and
        :class:`~emu.linux.machine.KernelPanic` on a stub panic."""
        if budget <= 0:
            raise ConfigError(f"the budget must be a positive number of instructions, not {budget}")
        self.attach()
        m = self.machine
        left = budget
        while left > 0:
            n = min(chunk, left)
            self.flush()
            reason = m.step(n)
            left -= n
            if reason == "halt" and m.cpu.reg("rip") - 1 not in self._halts:
                # the machine calls any stop after a byte 0xf4 a halt (e.g. after
                # 'mov r12, rsi', 49 89 f4): only the stub's HLT instructions halt
                reason = "budget"
            yield from self._stream()
            if reason == "halt":
                _check_panic(m)
                return
            if reason != "budget":
                return
        raise BudgetExhausted(f"instruction budget of {budget} exhausted at {m.where()}")

    # -- register state ----------------------------------------------------------------------
    def _refresh(self, regs) -> _Ctx:
        """The context of register vector ``regs`` (interned by its values)."""
        cr3, cs, fl = regs[CR3], regs[CS], regs[RFLAGS]
        cr0, cr4 = self._rd["cr0"](), self._rd["cr4"]()
        self._kcr3, self._kcs, self._kfl = cr3, cs, fl
        self._stale = False
        key = (cr3, cs & 3, cr0 & CR0_WP, cr4 & (_CR4_BITS | _CR4_PCIDE), fl & _RF_AC)
        ctx = self._ctxs.get(key)
        if ctx is None:
            root = cr3 & ADDR_MASK
            space = self.machine.space_of(cr3)
            ok = self._space_root is None or root == self._space_root
            ctx = self._ctxs[key] = _Ctx(cs & 3, root, (cr3 & 0xFFF) if cr4 & _CR4_PCIDE else None, space,
                                         self._ctl(cr0, cr4, bool(fl & _RF_AC)), ok, self._proc_of(space))
        self._ctx = ctx
        return ctx

    def _ctl(self, cr0: int, cr4: int, ac: bool) -> ControlState:
        return control_state_of(cr0, cr4, self._nxe, ac)

    def _proc_of(self, space: str):
        """The process whose program symbolizes user addresses of ``space``."""
        name = space.split(".", 1)[0] if "." in space else None
        for p in self.machine.processes:
            if p.name == name:
                return p
        return None

    def _walk(self, ctx: _Ctx, va: int, acc: int):
        """(pa, fault) of one access inside one page; successes are cached."""
        t = translate(self._mem, ctx.root, va, acc, ctx.cpl, ctx.ctl)
        page = va >> 12
        if t.fault:
            # x86 never caches a faulting translation: the page's entries go
            for w in ctx.walks:
                w.pop(page, None)
            ctx.blocks.clear()
            # (a non-canonical stack access is #SS(0) in the SDM; QEMU, and
            # so this machine, raise #GP(0) as the walker says)
            return None, {"vector": t.vector, "error_code": t.error_code}
        ctx.walks[acc][page] = t.pa & ~0xFFF
        return t.pa, None

    def _symbols(self, blk: _Block, ctx: _Ctx) -> list[str]:
        sym = self.machine.symbolize
        syms = blk.syms[ctx.pkey] = [sym(i.addr, ctx.proc) for i in blk.insns] or [sym(blk.addr, ctx.proc)]
        return syms

    def _context(self, regs) -> _Ctx:
        """The context of the registers just read (cheap when unchanged)."""
        if self._stale or regs[CR3] != self._kcr3 or regs[CS] != self._kcs or \
                (regs[RFLAGS] ^ self._kfl) & _RF_AC:
            return self._refresh(regs)
        return self._ctx

    # -- blocks: where a segment starts --------------------------------------------------------------
    def _on_block(self, addr: int, size: int) -> None:
        """A translated block starts: the block before ran to its end."""
        cur = self._cur ^ 1
        self._reads[cur]()
        regs = self._regs[cur]
        self._cur = cur
        pend = self._pend
        if pend is not None:
            whole = pend[5]
            if whole is not None:
                self._seq = whole(pend[2], regs, self._seq, pend[3], pend[4])
                self._icount += pend[0].n
            else:
                self._finish(regs)
            self._pend = None
        elif self._pcont is not None:
            self._finish_rep(True)
        ctx = self._ctx
        if self._stale or regs[CR3] != self._kcr3 or regs[CS] != self._kcs or (regs[RFLAGS] ^ self._kfl) & _RF_AC:
            ctx = self._refresh(regs)
        rep = self._rep
        if rep is not None and rep[0] == addr and rep[1] == ctx.root and regs[RCX] & rep[3] == rep[2]:
            # the next iteration of a REP string instruction (QEMU: one per
            # block): its records came with the first
            self._pcont = (addr, rep[2], rep[3], ctx.root)
            return
        hit = ctx.blocks.get(addr)
        if hit is not None and hit[0] == size and self._buf[hit[1]:hit[1] + size] == hit[2].code:
            self._pend = (hit[2], 0, regs, ctx, hit[3], hit[4])
        else:
            self._new_block(ctx, addr, size, regs)

    def _new_block(self, ctx: _Ctx, addr: int, size: int, regs) -> None:
        """A block not seen in this context since its walks were flushed, or
        whose bytes changed: find or decode it, check its anchors."""
        walks = ctx.walks[2]
        first = 0x1000 - (addr & 0xFFF)
        pa1 = walks.get(addr >> 12)
        fault1 = None
        if pa1 is None:
            pa1, fault1 = self._walk(ctx, addr, 2)
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
                pa2, fault2 = self._walk(ctx, a2, 2)
        key = (addr, size, pa1, pa2)
        blk = self._blocks.get(key)
        if blk is not None:
            buf = self._buf
            if buf[pa1:pa1 + first] != blk.code if pa2 is None else \
                    buf[pa1:pa1 + first] + buf[pa2:pa2 + size - first] != blk.code:
                blk = None             # the code changed: decode again
        if blk is None:
            blk = self._decode_block(ctx, addr, size, key, (addr, size, pa1, fault1, pa2, fault2, first))
        if not blk.ready and not self._prepare(blk):
            return
        syms = blk.syms.get(ctx.pkey) or self._symbols(blk, ctx)
        whole = None
        if blk.n and not blk.anchored:        # else anchors split it: no whole-block function
            key = (0, blk.n, ctx.ok, False)
            whole = blk.fns.get(key) or self._compile(blk, key)
        self._pend = (blk, 0, regs, ctx, syms, whole)
        if pa2 is None and fault1 is None and blk.code is not None and len(blk.code) == size:
            # valid while the walks are: flush() and faults clear both
            ctx.blocks[addr] = (size, pa1, blk, syms, whole)

    def _code_bytes(self, ctx: _Ctx, va: int, n: int) -> bytes | None:
        """Bytes at ``va`` through the current tables (any present page)."""
        out = b""
        sup = self._ctl(0, ctx.ctl.la57 and CR4_LA57, False)     # a supervisor read, no SMAP, no WP
        while n > 0:
            t = translate(self._mem, ctx.root, va, 0, 0, sup)
            if t.fault:
                return out or None
            chunk = min(n, 0x1000 - (va & 0xFFF))
            out += self._buf[t.pa:t.pa + chunk]
            va, n = va + chunk, n - chunk
        return out

    def _decode_block(self, ctx: _Ctx, addr: int, size: int, key: tuple, fetch: tuple) -> _Block:
        code = self._code_bytes(ctx, addr, size) if size else None
        insns = decode(code, addr) if code else []
        end = insns[-1].addr + insns[-1].size if insns else addr
        if code and end < addr + size:
            # QEMU ends a block inside an instruction it cannot decode (INVPCID
            # here, which the microcode emulates after #UD): decode it whole
            more = self._code_bytes(ctx, addr, size + 15) or code
            insns = [i for i in decode(more, addr) if i.addr < addr + size]
        blk = _Block(addr, size, code, insns, fetch)
        one_page = (addr & 0xFFF) + size <= 0x1000
        # cached only when the fetch translated: the x record is then the same every time
        if code is not None and len(code) == size and key[2] is not None and (one_page or key[3] is not None):
            if len(self._blocks) > 20_000:
                self._blocks.clear()
            self._blocks[key] = blk
        return blk

    # -- anchors: code hooks where a block needs the registers mid-way ------------------------------
    def _prepare(self, blk: _Block) -> bool:
        """Make sure every anchor ``blk`` needs is installed.  A missing one
        is added with the CPU stopped before the block's first instruction
        (a code hook added after translation fires only after the cache is
        flushed, fact 9); the run then goes on from there.  False then."""
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
        blk, a = pend[0], pend[1]
        k = blk.index.get(addr)
        if k is None or k <= a:
            return                    # another block's anchor, or this block starts here
        cur = self._cur ^ 1
        self._reads[cur]()
        regs = self._regs[cur]
        self._cur = cur
        self._finish(regs, k)
        ctx = self._context(regs)
        self._pend = (blk, k, regs, ctx, blk.syms.get(ctx.pkey) or self._symbols(blk, ctx), None)

    # -- segments: their records, once it is known how far they ran ------------------------------------
    def _finish(self, X, cut: int | None = None, faulted: bool = False, unsure: bool = False) -> bool:
        """Records of the pending segment, run up to instruction ``cut``
        (None: to the block's end) with registers X there; ``faulted``: the
        instruction at ``cut`` faulted (its accesses are computed from X);
        ``unsure``: the run stopped at the block's closing REP instruction,
        which may not have started.  Returns whether the faulting instruction
        has a ``seq`` of its own (it has memory operands)."""
        blk, a, E, ctx, syms, _ = self._pend
        n = blk.n
        end = n if cut is None else cut
        if end > a or n == 0:            # (nothing decodable: the fetch record alone)
            key = (a, end, ctx.ok, unsure)
            fn = blk.fns.get(key) or self._compile(blk, key)
            self._seq = fn(E, X, self._seq, ctx, syms)
            self._icount += end - a
        if not (faulted and end < n):
            return False
        self._icount += 1
        key = (end, end + 1, ctx.ok, False)
        fn = blk.fns.get(key) or self._compile(blk, key)
        self._seq = fn(X, None, self._seq, ctx, syms)
        return bool(blk.insns[end].ops)

    def _compile(self, blk: _Block, key: tuple):
        a, c, emit, unsure = key
        code, unresolved = segment_code(blk.insns, a, c, emit=emit, unsure=unsure, want=self._want,
                                        va_range=self.va_range, fetch=blk.fetch)
        self._unresolved += unresolved
        fn = blk.fns[key] = FunctionType(code, self._globals, "seg", self._helpers + (blk.insns,))
        return fn

    def _finish_rep(self, ran: bool) -> None:
        """A pending REP iteration: ``ran`` if it executed."""
        addr, rcx, mask, root = self._pcont
        self._pcont = None
        if ran:
            self._icount += 1
            self._rep = (addr, root, (rcx - 1) & mask, mask) if rcx else None

    def _on_run(self, starting: bool) -> None:
        """Before each emu_start: count its instructions from 0.  After:
        the pending segment ran up to RIP."""
        if starting:
            self._icount = 0
            return
        if self._pend is None and self._pcont is None:
            return
        cur = self._cur ^ 1
        self._reads[cur]()
        X = self._regs[cur]
        self._cur = cur
        rip = self._rip()
        if self._pcont is not None:
            addr, rcx, mask, _ = self._pcont
            self._finish_rep(rip != addr or X[RCX] & mask != rcx)
            return
        blk, a = self._pend[0], self._pend[1]
        k = blk.index.get(rip)
        if k is None:
            self._finish(X)                      # RIP left the block: it ran to its end
        elif blk.rep and k == blk.n - 1 and k >= a:
            self._finish(X, unsure=True)         # RIP stays on a REP instruction while it iterates
        else:
            self._finish(X, max(k, a))
        self._pend = None

    # -- records ---------------------------------------------------------------------------------
    def _emit(self, seq: int, rip: int, sym: str, ctx: _Ctx, kind: str, va: int, size: int) -> bool:
        """Records of one access, split at page boundaries; False if it
        faults (the walker's say)."""
        acc = _ACCESS[kind]
        want = self._want[kind]
        while True:
            off = va & 0xFFF
            n = size if off + size <= 0x1000 else 0x1000 - off
            pa = ctx.walks[acc].get(va >> 12)
            if pa is not None:
                pa |= off
                fault = None
            else:
                pa, fault = self._walk(ctx, va, acc)
            if want and va < self._hi and va + n > self._lo:
                self._raw.append((seq, rip, sym, ctx.cpl, ctx.root, ctx.pcid, ctx.space,
                                  kind, va, n, pa, fault))
            if fault is not None:
                return False
            if n == size:
                return True
            va, size = (va + n) & _M64, size - n

    def _load(self, ctx: _Ctx, va: int, size: int) -> int:
        """A value the segment loaded, read again (nothing stored since)."""
        out = b""
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            pa = ctx.walks[0].get(va >> 12)
            if pa is None:
                pa, fault = self._walk(ctx, va, 0)
                if fault is not None:
                    self._unresolved += 1          # the CPU read it: the walker disagrees
                    return 0
            pa = (pa & ~0xFFF) | (va & 0xFFF)
            out += self._buf[pa:pa + n]
            va, size = (va + n) & _M64, size - n
        return int.from_bytes(out, "little")

    def _string(self, seq: int, ins: StaticInsn, sym: str, ctx: _Ctx, src: int, dst: int, rcx: int | None,
                df: int, X, emit: bool) -> int:
        """A string instruction: one range per operand (REP: RCX elements,
        downwards when RFLAGS.DF is set).  QEMU runs a REP instruction one
        iteration per block; only the first iteration makes records.  ``X``:
        the registers where the run stopped on this instruction, which has
        not started if RCX is unchanged."""
        _, _, elem, _, _, rep, addr32 = ins.ops[0]
        count = 1
        if rep:
            mask = 0xFFFFFFFF if addr32 else _M64
            rcx &= mask
            if X is not None and X[RCX] & mask == rcx:
                return seq
            self._rep = (ins.addr, ctx.root, (rcx - 1) & mask, mask) if rcx else None
            if not rcx:
                return seq
            count = rcx
        seq += 1
        if not emit:
            return seq
        for _, kind, _, reg, _, _, _ in ins.ops:
            start = src if reg == "rsi" else dst
            first = (start - (count - 1) * elem) if df else start
            if not self._emit(seq, ins.addr, sym, ctx, kind, first & _M64, elem * count):
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
                self._fetch_fault(d)
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
            self._frame_owner = (rip, self._seq)
        elif kind == "frame_write":
            self._frame_write(ev.data, self._frame_owner or (None, self._seq))

    def _cut(self, rip: int, faulting: bool) -> bool | None:
        """An exception or interrupt with RIP at ``rip``: the pending segment
        ran up to there (and, if ``faulting``, the instruction at ``rip``
        faulted).  Returns whether that instruction has a seq of its own
        (None: nothing was pending)."""
        self._soft_from = None
        if self._pend is None and self._pcont is None:
            return None
        cur = self._cur ^ 1
        self._reads[cur]()               # the registers at the fault: delivery has not written them yet
        X = self._regs[cur]
        self._cur = cur
        if self._pcont is not None:
            self._finish_rep(False)
            self._icount += 1
            return True                   # a REP iteration: the REP's records have its seq
        blk, a = self._pend[0], self._pend[1]
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

    def _event_ctx(self, cr3: int) -> tuple:
        root = cr3 & ADDR_MASK
        pcid = (cr3 & 0xFFF) if self._rd["cr4"]() & _CR4_PCIDE else None
        space = self.machine.space_of(cr3)
        return root, pcid, space, self._space_root is None or root == self._space_root

    def _fetch_fault(self, d: dict) -> None:
        root, pcid, space, ok = self._event_ctx(d["cr3"])
        va = d.get("cr2")
        if not (ok and self._want["x"] and va is not None and va < self._hi and va + 1 > self._lo):
            return
        rip = d["rip"]
        self._raw.append((self._seq, rip, self.machine.symbolize(rip, self._proc_of(space)),
                          d["cpl"], root, pcid, space, "x", va, 1, None,
                          {"vector": VEC_PF, "error_code": d["error_code"]}))

    def _frame_write(self, d: dict, owner: tuple) -> None:
        """The frame pushed by exception delivery: implicit supervisor writes
        (CPL 0), attributed to the interrupted instruction."""
        root, pcid, space, ok = self._event_ctx(d["cr3"])
        if not (ok and self._want["w"]):
            return
        rip, seq = owner
        sym = self.machine.symbolize(rip, self._proc_of(space)) if rip is not None else "?"
        ctl = self._ctl(self._rd["cr0"](), self._rd["cr4"](), False)
        va, size = d["va"], d["size"]
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            t = translate(self._mem, root, va, 1, 0, ctl)
            pa, fault = (None, {"vector": t.vector, "error_code": t.error_code}) if t.fault else (t.pa, None)
            if va < self._hi and va + n > self._lo:
                self._raw.append((seq, rip, sym, 0, root, pcid, space, "w", va, n, pa, fault))
            va, size = va + n, size - n


def _check_panic(m: Machine) -> None:
    if m.kernel.read_data("panic_flag"):
        tail = bytes(m.console).decode(errors="replace").strip().splitlines()
        raise KernelPanic("kernel panic: " + (" / ".join(tail[-3:]) if tail else "no message"))


# --- helpers for users and the CLI ----------------------------------------------------------------
def parse_kinds(kinds: str | Iterable[str]) -> str:
    """``"rw"``, ``["r", "x"]``... -> a string of distinct kinds in ``rwx`` order."""
    letters = "".join(kinds) if not isinstance(kinds, str) else kinds
    bad = sorted(set(letters) - set(KINDS))
    if bad or not letters:
        raise ConfigError(f"bad access kind {letters!r}: use r, w, x or a combination such as rw")
    return "".join(k for k in KINDS if k in letters)


def parse_range(text: str) -> tuple[int, int]:
    """``LO-HI`` -> ``(lo, hi)``, the half-open range ``[lo, hi)``.  Each end
    is read as ``isoemu walk`` reads addresses (``0x600000``; 16 hex digits)."""
    lo_s, sep, hi_s = text.partition("-")
    if not sep or not lo_s.strip() or not hi_s.strip():
        raise AddressError(f"bad range {text!r}: expected LO-HI, e.g. 0x600000-0x601000")
    lo, hi = parse_address(lo_s, "range start"), parse_address(hi_s, "range end")
    if lo >= hi:
        raise AddressError(f"bad range {text!r}: the start must be below the end")
    return lo, hi


def load_machine(program, config: MachineConfig | None = None, *, name: str = "A",
                 record_events: bool = False) -> Machine:
    """A machine running one user program, process ``name`` (so its spaces
    are ``A.user``, ``A.kernel``, ``A.asi``): source text (it contains a
    newline) or the path of a ``.S`` file."""
    path = None
    if isinstance(program, os.PathLike) or (isinstance(program, str) and "\n" not in program):
        path = os.fspath(program)
        try:
            with open(path) as f:
                source = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    elif isinstance(program, str):
        source = program
    else:
        raise ConfigError(f"a program is source text or a path, not {type(program).__name__}")
    m = Machine(config or MachineConfig(), record_events=record_events)
    m.add_process(name, source, filename=path or "<program>")
    return m


def iter_trace(program, config: MachineConfig | None = None, *, kinds: str = KINDS, space: str | None = None,
               va_range: tuple[int, int] | None = None, budget: int = DEFAULT_BUDGET,
               name: str = "A", chunk: int = DEFAULT_CHUNK) -> Iterator[Record]:
    """Run a user program (source or path) on a fresh machine, yielding its
    records as they are made (see :class:`Tracer` for the filters)."""
    m = load_machine(program, config, name=name)
    tracer = Tracer(m, kinds=kinds, space=space, va_range=va_range)
    with tracer:
        yield from tracer.run(budget, chunk)


def trace_program(program, config: MachineConfig | None = None, **options) -> list[Record]:
    """:func:`iter_trace` as a list."""
    return list(iter_trace(program, config, **options))


# --- speed (isoemu bench) ------------------------------------------------------------------------------
