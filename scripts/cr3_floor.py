"""The floor of a stub getpid loop (docs/performance.md, "The floor of a
PTI system call"): what is left with every Python CR3 hook and TLB-model hook
removed, against raw-Unicorn loops in the same process.

Run from the repository root, after ``pip install -e .``::

    python scripts/cr3_floor.py [ROUNDS]

For measurement only: without its hooks the machine is wrong (NOFLUSH stays
in CR3, the TLB model sees no CR3 write and no return to user mode).  Each
figure is the best of ROUNDS (default 3) in process CPU time per iteration,
and its ratio to the raw syscall loop of ``isoemu bench`` (a SYSCALL hook
that only redirects RIP).  ``raw + 4 mov cr3`` is that loop with four CR3
writes per iteration (each a full flush of Unicorn's TLB, Unicorn fact 11):
Unicorn's own cost of a PTI+ASI system call's switches, without the stub.
"""

from __future__ import annotations

import sys
import time

from unicorn import x86_const as X

from emu.asm import link
from emu.dev.bench.machine import GETPID, loop_program
from emu.hw.cpu import Cpu, OneReg
from emu.hw.paging import PAGE_SHARED_EXEC, ControlState, PageTable
from emu.hw.phys import FrameKind, MiB, PhysMem
from emu.linux.machine import Machine, MachineConfig

N = 20000
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3

RAW = """
plain:
    syscall
    dec rbx
    jnz plain
    hlt
cr3x4:
    syscall
    mov cr3, rax
    mov cr3, rcx
    mov cr3, rax
    mov cr3, rcx
    dec rbx
    jnz cr3x4
    hlt
"""


class RawLoop:
    """A CPL-0 loop in plain Unicorn (paging on, one 2 MiB page), as the
    bench's baseline: the SYSCALL hook only moves RIP back to the loop."""

    def __init__(self):
        mem = self.mem = PhysMem(32 * MiB)
        pt = PageTable.create(mem)
        pa = mem.frames.alloc(FrameKind.USER, 9, "floor")
        pt.map(0x400000, pa, 2 * MiB, PAGE_SHARED_EXEC)
        self.img = link([("<floor>", RAW)], {".text": 0x400000})
        mem.write(pa, self.img.sections[".text"].data)
        cpu = self.cpu = Cpu(mem)
        cpu.enable_paging(pt.root, ControlState(smap=False, smep=False))
        rip = OneReg(cpu, X.UC_X86_REG_RIP)
        self.back = 0
        cpu.add_hook("syscall", lambda uch, ud: rip.write(self.back))   # Unicorn adds 2 (fact 4)

    def per_iteration(self, label: str) -> float:
        cpu, start = self.cpu, self.img.symbols[label]
        self.back = start
        cr3 = cpu.reg("cr3")
        best = float("inf")
        for _ in range(ROUNDS):
            cpu.set_reg("rbx", N)
            cpu.set_reg("rax", cr3)
            cpu.set_reg("rcx", cr3)
            t = time.process_time()
            cpu.emu_start(start, 8 * N + 8)
            best = min(best, time.process_time() - t)
            assert cpu.reg("rbx") == 0
        return best / N


def strip_cr3_hooks(m: Machine) -> None:
    """Every function of the CR3 sites and the TLB model's returns to user
    mode, out (wrong semantics: for measurement only)."""
    cpu = m.cpu
    cpu.user_return_observers.clear()
    for addr, fns in list(cpu._block_starts.items()):
        for fn in list(fns):
            name = getattr(fn, "__qualname__", "")
            if name.startswith("Cr3Sites.") or name in ("TlbCheck._on_return_to_user", "Tlb.user_return"):
                cpu.del_block_start_hook(addr, fn)


def stub(cfg: MachineConfig, strip: bool) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        m = Machine(cfg, programs=[("A", loop_program(GETPID, N))], record_events=False)
        m.boot()
        if strip:
            strip_cr3_hooks(m)
        t = time.process_time()
        m.run(2_000_000_000, exact=False)
        best = min(best, time.process_time() - t)
        assert m.exits[1]["status"] == 0
    return best / N


def main() -> None:
    raw = RawLoop()
    base = raw.per_iteration("plain")
    rows = [("raw syscall loop (the bench's baseline)", base),
            ("raw syscall + 4 mov cr3", raw.per_iteration("cr3x4"))]
    for what, cfg in (("PTI+PCID+ASI", MachineConfig()), ("no PTI, no ASI", MachineConfig(pti=False, asi=False))):
        rows.append((f"stub getpid, {what}", stub(cfg, False)))
        rows.append(("  the same, no CR3 or TLB-model hooks", stub(cfg, True)))
    for name, per in rows:
        print(f"{name:44} {per * 1e6:7.2f} us  ratio {per / base:5.1f}")


if __name__ == "__main__":
    main()
