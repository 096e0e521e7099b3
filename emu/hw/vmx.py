"""A vCPU: guest machine code on a second Unicorn CPU (docs/guest_memfd.md, "The VM").

Part of the CPU layer, and the one place besides :mod:`emu.hw.cpu` and
:mod:`emu.hw.microcode` that touches Unicorn.  It knows nothing of Linux: a
:class:`Vcpu` runs guest code until a VM exit and reports it with the basic
exit reasons and exit qualifications of the Intel SDM (Vol. 3C, appendix C
and table 28-x: I/O instructions, EPT violations).

What stands in for the hardware:

- **Guest-physical memory is the second CPU's physical address space.**  A
  page is there only once the host maps it (:meth:`Vcpu.map`, at a host
  frame of the machine's :class:`~emu.hw.phys.PhysMem`, the same bytes the
  host kernel sees).  An access to a page not mapped is an EPT violation
  exit with the guest-physical address and the access (read, write, fetch).
  There are no EPT structures: the map is the translation, and
  :meth:`Vcpu.zap` empties it.
- **The guest runs in 64-bit mode without paging** (Unicorn's reset state:
  CR0 = 0x11, long mode, no CR3).  A guest-linear address is therefore its
  guest-physical address, bit 47 included.
- **No IDT, no interrupts.**  Any exception the guest raises ends the run
  as a triple fault (no IDT to deliver it through).
- **HLT** exits at once (no interrupt could wake the vCPU); **OUT** exits
  with its port, size and value; IN is not emulated (the guest gets 0).
- **Time.**  Each :meth:`Vcpu.run` executes at most ``budget`` guest
  instructions, then exits as the VMX-preemption timer does.  The budget is
  Unicorn's own instruction count (a C call per instruction, docs/architecture.md,
  Unicorn fact 14), not a Python code hook (about 0.7 µs an instruction,
  fact 9); the number of instructions an exit reports is Unicorn's counter,
  read where :func:`counter_offset` found it.  This CPU has no code hook of
  its own: with a count, every instruction runs through the whole list
  (fact 13).  A stop request (:meth:`Vcpu.stop`, from Ctrl-C) ends the run
  at the next slice of :data:`SLICE` instructions, with the same exit.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass

from unicorn import Uc, UcError
from unicorn import unicorn_const as UC
from unicorn import x86_const as X

from emu.errors import GuestError
from emu.hw.phys import PhysMem

# basic exit reasons (Intel SDM Vol. 3D, appendix C)
EXIT_REASON_EXCEPTION_NMI = 0
EXIT_REASON_TRIPLE_FAULT = 2
EXIT_REASON_HLT = 12
EXIT_REASON_IO_INSTRUCTION = 30
EXIT_REASON_EPT_VIOLATION = 48
EXIT_REASON_PREEMPTION_TIMER = 52
EXIT_REASONS = {"EXIT_REASON_TRIPLE_FAULT": EXIT_REASON_TRIPLE_FAULT, "EXIT_REASON_HLT": EXIT_REASON_HLT,
                "EXIT_REASON_IO_INSTRUCTION": EXIT_REASON_IO_INSTRUCTION,
                "EXIT_REASON_EPT_VIOLATION": EXIT_REASON_EPT_VIOLATION,
                "EXIT_REASON_PREEMPTION_TIMER": EXIT_REASON_PREEMPTION_TIMER}
# EPT-violation exit qualification: bit 0 data read, bit 1 data write, bit 2 fetch
EPT_VIOLATION_ACC_READ, EPT_VIOLATION_ACC_WRITE, EPT_VIOLATION_ACC_INSTR = 1, 2, 4
# I/O exit qualification: size - 1 in bits 2:0, bit 3 IN, the port in bits 31:16

#: the guest's registers in struct kvm_regs order (arch/x86/include/uapi/asm/kvm.h)
VCPU_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
             "r14", "r15", "rip", "rflags")
_REG_IDS = [getattr(X, f"UC_X86_REG_{r.upper()}") for r in VCPU_REGS]
_UNMAPPED = {UC.UC_MEM_READ_UNMAPPED: EPT_VIOLATION_ACC_READ, UC.UC_MEM_WRITE_UNMAPPED: EPT_VIOLATION_ACC_WRITE,
             UC.UC_MEM_FETCH_UNMAPPED: EPT_VIOLATION_ACC_INSTR}
PAGE = 4096
VEC_UD = 6
#: a run of more instructions is cut into slices of this many, so that a stop
#: request (Ctrl-C: Python takes signals only between two C calls) is seen
SLICE = 1_000_000


@dataclass
class VmExit:
    """One VM exit: the basic reason, the exit qualification, and what goes
    with it (EPT violation: ``gpa``; I/O: ``value``; exception: ``vector``)."""
    reason: int
    qualification: int = 0
    gpa: int = 0
    value: int = 0
    vector: int | None = None
    executed: int = 0


class Vcpu:
    """A guest CPU whose guest-physical pages are frames of ``mem``."""

    def __init__(self, mem: PhysMem, reference: bool = False):
        """``reference``: count instructions with a Python code hook (the
        mechanism before Unicorn's count; tests compare the two)."""
        self.mem = mem
        self.uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64, X.UC_CPU_X86_SKYLAKE_SERVER)
        self.uc.ctl_exits_enabled(True)     # no 'until' address (emu.hw.cpu, Cpu.__init__)
        self.uc.ctl_set_exits([])
        self.mapped: dict[int, int] = {}   # guest-physical page -> host physical frame
        self._exit: VmExit | None = None
        self._count = 0
        self._budget = 0
        self._stop = False
        self._ran: int | None = None        # Unicorn's counter when a hook made the exit
        self.uc.hook_add(UC.UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self.uc.hook_add(UC.UC_HOOK_INSN, self._on_out, None, 1, 0, X.UC_X86_INS_OUT)
        self.uc.hook_add(UC.UC_HOOK_INTR, self._on_intr)
        self.uc.hook_add(UC.UC_HOOK_INSN_INVALID, self._on_invalid)
        off = None if reference else counter_offset()
        self._counter = None if off is None else ctypes.c_uint64.from_address(_handle(self.uc) + off)
        if self._counter is None:
            # the reference mechanism (and the fallback where the counter was
            # not found): a Python code hook counts every instruction
            self.uc.hook_add(UC.UC_HOOK_CODE, self._on_insn)
        # a clean context: restored at every entry, so a fault of an earlier
        # run never turns into a #DF (docs/architecture.md, Unicorn fact 3)
        self._clean = self.uc.context_save()

    # -- the guest-physical map ("EPT") ---------------------------------------------------
    def map(self, gpa: int, hpa: int) -> None:
        """Guest-physical page ``gpa`` is host frame ``hpa`` (read, write, execute)."""
        gpa &= ~(PAGE - 1)
        if gpa in self.mapped:
            self.uc.mem_unmap(gpa, PAGE)
        if not 0 <= hpa <= self.mem.size - PAGE or hpa % PAGE:
            raise ValueError(f"host frame {hpa:#x} is not a page of guest RAM")
        self.uc.mem_map_ptr(gpa, PAGE, UC.UC_PROT_ALL, self.mem.host_address + hpa)
        self.mapped[gpa] = hpa

    def zap(self) -> None:
        """Every guest-physical page unmapped (and the code translated from them dropped)."""
        for gpa in self.mapped:
            self.uc.mem_unmap(gpa, PAGE)
        self.mapped.clear()
        self.uc.ctl_flush_tb()

    # -- running ---------------------------------------------------------------------------
    def stop(self) -> None:
        """End the current run soon (from a signal handler or another hook)."""
        self._stop = True

    def run(self, regs: list[int], budget: int) -> tuple[list[int], VmExit]:
        """Enter the guest with ``regs`` (kvm_regs order); run until a VM exit
        or ``budget`` instructions.  Returns the registers and the exit."""
        self.uc.context_restore(self._clean)
        for rid, v in zip(_REG_IDS, regs):
            self.uc.reg_write(rid, v & 0xFFFFFFFFFFFFFFFF)
        self._exit, self._count, self._budget, self._stop = None, 0, budget, False
        rip = regs[VCPU_REGS.index("rip")]
        if self._counter is None:
            self._start(rip, 0)
        else:
            self._run_counted(rip, budget)
        ex = self._exit
        if ex is None:                             # Unicorn stops at 'hlt' on its own
            ex = VmExit(EXIT_REASON_HLT)
        ex.executed = self._count
        return [self.uc.reg_read(rid) for rid in _REG_IDS], ex

    def _run_counted(self, rip: int, budget: int) -> None:
        """Run ``budget`` instructions with Unicorn's count, in slices.

        Unicorn's count hook is the first code hook of every instruction: it
        counts the instruction, then stops the CPU before it executes if the
        count is exceeded (the counter is then one more than the count).  It
        may also count the instruction after an OUT whose hook stopped the
        CPU, which never executes: a hook that makes an exit takes the
        counter as it is then (:meth:`_exit_at`), as the Python hook stopped
        counting at an exit on its way."""
        counter = self._counter
        while True:
            if self._stop or budget - self._count <= 0:
                self._exit = VmExit(EXIT_REASON_PREEMPTION_TIMER)
                return
            n = min(SLICE, budget - self._count)
            self._ran = None
            self._start(rip, n)
            if self._exit is not None:
                self._count += self._ran
                return
            ran = counter.value
            if ran <= n:                           # stopped on its own: 'hlt'
                self._count += ran
                return
            self._count += n                       # the count ran out: the slice is over
            rip = self.uc.reg_read(X.UC_X86_REG_RIP)

    def _exit_at(self, ex: VmExit, replace: bool = True) -> None:
        """An exit, made by a hook (``replace``: over one already made):
        counted up to the instruction that made the first."""
        if self._exit is None:
            if self._counter is not None:
                self._ran = self._counter.value
        elif not replace:
            return
        self._exit = ex

    def _start(self, rip: int, count: int) -> None:
        try:
            self.uc.emu_start(rip, 0, 0, count)
        except UcError as e:
            if self._exit is None:                 # no hook saw why: a CPU error
                raise GuestError(f"the vCPU stopped: {e} at guest RIP {self.uc.reg_read(X.UC_X86_REG_RIP):#x}") \
                    from None

    def _on_insn(self, uc, addr, size, ud):
        if self._exit is not None:               # an exit is on its way (OUT): not executed
            return
        self._count += 1
        if self._count > self._budget or self._stop:
            self._count -= 1
            self._exit = VmExit(EXIT_REASON_PREEMPTION_TIMER)
            uc.emu_stop()

    def _on_unmapped(self, uc, access, addr, size, value, ud):
        kind = _UNMAPPED.get(access, EPT_VIOLATION_ACC_READ)
        self._exit_at(VmExit(EXIT_REASON_EPT_VIOLATION, kind, gpa=addr), replace=False)
        return False

    def _on_out(self, uc, port, size, value, ud):
        self._exit_at(VmExit(EXIT_REASON_IO_INSTRUCTION, (size - 1) | (port << 16), value=value))
        uc.emu_stop()

    def _on_invalid(self, uc, ud):
        self._exit_at(VmExit(EXIT_REASON_TRIPLE_FAULT, vector=VEC_UD))
        return False

    def _on_intr(self, uc, vector, ud):
        self._exit_at(VmExit(EXIT_REASON_TRIPLE_FAULT, vector=vector))
        uc.emu_stop()


def _handle(uc: Uc) -> int:
    """The address of Unicorn's ``struct uc_struct`` behind ``uc``."""
    return ctypes.cast(uc._uch, ctypes.c_void_p).value


_counter_offset: list = []


def counter_offset() -> int | None:
    """Offset of Unicorn's instruction counter (``uc->emu_counter``, which its
    count hook increments; ``uc->emu_count``, the count asked for, follows it)
    inside ``struct uc_struct``.

    Unicorn has no API for it.  Calibrated once per process, as the CPU layer
    finds ``env->error_code`` (emu.hw.cpu, error_code_offset): two throwaway
    CPUs run a known number of instructions to a ``hlt`` under two different
    counts, and the one offset that holds (executed, count) after both runs
    is kept.  None if there is no unique one (the vCPU then counts with a
    Python code hook)."""
    if _counter_offset:
        return _counter_offset[0]
    try:
        usable = ctypes.CDLL(None).malloc_usable_size
        usable.restype, usable.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    except (OSError, AttributeError):
        _counter_offset.append(None)
        return None
    found = None
    for nops, count in ((5, 1000), (9, 777)):
        uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64)
        uc.mem_map(PAGE, PAGE)
        uc.mem_write(PAGE, b"\x90" * nops + b"\xf4")      # nop ...; hlt
        uc.emu_start(PAGE, 0, 0, count)
        h = _handle(uc)
        size = usable(h) // 8 * 8
        words = struct.unpack(f"<{size // 8}Q", ctypes.string_at(h, size))
        hits = {8 * i for i in range(len(words) - 1) if words[i] == nops + 1 and words[i + 1] == count}
        found = hits if found is None else found & hits
    off = found.pop() if found is not None and len(found) == 1 else None
    _counter_offset.append(off)
    return off
