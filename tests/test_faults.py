"""Faults in words (emu/tools/faults.py): the one format of every report."""

from __future__ import annotations

from emu.linux.machine import Machine, MachineConfig
from emu.tools.faults import fatal_report

CRASH = """_start:
    mov rax, KERNEL_TEXT
boom:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""
CLEAN = "_start:\n    mov eax, SYS_exit\n    mov edi, 3\n    syscall\n"


def test_fatal_report_of_a_killed_process():
    m = Machine(MachineConfig(), programs=[("A", CRASH)], record_events=False)
    m.run()
    boom = m.process("A").image.symbols["boom"]
    assert fatal_report(m, 1) == [
        "process A was killed by SIGSEGV",
        f"#PF error code 0x4 (not-present, read, user), CR2 0xffffffff81000000, RIP {boom:#x} (A:boom), "
        f"space A.user",
        "at A.S:4: mov bl, byte ptr [rax]",
    ]


def test_fatal_report_is_empty_for_a_normal_exit():
    m = Machine(MachineConfig(), programs=[("A", CLEAN)], record_events=False)
    m.run()
    assert m.exits[1]["status"] == 3 and fatal_report(m, 1) == []
