"""The fast exception entry: a fault delivered through a cached delivery plan,
patched straight into the live CPU state with RFLAGS computed from QEMU's
lazy flags (transition.py, ``KernelEntry._setup_fast``).

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

import struct
from operator import itemgetter

from emu.hw.cpu import error_code_offset, exception_is_int_offset
from emu.hw.microcode.lazyflags import ARITH_DF, DF, inline_eflags, lookup
from emu.hw.paging import PF_I, PF_U, PF_W, READ, VEC_PF, WRITE, control_state_of
from emu.hw.x86 import ERROR_CODE_VECTORS

_M64 = 0xFFFFFFFFFFFFFFFF
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_CLEAR = ~((1 << 8) | (1 << 14) | (1 << 16) | (1 << 17)) & _M64     # TF NT RF VM (SDM 6.14.2)
_IF = 1 << 9
_AC = 1 << 18


def _reread(pairs) -> tuple:
    """(getter, values): ``getter(words)`` reads again, in one C-level pass,
    the 64-bit words at the indices of ``pairs`` ((index, value) pairs);
    equal to ``values`` while none of them changed."""
    idx = [i for i, _ in pairs]
    vals = tuple(v for _, v in pairs)
    if not idx:
        return (lambda w: ()), vals
    if len(idx) == 1:
        i0 = idx[0]
        return (lambda w: (w[i0],)), vals
    return itemgetter(*idx), vals


class Plan:
    __slots__ = ("check_get", "check_vals", "handler", "selector", "new_cpl", "trap", "slot_pa", "frame_page", "frame_base")


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
        self.words = memoryview(mem.buf).cast("Q")
        self.ec = error_code_offset() // 4
        self.is_int = exception_is_int_offset() // 4
        self.cross: dict = {}        # the walker's agreeing #PF walks: key -> entries it read
        self.run = self._make()     # run(vector) -> bool: called by the interrupt hook

    def __call__(self, vector: int) -> bool:
        return self.run(vector)

    def _make(self):
        """The fast entry as one closure (constants as locals: it runs at
        every fault).  It works on the entry's fast buffer: the live CPU
        state, or a context saved here and restored by the patch
        (transition.py, ``KernelEntry._setup_fast``)."""
        s, e = self.sys, self.e
        b, q, d, i = e.view()
        words, buf, plans, cross = self.words, self.buf, self.plans, self.cross
        is_int, ec_at = self.is_int, self.ec
        i_cr3, i_rsp, i_cs, i_ss, i_cr0, i_cr4, i_cr2 = i.cr3, i.rsp, i.cs, i.ss, i.cr0, i.cr4, i.cr2
        head, head7 = 8 * i.rip, struct.Struct("<QQQQQIi").unpack_from   # eip eflags cc_dst cc_src cc_src2 cc_op df
        s_cr0, s_cr4 = e.snapshot_cr0_cr4()
        # the control state (CR0 and CR4 are the snapshot's here, EFER is
        # constant after boot): one per value of RFLAGS.AC
        ctls = (control_state_of(s_cr0, s_cr4, s._nxe, False), control_state_of(s_cr0, s_cr4, s._nxe, True))
        pke = ctls[0].pke
        save, read_rflags, live = e.save, e.read_rflags, e.live
        compute = lookup(e.compute)
        eflags_op = inline_eflags(e.compute)
        not_arith = ~ARITH_DF & _M64
        unpack_q, pack5, pack6 = _Q.unpack_from, struct.Struct("<5Q").pack_into, struct.Struct("<6Q").pack_into
        build = self._build
        rest = e.entry_patcher()
        with_ec = frozenset(ERROR_CODE_VECTORS)

        def run(vector: int) -> bool:
            if s._want_events or s.tlb_lazy:
                return False
            if not live:
                save()
            if d[is_int] or q[i_cr0] != s_cr0 or q[i_cr4] != s_cr4:
                return False
            rip, f, dst, src, src2, op, df = head7(b, head)
            if op == eflags_op:             # the usual case: QEMU computed the flags before the fault
                f = ((f & not_arith) | src | (df & DF)) & 0xFFFFFFFF
            else:
                fn = compute(op)
                if fn is None:
                    f = read_rflags()
                else:
                    f = ((f & not_arith) | fn(dst, src, src2) | (df & DF)) & 0xFFFFFFFF
            cr3, rsp = q[i_cr3], q[i_rsp]
            cs, ss = d[i_cs] & 0xFFFF, d[i_ss] & 0xFFFF
            cpl = cs & 3
            ec = d[ec_at] if vector in with_ec else None
            key = (vector, cpl, cr3)
            plan = plans.get(key)
            if plan is not None and plan.check_get(words) != plan.check_vals:
                plan = None
            flen = 40 if ec is None else 48
            if plan is not None:
                stack = rsp if plan.slot_pa is None else unpack_q(buf, plan.slot_pa)[0]
                new_rsp = ((stack & ~0xF) - flen) & _M64
            if plan is None or new_rsp >> 12 != plan.frame_page:
                plan = build(vector, cpl, cr3, rsp, flen, ctls[0])
                if plan is None:
                    return False
                plans[key] = plan
                stack = rsp if plan.slot_pa is None else unpack_q(buf, plan.slot_pa)[0]
                new_rsp = ((stack & ~0xF) - flen) & _M64
            cr2 = None
            if vector == VEC_PF:
                cr2 = q[i_cr2]
                ac = 1 if f & _AC else 0
                ctl = ctls[ac]
                if s.walker_cross_check and not pke:
                    # the reference walker's answer, cached with the entries it read
                    ck = (cr3, cr2 >> 12, ec, ac)
                    hit = cross.get(ck)
                    if hit is None or hit[0](words) != hit[1]:
                        w = s.walks.translate(cr3, cr2, 2 if ec & PF_I else (1 if ec & PF_W else 0),
                                              3 if ec & PF_U else 0, ctl)
                        if w.fault and w.error_code == ec:
                            if len(cross) > 4096:
                                cross.clear()
                            cross[ck] = _reread([(pa >> 3, v) for pa, v in w.raw])
                        else:
                            s.cross_check(cr3, cr2, ec, ctl)      # reports the disagreement
                if s.tlb is not None:
                    s._stale_fault(cr2, ec, ctl)     # a finding if a stale translation allowed it
            if cpl == 3:
                s.last_user_exception = (vector, ec, cr2, rip, cr3)
            pa = plan.frame_base | (new_rsp & 0xFFF)
            if ec is None:
                pack5(buf, pa, rip, cs, f, rsp, ss)
            else:
                pack6(buf, pa, ec, rip, cs, f, rsp, ss)
            nf = f & _CLEAR
            if not plan.trap:
                nf &= ~_IF
            rest(plan.handler, new_rsp, nf, plan.selector, plan.new_cpl if plan.new_cpl != cpl else ss)
            s._last_block_start = None
            return True
        return run

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
        p.check_get, p.check_vals = _reread([(pa >> 3, v) for pa, v in checks.items()])
        self.built += 1
        return p
