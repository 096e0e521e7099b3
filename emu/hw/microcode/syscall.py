"""SYSCALL (Intel SDM Vol. 2B, SYSCALL) and the way into CPL 0.

Unicorn's ``syscall`` only reaches an instruction hook and never enters
ring 0; after one handled fault the next becomes #DF (QEMU's pending
exception is never cleared).  Both are cured by restoring a CPU snapshot
taken at CPL 0 during boot, then writing back the architectural state
(docs/unicorn-notes.md).
"""

from __future__ import annotations

import ctypes

from unicorn import x86_const as X

from emu.errors import GuestError
from emu.hw.cpu import context_offset, error_code_offset
from emu.hw.microcode.regs import V_CS, V_R11, V_RCX, V_RFLAGS, V_RIP, V_SS
from emu.hw.microcode.transition import KernelEntry
from emu.hw.x86 import MSR_FMASK, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_STAR
from emu.hw.paging import ControlState


class SyscallStep:
    """Mixed into :class:`emu.hw.microcode.System`."""

    # -- boot -------------------------------------------------------------------
    def boot_state(self, *, cr3: int, ctl: ControlState, pcide: bool, gdtr: tuple[int, int],
                   idtr: tuple[int, int], tr: tuple[int, int, int], star: int, lstar: int, fmask: int,
                   gs_base: int, kernel_gs_base: int, rip: int, rsp: int) -> None:
        uc = self.uc
        self.enable_paging(cr3, ctl, pcide=pcide)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, gdtr[0], gdtr[1], 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, idtr[0], idtr[1], 0))
        uc.reg_write(X.UC_X86_REG_TR, (tr[2], tr[0], tr[1], 0x8B00))
        self.set_msr(MSR_STAR, star)
        self.set_msr(MSR_LSTAR, lstar)
        self.set_msr(MSR_FMASK, fmask)
        self.set_msr(MSR_KERNEL_GS_BASE, kernel_gs_base)
        self.set_reg("gs_base", gs_base)
        self.set_reg("rflags", 0x2)
        self.set_reg("rsp", rsp)
        self.set_reg("cs", 0x10)
        self.set_reg("ss", 0x18)
        self.idtr = idtr
        self.tss_base = tr[0]
        self._nxe = ctl.nxe           # EFER is constant after boot: read it once
        self.lstar, self.fmask, self.star = lstar, fmask, star
        self.save_snapshot()
        if error_code_offset() is None:
            raise GuestError("cannot find the CPU's error code in a saved Unicorn context "
                             "(unexpected Unicorn build)")
        off = context_offset(X.UC_X86_REG_CR3)
        self._cr3_slot = None if off is None else \
            ctypes.c_uint64.from_address(self._snapshot_ctx.value + off)
        self.snapshot_regs = {"cr0": self.reg("cr0"), "cr4": self.reg("cr4"),
                              "kernel_gs_base": self.msr(MSR_KERNEL_GS_BASE)}
        self.entry = KernelEntry(self, self.transition_variant)
        self._entry_check = self.entry.requested == "check"     # the hooks compare every fast entry
        self._fast_syscall = None       # made after the first SYSCALL verified the in-place entry
        self._fast_fault = None         # plan.py, after the first delivery verified it
        self.set_reg("rip", rip)

    def _cr3_slot_of(self, ctx) -> ctypes.c_uint64:
        """CR3 inside a saved context (``ctx`` its address as a c_void_p)."""
        return ctypes.c_uint64.from_address(ctx.value + context_offset(X.UC_X86_REG_CR3))

    # -- SYSCALL (SDM: SYSCALL—Fast System Call) ------------------------------------------------
    def _syscall_hook(self):
        """The SYSCALL hook: Unicorn's callback calls this closure, which
        calls the fast entry (``_fast_syscall``, transition.py) when there
        is one and nothing needs the general path; the guard is part of it
        (one Python frame fewer at every SYSCALL).  Python exceptions cannot
        cross a ctypes callback: the first one is kept and the CPU stopped
        (``_hook_failed``)."""
        me = self
        failed = self._hook_failed

        def hook(uch, ud):
            try:
                fast = me._fast_syscall
                if fast is not None and not me._want_events and not me.tlb_lazy:
                    if me._entry_check:
                        me.settle_cr3()
                        return me.entry.compare_fast("syscall", fast, me._syscall_general, 0)
                    if fast():
                        # the state it left has CR3 without NOFLUSH (a deferred
                        # strip, cr3.py, done for free)
                        me._cr3_deferred = False
                        return
                if me._cr3_deferred:
                    me.settle_cr3()
                me._syscall_general()
            except BaseException as e:   # noqa: BLE001 - re-raised by run()
                failed(e)
        return hook

    def _syscall_general(self) -> None:
        try:
            self._syscall_entry()
        finally:
            self.entry.saved = False    # the context saved by this hook never serves another

    def _syscall_entry(self) -> None:
        if self.tlb_lazy and self._user_snapshot is None:
            # a clean CPL-3 context, for the lazy mode's user accesses (tlbsites.py)
            self._user_snapshot = self.uc.context_save()
            self._user_snapshot_ctx = ctypes.c_void_p(ctypes.cast(self._user_snapshot.context,
                                                                  ctypes.c_void_p).value)
        r = self.regs
        mv = r.mv
        self._read_for_entry("syscall")
        rip, flags = mv[V_RIP], mv[V_RFLAGS]
        if self._want_events:
            self.sink("syscall", nr=r["rax"], rip=rip, cr3=r["cr3"], cpl=r["cs"] & 3,
                      args=(r["rdi"], r["rsi"], r["rdx"], r["r10"], r["r8"], r["r9"]))
        mv[V_RCX] = (rip + 2) & 0xFFFFFFFFFFFFFFFF
        mv[V_R11] = flags
        mv[V_RFLAGS] = (flags & ~self.fmask) | 2
        mv[V_CS] = (self.star >> 32) & 0xFFFC
        mv[V_SS] = ((self.star >> 32) & 0xFFFC) + 8
        mv[V_RIP] = self.lstar - 2          # Unicorn adds 2 after the hook (Unicorn fact 4)
        self._enter_cpl0("syscall", rcx_r11=True)
        e = self.entry
        if self._fast_syscall is None and e.variant in ("inplace", "check") and e.L is not None \
                and "syscall" not in e.unverified:
            self._fast_syscall = e.make_syscall(self.lstar, self.fmask, self.star)

    def _read_for_entry(self, kind: str) -> None:
        """The registers a kernel entry needs into ``self.regs``: all of them
        when events are built, the lazy TLB mode keeps the state, or the
        entry path needs them (transition.py); else only ENTRY_READ."""
        e = self.entry
        if e.full_read(kind) or self._want_events or self.tlb_lazy:
            self.regs.read()
        else:
            e.read_entry_regs(kind)

    def _enter_cpl0(self, kind: str = "delivery", rcx_r11: bool = False, cr2: bool = False) -> None:
        """Make the state in ``self.regs`` current at CPL 0 (transition.py:
        the snapshot's CPL, the exception in flight cleared).

        RIP changes here without a block start: no block-start hook fired for
        the new RIP yet.

        CR3 stays as it is, so the TLB survives the transition as it does on
        hardware (SYSCALL and exception entry do not flush)."""
        self._last_block_start = None
        self.entry.enter(kind, rcx_r11, cr2)
