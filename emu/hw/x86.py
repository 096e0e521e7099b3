"""Architectural names and numbers of x86-64, defined once.

Exception vectors and which of them push an error code (Intel SDM Vol. 3A,
6.3.1 Table 6-1), selector error codes (6.13), register names in encoding
order, and the control-register, EFER and RFLAGS bits the CPU layer and the
tools share (SDM Vol. 3A 2.5, 2.2.1; Vol. 1 3.4.3).
"""

from __future__ import annotations

# --- exception vectors (SDM Vol. 3A Table 6-1) -----------------------------------------
VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP", 29: "#VC", 30: "#SX"}
VECTOR_BY_NAME = {n.lstrip("#").upper(): v for v, n in VECTOR_NAMES.items()}
#: vectors whose delivery pushes an error code
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21, 29, 30})
#: vectors whose error code is a selector error code (6.13): #TS #NP #SS #GP
SELECTOR_ERROR_CODE_VECTORS = frozenset({10, 11, 12, 13})
#: contributory exceptions (Table 6-4), for the #DF rules of Table 6-5
CONTRIBUTORY = frozenset({0, 10, 11, 12, 13})
VEC_DE, VEC_DB, VEC_BP, VEC_UD, VEC_DF, VEC_GP, VEC_PF = 0, 1, 3, 6, 8, 13, 14


def vector_name(v: int) -> str:
    """``#PF``, ``#GP``...; other vectors as ``vector 0xec``."""
    return VECTOR_NAMES.get(v, f"vector {v:#x}")


def selector_error_code_words(ec: int) -> str:
    """A selector error code in words: ``IDT vector 0x80``, ``GDT selector
    0x28``, with ``external`` for the EXT bit."""
    where = f"IDT vector {(ec >> 3) & 0x1FFF:#x}" if ec & 2 else \
        f"{'LDT' if ec & 4 else 'GDT'} selector {ec & 0xFFF8:#x}"
    return f"external, {where}" if ec & 1 else where


# --- registers ------------------------------------------------------------------------------
#: the 64-bit general-purpose registers in encoding order
GPRS = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
#: the general-purpose registers in the order tools list them (gdb's)
GPRS_DISPLAY = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
#: what a user program can observe of its own state
USER_REGISTERS = GPRS_DISPLAY + ("rip", "rflags")
SEGMENT_REGISTERS = ("cs", "ss", "ds", "es", "fs", "gs")

# --- control bits (SDM Vol. 3A 2.5, Vol. 1 3.4.3) -------------------------------------------
CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = 1, 2, 0x10, 0x20, 1 << 16, 1 << 18, 1 << 31
CR4_PAE, CR4_PGE, CR4_OSFXSR, CR4_OSXMMEXCPT = 1 << 5, 1 << 7, 1 << 9, 1 << 10
CR4_LA57, CR4_PCIDE, CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 12, 1 << 17, 1 << 20, 1 << 21, 1 << 22
EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
RF_CF, RF_PF, RF_AF, RF_ZF, RF_SF, RF_TF, RF_IF, RF_DF, RF_OF = 1, 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 8, \
    1 << 9, 1 << 10, 1 << 11
RF_NT, RF_RF, RF_VM, RF_AC, RF_ID = 1 << 14, 1 << 16, 1 << 17, 1 << 18, 1 << 21
RFLAGS_RESERVED = 1 << 1
CR3_NOFLUSH = 1 << 63          # CR3 bit 63 with CR4.PCIDE: do not flush the new PCID (SDM 4.10.4.1)
CR3_PCID_MASK = 0xFFF

MSR_EFER = 0xC0000080
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_FMASK = 0xC0000084
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102


def canonical(va: int, la57: bool = False) -> bool:
    """Bits 63..47 (63..56 with LA57) all equal (SDM Vol. 1 3.3.7.1)."""
    top = (va & 0xFFFFFFFFFFFFFFFF) >> (56 if la57 else 47)
    return top == 0 or top == (0xFF if la57 else 0x1FFFF)
