"""CR3-write sites: NOFLUSH as hardware treats it, and the ``cr3_write`` event.

``mov cr3`` stores bit 63 in Unicorn; real CPUs never store NOFLUSH (Intel
SDM Vol. 3A 4.10.4.1).  Every site the stub declares ``.cr3_write
noflush`` gets the bit stripped after the write (docs/architecture.md, the
stub contract; with LA57, before it: the 5-level walk does not mask it).
"""

from __future__ import annotations

from unicorn import x86_const as X

from emu.hw.x86 import CR4_PCIDE


class Cr3Sites:
    """Mixed into :class:`emu.hw.microcode.System`."""

    def add_cr3_site(self, addr: int, reg: str, size: int, may_set_noflush: bool = True) -> None:
        """A 'mov cr3, reg' instruction (found by scanning the kernel's code).

        Where the value may carry NOFLUSH (bit 63), the instruction after it
        clears the bit from CR3: hardware never stores it, Unicorn does (fact
        5).  QEMU ends a translated block at every CR write, so that is a
        block-start hook, free elsewhere.  The write itself is observed (a
        ``cr3_write`` event) only while events are wanted.
        """
        self.cr3_sites[addr] = (getattr(X, f"UC_X86_REG_{reg.upper()}"), size, may_set_noflush)
        if may_set_noflush and self.config.la57:
            # the 5-level walk does not mask bit 63 (docs/architecture.md,
            # Unicorn fact 6): strip it from the register before the write,
            # give it back after
            self.add_code_hook(addr, self._noflush_before)
            self.add_block_start_hook(addr + size, self._noflush_after)
        elif may_set_noflush:
            self.add_block_start_hook(addr + size, self._strip_noflush)
        elif self.tlb is not None or self.cr3_observers:
            self.add_block_start_hook(addr + size, self._cr3_written)
        self._informational_cr3.append(addr)
        if self.want_events:
            self._hook_informational()

    @property
    def want_events(self) -> bool:
        return self._want_events

    @want_events.setter
    def want_events(self, value: bool) -> None:
        self._want_events = value
        if value:
            self._hook_informational()
        else:
            for addr in list(self._info_hooked):
                self.del_block_start_hook(self._info_hooked.pop(addr), self._on_cr3_write)

    def _hook_informational(self) -> None:
        for addr in self._informational_cr3:
            if addr not in self._info_hooked:
                # after the write, at the block the CR write ends (Unicorn fact 13):
                # a code hook at the 'mov cr3' would cost every instruction of a
                # counted run a check.  First: the event comes before the site's
                # own functions (the TLB model told, NOFLUSH stripped)
                after = addr + self.cr3_sites[addr][1]
                self._info_hooked[addr] = after
                self._cr3_site_ending_at[after] = addr
                self.add_block_start_hook(after, self._on_cr3_write, first=True)
        self.note_cr3()

    def note_cr3(self) -> None:
        """Take CR3 as it is now as the 'old' value of the next ``cr3_write``
        event (called before each start of the CPU: Python may have set it)."""
        if self._info_hooked:
            self._cr3_before = self._reg(X.UC_X86_REG_CR3).read()

    # -- CR3 writes ------------------------------------------------------------------------------
    def _on_cr3_write(self, after: int) -> None:
        """Just after a 'mov cr3' (only hooked while events are wanted): the
        event, with the value the instruction wrote (NOFLUSH included) and
        the CR3 it replaced.  No branch of the stub lands after a 'mov cr3'
        (tests/test_stub_contract.py), so every arrival here is a write."""
        addr = self._cr3_site_ending_at[after]
        reg_id, _, may_set_noflush = self.cr3_sites[addr]
        reg = self._reg(reg_id)
        pending = self._pending_restore
        # LA57: the register lost bit 63 before the write; the value is kept until it is given back
        val = pending[1] if pending is not None and pending[0] is reg else reg.read()
        old = self._cr3_before
        # as CR3 holds it once this block's functions have run (NOFLUSH stripped)
        self._cr3_before = val & ~(1 << 63) if may_set_noflush else val
        pcide = self._reg(X.UC_X86_REG_CR4).read() & CR4_PCIDE
        self.sink("cr3_write", rip=addr, old=old, new=val, noflush=bool(val >> 63),
                  pcid=(val & 0xFFF) if pcide else None)

    def _cr3_written(self, addr: int) -> None:
        """After a 'mov cr3' whose value never carries NOFLUSH."""
        self._tell_cr3(self._reg(X.UC_X86_REG_CR3).read())

    def _tell_cr3(self, value: int) -> None:
        if self.tlb is not None:
            self.tlb.cr3_written(value)
        for fn in self.cr3_observers:
            fn(value)

    def _noflush_before(self, addr: int) -> None:
        reg = self._reg(self.cr3_sites[addr][0])
        val = reg.read()
        self._tell_cr3(val)
        if val >> 63:
            reg.write(val & ~(1 << 63))
            self._pending_restore = (reg, val)

    def _noflush_after(self, addr: int) -> None:
        if self._pending_restore is not None:
            reg, val = self._pending_restore
            self._pending_restore = None
            reg.write(val)

    def _strip_noflush(self, addr: int) -> None:
        """After a 'mov cr3': CR3 as hardware holds it, without bit 63."""
        val = self._reg(X.UC_X86_REG_CR3).read()
        self._tell_cr3(val)
        if val >> 63:
            # the guest's write flushed Unicorn's TLB already (with or
            # without NOFLUSH): do not flush a second time
            self.write_cr3_keep_tlb(val & ~(1 << 63))
