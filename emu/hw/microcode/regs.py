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


# the register ids, slots and the ctypes types a RegFile is made of: the same for every CPU
_IDS = [getattr(X, f"UC_X86_REG_{n.upper()}") for n in _GPRS + _OTHERS]
_IDS += [X.UC_X86_REG_MSR, X.UC_X86_REG_MXCSR] + [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]
_N = len(_IDS)
# the write-back after a snapshot restore leaves CR3 out: it is patched
# into the snapshot instead (writing it would flush the TLB)
_KEEP = [i for i in range(_N) if STATE_NAMES[i] != "cr3"]
_MSR = IDX["kernel_gs_base"]
# name -> index of its value in a 64-bit view (memoryview indexing is
# several times cheaper than a ctypes array's); the MSR slot is a
# uc_x86_msr {u32 rid; u64 value}: value at +8
_VALUE_INDEX = {name: 2 * i + (1 if i == _MSR else 0) for i, name in enumerate(STATE_NAMES)}
_Ids, _WIds = ctypes.c_int32 * _N, ctypes.c_int32 * len(_KEEP)
_Ptrs, _WPtrs = ctypes.c_void_p * _N, ctypes.c_void_p * len(_KEEP)
_Buf, _Qs = ctypes.c_uint8 * (_SLOT * _N), ctypes.c_uint64 * (2 * _N)


class RegFile:
    """Every register a privilege transition must carry, in one C batch."""

    def __init__(self, hv):
        self.n = ctypes.c_int(_N)
        self.h = hv
        self.ids = _Ids(*_IDS)
        self.buf = _Buf()
        base = ctypes.addressof(self.buf)
        self.ptrs = _Ptrs(*range(base, base + _SLOT * _N, _SLOT))
        self.q = _Qs.from_buffer(self.buf)   # q[2*i] is slot i's value
        self.wn = ctypes.c_int(len(_KEEP))
        self.wids = _WIds(*[_IDS[i] for i in _KEEP])
        self.wptrs = _WPtrs(*[base + _SLOT * i for i in _KEEP])
        self.msr = _MSR
        self._rid = ctypes.c_uint32.from_buffer(self.buf, _SLOT * self.msr)
        self._rid.value = MSR_KERNEL_GS_BASE
        self.mv = memoryview(self.buf).cast("B").cast("Q")
        self.slot = dict(_VALUE_INDEX)

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
