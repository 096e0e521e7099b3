"""x86 behaviour Unicorn lacks, done in Python ("microcode").

Part of the CPU layer: it knows the x86 architecture (SDM Vol. 3A ch. 5-6:
SYSCALL, IDT gates, TSS stack switching, #DF/triple-fault rules, INVPCID)
and Unicorn's quirks, and no Linux policy.  Its users get events through
one callback (``sink(kind, **fields)``) and I/O ports through ``ports``.

How privilege transitions are made (ARCHITECTURE.md facts 2-4):

* ``syscall`` only reaches a UC_HOOK_INSN hook and a fault only reaches
  UC_HOOK_INTR; neither enters ring 0, and after one handled fault the next
  becomes #DF.  Both are cured by restoring a CPU snapshot taken at CPL 0
  during boot, then writing back the architectural state (GPRs, RIP, RFLAGS,
  CR2/CR3/CR4, FS/GS bases, KERNEL_GS_BASE, XMM0-15, MXCSR).
* The exception frame is written by Python through the *current* CR3 with
  the reference walker, so a stack missing from the current page tables is
  a fault during delivery: #DF, and a #DF that cannot be delivered is a
  triple fault.
* The #PF error code is the CPU's own (QEMU's ``env->error_code``, see
  :func:`emu.hw.cpu.error_code_offset`), cross-checked against the walker.
* ``mov cr3`` stores bit 63 in Unicorn; real CPUs never store NOFLUSH.
  Every CR3-write site is hooked: the bit is reported and stripped.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from typing import Callable

import capstone
from unicorn import unicorn_const as UC
from unicorn import x86_const as X

from emu.hw.cpu import (ends_translation_block, context_offset, error_code_offset, CR4_LA57, CR4_PCIDE, MSR_FMASK, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_STAR, RFLAGS_AC, RFLAGS_IF, C, Cpu, OneReg)
from emu.errors import GuestError
from emu.hw.x86 import CONTRIBUTORY, ERROR_CODE_VECTORS, vector_name
from emu.hw.paging import (PF_I, PF_U, PF_W, READ, VEC_GP, VEC_PF, ControlState, Fault, WalkCache,
                            control_state_of, read_virt, write_virt)


RF_TF, RF_IF, RF_NT, RF_RF, RF_VM = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17

# --- the architectural register file -----------------------------------------------------
_GPRS = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
         "r13", "r14", "r15"]
_OTHERS = ["rip", "rflags", "cs", "ss", "cr0", "cr2", "cr3", "cr4", "fs_base", "gs_base"]
STATE_NAMES = _GPRS + _OTHERS + ["kernel_gs_base", "mxcsr"] + [f"xmm{i}" for i in range(16)]
IDX = {n: i for i, n in enumerate(STATE_NAMES)}
_SLOT = 16
# value indices in RegFile.mv of the registers delivery touches
_RIP, _RSP, _RFLAGS, _CS, _SS, _CR2, _CR3 = (2 * IDX[n] for n in ("rip", "rsp", "rflags", "cs", "ss", "cr2", "cr3"))
_Q = struct.Struct("<Q")
_QQ = struct.Struct("<QQ")
_FRAME5 = struct.Struct("<5Q")
_FRAME6 = struct.Struct("<6Q")


class RegFile:
    """Every register a privilege transition must carry, in one C batch."""

    def __init__(self, hv):
        ids = [getattr(X, f"UC_X86_REG_{n.upper()}") for n in _GPRS + _OTHERS]
        ids += [X.UC_X86_REG_MSR, X.UC_X86_REG_MXCSR] + [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]
        n = len(ids)
        self.n = ctypes.c_int(n)
        self.h = hv
        self.ids = (ctypes.c_int32 * n)(*ids)
        self.buf = (ctypes.c_uint8 * (_SLOT * n))()
        base = ctypes.addressof(self.buf)
        self.ptrs = (ctypes.c_void_p * n)(*[base + _SLOT * i for i in range(n)])
        self.q = (ctypes.c_uint64 * (2 * n)).from_buffer(self.buf)   # q[2*i] is slot i's value
        # the write-back after a snapshot restore leaves CR3 out: it is patched
        # into the snapshot instead (writing it would flush the TLB)
        keep = [i for i in range(n) if STATE_NAMES[i] != "cr3"]
        self.wn = ctypes.c_int(len(keep))
        self.wids = (ctypes.c_int32 * len(keep))(*[ids[i] for i in keep])
        self.wptrs = (ctypes.c_void_p * len(keep))(*[base + _SLOT * i for i in keep])
        # the MSR slot is a uc_x86_msr {u32 rid; u64 value}: value at +8
        self.msr = IDX["kernel_gs_base"]
        self._rid = ctypes.c_uint32.from_buffer(self.buf, _SLOT * self.msr)
        self._rid.value = MSR_KERNEL_GS_BASE
        # name -> index of its value in a 64-bit view (memoryview indexing is
        # several times cheaper than a ctypes array's)
        self.mv = memoryview(self.buf).cast("B").cast("Q")
        self.slot = {name: 2 * i + (1 if i == self.msr else 0) for i, name in enumerate(STATE_NAMES)}

    def read(self) -> None:
        C.reg_read_batch(self.h, self.ids, self.ptrs, self.n)

    def write(self) -> None:
        self._rid.value = MSR_KERNEL_GS_BASE
        C.reg_write_batch(self.h, self.ids, self.ptrs, self.n)

    def write_except_cr3(self) -> None:
        self._rid.value = MSR_KERNEL_GS_BASE
        C.reg_write_batch(self.h, self.wids, self.wptrs, self.wn)

    def __getitem__(self, name: str) -> int:
        return self.mv[self.slot[name]]

    def __setitem__(self, name: str, value: int) -> None:
        self.mv[self.slot[name]] = value & 0xFFFFFFFFFFFFFFFF

    def snapshot(self) -> dict[str, int]:
        return {n: self[n] for n in STATE_NAMES if not n.startswith("xmm")}


#: instructions per ``emu_start``: a stop requested by a signal handler (Ctrl-C)
#: waits at most one slice, about 0.1 s of untraced guest code
SLICE = 8_000_000


class TripleFault(GuestError):
    """The CPU could not deliver a #DF: the machine would reset."""


@dataclass
class CpuEvent:
    kind: str
    fields: dict = field(default_factory=dict)


class System(Cpu):
    """A Unicorn CPU plus the microcode: a machine that can run an OS kernel.

    ``boot_state`` must be called once, at CPL 0, with the architectural
    state the kernel expects (descriptor tables, MSRs, CR3/CR4); it is the
    snapshot every privilege transition restores from.
    """

    def __init__(self, mem, config=None, sink: Callable | None = None):
        super().__init__(mem, config)
        self.regs = RegFile(self.hv)
        self.sink = sink or (lambda kind, **f: None)
        self._informational_cr3: list[int] = []
        self._info_hooked: dict[int, int] = {}      # addr -> hook handle
        self._want_events = sink is not None     # cheap paths skip building events
        self._one: dict[int, OneReg] = {}
        self.ports: dict[int, Callable[[int, int, int], int | None]] = {}
        self._code_hooks: dict[int, tuple] = {}
        self._at_addr: dict[int, tuple[int, list]] = {}    # addr -> (hook, [(id, fn)]): add_code_hook
        self._last_hook_id = 0
        self._error: BaseException | None = None
        self.stop_reason: str | None = None
        # addr -> (reg id, size, may carry NOFLUSH): every 'mov cr3, reg' of the kernel
        self.cr3_sites: dict[int, tuple[int, int, bool]] = {}
        self._block_starts: dict[int, list] = {}      # addr -> [fn]: add_block_start_hook
        self._block_start_handles: dict[int, int] = {}  # addr -> its Unicorn block hook
        self._pending_restore: tuple | None = None    # LA57: (register, value with NOFLUSH)
        self._last_block_start: int | None = None     # the block-start hook that fired last
        self._suppress_block_start: int | None = None
        self.hlt_sites: set[int] | None = None        # addresses right after each 'hlt' (see _halted)
        self._decode_cache: dict[tuple[int, bytes], capstone.CsInsn] = {}
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        self._cs.detail = True
        self.mmu_disagreements = 0
        self.pending_irqs: list[int] = []
        self.last_user_exception: tuple | None = None
        self.run_observers: list[Callable[[bool], None]] = []   # see run()
        self.executed = 0           # instructions of the completed slices of the last run()
        self._rerun: tuple | None = None
        self.walks = WalkCache(mem)
        self._nxe = False
        self._install_hooks()

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
        self.set_reg("rip", rip)

    # -- hooks ------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        self.add_hook("intr", self._guard(self._on_intr))
        self.add_hook("syscall", self._guard(self._on_syscall))
        self.add_hook("out", self._guard(self._on_out))
        self.add_hook("invalid", self._guard(self._on_invalid, True))

    def _guard(self, fn, retval=None):
        """Python exceptions cannot cross a ctypes callback: keep the first one
        and stop the CPU; run() re-raises it."""
        def wrapped(*args):
            try:
                return fn(*args)
            except BaseException as e:   # noqa: BLE001 - re-raised by run()
                if self._error is None:
                    self._error = e
                C.emu_stop(self.hv)
                return retval
        return wrapped

    def _call_all(self, fns, a: int, until_stop: bool) -> None:
        """Run hook functions in order.  The first exception stops the CPU
        (run() re-raises it); with ``until_stop`` so does a stop request."""
        for f in fns:
            try:
                f(a)
            except BaseException as e:   # noqa: BLE001 - re-raised by run()
                if self._error is None:
                    self._error = e
                C.emu_stop(self.hv)
                return
            if until_stop and self.stop_reason is not None:
                return

    def add_code_hook(self, addr: int, fn: Callable[[int], None], first: bool = False) -> int:
        """Call fn(addr) before the instruction at addr executes.

        The functions of one address run in the order added (``first``: before
        the others) until one stops the CPU.  A debugger's breakpoint goes
        first: the stop comes before the instruction, and functions that had
        already run would run again when the CPU resumes there.
        """
        entry = self._at_addr.get(addr)
        if entry is None:
            fns: list = []

            def hook(uch, a, size, ud):
                self._call_all([f for _, f in fns], a, until_stop=True)
            h = self.add_hook("code", hook, addr, addr)
            self._code_hooks[h] = addr
            entry = self._at_addr[addr] = (h, fns)
            self.flush_code_cache()   # fact 9: a hook added after translation fires only after a flush
        self._last_hook_id -= 1        # negative: never a Unicorn handle (see del_code_hook)
        entry[1].insert(0 if first else len(entry[1]), (self._last_hook_id, fn))
        return self._last_hook_id

    def add_block_start_hook(self, addr: int, fn: Callable[[int], None]) -> None:
        """Call fn(addr) before the instruction at ``addr``, which must start
        a translated block every time it runs (the instruction before it ends
        one: a branch, call, ret, 'mov crN', ...).

        A bounded block hook costs nothing elsewhere, unlike a code hook:
        with an instruction budget, Unicorn runs every instruction through
        the whole list of code hooks (see ARCHITECTURE.md, Unicorn notes).
        A stop before the instruction (a breakpoint there) does not make fn
        run twice: the next run skips its first call if it starts at addr.
        """
        fns = self._block_starts.get(addr)
        if fns is None:
            fns = self._block_starts[addr] = []

            def hook(uch, a, size, ud):
                if self._suppress_block_start == a:
                    self._suppress_block_start = None
                    return
                self._last_block_start = a
                # all of them, even after a stop request: the suppression
                # above would keep them from running when the CPU resumes
                self._call_all(tuple(fns), a, until_stop=False)
            h = self.add_hook("block", hook, addr, addr)
            self._code_hooks[h] = addr
            self._block_start_handles[addr] = h
            self.flush_code_cache()
        fns.append(fn)

    def del_block_start_hook(self, addr: int, fn: Callable[[int], None]) -> None:
        """Remove a function added with :meth:`add_block_start_hook`; the
        Unicorn hook goes with the address's last function."""
        fns = self._block_starts.get(addr)
        if fns and fn in fns:
            fns.remove(fn)
            if not fns:
                del self._block_starts[addr]
                self.del_code_hook(self._block_start_handles.pop(addr))

    def add_site_hook(self, addr: int, after: str, fn: Callable[[int], None]):
        """Call fn(addr) before the instruction at ``addr``, whose predecessor
        is the instruction ``after`` (a declared site of the stub): a
        block-start hook when every arrival starts a translated block, a code
        hook otherwise.  Returns a handle for :meth:`del_site_hook`."""
        if ends_translation_block(after):
            self.add_block_start_hook(addr, fn)
            return ("block", addr, fn)
        return ("code", self.add_code_hook(addr, fn))

    def del_site_hook(self, handle) -> None:
        if handle[0] == "block":
            self.del_block_start_hook(handle[1], handle[2])
        else:
            self.del_code_hook(handle[1])

    def add_block_hook(self, fn: Callable[[int, int], None]) -> int:
        """Call fn(addr, size) at the start of every translated block executed."""
        def hook(uch, a, size, ud):
            try:
                fn(a, size)
            except BaseException as e:   # noqa: BLE001
                if self._error is None:
                    self._error = e
                C.emu_stop(self.hv)
        h = self.add_hook("block", hook)
        self._code_hooks[h] = None
        self.flush_code_cache()
        return h

    def del_code_hook(self, h: int) -> None:
        if h < 0:                      # a function of add_code_hook
            for addr, (uh, fns) in self._at_addr.items():
                if any(i == h for i, _ in fns):
                    fns[:] = [(i, f) for i, f in fns if i != h]
                    if not fns:
                        del self._at_addr[addr]
                        self.del_code_hook(uh)
                    return
            return
        if h in self._code_hooks:
            self.del_hook(h)
            del self._code_hooks[h]

    def add_cr3_site(self, addr: int, reg: str, size: int, may_set_noflush: bool = True) -> None:
        """A 'mov cr3, reg' instruction (found by scanning the kernel's code).

        Where the value may carry NOFLUSH (bit 63), the instruction after it
        clears the bit from CR3: hardware never stores it, Unicorn does (fact
        5).  QEMU ends a translated block at every CR write, so that is a
        block-start hook, free elsewhere.  The write itself is observed (a
        ``cr3_write`` event) only while events are wanted.
        """
        self.cr3_sites[addr] = (getattr(X, f"UC_X86_REG_{reg.upper()}"), size, may_set_noflush)
        if may_set_noflush and self.config.la57:
            # the 5-level walk does not mask bit 63 (fact 6): strip it from the
            # register before the write, give it back after
            self.add_code_hook(addr, self._noflush_before)
            self.add_block_start_hook(addr + size, self._noflush_after)
        elif may_set_noflush:
            self.add_block_start_hook(addr + size, self._strip_noflush)
        self._informational_cr3.append(addr)
        if self.want_events:
            self._hook_informational()

    @property
    def want_events(self) -> bool:
        return self._want_events

    @want_events.setter
    def want_events(self, value: bool) -> None:
        self._want_events = value
        if value:
            self._hook_informational()
        else:
            # every code hook costs each instruction a little: drop the idle ones
            for addr in list(self._info_hooked):
                self.del_code_hook(self._info_hooked.pop(addr))

    def _hook_informational(self) -> None:
        for addr in self._informational_cr3:
            if addr not in self._info_hooked:
                # first: the event sees the value before any NOFLUSH stripping
                self._info_hooked[addr] = self.add_code_hook(addr, self._on_cr3_write, first=True)

    # -- the run loop -----------------------------------------------------------------
    def run(self, budget: int) -> str:
        """Run up to ``budget`` instructions from the current RIP.

        Returns why it stopped: 'budget', 'halt', or a reason given to
        :meth:`stop`.  Errors raised in hooks (triple fault...) propagate.
        Runs in slices of at most :data:`SLICE` instructions, so a stop
        requested outside any hook (a signal handler) takes effect within a
        slice: :attr:`executed` counts the instructions of the completed
        slices.  Each ``emu_start`` is bracketed by calls to
        :attr:`run_observers` (``fn(True)`` before, ``fn(False)`` after, also
        when a hook raised).
        """
        self.stop_reason = None
        self._error = None
        self.executed = 0
        self._deliver_pending_irq()
        left = budget
        while left > 0:
            rip = self.reg("rip")
            # a block-start hook that fired for the instruction at RIP before the
            # last stop must not fire again for the same arrival
            self._suppress_block_start = rip if rip == self._last_block_start else None
            for fn in tuple(self.run_observers):
                fn(True)
            n = min(left, SLICE)
            err = self.emu_start(rip, n)
            try:
                for fn in tuple(self.run_observers):
                    fn(False)
            except BaseException:   # noqa: BLE001 - an error from a hook wins
                if self._error is None:
                    raise
            if self._error is not None:
                e, self._error = self._error, None
                self._rerun = None
                raise e
            if err:
                raise GuestError(f"CPU stopped: {UC_ERRORS.get(err, err)} at RIP {self.reg('rip'):#x}")
            if self._rerun is not None:
                executed, prepare = self._rerun
                self._rerun = None
                prepare()
                left -= executed
                self.executed += executed
            elif self.stop_reason or self._halted():
                break
            else:
                left -= n                 # the slice ran to its end
                self.executed += n
            if self.stop_reason:
                break
        if self.stop_reason:
            return self.stop_reason
        if self._halted():
            return "halt"
        return "budget"

    def rerun(self, executed: int, prepare: Callable[[], None]) -> None:
        """From a block hook: stop before the block's first instruction, call
        ``prepare()`` once the CPU is stopped (to add code hooks, say: a hook
        added after a block was translated only fires once the translation
        cache is flushed, fact 9), then continue the same :meth:`run` with the
        budget less ``executed``, the instructions run so far by this
        ``emu_start`` (the caller counts them; a run's caller sees no stop).

        Relies on Unicorn checking for a stop request between a block's
        UC_HOOK_BLOCK callbacks and its first instruction (verified here)."""
        self._rerun = (executed, prepare)
        C.emu_stop(self.hv)

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        C.emu_stop(self.hv)

    def _halted(self) -> bool:
        """Did the run end on a 'hlt'?  Unicorn just stops, with RIP after it.
        With ``hlt_sites`` (the kernel's hlt instructions) the answer is exact;
        otherwise the byte before RIP decides, which a budget stop right after
        an instruction ending in 0xf4 would fool."""
        self.regs.read()
        rip = self.regs["rip"]
        if self.hlt_sites is not None:
            return rip in self.hlt_sites
        pa = self._pa(rip - 1, 2)
        return pa is not None and self.mem.read(pa, 1) == b"\xf4"

    # -- control state ---------------------------------------------------------------------
    def ctl(self, rflags: int | None = None) -> ControlState:
        """The control state from the registers last read (interned objects)."""
        r = self.regs
        return control_state_of(r["cr0"], r["cr4"], self._nxe,
                                bool((r["rflags"] if rflags is None else rflags) & RFLAGS_AC))

    def _pa(self, va: int, access: int, cpl: int = 0) -> int | None:
        """Physical address through the CR3 last read (implicit supervisor access)."""
        r = self.regs
        t = self.walks.translate(r["cr3"], va, access, cpl, self.ctl(0))
        return None if t.fault else t.pa

    # -- SYSCALL (SDM: SYSCALL—Fast System Call) ------------------------------------------------
    def _on_syscall(self, uch, ud):
        r = self.regs
        r.read()
        rip, flags = r["rip"], r["rflags"]
        if self._want_events:
            self.sink("syscall", nr=r["rax"], rip=rip, cr3=r["cr3"], cpl=r["cs"] & 3,
                      args=(r["rdi"], r["rsi"], r["rdx"], r["r10"], r["r8"], r["r9"]))
        r["rcx"] = rip + 2
        r["r11"] = flags
        r["rflags"] = (flags & ~self.fmask) | 2
        r["cs"] = (self.star >> 32) & 0xFFFC
        r["ss"] = ((self.star >> 32) & 0xFFFC) + 8
        r["rip"] = self.lstar - 2          # Unicorn adds 2 after the hook (fact 4)
        self._enter_cpl0()

    def _enter_cpl0(self) -> None:
        """The snapshot restore that makes CPL 0, then the real register state.

        RIP changes here without a block start: no block-start hook fired for
        the new RIP yet.

        CR3 goes into the snapshot before the restore, so the TLB survives the
        transition as it does on hardware (SYSCALL and exception entry do not
        flush)."""
        self._last_block_start = None
        if self._cr3_slot is not None:
            self._cr3_slot.value = self.regs["cr3"]
            C.context_restore(self.hv, self._snapshot_ctx)
            self.regs.write_except_cr3()
        else:
            C.context_restore(self.hv, self._snapshot_ctx)
            self.regs.write()

    # -- exceptions and interrupts -----------------------------------------------------------
    def _on_intr(self, uch, intno, ud):
        r = self.regs
        r.read()
        rip = r["rip"]
        cpl = r["cs"] & 3
        cpu_ec, is_int = self.last_exception()
        # INT n / INT3 / INTO: QEMU's exception_is_int says so; the
        # instruction bytes give the length (and decide when uncalibrated)
        soft_len = 0 if is_int is False else self._software_len(intno, rip, cpl)
        software = soft_len > 0
        ec = None
        cr2 = None
        if not software and intno in ERROR_CODE_VECTORS:
            ec = cpu_ec
            if intno == VEC_PF:
                cr2 = r["cr2"]
                self._cross_check(cr2, ec, r)
        self.deliver(intno, ec, cr2=cr2, software=software, reported=True, soft_len=soft_len)

    def _software_len(self, vector: int, rip: int, cpl: int) -> int:
        """INT n / INT3 / INTO / INT1 reach the hook with RIP after the
        instruction: its length, or 0 for an exception (bytes fetched at the
        CPL that fetched the instruction)."""
        pa1 = self._pa(rip - 1, 2, cpl)
        if pa1 is not None:
            b = self.mem.read(pa1, 1)[0]
            if (vector == 3 and b == 0xCC) or (vector == 4 and b == 0xCE) or (vector == 1 and b == 0xF1):
                return 1
        pa2 = self._pa(rip - 2, 2, cpl)
        if pa2 is not None and self.mem.read(pa2, 2) == bytes([0xCD, vector & 0xFF]):
            return 2
        return 0

    def _cross_check(self, cr2: int, ec: int, r: RegFile) -> None:
        """The walker must fault the same way as the CPU did."""
        access = 2 if ec & PF_I else (1 if ec & PF_W else 0)
        cpl = 3 if ec & PF_U else 0
        ctl = self.ctl()
        if ctl.pke:
            return              # PKRU is not readable here; trust the CPU
        w = self.walks.translate(r["cr3"], cr2, access, cpl, ctl)
        if not w.fault or w.error_code != ec:
            self.mmu_disagreements += 1
            self.sink("mmu_disagreement", va=cr2, cpu_error_code=ec,
                      walker=(w.describe() if w.fault else f"translates to {w.pa:#x}"))

    def deliver(self, vector: int, error_code: int | None = None, *, cr2: int | None = None,
                software: bool = False, reported: bool = False, external: bool = False,
                chain: tuple = (), soft_len: int = 0) -> None:
        """Deliver through the guest IDT (SDM 6.12-6.14, 64-bit mode)."""
        r = self.regs
        if not reported:
            r.read()
        mv = r.mv
        cs, rip, rflags, cr3 = mv[_CS], mv[_RIP], mv[_RFLAGS], mv[_CR3]
        cpl = cs & 3
        chain = chain + ((vector, error_code, cr2, rip, cpl, cr3),)
        if cpl == 3 and not external:
            # what the CPU reported, which signal frames may not (Linux
            # sanitizes the error code): (vector, error code, CR2, RIP, CR3)
            self.last_user_exception = (vector, error_code, cr2, rip, cr3)
        if self._want_events:
            if not external and not software:
                self.sink("exception", vector=vector, error_code=error_code, cr2=cr2, rip=rip, cpl=cpl,
                          cr3=cr3, nested=len(chain) > 1)
            elif external:
                self.sink("interrupt", vector=vector, rip=rip, cpl=cpl, cr3=cr3)
            else:
                self.sink("exception", vector=vector, error_code=None, cr2=None, rip=rip, cpl=cpl,
                          cr3=cr3, software=True, nested=False)
        ctl = self.ctl(0)           # implicit supervisor accesses: SMAP applies regardless of AC
        # the class of this event for a fault during its delivery (Table
        # 6-5): INT n and external interrupts are benign whatever the vector
        first = -1 if software or external else vector
        if software:
            # a fault while delivering INT n is a fault of the INT instruction
            mv[_RIP] = rip - soft_len
        idt_base, idt_limit = self.idtr
        # error code naming the IDT entry: index, IDT flag (bit 1), EXT (bit 0)
        idt_ec = (vector << 3) | 2 | (0 if software else 1)
        if 16 * vector + 15 > idt_limit:
            return self._nested(first, chain, Fault(0, VEC_GP, idt_ec))
        gate = self._read_virt(cr3, idt_base + 16 * vector, 16, ctl)
        if isinstance(gate, Fault):
            return self._nested(first, chain, gate)
        lo, hi = _QQ.unpack(gate)
        present = lo >> 47 & 1
        gtype = lo >> 40 & 0xF
        dpl = lo >> 45 & 3
        # SDM order (INT n pseudocode): gate type, then DPL for software
        # interrupts, then present
        if gtype not in (0xE, 0xF) or (software and dpl < cpl):
            return self._nested(first, chain, Fault(0, VEC_GP, idt_ec))
        if not present:
            return self._nested(first, chain, Fault(0, 11, idt_ec))
        handler = (lo & 0xFFFF) | ((lo >> 32) & 0xFFFF0000) | (hi & 0xFFFFFFFF) << 32
        selector = lo >> 16 & 0xFFFF
        ist = lo >> 32 & 7
        new_cpl = selector & 3
        rsp = mv[_RSP]
        if ist:
            stack = self._read_virt(cr3, self.tss_base + 36 + 8 * (ist - 1), 8, ctl)
        elif new_cpl < cpl:
            stack = self._read_virt(cr3, self.tss_base + 4 + 8 * new_cpl, 8, ctl)
        else:
            stack = _Q.pack(rsp)
        if isinstance(stack, Fault):
            return self._nested(first, chain, stack)
        new_rsp = _Q.unpack(stack)[0] & ~0xF
        if error_code is None:     # a trap (INT n) pushes the next RIP
            frame = _FRAME5.pack(rip, cs, rflags, rsp, mv[_SS])
        else:
            frame = _FRAME6.pack(error_code, rip, cs, rflags, rsp, mv[_SS])
        new_rsp = (new_rsp - len(frame)) & 0xFFFFFFFFFFFFFFFF
        err = self._write_virt(cr3, new_rsp, frame, ctl)
        if err is not None:
            return self._nested(first, chain, err)
        if self._want_events:
            # the implicit stack writes of delivery, for tracers
            self.sink("frame_write", va=new_rsp, size=len(frame), cr3=cr3,
                      pa=self.walks.translate(cr3, new_rsp, 1, 0, ctl).pa, vector=vector)
        if cr2 is not None:
            mv[_CR2] = cr2
        new_flags = rflags & ~(RF_TF | RF_NT | RF_RF | RF_VM)
        if gtype == 0xE:
            new_flags &= ~RF_IF
        mv[_RFLAGS] = new_flags
        mv[_RIP] = handler
        mv[_RSP] = new_rsp
        mv[_CS] = selector
        if new_cpl != cpl:
            mv[_SS] = new_cpl        # a NULL selector with RPL = new CPL
        self._enter_cpl0()

    def _nested(self, first: int, chain: tuple, f: Fault) -> None:
        """A fault while delivering ``first`` (SDM Table 6-5; -1 for a
        software or external interrupt, which is benign)."""
        second = f.vector
        names = " -> ".join(f"{vector_name(v)}" + (f"({ec:#x})" if ec is not None else "")
                            for v, ec, *_ in chain)
        if first == 8:
            self.sink("triple_fault", chain=chain + ((second, f.error_code, f.va, None, None, None),))
            last = chain[-1]
            raise TripleFault(f"triple fault: {names} -> {vector_name(second)}({f.error_code:#x}) while "
                              f"delivering #DF (RIP {last[3]:#x}, CPL {last[4]}, CR3 {last[5]:#x})")
        df = (first in CONTRIBUTORY and second in CONTRIBUTORY) or \
             (first == VEC_PF and (second == VEC_PF or second in CONTRIBUTORY))
        cr2 = f.va if second == VEC_PF else None
        if df:
            self.regs.read()
            self.deliver(8, 0, reported=True, chain=chain + ((second, f.error_code, cr2, None, None, None),))
        else:
            self.deliver(second, f.error_code, cr2=cr2, reported=True, chain=chain)

    def _read_virt(self, cr3: int, va: int, n: int, ctl: ControlState) -> bytes | Fault:
        return read_virt(self.mem, cr3, va, n, READ, 0, ctl, self.walks)

    def _write_virt(self, cr3: int, va: int, data: bytes, ctl: ControlState) -> Fault | None:
        return write_virt(self.mem, cr3, va, data, 0, ctl, self.walks)

    # -- external interrupts ------------------------------------------------------------------
    def inject_interrupt(self, vector: int) -> bool:
        """Deliver an external interrupt now if RFLAGS.IF allows, else keep it
        pending until the next run starts with IF set.  Returns True if
        delivered."""
        self.regs.read()
        if self.regs["rflags"] & RFLAGS_IF:
            self.deliver(vector, external=True, reported=True)
            return True
        self.pending_irqs.append(vector)
        return False

    def _deliver_pending_irq(self) -> None:
        if self.pending_irqs:
            self.regs.read()
            if self.regs["rflags"] & RFLAGS_IF:
                self.deliver(self.pending_irqs.pop(0), external=True, reported=True)

    # -- CR3 writes ------------------------------------------------------------------------------
    def _on_cr3_write(self, addr: int) -> None:
        """Before a 'mov cr3': the event (only hooked while events are wanted)."""
        reg = self.cr3_sites[addr][0]
        val = self._reg(reg).read()
        old = self._reg(X.UC_X86_REG_CR3).read()
        pcide = self._reg(X.UC_X86_REG_CR4).read() & CR4_PCIDE
        self.sink("cr3_write", rip=addr, old=old, new=val, noflush=bool(val >> 63),
                  pcid=(val & 0xFFF) if pcide else None)

    def _noflush_before(self, addr: int) -> None:
        reg = self._reg(self.cr3_sites[addr][0])
        val = reg.read()
        if val >> 63:
            reg.write(val & ~(1 << 63))
            self._pending_restore = (reg, val)

    def _noflush_after(self, addr: int) -> None:
        if self._pending_restore is not None:
            reg, val = self._pending_restore
            self._pending_restore = None
            reg.write(val)

    def _strip_noflush(self, addr: int) -> None:
        """After a 'mov cr3': CR3 as hardware holds it, without bit 63."""
        val = self._reg(X.UC_X86_REG_CR3).read()
        if val >> 63:
            # the guest's write flushed Unicorn's TLB already (with or
            # without NOFLUSH): do not flush a second time
            self.write_cr3_keep_tlb(val & ~(1 << 63))

    def _reg(self, reg: int) -> OneReg:
        one = self._one.get(reg)
        if one is None:
            one = self._one[reg] = OneReg(self, reg)
        return one

    def _read_reg(self, reg: int) -> int:
        return self._reg(reg).read()

    def _write_reg(self, reg: int, value: int) -> None:
        self._reg(reg).write(value)

    # -- port I/O ------------------------------------------------------------------------------------
    def _on_out(self, uch, port, size, value, ud):
        fn = self.ports.get(port)
        if fn is None:
            self.sink("port_out", port=port, size=size, value=value)
            return
        ret = fn(port, size, value)
        if ret is not None:
            self._write_reg(X.UC_X86_REG_RAX, ret)

    # -- invalid opcodes: INVPCID, else #UD ----------------------------------------------------
    def _on_invalid(self, uch, ud) -> bool:
        r = self.regs
        r.read()
        rip = r["rip"]
        cpl = r["cs"] & 3
        ins = self._decode(rip, cpl)
        if ins is not None and ins.mnemonic == "invpcid":
            return self._invpcid(ins, r, cpl)
        self.deliver(6, None, reported=True)
        return True

    def _decode(self, rip: int, cpl: int):
        t = self.walks.translate(self.regs["cr3"], rip, 2, cpl, self.ctl())
        if t.fault:
            return None
        avail = min(15, 4096 - (t.pa & 0xFFF))
        code = self.mem.read(t.pa, avail)
        if avail < 15:
            t2 = self.walks.translate(self.regs["cr3"], rip + avail, 2, cpl, self.ctl())
            if not t2.fault:
                code += self.mem.read(t2.pa, 15 - avail)
        key = (rip, code)
        ins = self._decode_cache.get(key)
        if ins is None:
            ins = next(self._cs.disasm(code, rip, 1), None)
            self._decode_cache[key] = ins
        return ins

    def _invpcid(self, ins, r: RegFile, cpl: int) -> bool:
        """INVPCID (SDM Vol. 2A).  Unicorn's TLB has no PCID tags, so every
        type flushes the whole TLB: never less than the instruction asks."""
        from capstone import x86_const as CX

        ops = ins.operands
        type_ = self._read_reg(_uc_reg(ins.reg_name(ops[0].reg)))
        m = ops[1].mem
        ea = m.disp
        if m.base:
            ea += self._read_reg(_uc_reg(ins.reg_name(m.base)))
        if m.index:
            ea += self._read_reg(_uc_reg(ins.reg_name(m.index))) * m.scale
        ea &= 0xFFFFFFFFFFFFFFFF
        if cpl != 0 or type_ > 3:
            self.deliver(VEC_GP, 0, reported=True)
            return True
        desc = self._read_virt(r["cr3"], ea, 16, self.ctl())
        if isinstance(desc, Fault):
            self.deliver(desc.vector, desc.error_code, cr2=desc.va if desc.vector == VEC_PF else None,
                         reported=True)
            return True
        pcid, addr = struct.unpack("<QQ", desc)
        pcide = bool(r["cr4"] & CR4_PCIDE)
        canon = (addr >> 47) in (0, 0x1FFFF) or (r["cr4"] & CR4_LA57 and (addr >> 56) in (0, 0xFF))
        if pcid >> 12 or (type_ == 0 and not canon) or (not pcide and type_ in (0, 1) and pcid):
            self.deliver(VEC_GP, 0, reported=True)
            return True
        del CX
        self.sink("invpcid", rip=r["rip"], type=type_, pcid=pcid & 0xFFF, addr=addr)
        self.flush_tlb()
        self._write_reg(X.UC_X86_REG_RIP, r["rip"] + ins.size)
        return True


def _uc_reg(name: str) -> int:
    return getattr(X, f"UC_X86_REG_{name.upper()}")


UC_ERRORS = {UC.UC_ERR_READ_UNMAPPED: "read from unmapped physical memory",
             UC.UC_ERR_WRITE_UNMAPPED: "write to unmapped physical memory",
             UC.UC_ERR_FETCH_UNMAPPED: "fetch from unmapped physical memory",
             UC.UC_ERR_INSN_INVALID: "invalid instruction",
             UC.UC_ERR_EXCEPTION: "unhandled CPU exception"}
