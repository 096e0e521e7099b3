"""guest_memfd's page lifecycle seen through the kernel's counters
(docs/guest_memfd.md): pages allocated, out of the direct map, conversions.
The asm tests in asm/guest_memfd/ check the ABI; these check the state the
stub keeps, at a point where the program stops (a spin the budget ends)."""

import pytest

from emu.linux.config import MachineConfig
from emu.linux.machine import BudgetExhausted, Machine

PROLOGUE = """
.include "kvm.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x4000, {flags}
"""
SPIN = """
.Lspin:
    jmp .Lspin
"""
NODM = "GUEST_MEMFD_FLAG_NO_DIRECT_MAP"

CASES = [
    # (flags, body, pages, unmapped, conversions)
    ("0", "", 0, 0, 0),
    ("0", "    falloc a, r13, FALLOC_FL_KEEP_SIZE, 0, 0x3000\n", 3, 0, 0),
    (NODM, "    falloc a, r13, FALLOC_FL_KEEP_SIZE, 0, 0x3000\n", 3, 3, 0),
    (NODM, "    falloc a, r13, FALLOC_FL_KEEP_SIZE, 0, 0x4000\n"
           "    falloc p, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x1000, 0x2000\n", 2, 2, 0),
    ("0", "    gmem_convert c, r13, 0, 0x4000, 0\n", 0, 0, 4),
    ("0", "    gmem_convert c, r13, 0, 0x4000, 0\n"
          "    gmem_convert d, r13, 0x1000, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE\n", 0, 0, 5),
    # close frees every page, and NO_DIRECT_MAP ones return to the direct map
    (NODM, "    falloc a, r13, FALLOC_FL_KEEP_SIZE, 0, 0x4000\n"
           "    mov rdi, r13\n    mov eax, SYS_close\n    syscall\n", 0, 0, 0),
]


@pytest.mark.parametrize("flags, body, pages, unmapped, conversions", CASES)
def test_page_lifecycle_counters(flags, body, pages, unmapped, conversions):
    src = PROLOGUE.format(flags=flags) + body + SPIN
    m = Machine(MachineConfig(asi="off"), programs=[("A", src)])
    with pytest.raises(BudgetExhausted):
        m.run(200_000)
    s = m.stats()
    assert (s["guest_memfd_pages"], s["guest_memfd_unmapped_pages"], s["guest_memfd_conversions"]) \
        == (pages, unmapped, conversions)
    assert m.findings == []
