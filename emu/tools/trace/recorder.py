"""From accesses to records: the contexts accesses are made in (CPL, CR3,
control bits), the reference walker with a per-page cache, the filters,
and the record list.

Each piece of an access (split at page boundaries) is translated with the
reference walker (:func:`emu.hw.paging.translate`) through the CR3 of the
block; walks are cached per page, per context and per access kind, and
flushed on CR3/CR4 writes, ``invlpg``/``invpcid``, after a fault on the
page (x86 caches no translation that faults, and a #PF invalidates the
faulting address's entries: SDM Vol. 3A 4.10.2.2, 4.10.4.1) and
at each :meth:`~emu.tools.trace.tracer.Tracer.run` chunk.
"""

from __future__ import annotations

from emu.hw.paging import ADDR_MASK, CR0_WP, CR4_LA57, CR4_PKE, CR4_SMAP, CR4_SMEP, VEC_PF, ControlState, \
    control_state_of, translate
from emu.tools.trace.isa import M64
from emu.tools.trace.records import ACCESS

CR4_PCIDE = 1 << 17
RFLAGS_AC = 1 << 18
_CR4_BITS = CR4_SMEP | CR4_SMAP | CR4_PKE | CR4_LA57 | CR4_PCIDE


class Context:
    """What the registers say about where accesses go: CPL, CR3 (``root``,
    ``pcid``, the ``space`` name), control bits (``ctl``), whether the space
    filter keeps its records (``ok``), the process that symbolizes its user
    addresses (``proc``); and its caches: ``walks`` per access kind (r, w,
    x), virtual page number -> physical page address; ``blocks``, address
    -> :class:`~emu.tools.trace.blocks.CachedBlock` of one-page blocks
    whose fetch walk is cached."""

    __slots__ = ("cpl", "root", "pcid", "space", "ctl", "ok", "walks", "proc", "pkey", "blocks")

    def __init__(self, cpl: int, root: int, pcid: int | None, space: str, ctl: ControlState, ok: bool, proc):
        self.cpl, self.root, self.pcid, self.space, self.ctl = cpl, root, pcid, space, ctl
        self.ok, self.proc = ok, proc
        self.pkey = id(proc)                     # processes are not hashable
        self.blocks: dict[int, tuple] = {}
        self.walks: tuple[dict[int, int], ...] = ({}, {}, {})


class Recorder:
    """Contexts, walks and records of one tracer.  ``raw`` is the tracer's
    record list (plain tuples in the order of
    :data:`~emu.tools.trace.records.FIELDS`); ``want``: kind -> recorded;
    ``va_range``: (lo, hi) or None; ``space_root``: the root the space
    filter keeps (None: all)."""

    def __init__(self, machine, raw: list, want: dict, va_range: tuple | None, space_root: int | None):
        self.machine = machine
        self.mem = machine.mem
        self.buf = machine.mem.buf
        self.nxe = bool(machine.config.nx)
        self.raw = raw
        self.want = want
        self.lo, self.hi = va_range if va_range else (0, 1 << 64)
        self.space_root = space_root
        self.contexts: dict[tuple, Context] = {}
        self.unresolved = 0          # values an anchor should have given (expect 0)

    # -- contexts ----------------------------------------------------------------------------
    def context(self, cr3: int, cs: int, rflags: int, cr0: int, cr4: int) -> Context:
        """The context of these register values (interned)."""
        serving = self.machine.cpu.serving
        if serving is not None and cr3 & ADDR_MASK == serving[0]:
            # tlb=lazy runs an access through private tables that give it the
            # stale translation: record it against the real ones, which refuse
            # it (the record's fault then says a stale translation served it)
            cr3 = serving[1]
        key = (cr3, cs & 3, cr0 & CR0_WP, cr4 & _CR4_BITS, rflags & RFLAGS_AC)
        ctx = self.contexts.get(key)
        if ctx is None:
            root = cr3 & ADDR_MASK
            space = self.machine.space_of(cr3)
            ok = self.space_root is None or root == self.space_root
            ctx = self.contexts[key] = Context(cs & 3, root, (cr3 & 0xFFF) if cr4 & CR4_PCIDE else None, space,
                                               self.control(cr0, cr4, bool(rflags & RFLAGS_AC)), ok,
                                               self.process_of(space))
        return ctx

    def control(self, cr0: int, cr4: int, ac: bool) -> ControlState:
        return control_state_of(cr0, cr4, self.nxe, ac)

    def process_of(self, space: str):
        """The process whose program symbolizes user addresses of ``space``."""
        name = space.split(".", 1)[0] if "." in space else None
        for p in self.machine.processes:
            if p.name == name:
                return p
        return None

    def flush(self) -> None:
        """Forget every cached walk (and so every cached block fetch)."""
        for ctx in self.contexts.values():
            for w in ctx.walks:
                w.clear()
            ctx.blocks.clear()

    # -- walks ---------------------------------------------------------------------------------
    def walk(self, ctx: Context, va: int, acc: int):
        """(pa, fault) of one access inside one page; successes are cached."""
        t = translate(self.mem, ctx.root, va, acc, ctx.cpl, ctx.ctl)
        page = va >> 12
        if t.fault:
            # x86 never caches a faulting translation: the page's entries go
            for w in ctx.walks:
                w.pop(page, None)
            ctx.blocks.clear()
            # (a non-canonical stack access is #SS(0) in the SDM; QEMU, and
            # so this machine, raise #GP(0) as the walker says)
            fault = {"vector": t.vector, "error_code": t.error_code}
            tlb = self.machine.tlb
            if tlb is not None:
                # a stale translation the TLB may still hold would serve it
                # (tlb=lazy: did serve it; docs/tlb.md)
                rec = tlb.model.stale_for(va, acc, ctx.cpl, ctx.ctl)
                if rec is not None:
                    fault["stale"] = rec.describe()
                    fault["served"] = self.machine.cpu.serves(ctx.cpl)
            return None, fault
        ctx.walks[acc][page] = t.pa & ~0xFFF
        return t.pa, None

    def code_bytes(self, ctx: Context, va: int, n: int) -> bytes | None:
        """Bytes at ``va`` through the context's tables (any present page)."""
        out = b""
        sup = self.control(0, ctx.ctl.la57 and CR4_LA57, False)     # a supervisor read, no SMAP, no WP
        while n > 0:
            t = translate(self.mem, ctx.root, va, 0, 0, sup)
            if t.fault:
                return out or None
            chunk = min(n, 0x1000 - (va & 0xFFF))
            out += self.buf[t.pa:t.pa + chunk]
            va, n = va + chunk, n - chunk
        return out

    # -- what compiled segments call -------------------------------------------------------------
    def emit(self, seq: int, rip: int, sym: str, ctx: Context, kind: str, va: int, size: int) -> bool:
        """Records of one access, split at page boundaries; False if it
        faults (the walker's say)."""
        acc = ACCESS[kind]
        want = self.want[kind]
        while True:
            off = va & 0xFFF
            n = size if off + size <= 0x1000 else 0x1000 - off
            pa = ctx.walks[acc].get(va >> 12)
            if pa is not None:
                pa |= off
                fault = None
            else:
                pa, fault = self.walk(ctx, va, acc)
            if want and va < self.hi and va + n > self.lo:
                self.raw.append((seq, rip, sym, ctx.cpl, ctx.root, ctx.pcid, ctx.space, kind, va, n, pa, fault))
            if fault is not None:
                return False
            if n == size:
                return True
            va, size = (va + n) & M64, size - n

    def load(self, ctx: Context, va: int, size: int) -> int:
        """A value the segment loaded, read again (nothing stored since)."""
        out = b""
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            pa = ctx.walks[0].get(va >> 12)
            if pa is None:
                pa, fault = self.walk(ctx, va, 0)
                if fault is not None:
                    self.unresolved += 1          # the CPU read it: the walker disagrees
                    return 0
            pa = (pa & ~0xFFF) | (va & 0xFFF)
            out += self.buf[pa:pa + n]
            va, size = (va + n) & M64, size - n
        return int.from_bytes(out, "little")

    # -- records of events: a faulting fetch, an exception frame ------------------------------------
    def _event_context(self, cr3: int, cr4: int) -> tuple:
        root = cr3 & ADDR_MASK
        pcid = (cr3 & 0xFFF) if cr4 & CR4_PCIDE else None
        space = self.machine.space_of(cr3)
        return root, pcid, space, self.space_root is None or root == self.space_root

    def fetch_fault(self, seq: int, d: dict, cr4: int) -> None:
        """The ``x`` record of a faulting instruction fetch (an exception
        event: it never reaches the hooks)."""
        root, pcid, space, ok = self._event_context(d["cr3"], cr4)
        va = d.get("cr2")
        if not (ok and self.want["x"] and va is not None and va < self.hi and va + 1 > self.lo):
            return
        rip = d["rip"]
        self.raw.append((seq, rip, self.machine.symbolize(rip, self.process_of(space)), d["cpl"], root, pcid,
                         space, "x", va, 1, None, {"vector": VEC_PF, "error_code": d["error_code"]}))

    def frame_write(self, d: dict, rip: int | None, seq: int, cr0: int, cr4: int) -> None:
        """The frame pushed by exception delivery (a ``frame_write`` event):
        implicit supervisor writes (CPL 0), attributed to the interrupted
        instruction at ``rip`` with ``seq``."""
        root, pcid, space, ok = self._event_context(d["cr3"], cr4)
        if not (ok and self.want["w"]):
            return
        sym = self.machine.symbolize(rip, self.process_of(space)) if rip is not None else "?"
        ctl = self.control(cr0, cr4, False)
        va, size = d["va"], d["size"]
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            t = translate(self.mem, root, va, 1, 0, ctl)
            pa, fault = (None, {"vector": t.vector, "error_code": t.error_code}) if t.fault else (t.pa, None)
            if va < self.hi and va + n > self.lo:
                self.raw.append((seq, rip, sym, 0, root, pcid, space, "w", va, n, pa, fault))
            va, size = va + n, size - n
