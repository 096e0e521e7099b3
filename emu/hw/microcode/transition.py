"""Entering CPL 0: SYSCALL and exception delivery in one context save, patch
and restore (docs/unicorn-notes.md, "Kernel entry").

Unicorn cannot raise the CPL (writing CS never changes it) and never clears
the exception in flight after a handled fault (QEMU's ``env->old_exception``:
the next #PF would become #DF).  A CPU context saved at CPL 0 during boot
(the *snapshot*) carries both.  Three ways to use it, one interface
(:class:`KernelEntry`):

``slow``
    the original path: every architectural register read (one batch of
    44), the snapshot restored with CR3 patched in, every register but CR3
    written back (a batch of 43).
``api``
    the same state through the public API only, without the live
    write-back: the registers go into the snapshot with
    ``uc_context_reg_write_batch``, then one restore.  CR0, CR4 and
    KERNEL_GS_BASE cannot be written into a saved context (Unicorn's writer
    for them reaches for the live CPU): they are written live after the
    restore when they differ from the snapshot's.
``inplace`` (used when verified)
    the current state saved into a buffer, the fields a kernel entry changes
    patched there (RIP, RSP, RFLAGS with QEMU's lazy-flag fields, RCX/R11,
    CR2, the CS and SS selectors and hidden caches and ``hflags`` (which
    holds the CPL) copied from the snapshot, ``old_exception`` cleared),
    one restore.  Relies on QEMU's ``CPUX86State`` layout, so it is used
    only when :func:`layout` finds the offsets and checks them through the
    API at start-up, and after the first entry of each kind on each CPU gave
    the same state as the ``slow`` path (else the CPU falls back to
    ``api`` for good).  After that first entry, SYSCALL and planned faults
    take the *fast entries* (:meth:`KernelEntry.make_syscall`, plan.py):
    the same patch written straight into the live CPU state (a save and a
    restore are each a ``memcpy`` of it), with RFLAGS computed from QEMU's
    lazy-flag fields (lazyflags.py): no call into Unicorn.

``check`` runs ``slow``, ``api`` and ``inplace`` from the same state at every
entry and raises :class:`TransitionMismatch` on any difference (the
equivalence test).  ``ISOEMU_TRANSITION`` selects a variant for every CPU
made afterwards (default: ``inplace`` where verified, else ``api``).
"""

from __future__ import annotations

import ctypes
import os
import struct

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from emu.errors import GuestError
from emu.hw.cpu import C
from emu.hw.microcode import lazyflags
from emu.hw.microcode.context import CC_FLAGS, DF, SEG, layout, live_state_address
from emu.hw.microcode.regs import (IDX, STATE_NAMES, V_CR0, V_CR2, V_CR3, V_CR4, V_CS, V_R11, V_RCX, V_RFLAGS,
                                   V_RIP, V_RSP, V_SS)
from emu.hw.x86 import MSR_EFER, MSR_KERNEL_GS_BASE

VARIANTS = ("inplace", "api", "slow", "check")
ENV = "ISOEMU_TRANSITION"
# the fast entries' two shortcuts, each on unless named here (comma-separated):
# "live" (patch the live CPU state, not a saved copy), "flags" (RFLAGS from
# the lazy-flag fields, not through the API); for comparison and the tests
ENV_OFF = "ISOEMU_ENTRY_OFF"
_M64 = 0xFFFFFFFFFFFFFFFF
_NO_NOFLUSH = _M64 >> 1    # CR3 without bit 63


class TransitionMismatch(GuestError):
    """Two kernel-entry paths left different CPU states (``check`` mode)."""


def requested_variant() -> str:
    v = os.environ.get(ENV, "") or "inplace"
    if v not in VARIANTS:
        raise GuestError(f"{ENV}={v!r}: expected one of {', '.join(VARIANTS)}")
    return v


# --- the entry itself ----------------------------------------------------------------------
# registers every entry needs before it is made (delivery's frame, the control state)
ENTRY_READ = ("rip", "rsp", "rflags", "cs", "ss", "cr0", "cr2", "cr3", "cr4")
# registers of the ``api`` variant written into the snapshot (not CR0/CR3/CR4/the MSR)
_API_SKIP = {"cr0", "cr3", "cr4", "kernel_gs_base"}
# what ``check`` compares beside the register file
_EXTRA = [("ds", X.UC_X86_REG_DS), ("es", X.UC_X86_REG_ES), ("fs", X.UC_X86_REG_FS),
          ("gs", X.UC_X86_REG_GS)]


class _FieldIndex:
    """Indices of the save buffer's fields (KernelEntry.view): one class, not one per CPU."""


class KernelEntry:
    """One CPU's way into CPL 0 (see the module docstring).

    The caller has read the registers into ``cpu.regs`` (all of them when
    :attr:`full_read` says so, else :data:`ENTRY_READ`), changed the slots
    of the registers the entry sets, and calls :meth:`enter`."""

    def __init__(self, cpu, variant: str | None = None):
        self.cpu = cpu
        self.requested = variant or requested_variant()
        self.L = layout() if self.requested in ("inplace", "check") else None
        if self.requested == "inplace" and self.L is None:
            self.variant = "api"
            self.why = "the saved-context layout was not verified on this Unicorn build"
        else:
            self.variant = self.requested
            self.why = None
        self.unverified = {"syscall", "delivery"} if self.variant == "inplace" else set()
        self.entries = 0
        self.checked = 0
        regs = cpu.regs
        self._regs = regs
        base = ctypes.addressof(regs.buf)
        names = [n for n in ENTRY_READ]
        self._sub_n = ctypes.c_int(len(names))
        self._sub_ids = (ctypes.c_int32 * len(names))(*[regs.ids[IDX[n]] for n in names])
        self._sub_ptrs = (ctypes.c_void_p * len(names))(*[base + 16 * IDX[n] for n in names])
        keep = [i for i, n in enumerate(STATE_NAMES) if n not in _API_SKIP]
        self._api_n = ctypes.c_int(len(keep))
        self._api_ids = (ctypes.c_int32 * len(keep))(*[regs.ids[i] for i in keep])
        self._api_ptrs = (ctypes.c_void_p * len(keep))(*[base + 16 * i for i in keep])
        self._ctx_write = uclib.uc_context_reg_write_batch
        self._ctx_write.argtypes = None
        self._size = uclib.uc_context_size(cpu.handle)
        self.saved = False
        if self.L is not None:
            self._setup_inplace()

    def full_read(self, kind: str) -> bool:
        """Must the caller read every register (not only :data:`ENTRY_READ`)?"""
        return self.variant != "inplace" or kind in self.unverified

    def read_entry_regs(self, kind: str) -> None:
        """:data:`ENTRY_READ` into ``cpu.regs``.  The in-place variant saves
        the context here (the entry patches that copy) and takes the values
        from it: RFLAGS alone is read through the API (QEMU computes it from
        its lazy-flag fields)."""
        if self.variant != "inplace" or kind in self.unverified:
            C.reg_read_batch(self.cpu.hv, self._sub_ids, self._sub_ptrs, self._sub_n)
            return
        C.context_save(self.cpu.hv, self._ptr)
        q, mv = self._qq, self._regs.mv
        for dst, src in self._fill:
            mv[dst] = q[src]
        d = self._dd
        mv[V_CS] = d[self._ix.cs] & 0xFFFF
        mv[V_SS] = d[self._ix.ss] & 0xFFFF
        C.reg_read(self.cpu.hv, self._rf_id, self._rf_ptr)
        self.saved = True

    # -- the variants -----------------------------------------------------------------------
    def enter(self, kind: str, rcx_r11: bool, cr2: bool) -> None:
        """Make the state in ``cpu.regs`` current at CPL 0.  ``kind``:
        "syscall" or "delivery"; ``rcx_r11``/``cr2``: those slots were set."""
        self.entries += 1
        v = self.variant
        if v == "inplace" and kind not in self.unverified:
            self._inplace(rcx_r11, cr2)
        elif v == "slow":
            self._slow()
        elif v == "api":
            self._api()
        else:
            self._compare(kind, rcx_r11, cr2)

    def _slow(self) -> None:
        cpu = self.cpu
        slot = cpu._cr3_slot
        regs = self._regs
        if slot is not None:
            slot.value = regs["cr3"]
            C.context_restore(cpu.hv, cpu._snapshot_ctx)
            regs.write_except_cr3()
        else:
            C.context_restore(cpu.hv, cpu._snapshot_ctx)
            regs.write()

    def _api(self) -> None:
        cpu = self.cpu
        regs = self._regs
        snap = cpu._snapshot_ctx
        if cpu._cr3_slot is None:
            return self._slow()
        cpu._cr3_slot.value = regs["cr3"]
        self._ctx_write(snap, self._api_ids, self._api_ptrs, self._api_n)
        C.context_restore(cpu.hv, snap)
        base = cpu.snapshot_regs
        for name, rid in (("cr0", X.UC_X86_REG_CR0), ("cr4", X.UC_X86_REG_CR4)):
            if regs[name] != base[name]:
                cpu._write_reg(rid, regs[name])
        kgs = regs["kernel_gs_base"]
        if kgs != base["kernel_gs_base"]:
            cpu.set_msr(MSR_KERNEL_GS_BASE, kgs)

    def _inplace(self, rcx_r11: bool, cr2: bool) -> None:
        if self.saved:
            self.saved = False
        else:
            C.context_save(self.cpu.hv, self._ptr)
        self._patch_restore(rcx_r11, cr2)

    def _setup_inplace(self) -> None:
        """Views of the save buffer (the CPU's scratch context) and the
        snapshot's constant parts."""
        cpu, L = self.cpu, self.L
        self._ptr = ctypes.c_void_p(cpu._scratch())
        raw = (ctypes.c_char * self._size).from_address(self._ptr.value)
        self._bb = memoryview(raw).cast("B")
        self._qq = self._bb[:self._size // 8 * 8].cast("Q")
        self._dd = self._bb[:self._size // 4 * 4].cast("I")
        s = ctypes.string_at(cpu._snapshot_ctx.value, self._size)
        self._h0, self._h1 = L.hflags, L.ss + SEG
        self._s_h = s[self._h0:self._h1]
        self._s_old = int.from_bytes(s[L.old_exception:L.old_exception + 4], "little")
        self._s_cr0 = int.from_bytes(s[L.cr2 - 16:L.cr2 - 8], "little")
        self._s_cr4 = int.from_bytes(s[L.cr2 + 16:L.cr2 + 24], "little")
        self._cc_op = L.cc_op_eflags

        i = self._ix = _FieldIndex()
        for name in ("rip", "eflags", "cc_dst", "cc_src", "cc_src2", "cr2"):
            setattr(i, name, getattr(L, name) // 8)
        i.cr0, i.cr3, i.cr4 = (L.cr2 - 16) // 8, (L.cr2 + 8) // 8, (L.cr2 + 16) // 8
        for name in ("rsp", "rcx", "r11"):
            setattr(i, name, L.gpr[name] // 8)
        i.cc_op, i.df, i.cs, i.ss, i.old = L.cc_op // 4, L.df // 4, L.cs // 4, L.ss // 4, L.old_exception // 4
        # (slot in regs.mv, index in the save buffer) for read_entry_regs
        self._fill = ((V_RIP, i.rip), (V_RSP, i.rsp), (V_CR0, i.cr0), (V_CR2, i.cr2), (V_CR3, i.cr3),
                      (V_CR4, i.cr4))
        regs = self._regs
        self._rf_id = ctypes.c_int(X.UC_X86_REG_RFLAGS)
        self._rf_ptr = ctypes.c_void_p(ctypes.addressof(regs.buf) + 16 * IDX["rflags"])
        self._patch_restore = self._make_patch()
        self._setup_fast()

    # -- the pieces of a fast entry (the SYSCALL closure, plan.py) -------------------------
    def _setup_fast(self) -> None:
        """The buffer the fast entries work on: the live CPU state where
        :func:`emu.hw.microcode.context.live_state_address` found and checked
        it (no save, no restore: the patch is the entry), else the scratch
        context (saved, patched, restored).  And how they get RFLAGS: computed from
        the lazy-flag fields for every ``cc_op`` :func:`lazyflags.verified`
        kept, else through the API."""
        off = {w.strip() for w in os.environ.get(ENV_OFF, "").split(",") if w.strip()}
        unknown = off - {"live", "flags"}
        if unknown:
            raise GuestError(f"{ENV_OFF}={','.join(sorted(off))}: expected 'live' and/or 'flags'")
        live = None if "live" in off else live_state_address(self.cpu)
        self.live = live is not None
        at = live if live is not None else self._ptr.value
        raw = (ctypes.c_char * self._size).from_address(at)
        self._fb = memoryview(raw).cast("B")
        self._fq = self._fb[:self._size // 8 * 8].cast("Q")
        self._fd = self._fb[:self._size // 4 * 4].cast("I")
        self.compute = (None,) * lazyflags.CC_OP_NB if "flags" in off else lazyflags.verified(self.L)

    def view(self):
        """(byte, 64-bit and 32-bit views, field indices) of the fast
        entries' buffer (see :meth:`_setup_fast`)."""
        return self._fb, self._fq, self._fd, self._ix

    def save(self) -> None:
        """Make the fast entries' buffer current (nothing to do when it is the
        live state)."""
        if not self.live:
            C.context_save(self.cpu.hv, self._ptr)

    def read_rflags(self) -> int:
        C.reg_read(self.cpu.hv, self._rf_id, self._rf_ptr)
        return self._regs.mv[V_RFLAGS]

    def snapshot_cr0_cr4(self) -> tuple[int, int]:
        return self._s_cr0, self._s_cr4

    def entry_patcher(self):
        """fn(rip, rsp, rflags, cs, ss) patching the fast buffer into a CPL-0
        entry (and restoring it unless it is the live state); the buffer
        holds the state at the fault, CR0/CR4 the snapshot's: plan.py
        checked."""
        L = self.L
        b, q, d = self._fb, self._fq, self._fd
        s = ctypes.string_at(self.cpu._snapshot_ctx.value, self._size)
        flags8, es = s[L.hflags:L.hflags + 8], s[L.segs:L.segs + SEG]
        cs_rest, ss_rest = s[L.cs + 4:L.cs + SEG], s[L.ss + 4:L.ss + SEG]
        pack = struct.Struct(f"<QQQQQIi8s{SEG}sI{SEG - 4}sI{SEG - 4}s").pack_into
        head, cc_op, s_old, i_rsp = L.rip, L.cc_op_eflags, self._s_old, self._ix.rsp
        old = L.old_exception // 4
        restore, hv, ptr, live = C.context_restore, self.cpu.hv, self._ptr, self.live
        me = self

        def patch(rip: int, rsp: int, f: int, cs: int, ss: int) -> None:
            pack(b, head, rip, f, 0, f & CC_FLAGS, 0, cc_op, -1 if f & DF else 1, flags8, es,
                 cs & 0xFFFF, cs_rest, ss & 0xFFFF, ss_rest)
            q[i_rsp] = rsp
            d[old] = s_old
            if not live:
                restore(hv, ptr)
            me.entries += 1
        return patch

    def make_syscall(self, lstar: int, fmask: int, star: int):
        """SYSCALL in one function (SDM Vol. 2B, SYSCALL): RFLAGS (computed
        or read), RCX/R11/RFLAGS/RIP/CS/SS, the CPL and the exception in
        flight patched into the fast buffer (:meth:`_setup_fast`).  For the
        cheap case only (no events, no lazy TLB mode, verified in place);
        returns False, having changed nothing, when CR0/CR4 are not the
        snapshot's."""
        L, i = self.L, self._ix
        b, q, d = self._fb, self._fq, self._fd
        s = ctypes.string_at(self.cpu._snapshot_ctx.value, self._size)
        cs, ss = (star >> 32) & 0xFFFC, ((star >> 32) & 0xFFFC) + 8
        tail = (s[L.hflags:L.hflags + 8] + s[L.segs:L.segs + SEG] + cs.to_bytes(4, "little")
                + s[L.cs + 4:L.cs + SEG] + ss.to_bytes(4, "little") + s[L.ss + 4:L.ss + SEG])
        pack = struct.Struct(f"<QQQQQIi{len(tail)}s").pack_into
        head, entry_rip = L.rip, (lstar - 2) & _M64     # Unicorn adds 2 after the hook
        cc_op, s_old, old = L.cc_op_eflags, self._s_old, L.old_exception // 4
        i_rcx, i_r11, i_cr0, i_cr4, i_cr3 = i.rcx, i.r11, i.cr0, i.cr4, i.cr3
        s_cr0, s_cr4 = self._s_cr0, self._s_cr4
        save, restore, read = C.context_save, C.context_restore, C.reg_read
        hv, ptr, rf_id, rf_ptr, live = self.cpu.hv, self._ptr, self._rf_id, self._rf_ptr, self.live
        mv = self._regs.mv
        keep = ~fmask & _M64
        compute = lazyflags.lookup(self.compute)
        eflags_op = lazyflags.inline_eflags(self.compute)
        not_arith = ~lazyflags.ARITH_DF & _M64
        cpu = self.cpu
        me = self

        head7 = struct.Struct("<QQQQQIi").unpack_from

        def syscall() -> bool:
            if not live:
                save(hv, ptr)
            if q[i_cr0] != s_cr0 or q[i_cr4] != s_cr4:
                return False
            rip, f, dst, src, src2, op, df = head7(b, head)
            if op == eflags_op:             # the usual case: QEMU computed the flags for a jcc
                f = ((f & not_arith) | src | (df & DF)) & 0xFFFFFFFF
            else:
                fn = compute(op)
                if fn is None:
                    read(hv, rf_id, rf_ptr)
                    f = mv[V_RFLAGS]
                else:
                    f = ((f & not_arith) | fn(dst, src, src2) | (df & DF)) & 0xFFFFFFFF
            q[i_rcx] = (rip + 2) & _M64
            q[i_r11] = f
            q[i_cr3] &= _NO_NOFLUSH         # a deferred NOFLUSH strip (cr3.py): hardware never stores it
            f = (f & keep) | 2
            pack(b, head, entry_rip, f, 0, f & CC_FLAGS, 0, cc_op, -1 if f & DF else 1, tail)
            d[old] = s_old
            if not live:
                restore(hv, ptr)
            me.entries += 1
            cpu._last_block_start = None
            return True
        return syscall

    def _make_patch(self):
        """The patch and restore as one closure (its constants are locals:
        this runs at every kernel entry).  From RIP to the end of SS's cache
        the fields are contiguous (eip, eflags, cc_dst, cc_src, cc_src2,
        cc_op, df, hflags, hflags2, ES, CS, SS): one pack."""
        L, i = self.L, self._ix
        b, q, mv = self._bb, self._qq, self._regs.mv
        if L.eflags != L.rip + 8 or L.hflags != L.rip + 48 or L.cs != L.hflags + 8 + SEG:
            raise GuestError("unexpected saved-context layout")    # checked by layout() already
        s = ctypes.string_at(self.cpu._snapshot_ctx.value, self._size)
        flags8, es = s[L.hflags:L.hflags + 8], s[L.segs:L.segs + SEG]
        cs_rest, ss_rest = s[L.cs + 4:L.cs + SEG], s[L.ss + 4:L.ss + SEG]
        pack = struct.Struct(f"<QQQQQIi8s{SEG}sI{SEG - 4}sI{SEG - 4}s").pack_into
        head = L.rip
        cc_op, s_old, old = L.cc_op_eflags, self._s_old, L.old_exception // 4
        i_rsp, i_rcx, i_r11, i_cr2, i_cr0, i_cr4 = i.rsp, i.rcx, i.r11, i.cr2, i.cr0, i.cr4
        s_cr0, s_cr4 = self._s_cr0, self._s_cr4
        d = self._dd
        restore, hv, ptr = C.context_restore, self.cpu.hv, self._ptr
        slow = self._slow

        regs = self._regs
        carried = (V_RIP, V_RSP, V_RFLAGS, V_CS, V_SS)

        def patch_restore(rcx_r11: bool, cr2: bool) -> None:
            if q[i_cr0] != s_cr0 or q[i_cr4] != s_cr4:
                # hflags mirror CR0/CR4 bits: the snapshot's are not these.
                # The slow path writes every register back: read them all
                # (the CPU is as saved), keeping the values the entry set
                keep = carried + ((V_RCX, V_R11) if rcx_r11 else ()) + ((V_CR2,) if cr2 else ())
                vals = [mv[j] for j in keep]
                regs.read()
                for j, v in zip(keep, vals):
                    mv[j] = v
                return slow()
            f = mv[V_RFLAGS]
            # CPL (hflags), and CS and SS with their hidden caches: the
            # snapshot's, then the selectors (what the slow path's restore
            # and selector writes leave)
            pack(b, head, mv[V_RIP], f, 0, f & CC_FLAGS, 0, cc_op, -1 if f & DF else 1, flags8, es,
                 mv[V_CS] & 0xFFFF, cs_rest, mv[V_SS] & 0xFFFF, ss_rest)
            q[i_rsp] = mv[V_RSP]
            if rcx_r11:
                q[i_rcx] = mv[V_RCX]
                q[i_r11] = mv[V_R11]
            if cr2:
                q[i_cr2] = mv[V_CR2]
            d[old] = s_old
            restore(hv, ptr)
        return patch_restore

    # -- equivalence ------------------------------------------------------------------------
    def _state(self) -> dict:
        """The state an entry leaves: every register of the register file and
        the data selectors through the API; CPL, the CS/SS hidden caches and
        the exception in flight from a saved context."""
        cpu = self.cpu
        regs = self._regs
        saved = bytes(regs.buf)
        regs.read()
        out = dict(regs.snapshot())
        for i in range(16):
            out[f"xmm{i}"] = bytes(regs.buf[16 * IDX[f"xmm{i}"]:16 * IDX[f"xmm{i}"] + 16])
        regs.buf[:] = saved
        for name, rid in _EXTRA:
            out[name] = cpu._read_reg(rid)
        out["efer"] = cpu.msr(MSR_EFER)
        L = self.L
        if L is not None:
            ctx = cpu.uc.context_save()
            raw = ctypes.string_at(ctypes.cast(ctx.context, ctypes.c_void_p).value, self._size)
            out["hflags(cpl)"] = raw[L.hflags:L.hflags + 8].hex()
            out["cs cache"] = raw[L.cs:L.cs + SEG].hex()
            out["ss cache"] = raw[L.ss:L.ss + SEG].hex()
            out["old_exception"] = raw[L.old_exception:L.old_exception + 4].hex()
        return out

    def compare_fast(self, kind: str, fast, general, frame_len: int) -> None:
        """``check`` mode for a fast entry (the SYSCALL closure, plan.py):
        run it, then the general path with the ``slow`` entry from the same
        state; the CPU states and the frames written (``frame_len`` bytes at
        the new RSP) must be equal byte for byte.  The general path's result
        stays."""
        cpu = self.cpu
        start = cpu.uc.context_save()
        disagreements = cpu.mmu_disagreements
        if not fast():
            general()
            return
        cpu.mmu_disagreements = disagreements      # the general path checks again
        got = self._state()
        frame = self._frame(got["rsp"], frame_len, clear=True)
        cpu.uc.context_restore(start)
        self.variant = "slow"
        try:
            general()
        finally:
            self.variant = "check"
        ref = self._state()
        ref_frame = self._frame(ref["rsp"], frame_len, clear=False)
        diff = {k: (ref[k], got.get(k)) for k in ref if got.get(k) != ref[k]}
        if frame != ref_frame:
            diff["frame"] = (ref_frame.hex(), frame.hex())
        if diff:
            what = ", ".join(f"{k}: slow {_fmt(a)} / fast {_fmt(b)}" for k, (a, b) in sorted(diff.items()))
            raise TransitionMismatch(f"kernel entry ({kind}) differs between the fast and the slow path: {what}")
        self.checked += 1

    def _frame(self, rsp: int, n: int, clear: bool) -> bytes:
        """The ``n`` bytes at ``rsp`` (CPL 0, through the CPU's MMU); with
        ``clear`` zeroed after reading, so the next path must write them."""
        if not n:
            return b""
        pa = self.cpu.hw_translate(rsp, 0)
        if pa is None or (rsp & 0xFFF) + n > 4096:
            raise TransitionMismatch(f"kernel entry: the frame at {rsp:#x} is not readable")
        data = bytes(self.cpu.mem.read(pa, n))
        if clear:
            self.cpu.mem.write(pa, bytes(n))
        return data

    def _compare(self, kind: str, rcx_r11: bool, cr2: bool) -> None:
        """Run the slow path and the others from the same state; the slow
        path's state must be reached by each.  In ``check`` mode a difference
        raises; on a first ``inplace`` entry it makes the CPU use ``api``."""
        cpu = self.cpu
        regs = self._regs
        start = cpu.uc.context_save()
        wanted = bytes(regs.buf)
        self._slow()
        ref = self._state()
        others = ("api", "inplace") if self.variant == "check" else ("inplace",)
        if self.L is None:
            others = tuple(o for o in others if o != "inplace")
        for other in others:
            cpu.uc.context_restore(start)
            regs.buf[:] = wanted
            if other == "api":
                self._api()
            else:
                self.saved = False
                self._inplace(rcx_r11, cr2)
            got = self._state()
            diff = {k: (ref[k], got.get(k)) for k in ref if got.get(k) != ref[k]}
            if diff:
                what = ", ".join(f"{k}: slow {_fmt(a)} / {other} {_fmt(b)}" for k, (a, b) in sorted(diff.items()))
                if self.variant == "check":
                    raise TransitionMismatch(f"kernel entry ({kind}) differs between paths: {what}")
                self.variant = "api"
                self.unverified = set()
                self.why = f"the first {kind} entry differed from the slow path: {what}"
                cpu.uc.context_restore(start)
                regs.buf[:] = wanted
                self._slow()
                return
        self.checked += 1
        self.unverified.discard(kind)


def _fmt(v) -> str:
    return f"{v:#x}" if isinstance(v, int) else str(v)
