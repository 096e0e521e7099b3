"""The machine's side of the TLB model (docs/tlb.md).

The model (emu.hw.tlb) knows the architecture; this module knows the stub:
where it writes paging-structure entries (``set_entry``, the declared
``pgtable_write`` hook), where it returns to user mode, which frames are page
tables, and the direct map.  It turns the model's findings into ``stale``
events, and adds what only Linux's rules can say:

* an audit: a shadow copy of every page-table frame, compared with memory at
  every INVLPG, INVPCID, CR4 write and frame free (and at the end of a run):
  an entry that changed without going through ``set_entry`` is reported as an
  ``unobserved-write`` and handed to the model;
* ``freed-out-of-direct-map``: a frame going back to the allocator while its
  direct-map entry is not present (Linux's buddy pages are always in the
  direct map; the order 6f86d0534fdd restored in mm/secretmem.c).
"""

from __future__ import annotations

import struct
from dataclasses import asdict, dataclass, field

from emu.asm import Image
from emu.errors import GuestError
from emu.hw.cpu import REG_IDS, RegBatch
from emu.hw.paging import ADDR_MASK, PAGE_SIZE, ControlState, P, A, D, WalkCache, mode_for, translate
from emu.hw.phys import FrameKind
from emu.hw.tlb import FINDINGS, Finding, Tlb

#: findings beyond the model's own
LINUX_FINDINGS = ("unobserved-write", "freed-out-of-direct-map")
ALL_FINDINGS = FINDINGS + LINUX_FINDINGS
#: the TLB counters of Machine.stats() (prefixed tlb_), in order
STAT_KEYS = ("flush_cr3", "cr3_noflush", "flush_invlpg", "flush_invpcid0", "flush_invpcid1", "flush_invpcid2",
             "flush_invpcid3", "flush_cr4", "flush_cr0", "entries_dropped", "stale_records",
             *(f"finding_{k}" for k in ALL_FINDINGS))
_AD = A | D
_QS = struct.Struct("<512Q")


@dataclass(frozen=True)
class TlbFinding:
    """One finding as users see it: in ``Machine.findings``, as the data of a
    ``stale`` event, in reports.  ``pcid`` is None for a global translation
    and for the Linux-side findings, which have no ``cached`` entry."""

    finding: str                     # one of ALL_FINDINGS
    rip: int
    symbol: str                      # where the CPU was when it was found
    cr3: int
    space: str                       # the address space of that CR3
    pid: int | None                  # the process current then
    pcid: int | None
    address: int
    cached: str = ""                 # what the TLB may still hold
    now: str = ""                    # what the tables say now (or the Linux rule broken)
    write: str = ""                  # the entry write that made the cached entry stale
    invalidations: list = field(default_factory=list)   # invalidations since that write
    served: bool = False             # tlb=lazy: the access went through the stale translation
    cpu: int = 0                     # the logical CPU whose TLB holds it (one CPU today: docs/tlb.md, "Limits")

    @property
    def kind(self) -> str:
        return self.finding

    def as_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        """One line: the kind, the PCID, the address, where, what the TLB may
        hold, what the tables say, the write that made it stale, the
        invalidations since."""
        pcid = ("global" if self.cached else "-") if self.pcid is None else f"pcid {self.pcid:#05x}"
        head = f"{self.finding} {pcid} va {self.address:#x} at {self.symbol} in {self.space}"
        if not self.cached:
            return f"{head}: {self.now}"
        shown = self.invalidations[-6:]
        more = len(self.invalidations) - len(shown)
        since = (f"{more} more, then " if more else "") + (", ".join(shown) or "none")
        served = " (served: the access went through it)" if self.served else ""
        return (f"{head}: cached {self.cached}{served}; tables: {self.now or 'refuse it'}; made stale by "
                f"{self.write}; invalidations since: {since}")


def _frames_of(kinds: bytearray, kind: int):
    """The frame numbers of one kind (bytes.find: not a Python loop over RAM)."""
    pfn = kinds.find(kind)
    while pfn >= 0:
        yield pfn
        pfn = kinds.find(kind, pfn + 1)


class TlbCheck:
    """Attach a TLB model to a booted machine (``tlb=check`` or ``lazy``)."""

    def __init__(self, machine):
        self.m = m = machine
        cfg = m.config
        cpu = m.cpu
        self.mode = mode_for(cfg.levels)
        self.model = Tlb(m.mem, self.mode, self._report)
        scratch = [m.mem.frames.alloc(FrameKind.RESERVED, 0, "tlb-model") for _ in range(self.mode.depth)] \
            if cfg.tlb == "lazy" else []
        cpu.attach_tlb(self.model, lazy=cfg.tlb == "lazy", scratch=scratch)
        self.model.start(cpu.reg("cr3"), cpu.reg("cr4"))
        for root in m.spaces().values():
            self.model.add_root(root)
        self.findings: list[TlbFinding] = []
        self.extra: dict[str, int] = {}
        self._returning = False
        frames = m.mem.frames
        self.shadow: dict[int, bytes] = {pfn << 12: m.mem.read(pfn << 12, PAGE_SIZE)
                                         for pfn in _frames_of(frames.kind, FrameKind.PGTABLE)}
        img = m.kernel.image
        for site in img.sites_of("invlpg"):
            cpu.add_invlpg_site(site.addr, site.size, site.operand)
        # set_entry's arguments and return address in one C call, and the walks
        # to the kernel stack reused while their entries are unchanged (exact:
        # WalkCache re-reads them)
        self._args = RegBatch(cpu, [REG_IDS[r] for r in ("rdi", "rsi", "rsp", "cr3")])
        self._walks = WalkCache(m.mem)
        self._ctl = ControlState(la57=cfg.la57, smap=False)
        m.hook_site("pgtable_write", self._on_entry_write)
        if cfg.pti and self.user_return_at_cr3:
            # the switch to the user CR3 is the return (returns_to_user)
            if not m.user_return_cr3_sites:
                raise GuestError("PTI: no CR3 write of the stub returns to user mode (returns_to_user)")
            cpu.user_return_observers.append(self.model.user_return)
        else:
            # without PTI the hook is the return (the model's own function: one call)
            on_return = self._on_return_to_user if cfg.pti else self.model.user_return
            m.hook_site("return_to_user_sysret", on_return)
            m.hook_site("return_to_user_iret", on_return)
            if cfg.pti:
                cpu.cr3_observers.append(self._on_cr3)
                self._watch_return(True)        # the reference way sees every return
            else:
                # user_return finds nothing to look at without records: the
                # stub's SYSRET path reaches its hook only while there are some
                # (tlb_watch_return, kernel_stub/entry_64.S)
                self.model.on_records = self._watch_return
                self._watch_return(bool(self.model.records))
        cpu.invalidation_observers.append(self.audit)

    # -- entry writes ----------------------------------------------------------------------------
    def _on_entry_write(self, addr: int) -> None:
        """At set_entry(entryp, value): the entry still holds its old value."""
        m, cpu = self.m, self.m.cpu
        kva, new, rsp, cr3 = self._args.read()
        epa = self._kva_to_pa(kva, cr3)
        mem = m.mem
        old = mem.read_u64(epa)
        caller = mem.read_u64(self._kva_to_pa(rsp, cr3))
        self.model.entry_written(epa, old, new, caller)
        table = epa & ~0xFFF
        sh = self.shadow.get(table)
        if sh is not None:
            off = epa - table
            self.shadow[table] = sh[:off] + new.to_bytes(8, "little") + sh[off + 8:]
        if new & P and (new & ADDR_MASK) in self.shadow:
            # a table filled before it was linked: what it holds now is its start
            child = new & ADDR_MASK
            self.shadow[child] = mem.read(child, PAGE_SIZE)
        # the CPU runs on the tables as they are: Unicorn's own TLB must not keep the old entry
        cpu.flush_tlb()

    def _kva_to_pa(self, kva: int, cr3: int) -> int:
        """The physical address of a kernel address, as Machine.pa_of finds it
        in the current space (``cr3``)."""
        lay = self.m.layout
        if lay.page_offset <= kva < lay.page_offset + self.m.mem.size:
            return kva - lay.page_offset
        t = self._walks.translate(cr3, kva, 0, 0, self._ctl)
        if t.fault:
            raise GuestError(f"{kva:#x} is not mapped in the current space: {t.describe()}")
        return t.pa

    # -- frames ---------------------------------------------------------------------------------------
    def frame_allocated(self, pa: int, kind: FrameKind, size: int) -> None:
        if kind == FrameKind.PGTABLE:
            self.shadow[pa] = bytes(PAGE_SIZE)

    def frame_freed(self, pa: int, kind: FrameKind, size: int) -> None:
        """A frame about to go back to the allocator (still holding what it held)."""
        is_table = kind == FrameKind.PGTABLE
        if is_table:
            self.shadow.pop(pa, None)
        self.audit("free")
        self.model.frame_freed(pa, size, is_table)
        self._check_direct_map(pa, size)

    def _check_direct_map(self, pa: int, size: int) -> None:
        """Linux's allocator hands out pages through the direct map: a page
        must be back in it before it is freed."""
        k = self.m.kernel
        ctl = ControlState(la57=self.m.config.la57, smap=False)
        for page in range(pa, pa + size, PAGE_SIZE):
            t = translate(self.m.mem, k.init_pgd.root, self.m.layout.page_offset + page, 0, 0, ctl)
            if t.fault:
                self._linux_finding("freed-out-of-direct-map", self.m.layout.page_offset + page,
                                    f"frame {page:#x} freed while its direct-map entry is not present "
                                    f"({t.describe()})")
                return

    # -- returns to user mode --------------------------------------------------------------------------
    #: with PTI, the model learns of a return to user mode at the CR3 write
    #: that enters the user PGD (one call, after the model was told the
    #: write); False: from the return_to_user hooks and the next CR3 write
    #: with the user PGD's bit, as before (the equivalence test's reference,
    #: tests/test_noflush_defer.py)
    user_return_at_cr3 = True

    def _watch_return(self, on: bool) -> None:
        """Whether the stub's SYSRET path reaches its return_to_user_sysret hook."""
        self.m.kernel.write_percpu("tlb_watch_return", int(on))

    def _on_return_to_user(self, addr: int) -> None:
        """PTI, the reference way (``user_return_at_cr3`` False)."""
        self._returning = True          # the user PCID is entered by the CR3 write to come

    def _on_cr3(self, value: int) -> None:
        if self._returning and value & PAGE_SIZE:          # PTI's user PGD: CR3 bit 12
            self._returning = False
            self.model.user_return()

    # -- the audit ------------------------------------------------------------------------------------
    def audit(self, why: str = "") -> None:
        """Every page-table frame against its shadow (the accessed and dirty
        bits the CPU sets excepted)."""
        buf = self.m.mem.buf
        for table, sh in list(self.shadow.items()):
            now = buf[table:table + PAGE_SIZE]
            if now == sh:
                continue
            new_e = _QS.unpack(now)
            old_e = _QS.unpack(sh)
            for i in range(512):
                o, n = old_e[i], new_e[i]
                if o != n and (o ^ n) & ~_AD:
                    self.model.entry_written(table + 8 * i, o, n, 0, observed=False)
                    self._linux_finding("unobserved-write", 0,
                                        f"entry at {table + 8 * i:#x} changed {o:#018x} -> {n:#018x} "
                                        f"without set_entry (found at {why or 'the end of the run'})")
            self.shadow[table] = bytes(now)

    # -- findings -----------------------------------------------------------------------------------------
    def _report(self, f: Finding) -> None:
        self._add(f.kind, None if f.pcid < 0 else f.pcid, f.va, cached=f.cached.describe(), now=f.now,
                  write=f.cached.write.describe(self.m.symbolize), invalidations=list(f.invalidations),
                  served=f.served)

    def _linux_finding(self, kind: str, va: int, text: str) -> None:
        self.extra[kind] = self.extra.get(kind, 0) + 1
        self._add(kind, None, va, now=text)

    def _add(self, kind: str, pcid: int | None, va: int, **more) -> None:
        m = self.m
        rip = m.cpu.reg("rip")
        cr3 = m.cpu.reg("cr3")
        p = m.current_process()
        f = TlbFinding(kind, rip, m.symbolize(rip), cr3, m.space_of(cr3), p.pid if p else None, pcid, va, **more)
        self.findings.append(f)
        m.emit("stale", **f.as_dict())

    def stats(self) -> dict[str, int]:
        """Flushes by kind, entries dropped, stale records made, findings by
        kind: every key always present."""
        s = {k: 0 for k in STAT_KEYS}
        s.update(self.model.stats)
        for k, v in self.extra.items():
            s[f"finding_{k}"] = s.get(f"finding_{k}", 0) + v
        return s


#: what may run between a CR3 write and the return to user mode for the
#: write to count as one that returns (no branch, no CR3 read, no port I/O)
_TO_USER_STRAIGHT = {"nop", "pop", "push", "mov", "swapgs"}
_TO_USER_RETURNS = {"sysretq", "sysret", "iretq"}


def returns_to_user(img: Image) -> frozenset[int]:
    """The CR3 writes (their addresses) after which straight-line code
    reaches SYSRET or IRET, moving nothing from a control register: PTI's
    switch to the user CR3 (``SWITCH_TO_USER_CR3_STACK``).  The CPU may keep
    NOFLUSH in Unicorn's CR3 until the next kernel entry after those
    (emu/hw/microcode/cr3.py)."""
    at = {ins.addr: ins for ins in img.insns}
    out = set()
    for s in img.sites_of("cr3_write"):
        a = s.addr + s.size
        while (ins := at.get(a)) is not None:
            if ins.mnemonic in _TO_USER_RETURNS:
                out.add(s.addr)
                break
            if ins.mnemonic not in _TO_USER_STRAIGHT or "cr" in ins.op_str:
                break
            a += ins.size
    return frozenset(out)
