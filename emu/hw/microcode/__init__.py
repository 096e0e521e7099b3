"""x86 behaviour Unicorn lacks, done in Python ("microcode").

Part of the CPU layer: it knows the x86 architecture (Intel SDM Vol. 3A
chapters 5-6: SYSCALL, IDT gates, TSS stack switching, #DF and triple-fault
rules, INVPCID) and Unicorn's quirks, and no Linux policy.  Its users get
events through one callback (``sink(kind, **fields)``) and I/O ports through
``ports``.

Modules: :mod:`~emu.hw.microcode.loop` (the event loop and its hooks),
:mod:`~emu.hw.microcode.regs` (the register file of a transition),
:mod:`~emu.hw.microcode.syscall` (SYSCALL),
:mod:`~emu.hw.microcode.transition` (entering CPL 0: one context save, patch, restore),
:mod:`~emu.hw.microcode.delivery` (exceptions and interrupts),
:mod:`~emu.hw.microcode.cr3` (CR3-write sites),
:mod:`~emu.hw.microcode.tlbsites` (what feeds the TLB model),
:mod:`~emu.hw.microcode.invalid` (INVPCID, #UD, port I/O).
"""

from __future__ import annotations

from emu.hw.microcode.cr3 import Cr3Sites
from emu.hw.microcode.delivery import Delivery, TripleFault
from emu.hw.microcode.invalid import InvalidOpcode
from emu.hw.microcode.loop import SLICE, UC_ERRORS, EventLoop
from emu.hw.microcode.regs import STATE_NAMES, RegFile
from emu.hw.microcode.syscall import SyscallStep
from emu.hw.microcode.tlbsites import TlbSites

__all__ = ["SLICE", "STATE_NAMES", "UC_ERRORS", "RegFile", "System", "TripleFault"]


class System(SyscallStep, Delivery, Cr3Sites, TlbSites, InvalidOpcode, EventLoop):
    """A Unicorn CPU plus the microcode: a machine that can run an OS kernel.

    ``boot_state`` must be called once, at CPL 0, with the architectural
    state the kernel expects (descriptor tables, MSRs, CR3/CR4); it is the
    snapshot every privilege transition restores from.
    """

    def __init__(self, mem, config=None, sink=None):
        super().__init__(mem, config, sink)
        self.transition_variant = None      # None: ISOEMU_TRANSITION or the default (transition.py)
        self.entry = None                   # the KernelEntry, made by boot_state
        self._entry_check = False           # ISOEMU_TRANSITION=check (set by boot_state)
        self._fast_syscall = self._fast_fault = None
        self.walker_cross_check = True      # compare each #PF with the reference walker
        self.add_hook("intr", self._intr_hook())
        self.add_hook("syscall", self._syscall_hook())
        self.add_hook("out", self._guard(self._on_out))
        self.add_hook("invalid", self._guard(self._on_invalid, True))
