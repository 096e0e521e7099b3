"""The fast exception entry: a fault delivered through a cached delivery plan
in one context save, patch and restore (transition.py).

A plan holds what delivering one vector from one CPL through one CR3 reads:
the IDT gate (its two descriptor words), the TSS stack slot and the page of
the frame, with the page-table entries each translation visited.  At every
use each of those entries and descriptor words is read again from the RAM
buffer and compared: a plan is used only while everything it was built from
is unchanged, so it is exact (like :class:`emu.hw.paging.WalkCache`), never
stale.  The TSS stack pointer itself is read at every use.  Anything the plan
does not cover (a gate that faults, an IST or frame across a page boundary,
events wanted, the TLB model, software interrupts, a CPU whose CR0/CR4 are
not the snapshot's, the lazy TLB mode) goes to the general path, :meth:`Delivery.deliver`.
"""

from __future__ import annotations

import ctypes
import struct

from emu.hw.cpu import error_code_offset, exception_is_int_offset
from emu.hw.paging import READ, VEC_PF, WRITE, control_state_of
from emu.hw.x86 import ERROR_CODE_VECTORS

_M64 = 0xFFFFFFFFFFFFFFFF
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_CLEAR = ~((1 << 8) | (1 << 14) | (1 << 16) | (1 << 17)) & _M64     # TF NT RF VM (SDM 6.14.2)
_IF = 1 << 9


class Plan:
    __slots__ = ("checks", "handler", "selector", "new_cpl", "trap", "slot_pa", "frame_page", "frame_base")


class FaultEntry:
    """Delivers CPU faults on the fast path; returns False to hand the fault
    to the general path (nothing changed yet)."""

    def __init__(self, system):
        e = system.entry
        self.sys, self.e = system, e
        self.plans: dict = {}
        self.built = 0
        mem = system.mem
        self.buf = mem.buf
        self.words = (ctypes.c_uint64 * (mem.size // 8)).from_address(mem.host_address)
        self.ec = error_code_offset() // 4
        self.is_int = exception_is_int_offset() // 4

    def __call__(self, vector: int) -> bool:
        s, e = self.sys, self.e
        if s._want_events or s.tlb_lazy:
            return False
        q, d, i = e.view()
        e.save()
        if d[self.is_int] or not e.snapshot_controls():
            return False
        f = e.read_rflags()
        cr3, rip, rsp = q[i.cr3], q[i.rip], q[i.rsp]
        cs, ss = d[i.cs] & 0xFFFF, d[i.ss] & 0xFFFF
        cpl = cs & 3
        cr0, cr4 = q[i.cr0], q[i.cr4]
        ec = d[self.ec] if vector in ERROR_CODE_VECTORS else None
        key = (vector, cpl, cr3)
        plan = self.plans.get(key)
        words = self.words
        if plan is not None:
            for idx, val in plan.checks:
                if words[idx] != val:
                    plan = None
                    break
        stack = rsp if plan is None or plan.slot_pa is None else _Q.unpack_from(self.buf, plan.slot_pa)[0]
        flen = 40 if ec is None else 48
        new_rsp = ((stack & ~0xF) - flen) & _M64
        if plan is None or new_rsp >> 12 != plan.frame_page or (new_rsp & 0xFFF) + flen > 4096:
            plan = self._build(vector, cpl, cr3, rsp, flen, control_state_of(cr0, cr4, s._nxe, False))
            if plan is None:
                return False
            self.plans[key] = plan
            stack = rsp if plan.slot_pa is None else _Q.unpack_from(self.buf, plan.slot_pa)[0]
            new_rsp = ((stack & ~0xF) - flen) & _M64
        cr2 = None
        if vector == VEC_PF:
            cr2 = q[i.cr2]
            ctl = control_state_of(cr0, cr4, s._nxe, bool(f & (1 << 18)))
            s.cross_check(cr3, cr2, ec, ctl)
            if s.tlb is not None:
                s._stale_fault(cr2, ec, ctl)     # a finding if a stale translation allowed it
        if cpl == 3:
            s.last_user_exception = (vector, ec, cr2, rip, cr3)
        pa = plan.frame_base | (new_rsp & 0xFFF)
        if ec is None:
            struct.pack_into("<5Q", self.buf, pa, rip, cs, f, rsp, ss)
        else:
            struct.pack_into("<6Q", self.buf, pa, ec, rip, cs, f, rsp, ss)
        nf = f & _CLEAR
        if not plan.trap:
            nf &= ~_IF
        e.patch_entry(plan.handler, new_rsp, nf, plan.selector, plan.new_cpl if plan.new_cpl != cpl else ss)
        s._last_block_start = None
        return True

    def _build(self, vector: int, cpl: int, cr3: int, rsp: int, flen: int, ctl) -> Plan | None:
        """The plan for this delivery, or None where the general path must
        decide (a fault during delivery, a gate that is not a present
        interrupt/trap gate, a slot or frame across a page)."""
        s = self.sys
        walks = s.walks
        idt_base, idt_limit = s.idtr
        if 16 * vector + 15 > idt_limit:
            return None
        checks = {}
        t = walks.translate(cr3, idt_base + 16 * vector, READ, 0, ctl)
        if t.fault or t.pa & 0xF:
            return None
        checks.update(t.raw)
        lo, hi = _QQ.unpack_from(self.buf, t.pa)
        checks[t.pa] = lo
        checks[t.pa + 8] = hi
        gtype = lo >> 40 & 0xF
        if gtype not in (0xE, 0xF) or not lo >> 47 & 1:
            return None
        p = Plan()
        p.handler = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | (hi & 0xFFFFFFFF) << 32
        p.selector = lo >> 16 & 0xFFFF
        p.new_cpl = p.selector & 3
        p.trap = gtype == 0xF
        ist = lo >> 32 & 7
        p.slot_pa = None
        stack = rsp
        if ist or p.new_cpl < cpl:
            slot = s.tss_base + (36 + 8 * (ist - 1) if ist else 4 + 8 * p.new_cpl)
            if slot & 0xFFF > 0xFF8:
                return None
            t = walks.translate(cr3, slot, READ, 0, ctl)
            if t.fault:
                return None
            checks.update(t.raw)
            p.slot_pa = t.pa
            stack = _Q.unpack_from(self.buf, t.pa)[0]
        new_rsp = ((stack & ~0xF) - flen) & _M64
        if (new_rsp & 0xFFF) + flen > 4096:
            return None
        t = walks.translate(cr3, new_rsp, WRITE, 0, ctl)
        if t.fault:
            return None
        checks.update(t.raw)
        p.frame_page = new_rsp >> 12
        p.frame_base = t.pa & ~0xFFF
        p.checks = tuple((pa >> 3, v) for pa, v in checks.items())
        self.built += 1
        return p
