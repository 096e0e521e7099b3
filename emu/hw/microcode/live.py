"""CR3 in the live CPU state: read and written without a call into Unicorn
(docs/performance.md, "CR3 in the live CPU state").

QEMU keeps the registers in ``CPUX86State`` (target/i386/cpu.h), and
``uc_context_save`` copies that structure whole: CR3's offset in a saved
context (:func:`emu.hw.cpu.context_offset`) is its offset in the live one.
The live one is embedded in the CPU object, which Unicorn's ``uc_struct``
points at: a pointer at a fixed place in ``uc_struct`` plus a fixed
distance.  Both are found once per process on two throwaway CPUs, reading
memory through ``/proc/self/mem`` (an unmapped address is an error there,
never a crash), and kept only where the state found follows the API (three
registers written through it, one of them twice).  Each CPU is checked
again before use (:func:`cr3_access`); anything unexpected leaves CR3 to
the API.  Writing CR3 there is what a context save, patch and restore does
(no TLB flush), without copying the 5.6 KB context twice.
"""

from __future__ import annotations

import ctypes
import os
import struct

from unicorn import x86_const as X

from emu.hw.cpu import OneReg

_Q = struct.Struct("<Q")
_M64 = (1 << 64) - 1
#: where the live state was found last in this process: (offset of a pointer
#: in uc_struct, distance from it to CR3); first guess: the pinned Unicorn
#: 2.1.4's (uc->cpu, offsetof(X86CPU, env) + cr[3]), checked like any other
_where: list[tuple[int, int]] = [(440, 35368 + 488)]
#: "live" (where verified), "api" (always through Unicorn), "check" (both,
#: compared at every access: the equivalence test)
MODE = os.environ.get("ISOEMU_CR3_ACCESS", "") or "live"
_PATTERN = 0x5A17_3C0F_9E6B_D000


class _Mem:
    """Process memory read through /proc/self/mem: None where unmapped."""

    def __init__(self):
        self.fd = os.open("/proc/self/mem", os.O_RDONLY)

    def read(self, addr: int, n: int) -> bytes | None:
        try:
            b = os.pread(self.fd, n, addr)
        except (OSError, OverflowError, ValueError):
            return None
        return b if len(b) == n else None

    def q(self, addr: int) -> int | None:
        b = self.read(addr, 8)
        return None if b is None else _Q.unpack(b)[0]

    def close(self) -> None:
        os.close(self.fd)


def _follows(mem: _Mem, one: OneReg, addr: int | None, was: int) -> bool:
    """Does the quadword at ``addr`` follow CR3 as the API writes it?  (CR3
    is left as it was.)"""
    if addr is None or mem.q(addr) != was:
        return False
    ok = True
    for v in (was ^ 0x18, _PATTERN):               # PWT | PCD; a value nothing else holds
        one.write(v)
        ok = ok and mem.q(addr) == v
    one.write(was)
    return ok and mem.q(addr) == was


def _at(mem: _Mem, base: int, where: tuple[int, int]) -> int | None:
    p = mem.q(base + where[0])
    return None if p is None else p + where[1]


def _search(mem: _Mem, one: OneReg, base: int, was: int) -> tuple[int, int] | None:
    """Each pointer in the first KiB of uc_struct, and the 64 KiB it points
    at, for a quadword that follows CR3."""
    head = mem.read(base, 0x400) or b""
    pattern = _Q.pack(_PATTERN)
    one.write(_PATTERN)
    try:
        for i in range(0, len(head) - 7, 8):
            p = _Q.unpack_from(head, i)[0]
            if p & 7 or not 0x10000 <= p < 1 << 47:
                continue
            block = mem.read(p, 0x10000)
            j = -1 if block is None else block.find(pattern)
            while j >= 0:
                if not j & 7:
                    one.write(was)
                    if _follows(mem, one, p + j, was):
                        return i, j
                    one.write(_PATTERN)
                j = block.find(pattern, j + 1)
    finally:
        one.write(was)
    return None


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


def cr3_access(cpu, mode: str | None = None):
    """An object whose ``value`` is this CPU's CR3, read and written without
    a TLB flush: the live state's slot where :data:`MODE` allows and it is
    verified on this CPU (the API's writes seen there, CR3 put back as it
    was), else the API.  Call it before the CPU first runs: the check writes
    CR3 through the API, which flushes the TLB."""
    mode = mode or MODE
    if mode == "api":
        return _ApiCr3(cpu)
    try:
        mem = _Mem()
    except OSError:
        return _ApiCr3(cpu)
    one = OneReg(cpu, X.UC_X86_REG_CR3)
    was = one.read()
    base = cpu.handle.value
    try:
        addr = _at(mem, base, _where[0])
        if not _follows(mem, one, addr, was):
            where = _search(mem, one, base, was)
            addr = None if where is None else _at(mem, base, where)
            if addr is None or not _follows(mem, one, addr, was):
                return _ApiCr3(cpu)
            _where[0] = where
    finally:
        mem.close()
    slot = ctypes.c_uint64.from_address(addr)
    return _CheckedCr3(cpu, slot) if mode == "check" else slot
