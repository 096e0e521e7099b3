"""The CPU layer: Unicorn set-up and fast register access.

This is the only module family that knows Unicorn's quirks (see
docs/architecture.md, Unicorn facts).  Everything above it sees a CPU with physical
memory, control registers, an instruction budget and a handful of events.

Hot paths go through the C API with preallocated ctypes buffers: the
binding's batch register calls cost ~40 µs, the C API ~1 µs (Unicorn fact 9).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

from unicorn import Uc
from unicorn import unicorn_const as UC
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uc_engine, uc_hook_h, uclib

from emu.hw.paging import ControlState
from emu.hw.phys import PhysMem
from emu.hw.watchdog import Watchdog
from emu.hw.x86 import (CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_LA57, CR4_OSFXSR,
                        CR4_OSXMMEXCPT, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_SMAP, CR4_SMEP, EFER_LMA,
                        EFER_LME, EFER_NXE, EFER_SCE, GPRS_DISPLAY, MSR_EFER, MSR_FMASK, MSR_FS_BASE,
                        MSR_GS_BASE, MSR_KERNEL_GS_BASE, MSR_LSTAR, MSR_STAR, RF_AC, RF_IF, RFLAGS_RESERVED)

# CPU models: Skylake-Server has SMAP and PKU; Icelake-Server adds LA57
# (docs/architecture.md, Unicorn fact 6).
MODELS = {
    "skylake-server": X.UC_CPU_X86_SKYLAKE_SERVER,
    "icelake-server": X.UC_CPU_X86_ICELAKE_SERVER,
}
RFLAGS_IF, RFLAGS_AC = RF_IF, RF_AC

# the control-register and MSR names are x86.py's; re-exported for callers of this module
__all__ = ["C", "Cpu", "CpuConfig", "GPR_NAMES", "HOOK_KINDS", "MODELS", "MSR_EFER", "MSR_FMASK", "MSR_FS_BASE",
           "MSR_GS_BASE", "MSR_KERNEL_GS_BASE", "MSR_LSTAR", "MSR_STAR", "OneReg", "REG_IDS", "RFLAGS_AC",
           "RFLAGS_IF", "RFLAGS_RESERVED", "RegBatch", "context_offset", "ends_translation_block",
           "error_code_offset", "exception_is_int_offset", "old_exception_offset"]

# Register file order used by the fast batch calls.
GPR_NAMES = GPRS_DISPLAY
_GPR_IDS = [getattr(X, f"UC_X86_REG_{n.upper()}") for n in GPR_NAMES]
REG_IDS = {n: getattr(X, f"UC_X86_REG_{n.upper()}") for n in
           GPR_NAMES + ("rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs",
                        "cr0", "cr2", "cr3", "cr4", "fs_base", "gs_base")}

_UC_CTL_IO_WRITE = 1
_CTL_TLB_FLUSH = (_UC_CTL_IO_WRITE << 30) | UC.UC_CTL_TLB_FLUSH
_CTL_TB_FLUSH = (_UC_CTL_IO_WRITE << 30) | UC.UC_CTL_TB_FLUSH

_u64 = ctypes.c_uint64


class _RawApi:
    """The C API without ctypes argument conversion: about 3x cheaper per call
    than the binding's prototyped functions (0.4 µs for a register read).
    Callers pass pre-built ctypes objects (64-bit values as c_uint64)."""

    def __init__(self):
        lib = ctypes.CDLL(uclib._name)
        for name in ("uc_reg_read", "uc_reg_write", "uc_reg_read_batch", "uc_reg_write_batch",
                     "uc_context_restore", "uc_context_save", "uc_emu_stop", "uc_emu_start", "uc_ctl"):
            fn = getattr(lib, name)
            fn.restype = ctypes.c_int
            fn.argtypes = None
            setattr(self, name[3:], fn)


C = _RawApi()

_vmem_translate = uclib.uc_vmem_translate
_vmem_translate.argtypes = [uc_engine, ctypes.c_uint64, ctypes.c_int, ctypes.POINTER(ctypes.c_uint64)]
_vmem_translate.restype = ctypes.c_int

_PROT = {0: UC.UC_PROT_READ, 1: UC.UC_PROT_WRITE, 2: UC.UC_PROT_EXEC}

_uc_hook_add = uclib.uc_hook_add
_uc_hook_add.argtypes = None
_uc_hook_del = uclib.uc_hook_del

# Hook kinds: (Unicorn hook type, C callback type, instruction id or None).
# A callback gets the C arguments: (uc, ...); for "code" and "block" (uc,
# address, size, user data).
HOOK_KINDS = {
    "intr": (UC.UC_HOOK_INTR, ctypes.CFUNCTYPE(None, uc_engine, ctypes.c_uint32, ctypes.c_void_p), None),
    "syscall": (UC.UC_HOOK_INSN, ctypes.CFUNCTYPE(None, uc_engine, ctypes.c_void_p), X.UC_X86_INS_SYSCALL),
    "out": (UC.UC_HOOK_INSN, ctypes.CFUNCTYPE(None, uc_engine, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32,
                                              ctypes.c_void_p), X.UC_X86_INS_OUT),
    "invalid": (UC.UC_HOOK_INSN_INVALID, ctypes.CFUNCTYPE(ctypes.c_bool, uc_engine, ctypes.c_void_p), None),
    "code": (UC.UC_HOOK_CODE, ctypes.CFUNCTYPE(None, uc_engine, ctypes.c_uint64, ctypes.c_uint32,
                                               ctypes.c_void_p), None),
    "block": (UC.UC_HOOK_BLOCK, ctypes.CFUNCTYPE(None, uc_engine, ctypes.c_uint64, ctypes.c_uint32,
                                                 ctypes.c_void_p), None),
    # (uc, access kind, address, size, value, user data); with paging on the
    # address is physical (Unicorn fact 7); "unmapped" returns False to stop
    "mem": (UC.UC_HOOK_MEM_READ | UC.UC_HOOK_MEM_WRITE,
            ctypes.CFUNCTYPE(None, uc_engine, ctypes.c_int, ctypes.c_uint64, ctypes.c_int, ctypes.c_int64,
                             ctypes.c_void_p), None),
    "unmapped": (UC.UC_HOOK_MEM_UNMAPPED,
                 ctypes.CFUNCTYPE(ctypes.c_bool, uc_engine, ctypes.c_int, ctypes.c_uint64, ctypes.c_int,
                                  ctypes.c_int64, ctypes.c_void_p), None),
}


class RegBatch:
    """A fixed list of registers read/written in one C call (no binding overhead)."""

    def __init__(self, cpu: "Cpu", ids: list[int]):
        n = len(ids)
        self.n = ctypes.c_int(n)
        self.ids = (ctypes.c_int32 * n)(*ids)
        self.vals = (_u64 * n)()
        base = ctypes.addressof(self.vals)
        self.ptrs = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])
        self._h = cpu.hv

    def read(self):
        C.reg_read_batch(self._h, self.ids, self.ptrs, self.n)
        return self.vals

    def write(self) -> None:
        C.reg_write_batch(self._h, self.ids, self.ptrs, self.n)


class OneReg:
    """One register, read or written with a single raw C call."""

    def __init__(self, cpu: "Cpu", reg_id: int):
        self._h = cpu.hv
        self._id = ctypes.c_int(reg_id)
        self._v = _u64()
        self._p = ctypes.byref(self._v)

    def read(self) -> int:
        C.reg_read(self._h, self._id, self._p)
        return self._v.value

    def read_whole(self) -> int:
        """As :meth:`read`, for a register narrower than 64 bits too (a
        selector: Unicorn writes only its low bytes)."""
        self._v.value = 0
        C.reg_read(self._h, self._id, self._p)
        return self._v.value

    def write(self, value: int) -> None:
        self._v.value = value & 0xFFFFFFFFFFFFFFFF
        C.reg_write(self._h, self._id, self._p)


# Instructions after which QEMU always starts a new translated block: control
# transfers, and writes to control registers or the TLB (target/i386 gen_eob)
_BLOCK_ENDERS = ("jmp", "call", "ret", "iretq", "sysretq", "sysret", "syscall", "hlt", "int3", "int",
                 "invlpg", "ud2", "invpcid")


def ends_translation_block(insn: str) -> bool:
    """Does every translated block end after ``insn`` (``mnemonic operands``;
    empty: the start of a section, which nothing falls into; ``?``: unknown
    bytes)?  Then a bounded block hook at the next address fires on every
    arrival there."""
    if not insn:
        return True
    if insn == "?":
        return False
    m, _, ops = insn.partition(" ")
    if m.startswith("j") or m.startswith("loop") or m in _BLOCK_ENDERS:
        return True
    return m == "mov" and ops.startswith("cr")


@dataclass
class CpuConfig:
    la57: bool = False
    model: str | None = None   # default: skylake-server, icelake-server with LA57

    def model_id(self) -> int:
        name = self.model or ("icelake-server" if self.la57 else "skylake-server")
        return MODELS[name]


class Cpu:
    """A Unicorn x86-64 CPU whose physical memory is a :class:`PhysMem`."""

    def __init__(self, mem: PhysMem, config: CpuConfig | None = None):
        self.mem = mem
        self.config = config or CpuConfig()
        self.uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64, self.config.model_id())
        self.handle = self.uc._uch
        self.hv = ctypes.c_void_p(self.handle.value)      # for the raw C calls
        # guest physical 0..size is the Python buffer itself (Unicorn fact 8)
        self.uc.mem_map_ptr(0, mem.size, UC.UC_PROT_ALL, mem.host_address)
        # Exits mode with no exits: emu_start's 'until' is ignored.  Otherwise
        # Unicorn translates 'until' at each start, and that failed translation
        # overwrites CR2 and the pending error code of the next fault (checked
        # on this machine); until=0 avoids that but stops a jump to address 0.
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self._snapshot = None
        self._ran = False                                 # no block translated yet
        self._counted = False                             # Unicorn's count hook not yet added
        self._rip_sync: dict[int, int | None] = {}       # addr -> empty code hook while uncounted (sync_rip_at)
        self._ec_ctx = None
        self._ec_val = None
        self._cr3_ctx = None
        self._out = _u64()
        self.gprs = RegBatch(self, _GPR_IDS)
        self._callbacks: dict[int, object] = {}       # hook handle -> C callback (kept alive)
        self._one: dict[int, OneReg] = {}             # register id -> its raw reader (_reg)

    # -- hooks (through the C API: no per-call binding overhead) ------------------------
    def add_hook(self, kind: str, fn, begin: int = 1, end: int = 0) -> int:
        """Call ``fn`` with the C callback's arguments on every event of ``kind``
        (see :data:`HOOK_KINDS`) for addresses in [begin, end] (begin > end:
        everywhere).  Returns the hook's handle for :meth:`del_hook`."""
        uc_kind, ctype, insn = HOOK_KINDS[kind]
        cb = ctype(fn)
        h = uc_hook_h()
        args = [self.handle, ctypes.byref(h), uc_kind, cb, None, ctypes.c_uint64(begin), ctypes.c_uint64(end)]
        if insn is not None:
            args.append(ctypes.c_int(insn))
        err = _uc_hook_add(*args)
        if err:
            raise RuntimeError(f"uc_hook_add failed: {err}")
        self._callbacks[h.value] = cb
        return h.value

    def del_hook(self, h: int) -> None:
        if self._callbacks.pop(h, None) is not None:
            _uc_hook_del(self.handle, ctypes.c_size_t(h))

    # -- registers -----------------------------------------------------------------
    def reg(self, name: str) -> int:
        """A register of :data:`REG_IDS` by name, with one raw C call (the
        binding's ``reg_read`` costs several Python calls per read)."""
        return self._reg(REG_IDS[name]).read_whole()

    def _reg(self, reg: int) -> OneReg:
        """The raw reader and writer of register ``reg`` (made once per CPU)."""
        one = self._one.get(reg)
        if one is None:
            one = self._one[reg] = OneReg(self, reg)
        return one

    def set_reg(self, name: str, value: int) -> None:
        self.uc.reg_write(REG_IDS[name], value & 0xFFFFFFFFFFFFFFFF)

    def msr(self, index: int) -> int:
        return self.uc.reg_read(X.UC_X86_REG_MSR, index)

    def set_msr(self, index: int, value: int) -> None:
        self.uc.reg_write(X.UC_X86_REG_MSR, (index, value))

    # -- paging ---------------------------------------------------------------
    def enable_paging(self, cr3: int, ctl: ControlState, pcide: bool = False, pge: bool = True) -> None:
        """Turn on long-mode paging through ``cr3`` with ``ctl``'s control bits.

        Unicorn starts in 64-bit mode with paging off (CR0 = 0x11, Unicorn fact 1):
        CR4.PAE/LA57 and EFER.LME/LMA go first, then CR3, then CR0.PG.
        """
        if ctl.la57 and self.config.model_id() != MODELS["icelake-server"]:
            raise ValueError("LA57 needs the icelake-server CPU model")
        cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
        cr4 |= (CR4_PGE if pge else 0) | (CR4_LA57 if ctl.la57 else 0)
        cr4 |= (CR4_SMEP if ctl.smep else 0) | (CR4_SMAP if ctl.smap else 0)
        cr4 |= (CR4_PKE if ctl.pke else 0) | (CR4_PCIDE if pcide else 0)
        self.set_reg("cr4", cr4)
        self.set_msr(MSR_EFER, EFER_SCE | EFER_LME | EFER_LMA | (EFER_NXE if ctl.nxe else 0))
        self.set_reg("cr3", cr3)
        self.set_reg("cr0", CR0_PG | CR0_PE | CR0_MP | CR0_ET | CR0_NE | (CR0_WP if ctl.wp else 0))
        flags = self.reg("rflags")
        self.set_reg("rflags", (flags | RFLAGS_AC) if ctl.ac else (flags & ~RFLAGS_AC))
        self.flush_tlb()

    def flush_tlb(self) -> None:
        """Drop every cached translation (Unicorn fact 5: host-side PTE edits need it)."""
        C.ctl(self.hv, ctypes.c_int(_CTL_TLB_FLUSH))

    def flush_code_cache(self) -> None:
        """Drop translated blocks (code written behind the CPU's back, Unicorn fact 8).
        Before the first run there are none: the ~50 hooks a boot installs cost no flush."""
        if self._ran:
            C.ctl(self.hv, ctypes.c_int(_CTL_TB_FLUSH))

    def hw_translate(self, va: int, access: int = 0) -> int | None:
        """The CPU's own MMU (``uc_vmem_translate``) at the current CPL, SMAP/AC,
        CR0/CR4/EFER and PKRU; None if the access would fault.  Goes through
        the TLB, so flush it after editing tables."""
        err = _vmem_translate(self.handle, va & 0xFFFFFFFFFFFFFFFF, _PROT[access], ctypes.byref(self._out))
        return None if err else self._out.value

    # -- snapshots (Unicorn fact 3) ------------------------------------------------------
    def save_snapshot(self):
        self._snapshot = self.uc.context_save()
        self._snapshot_ctx = ctypes.c_void_p(ctypes.cast(self._snapshot.context, ctypes.c_void_p).value)
        return self._snapshot

    def restore_snapshot(self) -> None:
        C.context_restore(self.hv, self._snapshot_ctx)

    # -- execution --------------------------------------------------------------
    def sync_rip_at(self, addrs) -> None:
        """Let hooks and devices read the exact RIP at each instruction of ``addrs``.

        QEMU writes RIP back before an instruction only where it needs to
        (docs/architecture.md, Unicorn fact 15): a kernel OUT at CPL 0 would
        leave the port handler the RIP some earlier block left.  In an
        uncounted run an empty code hook at each address makes Unicorn write
        it.  In a counted run the count hook does it before every instruction,
        and every code hook in Unicorn's list costs every counted instruction
        a check (fact 13): there the empty hooks are taken out.
        """
        for addr in addrs:
            if addr not in self._rip_sync:
                self._rip_sync[addr] = None if self._counted else self.add_hook("code", _nothing, addr, addr)
        self.flush_code_cache()

    def _rip_sync_hooks(self, on: bool) -> None:
        """Add (uncounted) or remove (counted) the hooks of :meth:`sync_rip_at`;
        the caller flushes the translated blocks."""
        for addr, h in self._rip_sync.items():
            if on and h is None:
                self._rip_sync[addr] = self.add_hook("code", _nothing, addr, addr)
            elif not on and h is not None:
                self.del_hook(h)
                self._rip_sync[addr] = None

    def emu_start(self, begin: int, count: int) -> int:
        """Run at most ``count`` instructions; returns the uc_err status.

        Stops come from the count, hooks (``emu_stop``) and halts only: there
        is no 'until' address (see __init__).
        """
        if count and not self._counted:
            # Unicorn adds its count hook at the first counted start, and blocks
            # translated before it never call it (fact 14): a spin translated by
            # an uncounted run would never run out
            self._rip_sync_hooks(False)
            self.flush_code_cache()
            self._counted = True
        self._ran = True
        return C.emu_start(self.hv, _u64(begin), _u64(0), _u64(0), ctypes.c_size_t(count))

    def emu_start_watched(self, begin: int, seconds: float) -> tuple[int, bool]:
        """Run without an instruction count until a hook or a halt stops the
        CPU, or until it has run ``seconds`` of wall-clock time; returns
        (uc_err, whether the time ran out).

        An instruction count costs every instruction a call into Unicorn's
        count hook (docs/architecture.md, Unicorn fact 14); a watchdog thread
        costs nothing per instruction.  Unicorn's own timeout starts a thread
        per run (~0.2 ms each, measured): one thread per process serves here.
        """
        if self._counted:
            # the other way round (fact 14): Unicorn drops its count hook at an
            # uncounted start, and blocks translated with calls to it stopped a
            # run after its first case (seen in the MMU oracle's batches)
            self._rip_sync_hooks(True)
            self.flush_code_cache()
            self._counted = False
        self._ran = True
        token = _WATCHDOG.arm(self.hv, seconds)
        try:
            err = C.emu_start(self.hv, _u64(begin), _u64(0), _u64(0), ctypes.c_size_t(0))
        finally:
            fired = _WATCHDOG.disarm(token)
        return err, fired

    def emu_stop(self) -> None:
        C.emu_stop(self.hv)

    def last_error_code(self) -> int | None:
        """The error code of the exception just raised, as the CPU computed it.

        Unicorn has no API for it (Unicorn fact 2), but QEMU keeps it in
        ``env->error_code``, which ``uc_context_save`` copies; its offset is
        found once per process by :func:`error_code_offset`.
        """
        return self.last_exception()[0]

    def _scratch(self) -> int:
        """Address of a context buffer for save-patch-restore tricks."""
        if self._ec_ctx is None:
            self._ec_ctx = self.uc.context_save()
            self._ec_ptr = ctypes.c_void_p(ctypes.cast(self._ec_ctx.context, ctypes.c_void_p).value)
        return self._ec_ptr.value

    def write_cr3_keep_tlb(self, value: int) -> None:
        """Set CR3 without flushing Unicorn's TLB: a register write flushes
        it (Unicorn fact 5), a context save, patched CR3 and restore does not.  For
        correcting a value the guest just wrote (the write has flushed)."""
        if self._cr3_ctx is None:
            off = context_offset(X.UC_X86_REG_CR3)
            if off is None:
                raise RuntimeError("cannot find CR3 in a saved Unicorn context (unexpected Unicorn build)")
            self._cr3_ctx = ctypes.c_uint64.from_address(self._scratch() + off)
        C.context_save(self.hv, self._ec_ptr)
        self._cr3_ctx.value = value & 0xFFFFFFFFFFFFFFFF
        C.context_restore(self.hv, self._ec_ptr)

    def last_exception(self, saved: bool = False) -> tuple[int | None, bool | None]:
        """(error code, raised by a software interrupt) of the exception just
        raised, from one context save into the scratch buffer (``saved``: it
        holds the current state already); each is None if not calibrated."""
        off = error_code_offset()
        if off is None:
            return None, None
        if self._ec_val is None:
            addr = self._scratch()
            self._ec_val = ctypes.c_int32.from_address(addr + off)
            isoff = exception_is_int_offset()
            self._is_int_val = None if isoff is None else ctypes.c_int32.from_address(addr + isoff)
        if not saved:
            C.context_save(self.hv, self._ec_ptr)
        return self._ec_val.value, (None if self._is_int_val is None else bool(self._is_int_val.value))


def _nothing(uch, address, size, user_data) -> None:
    """A code hook's only effect: RIP written back before the instruction (fact 15)."""


#: one watchdog thread for every CPU of the process (see emu/hw/watchdog.py)
_WATCHDOG = Watchdog(C.emu_stop).fork_safe()
_ec_offset: list = []
_reg_offsets: dict[int, int | None] = {}


def context_offset(reg_id: int) -> int | None:
    """Offset of a 64-bit register inside a saved Unicorn context.

    Found once per process on a throwaway CPU with paging off: two distinct
    values are written, the context saved after each, and the one 8-byte
    offset holding each value in turn is kept.  Lets a transition patch the
    CPL-0 snapshot (e.g. CR3) instead of writing the register afterwards,
    which would flush the whole TLB.  One throwaway CPU serves every
    register, put back to its first state before each (a new Unicorn
    instance costs about 1.5 ms: a new process asks for a dozen).
    """
    if reg_id in _reg_offsets:
        return _reg_offsets[reg_id]
    uc = calibration_uc()
    size = uclib.uc_context_size(uc._uch)
    blobs = []
    patterns = (0x1234_5678_9ABC_D000, 0x0FED_CBA9_8765_4000)
    for v in patterns:
        uc.reg_write(reg_id, v)
        ctx = uc.context_save()
        blobs.append(ctypes.string_at(ctypes.cast(ctx.context, ctypes.c_void_p).value, size))
    first, second = (v.to_bytes(8, "little") for v in patterns)
    hits = []
    off = blobs[0].find(first)
    while off >= 0:
        if off % 8 == 0 and off + 8 <= size - 8 and blobs[1][off:off + 8] == second:
            hits.append(off)
        off = blobs[0].find(first, off + 1)
    _reg_offsets[reg_id] = hits[0] if len(hits) == 1 else None
    return _reg_offsets[reg_id]


def calibration_uc() -> Uc:
    """A throwaway Unicorn CPU for finding where QEMU keeps things (paging off,
    nothing mapped), put back to its first state at each call: one per
    process serves every calibration (a new instance costs about 1.5 ms)."""
    if not _calibration_cpu:
        uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64, MODELS["skylake-server"])
        _calibration_cpu.extend((uc, uc.context_save()))
    uc, fresh = _calibration_cpu
    uc.context_restore(fresh)
    return uc


_calibration_cpu: list = []      # calibration_uc's CPU and its first state


def error_code_offset() -> int | None:
    """Offset of QEMU's ``env->error_code`` inside a saved Unicorn context.

    Calibrated by raising four #PFs whose error codes are known by
    construction (0x2, 0x3, 0x9, 0x11) in a throwaway CPU and keeping the one
    32-bit offset that held each code in turn.  None if no unique offset is
    found (the caller then relies on the reference walker alone).
    """
    if _ec_offset:
        return _ec_offset[0]
    import struct

    from emu.hw.paging import NX, P, PS, RW, VEC_PF

    mem = PhysMem(32 << 20)
    cpu = Cpu(mem)
    w = lambda pa, v: struct.pack_into("<Q", mem.buf, pa, v)  # noqa: E731
    # PML4 0x1000 -> PDPT 0x2000 -> PD 0x3000: 2M pages
    w(0x1000, 0x2000 | P | RW)
    w(0x2000, 0x3000 | P | RW)
    w(0x3000 + 8 * 1, 0x200000 | P | RW | PS)            # 2M..4M code+data, RW
    w(0x3000 + 8 * 2, 0x400000 | P | PS)                  # 4M..6M read-only
    w(0x3000 + 8 * 3, 0x600000 | P | RW | PS | NX)        # 6M..8M no-execute
    w(0x3000 + 8 * 4, 0x800000 | P | RW | PS | (1 << 45))  # 8M..10M reserved bit 45
    # mov [rdi],al / mov al,[rdi] / jmp rdi / int 14 / int3
    code = bytes.fromhex("8807" "8a07" "ffe7" "cd0e" "cc")
    mem.write(0x200000, code)
    cpu.enable_paging(0x1000, ControlState(smap=False, smep=False))
    snap = cpu.uc.context_save()
    cases = [(0x200000, 0xA00000, 0x2),   # write, not present
             (0x200000, 0x400000, 0x3),   # write, read-only (WP)
             (0x200002, 0x800000, 0x9),   # read, reserved bit
             (0x200004, 0x600000, 0x11)]  # fetch, NX
    soft = [(0x200006, 0, 0), (0x200008, 0, 0)]  # INT 14, INT3: software
    blobs = []
    size = uclib.uc_context_size(cpu.handle)

    def on_intr(uc, intno, _):
        uc.emu_stop()

    cpu.uc.hook_add(UC.UC_HOOK_INTR, on_intr)
    for rip, target, _ in cases + soft:
        cpu.uc.context_restore(snap)
        cpu.set_reg("rdi", target)
        cpu.flush_tlb()
        cpu.emu_start(rip, 2)
        ctx = cpu.uc.context_save()
        blobs.append(ctypes.string_at(ctypes.cast(ctx.context, ctypes.c_void_p).value, size))
    hits = [off for off in range(0, size - 4, 4)
            if all(int.from_bytes(b[off:off + 4], "little") == ec for b, (_, _, ec) in zip(blobs, cases))]
    off = hits[0] if len(hits) == 1 else None
    # QEMU keeps env->exception_is_int right after env->error_code
    # (target/i386/cpu.h): 0 for the four faults, 1 for INT n and INT3
    is_int = None
    if off is not None and [int.from_bytes(b[off + 4:off + 8], "little") for b in blobs] == [0] * 4 + [1] * 2:
        is_int = off + 4
    # QEMU's env->old_exception (the exception in flight, which makes the
    # next #PF a #DF; target/i386/excp_helper.c check_exception) follows:
    # 14 after each #PF, -1 (the snapshot's) after INT n and INT3
    old = None
    if off is not None:
        want = [VEC_PF] * 4 + [0xFFFFFFFF] * 2
        olds = [o for o in range(off + 8, min(off + 256, size - 4), 4)
                if [int.from_bytes(b[o:o + 4], "little") for b in blobs] == want]
        old = olds[0] if len(olds) == 1 else None
    _ec_offset.extend((off, is_int, old))
    return _ec_offset[0]


def exception_is_int_offset() -> int | None:
    """Offset of ``env->exception_is_int`` in a saved context (calibrated
    with :func:`error_code_offset`), or None if it was not where expected."""
    error_code_offset()
    return _ec_offset[1]


def old_exception_offset() -> int | None:
    """Offset of QEMU's ``env->old_exception`` (the exception in flight) in a
    saved context (calibrated with :func:`error_code_offset`), or None."""
    error_code_offset()
    return _ec_offset[2]

