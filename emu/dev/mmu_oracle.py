"""The CPU's own MMU as an oracle for the reference walker (differential testing).

:class:`MmuOracle` answers "what does the CPU do with this access?" for any
page table in a :class:`PhysMem`, at CPL0 or CPL3, under any control state
(CR0.WP, CR4.SMEP/SMAP/PKE, EFER.NXE, RFLAGS.AC, PKRU), in two ways:

* :meth:`MmuOracle.hw_translate`: ``uc_vmem_translate`` with the CPU really
  at the requested CPL and control state (a probe: no instruction runs);
* :meth:`MmuOracle.access`: a real instruction executed by the CPU --
  ``mov al, [rdi]``, ``mov [rdi], al`` or ``jmp rdi`` -- reporting the
  exception vector, CR2 and the error code the CPU itself computed;
* :meth:`MmuOracle.access_batch` / :meth:`MmuOracle.check_batch`: the same
  executed accesses for many cases of one session (root, CPL, control
  state) in one ``emu_start`` (:mod:`emu.dev.mmu_batch`).

It belongs to the CPU layer and talks to Unicorn directly.  The design
follows what Unicorn 2.1.4 does (docs/architecture.md, Unicorn facts), and what its
QEMU code (target/i386/excp_helper.c, accel/tcg/cputlb.c) shows:

* A run starts from a CPL0 snapshot (``context_restore``): after one fault
  QEMU's pending-exception state turns the next fault into #DF, and
  ``context_restore`` is a plain copy of the CPU state, so it also brings
  back CPL0 and the snapshot's CR0/CR4/EFER/PKRU.  It does *not* flush the
  TLB; the harness therefore ends its set-up with ``mov cr3``.
* The control state is applied by the guest itself, in one run: set-up
  code in a reserved supervisor page writes CR4 (with PKE, so that
  ``wrpkru`` is legal -- PKRU has no Unicorn register), PKRU, the CR4
  under test, CR0, EFER and finally CR3 (a CR3 write flushes the whole
  TLB, Unicorn fact 5).  CPL3 is then reached with ``sysret``; writing CS through
  the register API would not change the CPL.
* Every path ends in ``int3`` (delivered to ``UC_HOOK_INTR``, which stops
  the CPU) and runs with an exact instruction ``count``: a cached
  translation block ignores a new ``until`` address.
* ``uc_vmem_translate`` uses the current CPL and SMAP/AC state and goes
  through the TLB; a failed probe writes CR2 and QEMU's error code, which
  is harmless because every run restores the snapshot.

The page tables under test must leave two top-level slots to the oracle
(:attr:`MmuOracle.RESERVED_SLOTS`): slot 511 holds the supervisor code
page and slot 255 the user code page, each with the batch program's 2 MiB
page (one frame, mapped in both) right after it.  :meth:`MmuOracle.install` writes
those two entries into a root.

Leaves may point anywhere, but executed accesses should land beyond RAM
(the CPU reports an unmapped access: the translation succeeded) or in
:attr:`MmuOracle.scratch`, a 2 MiB frame of ``int3`` bytes that can be
read, written and executed harmlessly.  As a safety net, a successful
write anywhere else in RAM is undone after the run.
"""

from __future__ import annotations

import ctypes

from unicorn import unicorn_const as UC
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from emu.dev.mmu_batch import BatchRuns
from emu.dev.mmu_verdict import Disagreement, HarnessError, Outcome, agrees, describe_ctl
from emu.hw.cpu import Cpu, CpuConfig, RegBatch
from emu.hw.cpu import error_code_offset
from emu.hw.x86 import CR0_WP, CR4_PKE, CR4_SMAP, CR4_SMEP, EFER_NXE, MSR_EFER, MSR_STAR, RFLAGS_RESERVED
from emu.hw.x86 import RF_AC as RFLAGS_AC
from emu.hw.paging import (A, mode_for, D, FETCH, MAXPHYADDR, PS, READ, RW, US, VEC_GP, VEC_PF, WRITE,
                     ControlState, Fault, P, Translation, parse_access, translate)
from emu.hw.phys import SIZE_2M, FrameKind, PhysMem

__all__ = ["MmuOracle", "Outcome", "Disagreement", "HarnessError", "describe_ctl"]


# --- harness code -----------------------------------------------------------
# Registers loaded by one batch write before each run (see _SETUP).
_IN_REGS = ("rbx", "r13", "rbp", "rsi", "r8", "r9", "rax", "r10", "r14", "r12", "r11", "rdi",
            "rflags", "cr2")
_OUT_REGS = ("rip", "cr2", "cs")

# CPL0 set-up, entered from the snapshot (CPL0, harness root in CR3).  The
# order matters: CR4 gets PKE first so that wrpkru is legal even when the
# state under test has PKE clear (PKRU then still holds its value and must
# be ignored); CR3 is written last because it flushes the TLB, so nothing
# cached under the previous case survives.
_SETUP = [
    "mov cr4, rbx",             # rbx: CR4 with PKE set
    "mov eax, r9d",             # r9: PKRU
    "xor ecx, ecx",
    "xor edx, edx",
    "wrpkru",
    "mov cr4, r13",             # r13: CR4 under test
    "mov cr0, rbp",             # rbp: CR0 under test (WP)
    "mov ecx, 0xC0000080",      # EFER (NXE; SCE for sysret)
    "mov eax, esi",
    "xor edx, edx",
    "wrmsr",
    "mov cr3, r8",              # r8: root under test
    "mov rax, r10",             # r10: the byte a write stores (int3, harmless in scratch)
    "jmp r14",                  # r14: next stage
]
_KERNEL_STAGES = [
    ("sysret", ["mov rcx, r12", "sysret"]),    # raw keystone: its sysret is sysretq (docs/assembler.md)    # r12: user RIP; r11: user RFLAGS
    ("r", ["mov al, byte ptr [rdi]", "int3"]),
    ("w", ["mov byte ptr [rdi], al", "int3"]),
    ("x", ["jmp rdi"]),
    ("park", ["int3"]),
]
_USER_STAGES = [
    ("r", ["mov al, byte ptr [rdi]", "int3"]),
    ("w", ["mov byte ptr [rdi], al", "int3"]),
    ("x", ["jmp rdi"]),
    ("park", ["int3"]),
]
_STAGE_OF = {READ: "r", WRITE: "w", FETCH: "x"}

INT3 = 0xCC
_UC_ERR_UNMAPPED = {UC.UC_ERR_READ_UNMAPPED: READ, UC.UC_ERR_WRITE_UNMAPPED: WRITE,
                    UC.UC_ERR_FETCH_UNMAPPED: FETCH}


def _assemble(stages: list[tuple[str, list[str]]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Assemble routines back to back; returns the code and each routine's
    (start, end) offsets."""
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks

    ks = Ks(KS_ARCH_X86, KS_MODE_64)
    code, spans = b"", {}
    for name, lines in stages:
        start = len(code)
        for line in lines:
            code += bytes(ks.asm(line)[0])
        spans[name] = (start, len(code))
    return code, spans


def _top_slot_va(slot: int, levels: int) -> int:
    mode = mode_for(levels)
    return mode.sign_extend(slot << mode.top_shift)


class MmuOracle(BatchRuns):
    """Unicorn's MMU, driven at a chosen CPL and control state, for any root.

    ``levels`` 5 uses the Icelake-Server model (LA57); 4 uses Skylake-Server.
    Both have SMEP, SMAP and PKU, and a 40-bit physical address width.
    """

    KERNEL_SLOT = 511
    USER_SLOT = 255
    #: Top-level slots owned by the oracle: generators must leave them alone.
    RESERVED_SLOTS = frozenset({USER_SLOT, KERNEL_SLOT})
    #: CR2 before every run: a #PF that did not happen cannot look like one.
    CR2_SENTINEL = 0xDEAD0000
    #: QEMU's error code before every run, for the same reason.
    EC_SENTINEL = 0x5A5A

    def __init__(self, mem: PhysMem, levels: int = 4):
        if levels not in (4, 5):
            raise ValueError(f"paging levels must be 4 or 5, not {levels}")
        self.mem = mem
        self.levels = levels
        self.cpu = Cpu(mem, CpuConfig(la57=levels == 5))
        self.uc = self.cpu.uc
        self._build_harness()
        # the scratch frame: every byte is int3, so reads, writes of int3 and
        # fetches there are harmless and easy to recognise
        self.scratch = mem.frames.alloc(FrameKind.USER, 9, "mmu-oracle scratch")
        mem.write(self.scratch, bytes([INT3]) * SIZE_2M)
        self._start_cpu()

    # -- set-up ----------------------------------------------------------------
    def _table(self) -> int:
        return self.mem.frames.alloc(FrameKind.PGTABLE, 0, "mmu-oracle")

    def _chain(self, va: int, code_pa: int, table_flags: int, leaf_flags: int) -> int:
        """Tables below the top level mapping one code page at ``va`` and the
        batch program's 2 MiB page right after it (:mod:`emu.dev.mmu_batch`);
        returns the table the top-level entry points to."""
        first = t = self._table()
        for level in mode_for(self.levels).levels[1:-1]:
            shift = level.shift
            nt = self._table()
            self.mem.write_u64(t + 8 * ((va >> shift) & 511), nt | table_flags)
            pd, t = t, nt
        self.mem.write_u64(pd + 8 * (((va + SIZE_2M) >> shift) & 511), self._prog | leaf_flags | PS)
        self.mem.write_u64(t + 8 * ((va >> 12) & 511), code_pa | leaf_flags)
        return first

    def _build_harness(self) -> None:
        mem = self.mem
        self.kernel_va = _top_slot_va(self.KERNEL_SLOT, self.levels)
        self.user_va = _top_slot_va(self.USER_SLOT, self.levels)
        kcode, koff = _assemble([("setup", _SETUP)] + _KERNEL_STAGES)
        ucode, uoff = _assemble(_USER_STAGES)
        kpage = mem.frames.alloc(FrameKind.KERNEL_TEXT, 0, "mmu-oracle")
        upage = mem.frames.alloc(FrameKind.USER, 0, "mmu-oracle")
        mem.write(kpage, kcode)
        mem.write(upage, ucode)
        self._prog = mem.frames.alloc(FrameKind.USER, 9, "mmu-oracle batch program")
        # Entries with A and D already set: the CPU never needs to write them.
        # Supervisor code (SMEP-safe, never a data target); user code (fetch
        # only, so protection keys never apply).  No XD: NXE may be off.
        self._kernel_top = self._chain(self.kernel_va, kpage, P | RW | A, P | A | D) | P | RW | A
        self._user_top = self._chain(self.user_va, upage, P | RW | US | A, P | US | A | D) | P | RW | US | A
        # routine addresses, and where RIP is after each routine's final int3
        self._k = {n: self.kernel_va + o for n, (o, _) in koff.items()}
        self._u = {n: self.user_va + o for n, (o, _) in uoff.items()}
        self._k_end = {n: self.kernel_va + e for n, (_, e) in koff.items()}
        self._u_end = {n: self.user_va + e for n, (_, e) in uoff.items()}
        n_setup = len(_SETUP)
        # exact instruction counts per path: set-up, [mov rcx + sysret,] access + int3
        # (or jmp + the first instruction at the target)
        self._count = {0: n_setup + 2, 3: n_setup + 2 + 2}
        self._park_count = {0: n_setup + 1, 3: n_setup + 2 + 1}

    def install(self, root: int) -> None:
        """Write the oracle's two top-level entries (slots 255 and 511) into ``root``."""
        self.mem.write_u64(root + 8 * self.KERNEL_SLOT, self._kernel_top)
        self.mem.write_u64(root + 8 * self.USER_SLOT, self._user_top)

    def _start_cpu(self) -> None:
        cpu = self.cpu
        self.harness_root = self._table()
        self.install(self.harness_root)
        cpu.enable_paging(self.harness_root, ControlState(la57=self.levels == 5, pke=True))
        # sysret: user CS = STAR[63:48] + 16 (0x33), SS = STAR[63:48] + 8 (0x2b)
        cpu.set_msr(MSR_STAR, (0x23 << 48) | (0x10 << 32))
        self._cr0 = cpu.reg("cr0") & ~CR0_WP
        self._cr4 = cpu.reg("cr4") & ~(CR4_SMEP | CR4_SMAP | CR4_PKE)
        self._efer = cpu.msr(MSR_EFER) & ~EFER_NXE
        cpu.flush_code_cache()  # harness code was written behind the CPU's back

        # Hooks go in before anything runs (a hook added after code was
        # translated fires only after a TB flush, Unicorn fact 9).
        self._vector = None
        self._pa = None
        self.last_pa = None     # physical address of the last executed access, if seen
        self.last_outcome: Outcome | None = None   # of the last check_access
        self.last_walk: Translation | Fault | None = None  # walker's verdict in the last check
        self._undo: list[tuple[int, bytes]] = []
        cpu.add_hook("intr", self._on_intr)
        cpu.add_hook("mem", self._on_mem)
        cpu.add_hook("unmapped", self._on_unmapped)

        self._in = RegBatch(cpu, [getattr(X, f"UC_X86_REG_{r.upper()}") for r in _IN_REGS])
        self._out = RegBatch(cpu, [getattr(X, f"UC_X86_REG_{r.upper()}") for r in _OUT_REGS])
        self._snapshot = self.uc.context_save()
        self._ec_off = error_code_offset()
        if self._ec_off is not None:
            # runs start from this error code, so a stale one is never mistaken
            # for the CPU's answer
            ctypes.c_int32.from_address(ctypes.cast(self._snapshot.context, ctypes.c_void_p).value
                                        + self._ec_off).value = self.EC_SENTINEL
        self._session = None
        self._batch_setup(self._prog)

    # -- hooks -------------------------------------------------------------------
    # (raw C callbacks, Cpu.add_hook; while a batch runs, its own handlers)
    def _on_intr(self, _uch, intno, _user_data):
        if self._b_active:
            self._b_on_intr(intno)
            return
        if self._vector is None:
            self._vector = intno
        self.cpu.emu_stop()

    def _on_mem(self, _uch, kind, addr, size, _value, _user_data):
        # with paging on, memory hooks see physical addresses (Unicorn fact 7)
        if self._b_active:
            self._b_on_mem(kind == UC.UC_MEM_WRITE, addr, size)
            return
        self._pa = addr
        if kind == UC.UC_MEM_WRITE and not self.in_scratch(addr) and 0 <= addr < self.mem.size:
            self._undo.append((addr, self.mem.read(addr, size)))

    def _on_unmapped(self, _uch, _kind, addr, _size, _value, _user_data):
        if self._b_active:
            self._b_on_unmapped(addr)
        else:
            self._pa = addr
        return False

    # -- running -------------------------------------------------------------------
    def in_scratch(self, pa: int) -> bool:
        return self.scratch <= pa < self.scratch + SIZE_2M

    def safe_pa(self, pa: int, size: int = 1) -> bool:
        """True if an executed access may touch ``[pa, pa+size)``: beyond RAM or in scratch."""
        return pa >= self.mem.size or (self.in_scratch(pa) and self.in_scratch(pa + size - 1))

    def _check_ctl(self, ctl: ControlState) -> None:
        if ctl.la57 != (self.levels == 5):
            raise ValueError(f"ctl.la57={ctl.la57} does not match a {self.levels}-level oracle")
        if ctl.maxphyaddr != MAXPHYADDR:
            raise ValueError(f"the CPU's physical address width is {MAXPHYADDR}, not {ctl.maxphyaddr}")

    def _run(self, root: int, cpl: int, ctl: ControlState, stage: str, va: int, park: bool) -> int:
        """Restore the snapshot, load the inputs and run one path; returns uc_err."""
        if cpl not in (0, 3):
            raise ValueError(f"cpl must be 0 or 3, not {cpl}")
        self._check_ctl(ctl)
        uclib.uc_context_restore(self.cpu.handle, self._snapshot.context)
        cr4 = (self._cr4 | (CR4_SMEP if ctl.smep else 0) | (CR4_SMAP if ctl.smap else 0)
               | (CR4_PKE if ctl.pke else 0))
        rflags = RFLAGS_RESERVED | (RFLAGS_AC if ctl.ac else 0)
        if cpl == 3:
            next_stage, user_rip = self._k["sysret"], self._u[stage]
        else:
            next_stage, user_rip = self._k[stage], 0
        v = self._in.vals
        (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]) = (
            self._cr4 | CR4_PKE, cr4, self._cr0 | (CR0_WP if ctl.wp else 0),
            self._efer | (EFER_NXE if ctl.nxe else 0), root, ctl.pkru & 0xFFFFFFFF,
            INT3, INT3, next_stage, user_rip, rflags, va & 0xFFFFFFFFFFFFFFFF, rflags,
            self.CR2_SENTINEL)
        self._in.write()
        self._vector = self._pa = None
        count = (self._park_count if park else self._count)[cpl]
        # Cpu runs Unicorn in exits mode with no exits, so there is no 'until':
        # otherwise, after every run Unicorn invalidates the block at
        # until-1 by translating it as an instruction fetch (softmmu/cpus.c,
        # uc_exit_invalidate_iter), and a failing translation overwrites CR2
        # and QEMU's error code; it skips that step only for until == 0.
        err = self.cpu.emu_start(self._k["setup"], count)
        for pa, old in self._undo:      # the safety net: writes outside scratch are undone
            self.mem.write(pa, old)
        self._undo.clear()
        return err

    def _enter(self, root: int, cpl: int, ctl: ControlState) -> None:
        """Put the CPU at ``cpl`` under ``ctl`` with ``root`` in CR3 (parked on int3)."""
        key = (root, cpl, ctl)
        if self._session == key:
            return
        self._session = None
        err = self._run(root, cpl, ctl, "park", 0, park=True)
        rip, _cr2, cs = self._out.read()
        end = (self._u_end if cpl == 3 else self._k_end)["park"]
        if err or self._vector != 3 or rip != end or cs & 3 != cpl:
            raise HarnessError(f"could not park the CPU at CPL{cpl} (err {err}, vector {self._vector}, "
                               f"rip {rip:#x}, cs {cs:#x}); is the root {root:#x} sane?")
        self._session = key
        self._save_session()

    def flush_tlb(self) -> None:
        """Call after editing tables between :meth:`hw_translate` calls."""
        self.cpu.flush_tlb()

    # -- the two oracles -------------------------------------------------------------
    def hw_translate(self, root: int, va: int, access=READ, cpl: int = 0,
                     ctl: ControlState | None = None) -> int | None:
        """The physical address the CPU's MMU gives ``va``, or None if it faults.

        The CPU is really at ``cpl`` with ``ctl`` applied and ``root`` in CR3;
        consecutive calls with the same (root, cpl, ctl) reuse that state.
        """
        acc = parse_access(access)
        self._enter(root, cpl, ctl or ControlState(la57=self.levels == 5))
        return self.cpu.hw_translate(va, acc)

    def access(self, root: int, va: int, access=READ, cpl: int = 0,
               ctl: ControlState | None = None) -> Outcome:
        """Execute one access to ``va`` on the CPU and report what happened.

        Read ``mov al, [rdi]``, write ``mov [rdi], al`` (storing int3),
        fetch ``jmp rdi``: a fetch fault is a #PF (or #GP) with RIP and CR2
        at the target; anything else after the jump means the fetch itself
        went through.  Raises :class:`HarnessError` if the run ends anywhere
        the harness did not expect.
        """
        acc = parse_access(access)
        ctl = ctl or ControlState(la57=self.levels == 5)
        va &= 0xFFFFFFFFFFFFFFFF
        self._session = None
        stage = _STAGE_OF[acc]
        err = self._run(root, cpl, ctl, stage, va, park=False)
        rip, cr2, cs = self._out.read()
        vector = self._vector
        self.last_pa = self._pa
        where = (self._u if cpl == 3 else self._k)[stage]
        end = (self._u_end if cpl == 3 else self._k_end)[stage]
        if cs & 3 != cpl:
            raise HarnessError(f"access ran at CPL{cs & 3}, not CPL{cpl} (rip {rip:#x}, vector {vector})")
        if acc == FETCH:
            if err == UC.UC_ERR_FETCH_UNMAPPED and vector is None:
                return Outcome(None, cr2, None)     # translated; the target is beyond RAM
            # a data access by the target's own instruction says nothing about the fetch
            self.last_pa = None
            if vector in (VEC_GP, VEC_PF) and rip == va and (vector == VEC_GP or cr2 == va):
                return Outcome(vector, cr2, self._error_code())
            if rip == where:
                raise HarnessError(f"jmp {va:#x} at CPL{cpl} did not happen (vector {vector}, err {err})")
            # The jump landed and the target's first instruction ran (int3 in
            # scratch) or failed on its own: either way the fetch went through.
            return Outcome(None, cr2, None)
        if err in _UC_ERR_UNMAPPED and _UC_ERR_UNMAPPED[err] == acc and vector is None:
            return Outcome(None, cr2, None)         # translated; the data is beyond RAM
        if err:
            raise HarnessError(f"uc_emu_start failed with error {err} at rip {rip:#x} "
                               f"({stage} {va:#x} at CPL{cpl})")
        if vector in (VEC_GP, VEC_PF) and rip == where:
            return Outcome(vector, cr2, self._error_code())
        if vector == 3 and rip == end:
            return Outcome(None, cr2, None)
        raise HarnessError(f"unexpected end of a {stage} of {va:#x} at CPL{cpl}: vector {vector}, "
                           f"rip {rip:#x}, err {err}")

    def _error_code(self) -> int | None:
        if self._ec_off is None:
            return None
        return self.cpu.last_error_code()

    # -- differential checks ---------------------------------------------------------
    def check_hw(self, root: int, va: int, access, cpl: int, ctl: ControlState,
                 walk: Translation | Fault | None = None) -> Disagreement | None:
        """Walker vs ``hw_translate``: fault or not, and the physical address.
        ``walk``: the walker's verdict for these arguments, if the caller has it."""
        acc = parse_access(access)
        w = self.last_walk = walk or translate(self.mem, root, va, acc, cpl, ctl)
        hw = self.hw_translate(root, va, acc, cpl, ctl)
        if (hw is None) if w.fault is None else (hw is not None):
            return Disagreement("hw_translate", root, va, acc, cpl, ctl, w, hw)
        if hw is not None and hw != w.pa:
            return Disagreement("hw_translate", root, va, acc, cpl, ctl, w, hw)
        return None

    def check_access(self, root: int, va: int, access, cpl: int, ctl: ControlState,
                     walk: Translation | Fault | None = None) -> Disagreement | None:
        """Walker vs an executed access: fault or not, vector, CR2 and the CPU's
        error code (when calibrated), and the physical address the access
        touched when the memory hooks saw it.  ``walk`` as for :meth:`check_hw`."""
        acc = parse_access(access)
        w = self.last_walk = walk or translate(self.mem, root, va, acc, cpl, ctl)
        o = self.access(root, va, acc, cpl, ctl)
        self.last_outcome = o
        pa = self.last_pa
        if agrees(w, o, pa, va, self.CR2_SENTINEL):
            return None
        return Disagreement("access", root, va, acc, cpl, ctl, w, o, pa)

    @property
    def error_codes_available(self) -> bool:
        """False if QEMU's error-code field could not be located (then only the
        vector and CR2 of executed accesses are comparable)."""
        return self._ec_off is not None
