"""The architectural register file a privilege transition carries, read and
written in one C batch (the binding's batch calls cost ~40 us; this ~1 us:
docs/unicorn-notes.md)."""

from __future__ import annotations

import ctypes
import struct

from unicorn import x86_const as X

from emu.hw.cpu import C
from emu.hw.x86 import GPRS_DISPLAY, MSR_KERNEL_GS_BASE

# --- the architectural register file -----------------------------------------------------
_GPRS = list(GPRS_DISPLAY)
_OTHERS = ["rip", "rflags", "cs", "ss", "cr0", "cr2", "cr3", "cr4", "fs_base", "gs_base"]
STATE_NAMES = _GPRS + _OTHERS + ["kernel_gs_base", "mxcsr"] + [f"xmm{i}" for i in range(16)]
IDX = {n: i for i, n in enumerate(STATE_NAMES)}
_SLOT = 16
# value indices in RegFile.mv of the registers delivery touches
V_RIP, V_RSP, V_RFLAGS, V_CS, V_SS, V_CR2, V_CR3 = (2 * IDX[n] for n in ("rip", "rsp", "rflags", "cs", "ss", "cr2",
                                                                        "cr3"))
V_RCX, V_R11, V_RAX, V_CR0, V_CR4 = (2 * IDX[n] for n in ("rcx", "r11", "rax", "cr0", "cr4"))
Q = struct.Struct("<Q")
QQ = struct.Struct("<QQ")
FRAME5 = struct.Struct("<5Q")
FRAME6 = struct.Struct("<6Q")


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
