"""A debugger for stepping through CR3 switches (the API; ``isoemu debug`` is its REPL).

Typical use::

    dbg = Debugger(Machine(MachineConfig(), programs=[("A", source)]))
    dbg.break_cr3("A.user")               # stop after each CR3 write into A.user
    dbg.catch_asi_exit(fault_only=True)   # ... and after each ASI exit a fault forced
    stop = dbg.cont()                     # run (at most the budget) until one hits
    print(stop)                           # why it stopped; stop.cr3 is the write
    print(dbg.regs["cr3"], dbg.walk("USER_DATA", "A.user"))

The modules: ``stops`` (the kinds of breakpoint as a table, what a stop
reports), ``debugger`` (the Debugger: breakpoints, running), ``inspection``
(registers, memory, page tables, disassembly), ``resolve`` (address
expressions), ``registers``, ``names`` (syscalls, vectors), ``errors``.
Reference: docs/debugging.md.
"""

from emu.linux.machine import DEFAULT_BUDGET
from emu.tools.debug.debugger import Debugger
from emu.tools.debug.errors import DebugError
from emu.tools.debug.inspection import Insn, Inspector
from emu.tools.debug.names import (PTI_USER_PCID_BIT, PTI_USER_PGTABLE_BIT, X86_CR3_PCID_NOFLUSH,
                                   is_asi_space, parse_syscall, parse_vector, syscall_name)
from emu.tools.debug.registers import REGISTER_NAMES, Registers
from emu.tools.debug.resolve import AddressResolver
from emu.tools.debug.stops import (BREAK_KINDS, KINDS, Breakpoint, BreakKind, Cr3Write, Stop,
                                   describe_fault_event)

__all__ = ["AddressResolver", "BREAK_KINDS", "BreakKind", "Breakpoint", "Cr3Write", "DEFAULT_BUDGET",
           "DebugError", "Debugger", "Insn", "Inspector", "KINDS", "PTI_USER_PCID_BIT",
           "PTI_USER_PGTABLE_BIT", "REGISTER_NAMES", "Registers", "Stop", "X86_CR3_PCID_NOFLUSH",
           "describe_fault_event", "is_asi_space", "parse_syscall", "parse_vector", "syscall_name"]
