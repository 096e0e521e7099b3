"""Tutorial: every CR3 switch of two system calls, one of which leaves ASI on a fault.

Run from the repository root, after ``pip install -e .``::

    python scripts/cr3_walkthrough.py

The machine has PTI, PCIDs and ASI on (Linux's defaults here).  The user
program below asks the kernel for the direct-map address of its own data
page, then has the kernel read that address from inside ASI.  A user page is
sensitive, so ASI's restricted page table does not map it: the read faults,
the fault handler exits ASI (asi_exit_on_fault) and retries the read on the
full kernel page table.  Each line printed is one ``mov cr3``: the old and new
values, the address spaces they select, the PCID, the NOFLUSH bit, and where.
"""

from emu.tools.debug import Debugger, syscall_name
from emu.linux.machine import Machine, MachineConfig

# A user program: Intel syntax, entry point _start.  SYS_* and USER_DATA are
# predefined (emu/linux/program.py); SYS_probe and SYS_direct_map_alias are the
# project's own system calls (emu/linux/abi.py, kernel_stub/syscalls.S).
PROGRAM = """
_start:
    mov rax, USER_DATA
    mov byte ptr [rax], 1          # fault the data page in
    mov eax, SYS_direct_map_alias  # rax = its address in the kernel's direct map
    mov rdi, USER_DATA
    syscall
    mov rdi, rax                   # SYS_probe(va, access 0 = read, space 1 = ASI):
    mov eax, SYS_probe             # the kernel reads va with ASI's tables loaded
    xor esi, esi
    mov edx, 1
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""


def main() -> None:
    # 1. Boot a machine running the program as process A, and attach.
    machine = Machine(MachineConfig(), programs=[("A", PROGRAM)])
    dbg = Debugger(machine)

    # 2. Every address space has a name; CR3's address bits select one.
    print("spaces:", "  ".join(f"{name}={root:#x}" for name, root in dbg.spaces().items()))

    # 3. Stop after every CR3 write, at every system call (on entry to the
    #    kernel), and mark the ASI exits a page fault forced.
    dbg.break_cr3()
    asi_fault = dbg.catch_asi_exit(fault_only=True)
    dbg.catch_syscall()

    # 4. Run from stop to stop until the machine halts; cont() never runs
    #    more than its instruction budget.
    while True:
        stop = dbg.cont(budget=1_000_000)
        if stop.reason != "breakpoint":
            print(stop)                          # "the machine halted: A exited ..."
            break
        if stop.cr3 is None:                     # the syscall catchpoint
            ev = stop.event
            print(f"syscall {ev.nr} ({syscall_name(ev.nr)}) from {ev.symbol}")
            continue
        print(stop.cr3.line())                   # cr3 0xOLD -> 0xNEW  spaces  pcid  noflush  where
        if asi_fault in stop.breakpoints:
            ev = stop.event                      # the page fault that forced the exit
            print(f"    ^ ASI exit: #PF {ev.error_code:#x} at {ev.address:#x} by {ev.symbol}")


if __name__ == "__main__":
    main()
