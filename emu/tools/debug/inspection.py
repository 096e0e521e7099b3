"""Looking at a machine the debugger holds: registers, spaces, memory, page
tables, disassembly.  Addresses may be numbers or expressions (resolve.py);
the notes the address reader makes land in :attr:`Inspector.notes`."""

from __future__ import annotations

from dataclasses import dataclass

import capstone

from emu.errors import GuestError
from emu.hw.paging import ADDR_MASK, Fault, Translation, parse_access, translate
from emu.hw.x86 import CR4_PCIDE, CR3_PCID_MASK, SEGMENT_REGISTERS
from emu.tools.debug.errors import DebugError
from emu.tools.debug.registers import Registers, canonical_name, flag_names
from emu.tools.debug.resolve import AddressResolver
from emu.tools.ptdump import ptdump_lines

MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Insn:
    """One disassembled instruction."""

    addr: int
    size: int
    data: bytes
    mnemonic: str
    op_str: str
    symbol: str          # symbol+offset, or hex

    @property
    def text(self) -> str:
        return f"{self.mnemonic} {self.op_str}".strip()


class Inspector:
    """Read-only views of a booted machine ``m``."""

    def __init__(self, machine):
        self.m = machine
        machine.boot()
        self.cpu = machine.cpu
        #: what the address reader noticed (a label read for a hexadecimal
        #: word...), oldest first; the REPL prints and clears them
        self.notes: list[str] = []
        self.resolver = AddressResolver(machine, Registers(self.cpu))
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    # -- registers and spaces -------------------------------------------------------------
    @property
    def regs(self) -> Registers:
        return Registers(self.cpu)

    @property
    def rip(self) -> int:
        return self.cpu.reg("rip")

    @property
    def cpl(self) -> int:
        return self.cpu.reg("cs") & 3

    @property
    def space(self) -> str:
        """The name of the address space CR3 now selects."""
        return self.m.space_of(self.cpu.reg("cr3"))

    def spaces(self) -> dict[str, int]:
        """Address-space name -> page-table root (the address bits of CR3)."""
        return self.m.spaces()

    def space_of(self, cr3: int) -> str:
        return self.m.space_of(cr3)

    def symbolize(self, addr: int) -> str:
        return self.m.symbolize(addr)

    def register_note(self, name: str, value: int) -> str:
        """What ``info registers`` shows beside a value: the symbol of RIP,
        the set bits of RFLAGS/CR0/CR4/EFER, CR3's space and PCID, a
        selector's RPL, a general-purpose register as a signed number."""
        n = canonical_name(name) or name
        if n == "rip":
            return f"<{self.symbolize(value)}>"
        if n == "cr3":
            notes = [self.space_of(value)]
            if self.regs["cr4"] & CR4_PCIDE:
                notes.append(f"pcid {value & CR3_PCID_MASK:#x}")
            return "[ " + ", ".join(notes) + " ]"
        if n in ("rflags", "cr0", "cr4", "efer"):
            return "[ " + "".join(f + " " for f in flag_names(n, value)) + "]"
        if n in SEGMENT_REGISTERS:
            return f"(RPL {value & 3})"
        return str(value if value < 1 << 63 else value - (1 << 64))

    def exit_summary(self) -> str:
        """How each process ended, e.g. ``A exited with status 0``."""
        parts = []
        for p in self.m.processes:
            info = self.m.exits.get(p.pid)
            if info is None:
                parts.append(f"{p.name} did not exit")
            elif info.get("signal"):
                parts.append(f"{p.name} killed by {info['signal']}")
            else:
                parts.append(f"{p.name} exited with status {info['status']}")
        return ", ".join(parts) or "no processes"

    # -- addresses ---------------------------------------------------------------------------
    def resolve(self, text: str) -> int:
        """An address expression (see emu/tools/debug/resolve.py): hexadecimal
        numbers, ``$reg``, kernel symbols, ``P:label``, a label of one program,
        layout names (``USER_DATA``), joined by ``+`` and ``-``."""
        return self.resolver.address(text, self.notes)

    def symbol(self, name: str) -> int:
        """A kernel symbol, ``P:label`` in process P's program, a label found
        at exactly one address among the programs, or a layout name."""
        v = self.resolver.name(name, self.notes)
        if v is None:
            raise DebugError(f"unknown symbol {name!r}")
        return v

    def _va(self, va: int | str) -> int:
        if isinstance(va, str):
            return self.resolve(va)
        if not 0 <= va <= MASK64:
            raise DebugError(f"address {va:#x} does not fit in 64 bits")
        return va

    def _process(self, name: str):
        return self.resolver.process(name)

    # -- memory and page tables ------------------------------------------------------------------
    def root(self, space: str | None = None) -> int:
        """The page-table root of ``space`` (default: the one CR3 now selects)."""
        if space is None:
            return self.cpu.reg("cr3") & ADDR_MASK
        roots = self.spaces()
        if space not in roots:
            raise DebugError(f"unknown space {space!r}: choose from {', '.join(roots)}")
        return roots[space]

    def read_virt(self, va: int | str, n: int, space: str | None = None) -> bytes:
        """``n`` bytes at ``va`` through a named space (default: the current
        CR3), read as the kernel would (CPL 0, SMAP off)."""
        self.root(space)
        va = self._va(va)
        try:
            return self.m.read_virt(va, n, space)
        except GuestError as e:
            raise DebugError(str(e)) from None

    def read_phys(self, pa: int, n: int) -> bytes:
        size = self.m.mem.size
        if pa < 0 or n < 0 or pa + n > size:
            raise DebugError(f"physical range {pa:#x}+{n:#x} is outside guest RAM (size {size:#x})")
        return self.m.mem.read(pa, n)

    def walk(self, va: int | str, space: str | None = None, access: str | int = "r", cpl: int = 0
             ) -> Translation | Fault:
        """Walk the page tables of ``space`` (default: the current CR3) for
        ``va`` as the CPU would now (its CR0/CR4/EFER and RFLAGS.AC)."""
        root = self.root(space)
        self.cpu.regs.read()
        return translate(self.m.mem, root, self._va(va), parse_access(access), cpl, self.cpu.ctl())

    def ptdump(self, space: str | None = None) -> list[str]:
        """The tables of ``space`` in Linux's dump_pagetables format."""
        return ptdump_lines(self.m.mem, self.root(space), 5 if self.m.config.la57 else 4)

    def disas(self, va: int | str | None = None, n: int = 8, space: str | None = None) -> list[Insn]:
        """Up to ``n`` instructions from ``va`` (default: RIP)."""
        va = self.rip if va is None else self._va(va)
        code = self._read_code(va, 15 * n, space)
        name = (space or self.space).partition(".")[0]
        proc = next((p for p in self.m.processes if p.name == name), None)
        out = []
        for ins in self._cs.disasm(code, va, n):
            sym = self.m.symbolize(ins.address, proc)
            out.append(Insn(ins.address, ins.size, bytes(ins.bytes), ins.mnemonic, ins.op_str, sym))
        if not out:
            raise DebugError(f"no instruction decodes at {va:#x}")
        return out

    def _read_code(self, va: int, n: int, space: str | None) -> bytes:
        """As many of ``n`` bytes as are mapped, page by page."""
        out = b""
        while n > 0 and va <= MASK64:
            chunk = min(n, 4096 - (va & 0xFFF))
            try:
                out += self.read_virt(va, chunk, space)
            except DebugError:
                if not out:
                    raise
                break
            va, n = va + chunk, n - chunk
        return out
