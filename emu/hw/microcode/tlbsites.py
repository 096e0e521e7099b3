"""What feeds the TLB model (emu.hw.tlb): the instructions that invalidate,
the control-register rules the CPU enforces around them, and the lazy
mode's accesses through stale translations (docs/tlb.md).

* CR3 writes (cr3.py) hand the model the value as written, NOFLUSH included.
* ``mov cr4`` and ``mov cr0`` at declared sites: QEMU's TCG does not
  enforce the PCID rules (setting CR4.PCIDE with CR3[11:0] != 0, clearing
  CR0.PG with CR4.PCIDE = 1: #GP(0), Intel SDM Vol. 3A 4.10.1, 2.5): the
  write is checked after it ran (a translated block ends at every CR write),
  undone and turned into the #GP the instruction raises on hardware.
* INVLPG at declared sites: its operand is read once it ran.
* INVPCID is emulated (invalid.py), which tells the model.
* A #PF the tables give is checked against the model; in lazy mode an access
  a stale translation allows runs through it instead (emu/hw/tlb/serve.py).
"""

from __future__ import annotations

import re

from unicorn import x86_const as X

from emu.errors import GuestError
from emu.hw.cpu import C
from emu.hw.paging import error_code_words
from emu.hw.tlb.serve import scratch_tables
from emu.hw.x86 import CR0_PG, CR4_PCIDE, VEC_GP

_MEM = re.compile(r"\[(\w+)(?:\s*([+-])\s*(0x[0-9a-f]+|\d+))?\]")


def _reg_id(name: str) -> int:
    return getattr(X, f"UC_X86_REG_{name.upper()}")


class TlbSites:
    """Mixed into :class:`emu.hw.microcode.System`."""

    #: while tlb=lazy serves an access: (root of the private tables, the real
    #: CR3 they stand in for), so that observers (the tracer) name the real one
    serving: tuple[int, int] | None = None

    def attach_tlb(self, model, lazy: bool = False, scratch: list[int] | None = None) -> None:
        """Feed ``model`` from now on; ``lazy``: serve accesses the tables
        refuse through a stale translation it holds (``scratch``: one frame
        per paging level for the private tables)."""
        if lazy and (not scratch or len(scratch) < (5 if self.config.la57 else 4)):
            raise GuestError("the TLB model's lazy mode needs a scratch frame per paging level")
        self.tlb = model
        self.tlb_lazy = lazy
        self.serve_scratch = list(scratch or [])

    # -- CR0 / CR4 ----------------------------------------------------------------------------------
    def add_cr_site(self, addr: int, size: int, crn: int, operand: str = "") -> None:
        """A declared 'mov crN, reg' (N = 0 or 4).

        The #GP rules of MOV to CR4 are checked after the write (Unicorn
        carries on, and the write is undone); clearing CR0.PG has to be
        refused before it, since Unicorn would fetch the next instruction
        without paging: a code hook, which costs nothing where the stub
        never writes CR0 (SDM Vol. 2A, MOV—Move to/from Control Registers)."""
        reg = _reg_id(f"cr{crn}")
        self._cr_shadow.setdefault(crn, self._reg(reg).read())
        if crn == 0:
            if not operand:
                raise GuestError(f"mov cr0 at {addr:#x}: the register written is needed")
            src = _reg_id(operand)
            self.add_code_hook(addr, lambda a, site=addr: self._before_cr0_write(site, src))
        self.add_block_start_hook(addr + size, lambda a, site=addr, n=crn: self._after_cr_write(site, n))

    def _before_cr0_write(self, site: int, src: int) -> None:
        new = self._reg(src).read()
        old = self._reg(X.UC_X86_REG_CR0).read()
        if old & CR0_PG and not new & CR0_PG and self._reg(X.UC_X86_REG_CR4).read() & CR4_PCIDE:
            self.later(lambda: self._cr_gp(site, 0, old))

    def _after_cr_write(self, site: int, crn: int) -> None:
        new = self._reg(_reg_id(f"cr{crn}")).read()
        old = self._cr_shadow.get(crn, new)
        if crn == 4 and new & CR4_PCIDE and not old & CR4_PCIDE and self._reg(X.UC_X86_REG_CR3).read() & 0xFFF:
            self.later(lambda: self._cr_gp(site, crn, old))
            return
        self._cr_shadow[crn] = new
        if self.tlb is not None:
            (self.tlb.cr4_written if crn == 4 else self.tlb.cr0_written)(old, new)
            for fn in self.invalidation_observers:
                fn(f"cr{crn}")

    def _cr_gp(self, site: int, crn: int, old: int) -> int:
        """Undo the write and raise the #GP(0) the instruction raises."""
        self.set_reg(f"cr{crn}", old)
        self.regs.read()
        self.regs["rip"] = site
        self.deliver(VEC_GP, 0, reported=True)
        return 0

    # -- INVLPG ---------------------------------------------------------------------------------------
    def add_invlpg_site(self, addr: int, size: int, operand: str) -> None:
        """A declared 'invlpg [reg]' / 'invlpg [reg +- disp]'."""
        m = _MEM.search(operand)
        if m is None:
            raise GuestError(f"invlpg at {addr:#x}: cannot read the operand {operand!r} (use [reg] or [reg + disp])")
        reg = _reg_id(m.group(1))
        disp = int(m.group(3), 0) if m.group(3) else 0
        if m.group(2) == "-":
            disp = -disp
        self.add_block_start_hook(addr + size, lambda a: self._after_invlpg(reg, disp))

    def _after_invlpg(self, reg: int, disp: int) -> None:
        if self.tlb is not None:
            self.tlb.invlpg((self._reg(reg).read() + disp) & 0xFFFFFFFFFFFFFFFF)
            for fn in self.invalidation_observers:
                fn("invlpg")

    def _after_invpcid(self, kind: int, pcid: int, addr: int) -> None:
        if self.tlb is not None:
            self.tlb.invpcid(kind, pcid, addr)
            for fn in self.invalidation_observers:
                fn("invpcid")

    # -- page faults against the model ---------------------------------------------------------------
    def _stale_fault(self, cr2: int, ec: int, ctl=None) -> bool:
        """A #PF the tables gave: a stale translation that would have
        allowed the access is a finding; in lazy mode the access goes
        through it.  True if the fault is not delivered (lazy mode)."""
        access = 2 if ec & 16 else (1 if ec & 2 else 0)
        cpl = 3 if ec & 4 else 0
        rec = self.tlb.stale_for(cr2, access, cpl, self.ctl() if ctl is None else ctl)
        if rec is None:
            return False
        served = self.serves(cpl)
        self.tlb.note_stale_access(rec, cr2, f"#PF {ec:#x} ({error_code_words(ec)})", served)
        if not served:
            return False
        state = bytes(self.regs.buf)
        self.later(lambda: self._serve(rec, cr2, cpl, state))
        return True

    def serves(self, cpl: int) -> bool:
        """Does tlb=lazy serve an access at this CPL through a stale
        translation?  At CPL 3 only once a clean user context was saved (at
        the first SYSCALL)."""
        return self.tlb_lazy and (cpl == 0 or self._user_snapshot is not None)

    def _serve(self, rec, va: int, cpl: int, state: bytes) -> int:
        """Run the faulting instruction once through private tables that map
        ``va`` as the stale translation does, then go back to the real ones."""
        regs = self.regs
        regs.buf[:] = state
        cr3 = regs["cr3"] & ~(1 << 63)
        mode = self.tlb.mode
        copy = scratch_tables(self.mem, mode, cr3, va, rec, self.serve_scratch)
        snap = self._snapshot_ctx if cpl == 0 else self._user_snapshot_ctx
        self._cr3_slot_of(snap).value = copy | (cr3 & 0xFFF)
        C.context_restore(self.hv, snap)
        regs.write_except_cr3()
        self.flush_tlb()
        self.serving = (copy, cr3)          # for observers: these tables stand in for cr3's
        try:
            err = self.emu_start(regs["rip"], 1)
        finally:
            self.serving = None
        self.set_reg("cr3", cr3)            # the real tables again (the write flushes the TLB)
        if err:
            raise GuestError(f"CPU stopped in a lazy-mode access at {va:#x}: error {err}")
        return 1
