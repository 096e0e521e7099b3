"""Segment and gate descriptors in their 64-bit formats (Intel SDM Vol. 3A
3.4.5 segment descriptors, 7.2.3 the 16-byte TSS descriptor, 6.14.1 64-bit
IDT gate descriptors)."""

from __future__ import annotations

GATE_INTERRUPT, GATE_TRAP = 0xE, 0xF
TSS_AVAILABLE = 0x9


def tss_descriptor(base: int, limit: int) -> tuple[int, int]:
    """The two quadwords of an available 64-bit TSS descriptor (DPL 0, present)."""
    lo = (limit & 0xFFFF) | ((base & 0xFFFFFF) << 16) | ((0x80 | TSS_AVAILABLE) << 40) \
        | (((limit >> 16) & 0xF) << 48) | (((base >> 24) & 0xFF) << 56)
    return lo, base >> 32


def gate_descriptor(offset: int, selector: int, *, dpl: int = 0, ist: int = 0,
                    kind: int = GATE_INTERRUPT) -> tuple[int, int]:
    """The two quadwords of a present 64-bit interrupt (or trap) gate."""
    lo = (offset & 0xFFFF) | (selector << 16) | (ist << 32) | ((0x80 | dpl << 5 | kind) << 40) \
        | (((offset >> 16) & 0xFFFF) << 48)
    return lo, offset >> 32
