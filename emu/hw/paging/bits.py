"""Page-table entry bits, Linux's protections, access kinds and #PF error codes.

Entry bits: Intel SDM Vol. 3A 4.5 (Tables 4-15 to 4-20); names and
protections as arch/x86/include/asm/pgtable_types.h; error code bits SDM
4.7.
"""

from __future__ import annotations

from emu.errors import AddressError

# --- entry bits (arch/x86/include/asm/pgtable_types.h) ----------------------
P = 1 << 0
RW = 1 << 1
US = 1 << 2
PWT = 1 << 3
PCD = 1 << 4
A = 1 << 5
D = 1 << 6
PS = 1 << 7          # page size in PDPTE/PDE; PAT in a 4 KiB PTE
PAT = 1 << 7         # PAT bit of a 4 KiB PTE
G = 1 << 8
PAT_LARGE = 1 << 12  # PAT bit of a 2 MiB / 1 GiB leaf
NX = 1 << 63
PKEY_SHIFT = 59
PKEY_MASK = 0xF << PKEY_SHIFT
ADDR_MASK = 0x000FFFFFFFFFF000  # bits 51:12
FLAGS_MASK = ~ADDR_MASK & 0xFFFFFFFFFFFFFFFF

# Linux protections (pgtable_types.h), leaf flags in 4 KiB convention.
PAGE_KERNEL = P | RW | A | D | G | NX
PAGE_KERNEL_RO = P | A | D | G | NX
PAGE_KERNEL_RX = P | A | D | G          # PAGE_KERNEL_ROX
PAGE_KERNEL_EXEC = P | RW | A | D | G
PAGE_SHARED = P | RW | US | A | NX
PAGE_READONLY = P | US | A | NX
PAGE_READONLY_EXEC = P | US | A
PAGE_SHARED_EXEC = P | RW | US | A
KERNPG_TABLE = P | RW | A | D             # _KERNPG_TABLE
PAGE_TABLE = P | RW | US | A | D          # _PAGE_TABLE
#: the entry of a removed direct-map page, less its inverted PFN
#: (set_direct_map_invalid_noflush: P, RW and G cleared)
INVALID_CLEARS = P | RW | G

# access kinds, numbered as QEMU's is_write1 (and the #PF W / I/D bits)
READ, WRITE, FETCH = 0, 1, 2
ACCESS_NAMES = {READ: "r", WRITE: "w", FETCH: "x"}
_ACCESS_BY_NAME = {"r": READ, "read": READ, "w": WRITE, "write": WRITE,
                   "x": FETCH, "exec": FETCH, "fetch": FETCH}

# #PF error code bits (SDM 4.7)
PF_P, PF_W, PF_U, PF_RSVD, PF_I, PF_PK, PF_SS = 1, 2, 4, 8, 16, 32, 64
VEC_GP, VEC_PF = 13, 14

#: the physical-address width of the Unicorn CPU models in use (CPUID
#: 0x80000008 EAX[7:0]); a parameter of the control state
MAXPHYADDR = 40
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT


def parse_access(a) -> int:
    if isinstance(a, int) and a in ACCESS_NAMES:
        return a
    try:
        return _ACCESS_BY_NAME[str(a).lower()]
    except KeyError:
        raise AddressError(f"bad access {a!r}: use r, w or x") from None


def rsvd_hi_mask(maxphyaddr: int = MAXPHYADDR) -> int:
    """Address bits above MAXPHYADDR up to bit 51 are reserved."""
    return ADDR_MASK & ~((1 << maxphyaddr) - 1)


def fmt_size(size: int) -> str:
    for unit, sh in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << sh and size % (1 << sh) == 0:
            return f"{size >> sh}{unit}"
    return f"{size}B"


def error_code_words(ec: int) -> str:
    """Decode a #PF error code, e.g. ``present, write, user``."""
    words = ["protection" if ec & PF_P else "not-present",
             "write" if ec & PF_W else ("fetch" if ec & PF_I else "read"),
             "user" if ec & PF_U else "supervisor"]
    if ec & PF_RSVD:
        words.append("reserved-bit")
    if ec & PF_PK:
        words.append("protection-key")
    if ec & PF_SS:
        words.append("shadow-stack")
    return ", ".join(words)


def large_to_4k(flags: int) -> int:
    """pgprot_large_2_4k: PAT moves from bit 12 to bit 7, PS is dropped."""
    out = flags & ~(PS | PAT_LARGE)
    if flags & PAT_LARGE:
        out |= PAT
    return out


def fourk_to_large(flags: int) -> int:
    """pgprot_4k_2_large: PAT moves from bit 7 to bit 12, PS is set."""
    out = (flags & ~PAT) | PS
    if flags & PAT:
        out |= PAT_LARGE
    return out
