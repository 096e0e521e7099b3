"""Exception and interrupt delivery through the guest IDT (Intel SDM Vol. 3A
6.12-6.15, 64-bit mode): gate checks in the SDM's order, TSS and IST stack
switching, the frame written through the *current* CR3 with the reference
walker (a stack missing from the current tables is a fault during delivery:
#DF, and a #DF that cannot be delivered a triple fault, Table 6-5).  The
#PF error code is the CPU's own (QEMU's ``env->error_code``, see
:func:`emu.hw.cpu.error_code_offset`), cross-checked against the walker.
"""

from __future__ import annotations

from emu.errors import GuestError
from emu.hw.x86 import RF_IF as RFLAGS_IF
from emu.hw.microcode.plan import FaultEntry
from emu.hw.microcode.regs import FRAME5, FRAME6, QQ, V_CR2, V_CR3, V_CS, V_RFLAGS, V_RIP, V_RSP, V_SS, Q
from emu.hw.paging import PF_I, PF_U, PF_W, READ, VEC_GP, VEC_PF, ControlState, Fault, read_virt, write_virt
from emu.hw.x86 import CONTRIBUTORY, ERROR_CODE_VECTORS, vector_name

RF_TF, RF_IF, RF_NT, RF_RF, RF_VM = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17


class TripleFault(GuestError):
    """The CPU could not deliver a #DF: the machine would reset."""


class Delivery:
    """Mixed into :class:`emu.hw.microcode.System`."""

    # -- exceptions and interrupts -----------------------------------------------------------
    def _intr_hook(self):
        """The interrupt hook: Unicorn's callback calls this closure, which
        calls the planned entry (``_fast_fault.run``, plan.py) when there is
        one; else the general path.  The guard is part of it, as in
        ``_syscall_hook``."""
        me = self
        failed = self._hook_failed

        def hook(uch, intno, ud):
            try:
                if me._cr3_deferred:
                    me.settle_cr3()         # a deferred NOFLUSH strip (cr3.py): before anything reads
                fast = me._fast_fault
                if fast is not None:
                    if me._entry_check:
                        return me.entry.compare_fast("delivery", lambda: fast.run(intno),
                                                     lambda: me._intr_general(intno),
                                                     48 if intno in ERROR_CODE_VECTORS else 40)
                    if fast.run(intno):
                        return
                me._intr_general(intno)
            except BaseException as e:   # noqa: BLE001 - re-raised by run()
                failed(e)
        return hook

    def _intr_general(self, intno: int) -> None:
        try:
            self._intr_entry(intno)
        finally:
            self.entry.saved = False    # the context saved by this hook never serves another

    def _intr_entry(self, intno: int) -> None:
        r = self.regs
        self._read_for_entry("delivery")
        rip = r["rip"]
        cpl = r["cs"] & 3
        cpu_ec, is_int = self.last_exception(saved=self.entry.saved)
        # INT n / INT3 / INTO: QEMU's exception_is_int says so; the
        # instruction bytes give the length (and decide when uncalibrated)
        soft_len = 0 if is_int is False else self._software_len(intno, rip, cpl)
        software = soft_len > 0
        ec = None
        cr2 = None
        if not software and intno in ERROR_CODE_VECTORS:
            ec = cpu_ec
            if intno == VEC_PF:
                cr2 = r["cr2"]
                self.cross_check(r["cr3"], cr2, ec, self.ctl())
                if self.tlb is not None and self._stale_fault(cr2, ec):
                    return                      # lazy mode: the access goes through the stale translation
        self.deliver(intno, ec, cr2=cr2, software=software, reported=True, soft_len=soft_len)

    def _software_len(self, vector: int, rip: int, cpl: int) -> int:
        """INT n / INT3 / INTO / INT1 reach the hook with RIP after the
        instruction: its length, or 0 for an exception (bytes fetched at the
        CPL that fetched the instruction)."""
        pa1 = self._pa(rip - 1, 2, cpl)
        if pa1 is not None:
            b = self.mem.read(pa1, 1)[0]
            if (vector == 3 and b == 0xCC) or (vector == 4 and b == 0xCE) or (vector == 1 and b == 0xF1):
                return 1
        pa2 = self._pa(rip - 2, 2, cpl)
        if pa2 is not None and self.mem.read(pa2, 2) == bytes([0xCD, vector & 0xFF]):
            return 2
        return 0

    def cross_check(self, cr3: int, cr2: int, ec: int, ctl: ControlState) -> None:
        """The walker must fault the same way as the CPU did (its walks are
        cached while the entries they read are unchanged: WalkCache)."""
        if not self.walker_cross_check:
            return
        access = 2 if ec & PF_I else (1 if ec & PF_W else 0)
        cpl = 3 if ec & PF_U else 0
        if ctl.pke:
            return              # PKRU is not readable here; trust the CPU
        w = self.walks.translate(cr3, cr2, access, cpl, ctl)
        if not w.fault or w.error_code != ec:
            self.mmu_disagreements += 1
            self.sink("mmu_disagreement", va=cr2, cpu_error_code=ec,
                      walker=(w.describe() if w.fault else f"translates to {w.pa:#x}"))

    def deliver(self, vector: int, error_code: int | None = None, *, cr2: int | None = None,
                software: bool = False, reported: bool = False, external: bool = False,
                chain: tuple = (), soft_len: int = 0) -> None:
        """Deliver through the guest IDT (SDM 6.12-6.14, 64-bit mode)."""
        r = self.regs
        if not reported:
            r.read()
        mv = r.mv
        cs, rip, rflags, cr3 = mv[V_CS], mv[V_RIP], mv[V_RFLAGS], mv[V_CR3]
        cpl = cs & 3
        chain = chain + ((vector, error_code, cr2, rip, cpl, cr3),)
        if cpl == 3 and not external:
            # what the CPU reported, which signal frames may not (Linux
            # sanitizes the error code): (vector, error code, CR2, RIP, CR3)
            self.last_user_exception = (vector, error_code, cr2, rip, cr3)
        if self._want_events:
            if not external and not software:
                self.sink("exception", vector=vector, error_code=error_code, cr2=cr2, rip=rip, cpl=cpl,
                          cr3=cr3, nested=len(chain) > 1)
            elif external:
                self.sink("interrupt", vector=vector, rip=rip, cpl=cpl, cr3=cr3)
            else:
                self.sink("exception", vector=vector, error_code=None, cr2=None, rip=rip, cpl=cpl,
                          cr3=cr3, software=True, nested=False)
        ctl = self.ctl(0)           # implicit supervisor accesses: SMAP applies regardless of AC
        # the class of this event for a fault during its delivery (Table
        # 6-5): INT n and external interrupts are benign whatever the vector
        first = -1 if software or external else vector
        if software:
            # a fault while delivering INT n is a fault of the INT instruction
            mv[V_RIP] = rip - soft_len
        idt_base, idt_limit = self.idtr
        # error code naming the IDT entry: index, IDT flag (bit 1), EXT (bit 0)
        idt_ec = (vector << 3) | 2 | (0 if software else 1)
        if 16 * vector + 15 > idt_limit:
            return self._nested(first, chain, Fault(0, VEC_GP, idt_ec))
        gate = self._read_virt(cr3, idt_base + 16 * vector, 16, ctl)
        if isinstance(gate, Fault):
            return self._nested(first, chain, gate)
        lo, hi = QQ.unpack(gate)
        present = lo >> 47 & 1
        gtype = lo >> 40 & 0xF
        dpl = lo >> 45 & 3
        # SDM order (INT n pseudocode): gate type, then DPL for software
        # interrupts, then present
        if gtype not in (0xE, 0xF) or (software and dpl < cpl):
            return self._nested(first, chain, Fault(0, VEC_GP, idt_ec))
        if not present:
            return self._nested(first, chain, Fault(0, 11, idt_ec))
        handler = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | (hi & 0xFFFFFFFF) << 32
        selector = lo >> 16 & 0xFFFF
        ist = lo >> 32 & 7
        new_cpl = selector & 3
        rsp = mv[V_RSP]
        if ist:
            stack = self._read_virt(cr3, self.tss_base + 36 + 8 * (ist - 1), 8, ctl)
        elif new_cpl < cpl:
            stack = self._read_virt(cr3, self.tss_base + 4 + 8 * new_cpl, 8, ctl)
        else:
            stack = Q.pack(rsp)
        if isinstance(stack, Fault):
            return self._nested(first, chain, stack)
        new_rsp = Q.unpack(stack)[0] & ~0xF
        if error_code is None:     # a trap (INT n) pushes the next RIP
            frame = FRAME5.pack(rip, cs, rflags, rsp, mv[V_SS])
        else:
            frame = FRAME6.pack(error_code, rip, cs, rflags, rsp, mv[V_SS])
        new_rsp = (new_rsp - len(frame)) & 0xFFFFFFFFFFFFFFFF
        err = self._write_virt(cr3, new_rsp, frame, ctl)
        if err is not None:
            return self._nested(first, chain, err)
        if self._want_events:
            # the implicit stack writes of delivery, for tracers
            self.sink("frame_write", va=new_rsp, size=len(frame), cr3=cr3,
                      pa=self.walks.translate(cr3, new_rsp, 1, 0, ctl).pa, vector=vector)
        if cr2 is not None:
            mv[V_CR2] = cr2
        new_flags = rflags & ~(RF_TF | RF_NT | RF_RF | RF_VM)
        if gtype == 0xE:
            new_flags &= ~RF_IF
        mv[V_RFLAGS] = new_flags
        mv[V_RIP] = handler
        mv[V_RSP] = new_rsp
        mv[V_CS] = selector
        if new_cpl != cpl:
            mv[V_SS] = new_cpl        # a NULL selector with RPL = new CPL
        self._enter_cpl0("delivery", cr2=cr2 is not None)
        e = self.entry
        if self._fast_fault is None and e.variant in ("inplace", "check") and e.L is not None \
                and "delivery" not in e.unverified:
            self._fast_fault = FaultEntry(self)

    def _nested(self, first: int, chain: tuple, f: Fault) -> None:
        """A fault while delivering ``first`` (SDM Table 6-5; -1 for a
        software or external interrupt, which is benign)."""
        second = f.vector
        names = " -> ".join(f"{vector_name(v)}" + (f"({ec:#x})" if ec is not None else "")
                            for v, ec, *_ in chain)
        if first == 8:
            self.sink("triple_fault", chain=chain + ((second, f.error_code, f.va, None, None, None),))
            last = chain[-1]
            raise TripleFault(f"triple fault: {names} -> {vector_name(second)}({f.error_code:#x}) while "
                              f"delivering #DF (RIP {last[3]:#x}, CPL {last[4]}, CR3 {last[5]:#x})")
        df = (first in CONTRIBUTORY and second in CONTRIBUTORY) or \
             (first == VEC_PF and (second == VEC_PF or second in CONTRIBUTORY))
        cr2 = f.va if second == VEC_PF else None
        if df:
            self.regs.read()
            self.deliver(8, 0, reported=True, chain=chain + ((second, f.error_code, cr2, None, None, None),))
        else:
            self.deliver(second, f.error_code, cr2=cr2, reported=True, chain=chain)

    def _read_virt(self, cr3: int, va: int, n: int, ctl: ControlState) -> bytes | Fault:
        return read_virt(self.mem, cr3, va, n, READ, 0, ctl, self.walks)

    def _write_virt(self, cr3: int, va: int, data: bytes, ctl: ControlState) -> Fault | None:
        return write_virt(self.mem, cr3, va, data, 0, ctl, self.walks)

    # -- external interrupts ------------------------------------------------------------------
    def inject_interrupt(self, vector: int) -> bool:
        """Deliver an external interrupt now if RFLAGS.IF allows, else keep it
        pending until the next run starts with IF set.  Returns True if
        delivered."""
        self.regs.read()
        if self.regs["rflags"] & RFLAGS_IF:
            self.deliver(vector, external=True, reported=True)
            return True
        self.pending_irqs.append(vector)
        return False

    def _deliver_pending_irq(self) -> None:
        if self.pending_irqs:
            self.regs.read()
            if self.regs["rflags"] & RFLAGS_IF:
                self.deliver(self.pending_irqs.pop(0), external=True, reported=True)
