"""CR3 in the live CPU state: read and written without a call into Unicorn
(docs/performance.md, "CR3 in the live CPU state").

QEMU keeps the registers in ``CPUX86State`` (target/i386/cpu.h), which
``uc_context_save`` copies whole: CR3's offset in a saved context
(:func:`emu.hw.cpu.context_offset`) is its offset in the live state, whose
address :func:`emu.hw.microcode.context.live_state_address` finds and
checks through the API.  Here the slot is checked once more on the CPU
(writes through the API seen there, CR3 put back as it was); anything
unexpected leaves CR3 to the API.  A store there is what a context save,
patch and restore does (no TLB flush), without copying the context twice.
"""

from __future__ import annotations

import ctypes
import os

from unicorn import x86_const as X

from emu.hw.cpu import OneReg, context_offset
from emu.hw.microcode.context import live_state_address

_M64 = (1 << 64) - 1
#: "live" (where verified), "api" (always through Unicorn), "check" (both,
#: compared at every access: the equivalence test)
MODE = os.environ.get("ISOEMU_CR3_ACCESS", "") or "live"


class _ApiCr3:
    """CR3 through Unicorn's API (one C call to read; a context save, patch
    and restore to write without a TLB flush)."""

    def __init__(self, cpu):
        self._one = OneReg(cpu, X.UC_X86_REG_CR3)
        self._keep = cpu.write_cr3_keep_tlb

    @property
    def value(self) -> int:
        return self._one.read()

    @value.setter
    def value(self, v: int) -> None:
        self._keep(v)


class _CheckedCr3(_ApiCr3):
    """Both ways at every access: a difference raises."""

    def __init__(self, cpu, slot):
        super().__init__(cpu)
        self._slot = slot

    @property
    def value(self) -> int:
        v = self._one.read()
        if self._slot.value != v:
            raise RuntimeError(f"live CR3 {self._slot.value:#x} != Unicorn's {v:#x}")
        return v

    @value.setter
    def value(self, v: int) -> None:
        self._keep(v)
        if self._slot.value != v & _M64:
            raise RuntimeError(f"live CR3 {self._slot.value:#x} after writing {v:#x}")


def _follows(slot, one: OneReg, was: int) -> bool:
    """Does the slot follow CR3 as the API writes it?  (CR3 is left as it was.)"""
    if slot.value != was:
        return False
    ok = True
    for v in (was ^ 0x18, 0x5A17_3C0F_9E6B_D000):          # PWT | PCD; a value nothing else holds
        one.write(v)
        ok = ok and slot.value == v
    one.write(was)
    return ok and slot.value == was


def cr3_access(cpu, mode: str | None = None):
    """An object whose ``value`` is this CPU's CR3, read and written without
    a TLB flush: the live state's slot where :data:`MODE` allows and it is
    verified on this CPU, else the API.  Call it before the CPU first runs:
    the check writes CR3 through the API, which flushes the TLB."""
    mode = mode or MODE
    off = context_offset(X.UC_X86_REG_CR3)
    base = None if mode == "api" or off is None else live_state_address(cpu)
    if base is None:
        return _ApiCr3(cpu)
    slot = ctypes.c_uint64.from_address(base + off)
    one = OneReg(cpu, X.UC_X86_REG_CR3)
    if not _follows(slot, one, one.read()):
        return _ApiCr3(cpu)
    return _CheckedCr3(cpu, slot) if mode == "check" else slot
