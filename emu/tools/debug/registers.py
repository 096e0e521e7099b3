"""Registers by name, and their bits in words.

The names come from emu/hw/x86.py (the general-purpose registers in gdb's
order, the segment registers); the bits of RFLAGS, CR0, CR4 and EFER from
its constants (Intel SDM Vol. 1 3.4.3, Vol. 3A 2.5, 2.2.1).
"""

from __future__ import annotations

from collections.abc import Mapping

from emu.hw.x86 import (CR0_AM, CR0_ET, CR0_MP, CR0_NE, CR0_PE, CR0_PG, CR0_WP, CR4_LA57,
                        CR4_OSFXSR, CR4_OSXMMEXCPT, CR4_PAE, CR4_PCIDE, CR4_PGE, CR4_PKE, CR4_SMAP,
                        CR4_SMEP, EFER_LMA, EFER_LME, EFER_NXE, EFER_SCE, MSR_EFER, MSR_KERNEL_GS_BASE,
                        RF_AC, RF_CF, RF_DF, RF_IF, RF_NT, RF_RF, RF_TF, RF_VM, SEGMENT_REGISTERS,
                        USER_REGISTERS)

#: what ``info registers`` lists, in order; each is a key of :class:`Registers`
REGISTER_NAMES = USER_REGISTERS + SEGMENT_REGISTERS + ("fs_base", "gs_base", "kernel_gs_base",
                                                       "cr0", "cr2", "cr3", "cr4", "efer")
_MSRS = {"kernel_gs_base": MSR_KERNEL_GS_BASE, "efer": MSR_EFER}
ALIASES = {"eflags": "rflags", "pc": "rip", "sp": "rsp"}

# The status flags of RFLAGS (SDM Vol. 1 3.4.3.1) and ID (3.4.3.3), which the
# CPU layer has no use for and emu/hw/x86.py therefore does not name.
_RF_PF, _RF_AF, _RF_ZF, _RF_SF, _RF_OF, _RF_ID = 1 << 2, 1 << 4, 1 << 6, 1 << 7, 1 << 11, 1 << 21

#: register -> [(mask, name)] of the bits ``info registers`` spells out
FLAG_BITS: dict[str, list[tuple[int, str]]] = {
    "rflags": [(RF_CF, "CF"), (_RF_PF, "PF"), (_RF_AF, "AF"), (_RF_ZF, "ZF"), (_RF_SF, "SF"),
               (RF_TF, "TF"), (RF_IF, "IF"), (RF_DF, "DF"), (_RF_OF, "OF"), (RF_NT, "NT"),
               (RF_RF, "RF"), (RF_VM, "VM"), (RF_AC, "AC"), (_RF_ID, "ID")],
    "cr0": [(CR0_PE, "PE"), (CR0_MP, "MP"), (CR0_ET, "ET"), (CR0_NE, "NE"), (CR0_WP, "WP"),
            (CR0_AM, "AM"), (CR0_PG, "PG")],
    "cr4": [(CR4_PAE, "PAE"), (CR4_PGE, "PGE"), (CR4_OSFXSR, "OSFXSR"), (CR4_OSXMMEXCPT, "OSXMMEXCPT"),
            (CR4_LA57, "LA57"), (CR4_PCIDE, "PCIDE"), (CR4_SMEP, "SMEP"), (CR4_SMAP, "SMAP"),
            (CR4_PKE, "PKE")],
    "efer": [(EFER_SCE, "SCE"), (EFER_LME, "LME"), (EFER_LMA, "LMA"), (EFER_NXE, "NXE")],
}


def canonical_name(name: str) -> str | None:
    """The register ``name`` (any case, gdb's aliases ``pc``, ``sp``, ``eflags``) means, or None."""
    n = name.lower()
    n = ALIASES.get(n, n)
    return n if n in REGISTER_NAMES else None


def flag_names(name: str, value: int) -> list[str]:
    """The set bits of RFLAGS, CR0, CR4 or EFER by name (``[]`` for other registers)."""
    return [n for mask, n in FLAG_BITS.get(name, ()) if value & mask]


class Registers(Mapping):
    """The CPU's registers by name (read when asked): ``regs["cr3"]``."""

    def __init__(self, cpu):
        self._cpu = cpu

    def __getitem__(self, name: str) -> int:
        n = canonical_name(name) if isinstance(name, str) else None
        if n is None:
            raise KeyError(name)
        if n in _MSRS:
            return self._cpu.msr(_MSRS[n])
        return self._cpu.reg(n)

    def __iter__(self):
        return iter(REGISTER_NAMES)

    def __len__(self) -> int:
        return len(REGISTER_NAMES)
