"""The CPU rules around PCIDs and INVPCID, as kvm-unit-tests x86/pcid.c
checks them on real hardware (Intel SDM Vol. 2A, MOV to CR0/CR4 and
INVPCID; Vol. 3A 4.10.1), on a bare system (emu/dev/bare.py) whose kernel
code declares its CR writes (``.cr0_write``, ``.cr4_write``) as the stub does.

Each case runs kernel code from a label until ``hlt``: either the code's own
``hlt`` (no exception), or the #GP handler's.  The handler leaves the faulting
RIP and the error code in memory; the control registers must be unchanged
by a write that faulted."""

import struct

import pytest

from emu.dev.bare import KERNEL_DATA, bare_system
from emu.hw.x86 import CR0_PG, CR4_PCIDE

KERNEL = """
# #GP handler: the error code and the RIP of the faulting instruction, then stop
vec13:
    movabs rcx, GP_RECORD
    pop rax
    mov qword ptr [rcx], rax
    pop rax
    mov qword ptr [rcx + 8], rax
    hlt
set_pcide_dirty_cr3:            # CR3[11:0] = 1, then CR4.PCIDE: #GP(0)
    mov rax, cr3
    or rax, 1
    mov cr3, rax
    mov rax, cr4
    bts rax, 17
set_pcide_dirty_cr3_insn:
    .cr4_write
    mov cr4, rax
    hlt
set_pcide_clean_cr3:            # CR3[11:0] = 0: allowed
    mov rax, cr4
    bts rax, 17
    .cr4_write
    mov cr4, rax
    hlt
clear_pg_with_pcide:            # CR0.PG cleared while CR4.PCIDE = 1: #GP(0)
    mov rax, cr4
    bts rax, 17
    .cr4_write
    mov cr4, rax
    mov rax, cr0
    btr rax, 31
clear_pg_with_pcide_insn:
    .cr0_write
    mov cr0, rax
    hlt
invpcid_type0_pcid1:           # INVPCID type 0 with PCID 1 while PCIDE = 0: #GP(0)
    mov rax, 0
    lea rcx, [rip + desc_pcid1]
invpcid_type0_pcid1_insn:
    invpcid rax, xmmword ptr [rcx]
    hlt
invpcid_type1_pcid1:           # type 1, the same
    mov rax, 1
    lea rcx, [rip + desc_pcid1]
invpcid_type1_pcid1_insn:
    invpcid rax, xmmword ptr [rcx]
    hlt
invpcid_type2_pcid1:           # types 2 and 3 ignore the PCID: allowed
    mov rax, 2
    lea rcx, [rip + desc_pcid1]
    invpcid rax, xmmword ptr [rcx]
    hlt
invpcid_type3_pcid1:
    mov rax, 3
    lea rcx, [rip + desc_pcid1]
    invpcid rax, xmmword ptr [rcx]
    hlt
invpcid_type0_pcid0:           # PCID 0 with PCIDE = 0: allowed
    mov rax, 0
    lea rcx, [rip + desc_pcid0]
    invpcid rax, xmmword ptr [rcx]
    hlt
invpcid_type4:                 # no such type: #GP(0)
    mov rax, 4
    lea rcx, [rip + desc_pcid0]
invpcid_type4_insn:
    invpcid rax, xmmword ptr [rcx]
    hlt
invpcid_noncanonical:          # type 0 with a non-canonical address: #GP(0)
    mov rax, 0
    lea rcx, [rip + desc_noncanonical]
invpcid_noncanonical_insn:
    invpcid rax, xmmword ptr [rcx]
    hlt
invpcid_pcid_over_12_bits:     # a PCID above 4095: #GP(0)
    mov rax, 3
    lea rcx, [rip + desc_pcid_big]
invpcid_pcid_over_12_bits_insn:
    invpcid rax, xmmword ptr [rcx]
    hlt
.align 16
desc_pcid0:         .quad 0, 0x1000
desc_pcid1:         .quad 1, 0x1000
desc_noncanonical:  .quad 0, 0x0000800000000000
desc_pcid_big:      .quad 0x1000, 0
"""
GP_RECORD = KERNEL_DATA + 0x3000          # after the GDT, IDT and TSS: error code, RIP

# (label, faults: the label of the faulting instruction or None)
CASES = [
    ("set_pcide_dirty_cr3", "set_pcide_dirty_cr3_insn"),
    ("set_pcide_clean_cr3", None),
    ("clear_pg_with_pcide", "clear_pg_with_pcide_insn"),
    ("invpcid_type0_pcid1", "invpcid_type0_pcid1_insn"),
    ("invpcid_type1_pcid1", "invpcid_type1_pcid1_insn"),
    ("invpcid_type2_pcid1", None),
    ("invpcid_type3_pcid1", None),
    ("invpcid_type0_pcid0", None),
    ("invpcid_type4", "invpcid_type4_insn"),
    ("invpcid_noncanonical", "invpcid_noncanonical_insn"),
    ("invpcid_pcid_over_12_bits", "invpcid_pcid_over_12_bits_insn"),
]


def _system():
    b = bare_system(KERNEL.replace("GP_RECORD", hex(GP_RECORD)), "_start:\n    hlt\n", gates={13: "vec13"})
    b.cpu.mem.write(b.data_pa + 0x3000, struct.pack("<QQ", 2 ** 64 - 1, 2 ** 64 - 1))
    for n in (0, 4):
        for s in b.kernel.sites_of(f"cr{n}_write"):
            b.cpu.add_cr_site(s.addr, s.size, n, s.operand)
    return b


def _record(b):
    """(error code, RIP) the #GP handler stored, or all ones."""
    return struct.unpack("<QQ", b.cpu.mem.read(b.data_pa + 0x3000, 16))


@pytest.mark.parametrize("label,faulting", CASES, ids=[c[0] for c in CASES])
def test_pcid_rules(label, faulting):
    b = _system()
    cpu = b.cpu
    cpu.set_reg("rip", b.kernel.symbols[label])
    cr0_before, cr4_before = cpu.reg("cr0"), cpu.reg("cr4")
    assert not cr4_before & CR4_PCIDE and cr0_before & CR0_PG
    assert cpu.run(1000) == "halt"
    code, rip = _record(b)
    if faulting is None:
        assert (code, rip) == (2 ** 64 - 1, 2 ** 64 - 1), f"unexpected #GP({code:#x}) at {rip:#x}"
        return
    assert (code, rip) == (0, b.kernel.symbols[faulting])
    if label == "set_pcide_dirty_cr3":
        assert not cpu.reg("cr4") & CR4_PCIDE              # the write did not happen
    if label == "clear_pg_with_pcide":
        assert cpu.reg("cr0") & CR0_PG
