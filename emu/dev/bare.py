"""A bare System: descriptor tables and four mappings, no kernel stub.

The smallest machine the microcode can run: a GDT with Linux's selectors, an
IDT whose gates point at labels of a kernel snippet, a TSS with RSP0, and
one page table mapping 2 MiB each of kernel text, kernel data (which holds
the tables and the kernel stack), user text and user data.  ``isoemu bench``
uses it to time SYSCALL and exception delivery without the stub's work, and
tests use it to check delivery against hand-written handlers.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from emu.linux import abi
from emu.asm import Image, link
from emu.hw.cpu import CpuConfig
from emu.hw.descriptors import gate_descriptor, tss_descriptor
from emu.errors import AsmError
from emu.hw.microcode import System
from emu.hw.paging import (PAGE_KERNEL, PAGE_KERNEL_RX, PAGE_READONLY_EXEC, PAGE_SHARED, ControlState,
                     PageTable)
from emu.hw.phys import MiB, FrameKind, PhysMem

KERNEL_TEXT = 0xFFFFFFFF81000000
KERNEL_DATA = 0xFFFFFFFF81200000
USER_TEXT = 0x400000
USER_DATA = 0x600000
GDT_OFF, IDT_OFF, TSS_OFF = 0x0, 0x1000, 0x2000
KERNEL_STACK_TOP = KERNEL_DATA + 0x200000
USER_STACK_TOP = USER_DATA + 0x200000
_BLOCK = 2 * MiB
_TRAMPOLINE = "__bare_to_user"



@dataclass
class Bare:
    """The system, its two images and its page table."""

    cpu: System
    kernel: Image
    user: Image
    pt: PageTable

    data_pa: int

    def start_user(self, rip: int | str = "_start", **regs: int) -> None:
        """Make the next run start at CPL 3 at ``rip`` (a user symbol or
        address) with ``regs`` set: through ``iretq`` from a kernel
        trampoline, since writing CS never changes the CPL (Unicorn fact 3)."""
        cpu = self.cpu
        target = self.user.symbols[rip] if isinstance(rip, str) else rip
        frame = struct.pack("<5Q", target, abi.USER_CS, 0x202, USER_STACK_TOP, abi.USER_DS)
        cpu.mem.write(self.data_pa + (KERNEL_STACK_TOP - KERNEL_DATA) - len(frame), frame)
        cpu.set_reg("cs", abi.KERNEL_CS)
        cpu.set_reg("rsp", KERNEL_STACK_TOP - len(frame))
        cpu.set_reg("rip", self.kernel.symbols[_TRAMPOLINE])
        for name, value in regs.items():
            cpu.set_reg(name, value)


def bare_system(kernel_src: str, user_src: str, *, gates: dict[int, str | tuple[str, int]],
                lstar: str | None = None, ram: int = 32 * MiB, sink=None) -> Bare:
    """Build a bare system.  ``gates`` maps a vector to a kernel label (an
    interrupt gate, DPL 0) or to (label, DPL); ``lstar`` is the SYSCALL entry."""
    mem = PhysMem(ram)
    pt = PageTable.create(mem, name="bare")
    kimg = link([("<bare kernel>", kernel_src + f"\n{_TRAMPOLINE}:\n    iretq\n")], {".text": KERNEL_TEXT})
    uimg = link([("<bare user>", user_src)], {".text": USER_TEXT})
    base = {}
    for va, kind, flags in ((KERNEL_TEXT, FrameKind.KERNEL_TEXT, PAGE_KERNEL_RX),
                            (KERNEL_DATA, FrameKind.KERNEL_DATA, PAGE_KERNEL),
                            (USER_TEXT, FrameKind.USER, PAGE_READONLY_EXEC),
                            (USER_DATA, FrameKind.USER, PAGE_SHARED)):
        base[va] = mem.frames.alloc(kind, 9, "bare")
        pt.map(va, base[va], _BLOCK, flags)
    for img, va in ((kimg, KERNEL_TEXT), (uimg, USER_TEXT)):
        code = img.sections[".text"].data
        if len(code) > _BLOCK:
            raise AsmError(f"bare system: code larger than {_BLOCK} bytes")
        mem.write(base[va], code)
    data = base[KERNEL_DATA]
    for i, v in abi.GDT.items():            # Linux's selectors, which SYSCALL/SYSRET derive
        mem.write(data + GDT_OFF + 8 * i, struct.pack("<Q", v))
    tss = KERNEL_DATA + TSS_OFF
    limit = abi.TSS_SIZE - 1
    mem.write(data + GDT_OFF + 8 * abi.GDT_ENTRY_TSS, struct.pack("<QQ", *tss_descriptor(tss, limit)))
    mem.write(data + TSS_OFF + abi.TSS_sp0, struct.pack("<Q", KERNEL_STACK_TOP))
    for vec, target in gates.items():
        label, dpl = (target, 0) if isinstance(target, str) else target
        if label not in kimg.symbols:
            raise AsmError(f"bare system: gate {vec}: no kernel label {label!r}")
        gate = gate_descriptor(kimg.symbols[label], abi.KERNEL_CS, dpl=dpl)
        mem.write(data + IDT_OFF + 16 * vec, struct.pack("<QQ", *gate))
    cpu = System(mem, CpuConfig(), sink=sink)
    cpu.boot_state(cr3=pt.root, ctl=ControlState(smap=False), pcide=False,
                   gdtr=(KERNEL_DATA + GDT_OFF, abi.GDT_ENTRIES * 8 - 1),
                   idtr=(KERNEL_DATA + IDT_OFF, 256 * 16 - 1),
                   tr=(tss, limit, abi.TSS_SELECTOR),
                   star=(abi.USER32_CS << 48) | (abi.KERNEL_CS << 32),
                   lstar=kimg.symbols[lstar] if lstar else KERNEL_TEXT, fmask=abi.SYSCALL_FMASK,
                   gs_base=0, kernel_gs_base=0, rip=KERNEL_TEXT, rsp=KERNEL_STACK_TOP)
    return Bare(cpu, kimg, uimg, pt, data)


# A SYSCALL loop and a #PF loop, each ending in the SYSCALL that halts:
# `isoemu bench`'s microcode group times them, tests/test_transition.py checks
# every transition of them.
LOOP_KERNEL = """
entry_syscall:
    cmp eax, 1
    je .Lhalt
    sysretq
.Lhalt:
    hlt
page_fault:
    add rsp, 8
    add qword ptr [rsp], 2
    iretq
"""
LOOP_USER = """
syscalls:
    syscall
    dec rbx
    jnz syscalls
    mov eax, 1
    syscall
faults:
    mov al, byte ptr [rsi]
    dec rbx
    jnz faults
    mov eax, 1
    syscall
"""


def loop_system(**kw) -> Bare:
    """The bare system running :data:`LOOP_KERNEL` and :data:`LOOP_USER`."""
    return bare_system(LOOP_KERNEL, LOOP_USER, gates={14: "page_fault"}, lstar="entry_syscall", **kw)


def run_loop(b: Bare, label: str, n: int) -> int:
    """``n`` rounds of the loop at ``label`` (``syscalls`` or ``faults``: every
    load of the unmapped RSI faults); raises if it does not finish."""
    b.start_user(label, rbx=n, rax=0, rsi=0x10000000)
    if b.cpu.run(6 * n + 16) != "halt" or b.cpu.reg("rbx") != 0:
        raise RuntimeError(f"bare {label} loop did not finish")
    return n
