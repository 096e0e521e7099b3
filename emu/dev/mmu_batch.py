"""Many executed accesses per ``emu_start``: the batch path of the CPU-MMU oracle.

:meth:`BatchRuns.access_batch` runs a list of (va, access) cases for one
session -- one root, one CPL, one control state -- as a straight-line guest
program, instead of one ``emu_start`` per case (:meth:`MmuOracle.access`,
which restores a snapshot, writes 14 registers and runs the whole set-up for
every case).  Each case is a 22-byte record in a 2 MiB code page that the
oracle maps supervisor in its kernel slot and user in its user slot (the
same frame), so CPL 0 and CPL 3 run the same bytes:

    mov r15d, INDEX          41 BF imm32      (the case index, for the hooks)
    movabs rdi, VA           48 BF imm64
    mov al, 0xCC             B0 CC            (the byte a write stores: int3)
    ACCESS                   8A 07 | 88 07 | FF E7   (mov al,[rdi] / mov [rdi],al / jmp rdi)
    jmp NEXT                 EB 00            (CC CC after a jmp rdi)

The program ends in ``int3``.  The ``jmp`` ends QEMU's translated block after
each case (Unicorn fact 13), so a fault never leaves a long block to
retranslate, and every case is seen by a hook -- nothing is inferred from a
case's silence:

* a successful data access reaches the memory hook (RAM) or the unmapped
  hook (beyond RAM) with the physical address (Unicorn fact 7);
* a successful fetch enters a translated block at the target: a block hook
  over every address outside the oracle's two slots records it and moves
  RIP to the next record before the target's code runs;
* a fault reaches ``UC_HOOK_INTR`` (Unicorn fact 2) with RIP at the access
  (or at the target, for a fetch), CR2 and the CPU's own error code; the hook
  restores the session snapshot and moves RIP to the next record.  The
  restore is what clears QEMU's pending exception, which would turn the next
  fault into #DF (Unicorn fact 3); it also puts CR2 and the error code back to
  their sentinels, and the session's CPL and control state back.

A run stopped by an access beyond RAM (the unmapped hook returns False) or
by a write into RAM outside the scratch frame (undone at once, like the
one-case path's safety net) restarts at the next case.

The TLB is flushed at every (re)start, like the one-case path's CR3 write,
but not between the cases of a session.  That cannot change a verdict: the
root, CPL and control state are fixed for the session, QEMU indexes its TLB
by MMU mode (the CPL, and SMAP with RFLAGS.AC) and fills it only from a
successful walk (target/i386/tcg/sysemu/excp_helper.c: a fault is raised,
never cached), with the permissions of that walk or fewer (a page whose D
bit is clear is entered without write permission, so the first write walks
again), and the only change the CPU makes to the tables, A and D bits, never
changes a verdict.  A fetch whose target already has a translated block in
the jump cache is not walked again; it succeeded before under the same
state.  tests/test_mmu_batch.py checks the batch against the one-case path.
"""

from __future__ import annotations

import ctypes
import functools
import struct

from unicorn import unicorn_const as UC
from unicorn import x86_const as X

from emu.dev.mmu_verdict import MASK64, Disagreement, HarnessError, Outcome, agrees
from emu.hw.cpu import C, RegBatch
from emu.hw.paging import FETCH, READ, VEC_GP, VEC_PF, WRITE, ControlState, mode_for, parse_access, translate
from emu.hw.phys import SIZE_2M

__all__ = ["BatchRuns", "RECORD_SIZE"]

RECORD_SIZE = 22
_ACCESS_AT = 18                     # offset of the access instruction in a record
_ACCESS_BYTES = {READ: b"\x8a\x07", WRITE: b"\x88\x07", FETCH: b"\xff\xe7"}
_TAIL = {READ: b"\xeb\x00", WRITE: b"\xeb\x00", FETCH: b"\xcc\xcc"}
_RECORD = struct.Struct("<2sI2sQ2s2s2s")
_HEAD = (b"\x41\xbf", b"\x48\xbf", b"\xb0\xcc")
_INSNS_PER_CASE = 6                 # 5 per record, and the fetch target's first instruction
_UC_ERR_UNMAPPED = {UC.UC_ERR_READ_UNMAPPED: READ, UC.UC_ERR_WRITE_UNMAPPED: WRITE,
                    UC.UC_ERR_FETCH_UNMAPPED: FETCH}


def encode_program(cases: list[tuple[int, int]]) -> bytes:
    """The guest program for ``cases`` ((va, access) pairs): one record each, then int3."""
    out = bytearray(RECORD_SIZE * len(cases) + 1)
    pack = _RECORD.pack_into
    h0, h1, h2 = _HEAD
    for i, (va, acc) in enumerate(cases):
        pack(out, RECORD_SIZE * i, h0, i, h1, va & MASK64, h2, _ACCESS_BYTES[acc], _TAIL[acc])
    out[-1] = 0xCC
    return bytes(out)


class BatchRuns:
    """Mixed into :class:`emu.dev.mmu_oracle.MmuOracle`: the batch path."""

    #: Cases per guest program (the 2 MiB code page); longer lists run in pieces.
    BATCH_MAX = (SIZE_2M - 1) // RECORD_SIZE

    def _batch_setup(self, prog_pa: int) -> None:
        """Called once the CPU exists and before anything runs (hooks are
        only seen by blocks translated after they are added, Unicorn fact 9)."""
        cpu = self.cpu
        self._prog_pa = prog_pa
        self._prog_va = {0: self.kernel_va + SIZE_2M, 3: self.user_va + SIZE_2M}
        self._prog_cases: list | None = None
        self._b_active = False
        # The hooks run once per case: their C calls take prebuilt arguments.
        regs = RegBatch(cpu, [X.UC_X86_REG_R15, X.UC_X86_REG_CR2, X.UC_X86_REG_RIP, X.UC_X86_REG_CS])
        self._b_read = functools.partial(C.reg_read_batch, cpu.hv, regs.ids, regs.ptrs, regs.n)
        self._b_vals = regs.vals
        self._b_keep = regs
        self._b_rip_val = ctypes.c_uint64()
        self._b_set_rip = functools.partial(C.reg_write, cpu.hv, ctypes.c_int(X.UC_X86_REG_RIP),
                                            ctypes.byref(self._b_rip_val))
        self._sess = self.uc.context_save()
        self._sess_ptr = ctypes.c_void_p(ctypes.cast(self._sess.context, ctypes.c_void_p).value)
        self._b_restore = functools.partial(C.context_restore, cpu.hv, self._sess_ptr)
        # the error code of a fault: a context saved into a buffer of our own
        self._b_ctx = self.uc.context_save()
        ctx = ctypes.cast(self._b_ctx.context, ctypes.c_void_p).value
        self._b_save = functools.partial(C.context_save, cpu.hv, ctypes.c_void_p(ctx))
        self._b_ec = None if self._ec_off is None else ctypes.c_int32.from_address(ctx + self._ec_off)
        # fetch targets: everywhere but the oracle's two top-level slots
        span = self._slot_span = 1 << mode_for(self.levels).top_shift
        user_lo, kernel_lo = self._user_lo, self._kernel_lo = self.user_va, self.kernel_va & MASK64
        cpu.add_hook("block", self._b_on_block, 0, user_lo - 1)
        cpu.add_hook("block", self._b_on_block, user_lo + span, kernel_lo - 1)

    def _save_session(self) -> None:
        """The CPU is parked in a new session: keep its state for the batch's restores."""
        C.context_save(self.cpu.hv, self._sess_ptr)
        if self._ec_off is not None:
            ctypes.c_int32.from_address(self._sess_ptr.value + self._ec_off).value = self.EC_SENTINEL

    def _load_program(self, cases: list[tuple[int, int]]) -> None:
        if cases == self._prog_cases:
            return
        self.mem.write(self._prog_pa, encode_program(cases))
        self.cpu.flush_code_cache()         # written behind the CPU's back (Unicorn fact 8)
        self._prog_cases = list(cases)

    # -- hooks (called from the oracle's hooks while a batch runs) ---------------------
    def _b_fail(self, e: BaseException) -> None:
        if self._b_error is None:
            self._b_error = e
        self.cpu.emu_stop()

    def _b_case(self, i: int, what: str) -> tuple[int, int]:
        if not 0 <= i < len(self._b_cases) or self._b_res[i] is not None:
            raise HarnessError(f"batch: {what} for case {i}, which is out of range or already recorded")
        return self._b_cases[i]

    def _b_on_intr(self, intno: int) -> None:
        try:
            self._b_read()
            i, cr2, rip, cs = self._b_vals
            if cs & 3 != self._b_cpl:
                raise HarnessError(f"batch: vector {intno} at CPL{cs & 3}, rip {rip:#x}; expected CPL{self._b_cpl}")
            if intno == 3 and rip == self._b_end + 1:
                self._b_finished = True
                self.cpu.emu_stop()
                return
            va, acc = self._b_case(i, f"vector {intno} at rip {rip:#x}")
            at = self._b_base + RECORD_SIZE * i + _ACCESS_AT
            fault = intno in (VEC_GP, VEC_PF)
            if acc == FETCH:
                if rip == at:
                    raise HarnessError(f"batch: jmp {va:#x} did not happen (vector {intno})")
                # as in access(): a fault at the target is the fetch's; anything
                # else after the jump means the fetch itself went through
                fault = fault and rip == va and (intno == VEC_GP or cr2 == va)
            elif not (fault and rip == at):
                raise HarnessError(f"batch: vector {intno} at rip {rip:#x} during the "
                                   f"{'read' if acc == READ else 'write'} of {va:#x} (case {i})")
            if fault:
                ec = None
                if self._b_ec is not None:
                    self._b_save()
                    ec = self._b_ec.value
                self._b_res[i] = (intno, cr2, ec)
            else:
                self._b_res[i] = (None, cr2, None)
            # restore the session (no pending exception: Unicorn fact 3) and go on
            self._b_restore()
            self._b_rip_val.value = self._b_base + RECORD_SIZE * (i + 1)
            self._b_set_rip()
        except BaseException as e:  # a ctypes callback cannot raise: stop and re-raise after
            self._b_fail(e)

    def _b_on_block(self, _uch, address, _size, _ud) -> None:
        if not self._b_active:
            return
        try:
            self._b_read()
            i, cr2 = self._b_vals[0], self._b_vals[1]
            va, acc = self._b_case(i, f"a block at {address:#x}")
            if acc != FETCH or va != address:
                raise HarnessError(f"batch: a block at {address:#x} during case {i} ({va:#x})")
            self._b_res[i] = (None, cr2, None)
            self._b_rip_val.value = self._b_base + RECORD_SIZE * (i + 1)
            self._b_set_rip()
        except BaseException as e:
            self._b_fail(e)

    def _b_on_mem(self, write: bool, addr: int, size: int) -> None:
        try:
            self._b_read()
            i, cr2 = self._b_vals[0], self._b_vals[1]
            if self._b_res[i] is not None:
                self._b_case(i, f"an access to {addr:#x}")
            self._b_res[i] = (None, cr2, None)
            self._b_pa[i] = addr
            if write and not self.in_scratch(addr) and 0 <= addr < self.mem.size:
                # the safety net: undone after the run, which stops here and
                # starts again at the next case (nothing runs on a changed RAM)
                self._undo.append((addr, self.mem.read(addr, size)))
                self._b_stop = i
                self.cpu.emu_stop()
        except BaseException as e:
            self._b_fail(e)

    def _b_on_unmapped(self, addr: int) -> None:
        try:
            self._b_read()
            i, cr2 = self._b_vals[0], self._b_vals[1]
            if not (0 <= i < len(self._b_cases) and self._b_pa[i] == addr):
                # (a write beyond RAM reaches the memory hook first)
                self._b_case(i, f"an access beyond RAM at {addr:#x}")
            self._b_res[i] = None
            self._b_pa[i] = addr
            self._b_unmapped = (None, cr2, None)
            self._b_stop = i
        except BaseException as e:
            self._b_fail(e)

    # -- running ---------------------------------------------------------------------
    def _batch(self, root: int, cases: list[tuple[int, int]], cpl: int, ctl: ControlState) -> list:
        self._enter(root, cpl, ctl)
        self._load_program(cases)
        n = len(cases)
        self._b_cases, self._b_cpl = cases, cpl
        self._b_base = base = self._prog_va[cpl]
        self._b_end = base + RECORD_SIZE * n
        self._b_res: list = [None] * n
        self._b_pa: list = [None] * n
        start = 0
        self._b_active = True
        try:
            while start < n:
                for j in range(start, n):
                    self._b_res[j] = self._b_pa[j] = None
                self._b_finished, self._b_stop, self._b_error, self._b_unmapped = False, None, None, None
                self._b_restore()
                self.cpu.flush_tlb()
                # an instruction count, as in the one-case path's runs: a batch
                # run without one, after counted runs, stopped after its first
                # case (seen with Unicorn 2.1.4, not explained)
                err = self.cpu.emu_start(base + RECORD_SIZE * start, _INSNS_PER_CASE * (n - start) + 8)
                undone = bool(self._undo)
                for pa, old in self._undo:
                    self.mem.write(pa, old)
                self._undo.clear()
                if undone:
                    self.cpu.flush_code_cache()     # the write may have hit translated code
                if self._b_error is not None:
                    if isinstance(self._b_error, HarnessError):
                        raise self._b_error
                    raise HarnessError(f"batch: {self._b_error!r} in a hook") from self._b_error
                if self._b_finished and not err:
                    break
                i = self._b_stop
                if i is None:
                    raise HarnessError(f"batch stopped early (error {err}) after case "
                                       f"{max([j for j in range(n) if self._b_res[j]] or [-1])}")
                if self._b_unmapped is not None:
                    if _UC_ERR_UNMAPPED.get(err) != cases[i][1] or self._b_res[i] is not None:
                        raise HarnessError(f"batch: case {i} stopped with error {err}")
                    self._b_res[i] = self._b_unmapped
                start = i + 1
        finally:
            self._b_active = False
            C.context_restore(self.cpu.hv, self._sess_ptr)   # parked in the session again
        out = []
        for i, (r, pa) in enumerate(zip(self._b_res, self._b_pa)):
            if r is None:
                raise HarnessError(f"batch: case {i} ({cases[i][0]:#x}) was never reported")
            out.append((Outcome(*r), pa))
        return out

    def access_batch(self, root: int, cases, cpl: int = 0,
                     ctl: ControlState | None = None) -> list[tuple[Outcome, int | None]]:
        """Execute every (va, access) of ``cases`` at ``cpl`` under ``ctl`` with
        ``root`` in CR3, in one session; returns, per case, the :class:`Outcome`
        that :meth:`access` would report and the physical address the access
        touched when the memory hooks saw it (``last_pa`` of :meth:`access`)."""
        if cpl not in (0, 3):
            raise ValueError(f"cpl must be 0 or 3, not {cpl}")
        ctl = ctl or ControlState(la57=self.levels == 5)
        cases = [(va & MASK64, parse_access(acc)) for va, acc in cases]
        for va, _ in cases:
            if self._user_lo <= va < self._user_lo + self._slot_span or va >= self._kernel_lo:
                raise ValueError(f"{va:#x} is in one of the oracle's own top-level slots")
        out: list = []
        for lo in range(0, len(cases), self.BATCH_MAX):
            out += self._batch(root, cases[lo:lo + self.BATCH_MAX], cpl, ctl)
        return out

    def check_hw_batch(self, root: int, cases, cpl: int, ctl: ControlState, walks=None) -> list[Disagreement]:
        """:meth:`check_hw` for every case of ``cases``: one session, the CPU's
        MMU probed once per case (``uc_vmem_translate``, no instruction runs)."""
        cases = [(va & MASK64, parse_access(acc)) for va, acc in cases]
        if walks is None:
            walks = [translate(self.mem, root, va, acc, cpl, ctl) for va, acc in cases]
        self._enter(root, cpl, ctl)
        probe = self.cpu.hw_translate
        bad = []
        for (va, acc), w in zip(cases, walks):
            hw = probe(va, acc)
            if (hw is None) != (w.fault is not None) or (hw is not None and hw != w.pa):
                bad.append(Disagreement("hw_translate", root, va, acc, cpl, ctl, w, hw))
        return bad

    def check_batch(self, root: int, cases, cpl: int, ctl: ControlState, walks=None) -> list[Disagreement]:
        """:meth:`check_access` for every case of ``cases``, executed as one batch;
        ``walks``: the walker's verdicts for the cases, if the caller has them."""
        cases = [(va & MASK64, parse_access(acc)) for va, acc in cases]
        if walks is None:
            walks = [translate(self.mem, root, va, acc, cpl, ctl) for va, acc in cases]
        sentinel = self.CR2_SENTINEL
        bad = []
        for (va, acc), w, (o, pa) in zip(cases, walks, self.access_batch(root, cases, cpl, ctl)):
            if not agrees(w, o, pa, va, sentinel):
                bad.append(Disagreement("batch", root, va, acc, cpl, ctl, w, o, pa))
        return bad
