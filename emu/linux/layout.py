"""The Linux x86-64 virtual address map (Documentation/arch/x86/x86_64/mm.rst).

Pure data: no other isoemu module is imported here.  4-level and 5-level
(LA57) layouts differ in the low kernel half; the top 2 GiB are the same.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    levels: int
    va_bits: int
    user_end: int               # first non-user address (TASK_SIZE_MAX rounded)
    ldt_base: int               # LDT remap for PTI
    page_offset: int            # direct map (page_offset_base)
    direct_map_size: int
    vmalloc_start: int
    vmalloc_end: int
    vmemmap_start: int
    cpu_entry_area: int         # CPU_ENTRY_AREA_BASE
    espfix_base: int            # ESPFIX_BASE_ADDR
    efi_va_end: int
    kernel_map: int             # __START_KERNEL_map
    kernel_text: int            # __START_KERNEL (physical_start 16 MiB)
    modules_vaddr: int
    modules_end: int
    fixaddr_start: int
    vsyscall: int

    @property
    def kernel_half(self) -> int:
        """Lowest canonical kernel-half address."""
        return (-1 << (self.va_bits - 1)) & 0xFFFFFFFFFFFFFFFF

    def canonical(self, va: int) -> bool:
        top = va >> (self.va_bits - 1)
        return top == 0 or top == (1 << (65 - self.va_bits)) - 1

    def is_user(self, va: int) -> bool:
        return va < self.user_end

    def markers(self) -> list[tuple[int, str]]:
        """ptdump section markers (arch/x86/mm/dump_pagetables.c address_markers)."""
        return [
            (0, "User Space"),
            (1 << 63, "Kernel Space"),
            (self.ldt_base, "LDT remap"),
            (self.page_offset, "Low Kernel Mapping"),
            (self.vmalloc_start, "vmalloc() Area"),
            (self.vmemmap_start, "Vmemmap"),
            (self.cpu_entry_area, "CPU entry Area"),
            (self.espfix_base, "ESPfix Area"),
            (self.efi_va_end, "EFI Runtime Services"),
            (self.kernel_map, "High Kernel Mapping"),
            (self.modules_vaddr, "Modules"),
            (self.modules_end, "End Modules"),
            (self.fixaddr_start, "Fixmap Area"),
        ]


_COMMON_TOP = dict(
    cpu_entry_area=0xFFFFFE0000000000,
    espfix_base=0xFFFFFF0000000000,
    efi_va_end=0xFFFFFFEF00000000,
    kernel_map=0xFFFFFFFF80000000,
    kernel_text=0xFFFFFFFF81000000,
    modules_vaddr=0xFFFFFFFFA0000000,
    modules_end=0xFFFFFFFFFF000000,
    fixaddr_start=0xFFFFFFFFFF579000,
    vsyscall=0xFFFFFFFFFF600000,
)

LAYOUT_4LEVEL = Layout(
    levels=4, va_bits=48,
    user_end=0x0000800000000000,
    ldt_base=0xFFFF880000000000,
    page_offset=0xFFFF888000000000,
    direct_map_size=64 << 40,
    vmalloc_start=0xFFFFC90000000000,
    vmalloc_end=0xFFFFE8FFFFFFFFFF,
    vmemmap_start=0xFFFFEA0000000000,
    **_COMMON_TOP,
)

LAYOUT_5LEVEL = Layout(
    levels=5, va_bits=57,
    user_end=0x0100000000000000,
    ldt_base=0xFF10000000000000,
    page_offset=0xFF11000000000000,
    direct_map_size=32 << 50,
    vmalloc_start=0xFFA0000000000000,
    vmalloc_end=0xFFD1FFFFFFFFFFFF,
    vmemmap_start=0xFFD4000000000000,
    **_COMMON_TOP,
)


def layout_for(levels: int) -> Layout:
    return LAYOUT_5LEVEL if levels == 5 else LAYOUT_4LEVEL
