"""MAP_SECRET through the Python API (docs/secretmem.md, "MAP_SECRET"): the
secret-page counter and the direct map's state at a point where the program
stops (a spin the budget ends), for memfd_secret and MAP_SECRET side by side.
The asm tests in asm/secretmem/map_secret_*.S check the ABI."""

import pytest

from emu.hw.paging import Fault, translate
from emu.linux.config import MachineConfig
from emu.linux.machine import BudgetExhausted, Machine

MAP = """
.include "isoemu.inc"
.text
_start:
    {setup}
    mov qword ptr [r13], 0x5ec2e7
    mov qword ptr [r13 + 0x1000], 0x5ec2e7
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov qword ptr [USER_DATA], rax
    {after}
.Lspin:
    jmp .Lspin
"""
ANON = "secret_anon r13, 0x2000"
FD = "secret_map r13, 0x2000, 0x2000"
UNMAP = "mov eax, SYS_munmap\n    mov rdi, r13\n    mov esi, 0x2000\n    syscall"
CLOSE = "mov eax, SYS_close\n    mov rdi, r12\n    syscall"

CASES = [
    # (set-up, after the touches, secret pages left, alias mapped in the kernel's direct map)
    (ANON, "", 2, False),
    (ANON, UNMAP, 0, True),                      # the mapping held the only reference
    (FD, "", 2, False),
    (FD, UNMAP, 2, False),                       # the descriptor still holds the file
    (FD, UNMAP + "\n    " + CLOSE, 0, True),
]


@pytest.mark.parametrize("setup, after, pages, mapped", CASES)
def test_secret_pages_and_the_direct_map(setup, after, pages, mapped):
    src = MAP.format(setup=setup, after=after)
    m = Machine(MachineConfig(asi="off"), programs=[("A", src)])
    with pytest.raises(BudgetExhausted):
        m.run(300_000)
    assert m.stats()["secret_pages"] == pages
    alias = m.read_u64(0x600000, "A.kernel")
    assert alias >> 63 == 1                      # a direct-map address, not -EFAULT
    kernel = m.spaces()["kernel"]
    assert (not isinstance(translate(m.mem, kernel, alias), Fault)) == mapped
    assert m.findings == []
