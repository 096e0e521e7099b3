"""A debugger for stepping through CR3 switches (the API; ``isoemu debug`` is its REPL).

Typical use::

    dbg = Debugger(Machine(MachineConfig(), programs=[("A", source)]))
    dbg.break_cr3("A.user")               # stop after each CR3 write into A.user
    dbg.catch_asi_exit(fault_only=True)   # ... and after each ASI exit a fault forced
    stop = dbg.cont()                     # run (at most the budget) until one hits
    print(stop)                           # why it stopped; stop.cr3 is the write
    print(dbg.regs["cr3"], dbg.walk(0x400000, "A.user"))

Where each kind of breakpoint stops, and why there:

* ``break_at(addr)``: before the instruction at ``addr`` runs, and before
  the machine's own hooks there (``add_code_hook(first=True)``), so that
  they run once, when the instruction does.
* ``break_cr3`` / ``catch_asi_exit``: just *after* the ``mov cr3``, so the
  registers show the new CR3 (without NOFLUSH, which hardware never stores)
  and the stop carries the write as a :class:`Cr3Write`.
* ``catch_fault`` / ``catch_syscall``: once the CPU has delivered the
  exception or made the SYSCALL, at the first instruction of the handler
  (``asm_exc_page_fault``, ``entry_SYSCALL_64``...), CPL 0, frame pushed.

Every run is bounded by an instruction budget.  Resuming from an address
breakpoint first steps over it, as gdb does.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass

import capstone

from emu.linux import abi
from emu.hw.cpu import GPR_NAMES, MSR_EFER, MSR_KERNEL_GS_BASE
from emu.errors import ConfigError, GuestError, IsoemuError
from emu.linux.machine import DEFAULT_BUDGET, Event, Machine, describe_fault
from emu.hw.microcode import TripleFault
from emu.hw.x86 import VECTOR_NAMES, vector_name
from emu.hw.paging import ADDR_MASK, Fault, Translation, parse_access, translate
from emu.tools.ptdump import ptdump_lines
from emu.tools.spaces import parse_address

# Linux, arch/x86/entry/calling.h: CR3 bit 12 selects the PTI user PGD of the
# 8 KiB pair, bit 11 the user PCID; bit 63 is NOFLUSH (only with PCIDE).
PTI_USER_PGTABLE_BIT = 1 << 12
PTI_USER_PCID_BIT = 1 << 11
X86_CR3_PCID_NOFLUSH = 1 << 63

BREAK_KINDS = ("cr3", "address", "fault", "syscall", "asi-exit")


class DebugError(IsoemuError):
    """A debugger command cannot be done (bad argument, dead machine...)."""


# --- what the debugger reports ---------------------------------------------------------
@dataclass(frozen=True)
class Cr3Write:
    """One ``mov cr3``: the values, the spaces they name, and where it ran."""

    seq: int
    rip: int
    symbol: str          # symbol+offset of the mov cr3
    insn: str            # its text, e.g. "mov cr3, rax"
    old: int             # CR3 before (as the register held it)
    new: int             # the value written (NOFLUSH included)
    old_space: str
    new_space: str
    pcid: int | None     # PCID of the new value; None without CR4.PCIDE
    noflush: bool        # bit 63 of the written value (X86_CR3_PCID_NOFLUSH)

    @classmethod
    def from_event(cls, ev: Event) -> "Cr3Write":
        return cls(ev.seq, ev.rip, ev.symbol, ev.get("insn", ""), ev.old, ev.new, ev.old_space,
                   ev.new_space, ev.pcid, bool(ev.noflush))

    @property
    def root(self) -> int:
        """The page-table root the new value selects."""
        return self.new & ADDR_MASK

    @property
    def user_pgd(self) -> bool:
        """Bit 12: the PTI user half of the PGD pair."""
        return bool(self.new & PTI_USER_PGTABLE_BIT)

    @property
    def user_pcid(self) -> bool:
        """Bit 11: a user PCID (with PCIDE)."""
        return self.pcid is not None and bool(self.new & PTI_USER_PCID_BIT)

    def line(self) -> str:
        """One aligned line: values, spaces, PCID, NOFLUSH and where."""
        spaces = f"{self.old_space} -> {self.new_space}"
        pcid = "pcid -    " if self.pcid is None else f"pcid {self.pcid:#05x}"
        flush = "noflush" if self.noflush else "       "
        return (f"cr3 {self.old:#018x} -> {self.new:#018x}  {spaces:<24} {pcid} {flush}  "
                f"{self.symbol}")


@dataclass(eq=False)
class Breakpoint:
    """A breakpoint (``address``) or a catchpoint (every other kind)."""

    num: int
    kind: str                      # one of BREAK_KINDS
    space: str | None = None       # cr3: a space name or fnmatch pattern (None: any)
    address: int | None = None     # address
    vector: int | None = None      # fault (None: any)
    nr: int | None = None          # syscall (None: any)
    fault_only: bool = False       # asi-exit: only exits a page fault forced
    label: str = ""                # address: symbol+offset, for listings
    process: str | None = None     # address: only while this process's CR3 is loaded
    hits: int = 0

    def what(self) -> str:
        if self.kind == "cr3":
            return "any CR3 write" if self.space is None else f"CR3 write into {self.space}"
        if self.kind == "address":
            return (f"{self.address:#x}" + (f" <{self.label}>" if self.label else "")
                    + (f" in process {self.process}" if self.process else ""))
        if self.kind == "fault":
            if self.vector is None:
                return "any fault"
            return f"{vector_name(self.vector)} (vector {self.vector})"
        if self.kind == "syscall":
            return "any syscall" if self.nr is None else f"syscall {self.nr} ({syscall_name(self.nr)})"
        return "ASI exits forced by a fault" if self.fault_only else "any ASI exit"

    @property
    def noun(self) -> str:
        return "Breakpoint" if self.kind in ("address", "cr3") else "Catchpoint"


@dataclass
class Stop:
    """Why a run stopped, and where.

    ``reason``: ``breakpoint`` (``breakpoints`` says which), ``step`` (the
    requested number of instructions ran), ``budget`` (the budget ran out),
    ``halt`` (every process exited), ``panic``, ``triple-fault`` or ``error``
    (the machine cannot run on; ``message`` says why).
    """

    reason: str
    rip: int
    symbol: str
    space: str
    cpl: int
    breakpoints: tuple[Breakpoint, ...] = ()
    event: Event | None = None     # the exception / syscall / asi_exit event
    cr3: Cr3Write | None = None    # the CR3 write a cr3 or asi-exit breakpoint caught
    message: str = ""

    def __str__(self) -> str:
        where = f"{self.rip:#x} in {self.symbol} ({self.space}, CPL {self.cpl})"
        if self.reason != "breakpoint":
            return self.message or {"step": where, "budget": f"budget used up at {where}"}.get(
                self.reason, f"{self.reason} at {where}")
        first = self.breakpoints[0]
        head = ", ".join(f"{b.noun} {b.num}" for b in self.breakpoints) + ": "
        kind = first.kind
        ev = self.event
        if kind == "address":
            return head + where
        if kind == "fault":
            return head + f"{describe_fault(ev)} at {ev.rip:#x} <{ev.symbol}> in {ev.space}, CPL {ev.cpl}"
        if kind == "syscall":
            return head + (f"syscall {ev.nr} ({syscall_name(ev.nr)}) from {ev.rip:#x} <{ev.symbol}> "
                           f"in {ev.space}")
        w = self.cr3
        text = head + (f"cr3 {w.old:#x} -> {w.new:#x} ({w.old_space} -> {w.new_space})"
                       + (f" pcid {w.pcid:#x}" if w.pcid is not None else "")
                       + (" noflush" if w.noflush else "") + f" at {w.symbol}: {w.insn}")
        if ev is not None:
            text += f"; ASI exit forced by {describe_fault_event(ev)}"
        return text


def describe_fault_event(ev: Event) -> str:
    """The page fault of an ``asi_exit`` event."""
    return f"#PF {ev.error_code:#x} at {ev.address:#x} by {ev.rip:#x} <{ev.symbol}>"


def syscall_name(nr: int) -> str:
    for name, n in abi.SYSCALLS.items():
        if n == nr:
            return name
    return "?"


def parse_syscall(text: str | int) -> int:
    if isinstance(text, int):
        return text
    t = text.strip()
    if t in abi.SYSCALLS:
        return abi.SYSCALLS[t]
    if re.fullmatch(r"\d+|0x[0-9a-fA-F]+", t):
        return int(t, 0)
    raise DebugError(f"unknown syscall {text!r}: give a number or one of {', '.join(abi.SYSCALLS)}")


_VECTOR_BY_NAME = {n.lstrip("#").upper(): v for v, n in VECTOR_NAMES.items()}


def parse_vector(text: str | int) -> int:
    if isinstance(text, int):
        v = text
    else:
        t = text.strip()
        if re.fullmatch(r"\d+|0x[0-9a-fA-F]+", t):
            v = int(t, 0)
        elif t.lstrip("#").upper() in _VECTOR_BY_NAME:
            v = _VECTOR_BY_NAME[t.lstrip("#").upper()]
        else:
            raise DebugError(f"unknown vector {text!r}: give a number (14) or a name (#PF, GP, UD...)")
    if not 0 <= v < 256:
        raise DebugError(f"vector {v} is out of range (0-255)")
    return v


def is_asi_space(name: str) -> bool:
    return name.endswith(".asi") or name == "asi.global"


# --- registers ------------------------------------------------------------------------
REGISTER_NAMES = GPR_NAMES + ("rip", "rflags", "cs", "ss", "ds", "es", "fs", "gs", "fs_base",
                              "gs_base", "kernel_gs_base", "cr0", "cr2", "cr3", "cr4", "efer")
_MSRS = {"kernel_gs_base": MSR_KERNEL_GS_BASE, "efer": MSR_EFER}
_ALIASES = {"eflags": "rflags", "pc": "rip", "sp": "rsp"}


class Registers(Mapping):
    """The CPU's registers by name (read when asked): ``regs["cr3"]``."""

    def __init__(self, cpu):
        self._cpu = cpu

    def __getitem__(self, name: str) -> int:
        n = _ALIASES.get(name.lower(), name.lower())
        if n in _MSRS:
            return self._cpu.msr(_MSRS[n])
        if n not in REGISTER_NAMES:
            raise KeyError(name)
        return self._cpu.reg(n)

    def __iter__(self):
        return iter(REGISTER_NAMES)

    def __len__(self) -> int:
        return len(REGISTER_NAMES)


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


# --- the debugger -----------------------------------------------------------------------
@dataclass
class _Hit:
    breakpoints: list
    event: Event | None = None
    cr3: Cr3Write | None = None


class Debugger:
    """Breakpoints, stepping and inspection over a :class:`~emu.linux.machine.Machine`.

    Attaching boots the machine (processes must have been added).  ``budget``
    is the default instruction budget of :meth:`cont`.
    """

    def __init__(self, machine: Machine, budget: int = DEFAULT_BUDGET):
        if not machine.processes:
            raise DebugError("the machine has no processes: add one before attaching a debugger")
        self.m = machine
        machine.boot()
        self.cpu = machine.cpu
        self.budget = budget
        self.breakpoints: list[Breakpoint] = []
        self.cr3_log: list[Cr3Write] = []          # every CR3 write seen while attached
        self._num = 0
        self._hit: _Hit | None = None
        self._pending: tuple | None = None         # (stop address, _Hit) after a mov cr3
        self._asi_fault: Event | None = None       # a fault's asi_exit, until its CR3 write
        self._dead: str | None = None              # why the machine cannot run on
        self._hooked: dict[int, int] = {}          # breakpoint address -> code hook
        self._skip: int | None = None              # the breakpoint being stepped over
        self._cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        machine.on_event(self._on_event)
        # the instruction after every mov cr3: where CR3 breakpoints stop
        self._cr3_hooks = [self.cpu.add_code_hook(addr + size, self._after_cr3)
                           for addr, (_, size, _) in sorted(self.cpu.cr3_sites.items())]
        self.attached = True

    def detach(self) -> None:
        """Remove every hook the debugger added: the machine runs on at full
        speed (``machine.run()``) and behaves as if never debugged.  The
        debugger's inspection methods still work; running through it does not."""
        if not self.attached:
            return
        self.attached = False
        self.breakpoints.clear()
        self._sync_hooks()
        for h in self._cr3_hooks:
            self.cpu.del_code_hook(h)
        self._cr3_hooks = []
        self.m.off_event(self._on_event)
        self._pending = self._hit = None

    def __enter__(self) -> "Debugger":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- breakpoints ---------------------------------------------------------------------------
    def _add(self, bp: Breakpoint) -> Breakpoint:
        if not self.attached:
            raise DebugError("the debugger is detached: no new breakpoints")
        self._num += 1
        bp.num = self._num
        self.breakpoints.append(bp)
        self._sync_hooks()
        return bp

    def break_cr3(self, space: str | None = None) -> Breakpoint:
        """Stop after a CR3 write; with ``space``, only into that space (a name
        from :meth:`spaces` or a pattern such as ``*.asi``)."""
        if space is not None:
            names = self.spaces()
            if not any(fnmatch.fnmatchcase(n, space) for n in names):
                raise DebugError(f"unknown space {space!r}: choose from {', '.join(names)}")
        return self._add(Breakpoint(0, "cr3", space=space))

    def break_at(self, where: int | str, process: str | None = None) -> Breakpoint:
        """Stop before the instruction at ``where``: an address, or an
        expression as :meth:`resolve` takes (``do_syscall_64``, ``A:_start+4``).

        With ``process``, only while that process's page tables are loaded
        (its user, kernel or ASI space): processes share user addresses, so
        ``A:_start`` alone would stop in B too.  On a machine with several
        processes, an expression naming one process's label (``A:_start``)
        implies that process."""
        addr = self._va(where)
        if process is None and isinstance(where, str) and len(self.m.processes) > 1:
            named = {m.group(1) for m in re.finditer(r"(?<![\w$])([A-Za-z_]\w*):", where)}
            if len(named) == 1:
                process = named.pop()
        if process is not None:
            self._process(process)
        sym = self.m.symbolize(addr)
        return self._add(Breakpoint(0, "address", address=addr, label="" if sym.startswith("0x") else sym,
                                    process=process))

    def catch_fault(self, vector: int | str | None = None) -> Breakpoint:
        """Stop when an exception is delivered (any, or this vector)."""
        return self._add(Breakpoint(0, "fault", vector=None if vector is None else parse_vector(vector)))

    def catch_syscall(self, nr: int | str | None = None) -> Breakpoint:
        """Stop at ``entry_SYSCALL_64`` for a syscall (any, or this number or name)."""
        return self._add(Breakpoint(0, "syscall", nr=None if nr is None else parse_syscall(nr)))

    def catch_asi_exit(self, fault_only: bool = False) -> Breakpoint:
        """Stop after each CR3 write that leaves an ASI restricted space (or
        only those a kernel page fault forced: the stub's asi_exit_on_fault)."""
        return self._add(Breakpoint(0, "asi-exit", fault_only=fault_only))

    def delete(self, num: int | None = None) -> None:
        """Delete breakpoint ``num``, or all of them."""
        if num is None:
            self.breakpoints.clear()
        else:
            for bp in self.breakpoints:
                if bp.num == num:
                    self.breakpoints.remove(bp)
                    break
            else:
                raise DebugError(f"no breakpoint number {num}")
        self._sync_hooks()

    def _of(self, kind: str) -> list[Breakpoint]:
        return [b for b in self.breakpoints if b.kind == kind]

    def _sync_hooks(self) -> None:
        want = {b.address for b in self._of("address")}
        for a in set(self._hooked) - want:
            self.cpu.del_code_hook(self._hooked.pop(a))
        for a in sorted(want - set(self._hooked)):
            self._hooked[a] = self.cpu.add_code_hook(a, self._at_breakpoint, first=True)

    def _at_breakpoint(self, addr: int) -> None:
        if self._skip == addr:       # resuming from this breakpoint: step over it
            self._skip = None
            return
        bps = self._address_bps(addr)
        if bps:
            self._stop_now(_Hit(bps))

    def _address_bps(self, addr: int) -> list[Breakpoint]:
        """The address breakpoints at ``addr`` that apply to the running process."""
        bps = [b for b in self._of("address") if b.address == addr]
        if any(b.process for b in bps):
            current = self.space.partition(".")[0]
            bps = [b for b in bps if b.process in (None, current)]
        return bps

    # -- events from the machine (called from inside CPU hooks) ----------------------------------
    def _on_event(self, ev: Event) -> None:
        kind = ev.kind
        if kind == "cr3_write":
            self._on_cr3_write(ev)
        elif kind == "asi_exit":
            self._asi_fault = ev
        elif kind == "exception":
            bps = [b for b in self._of("fault") if b.vector in (None, ev.vector)]
            if bps:
                self._stop_now(_Hit(bps, ev))
        elif kind == "syscall":
            bps = [b for b in self._of("syscall") if b.nr in (None, ev.nr)]
            if bps:
                self._stop_now(_Hit(bps, ev))

    def _on_cr3_write(self, ev: Event) -> None:
        w = Cr3Write.from_event(ev)
        self.cr3_log.append(w)
        fault = None
        leaving_asi = is_asi_space(w.old_space) and not is_asi_space(w.new_space)
        if leaving_asi:
            fault, self._asi_fault = self._asi_fault, None
        bps = [b for b in self._of("cr3") if b.space is None or fnmatch.fnmatchcase(w.new_space, b.space)]
        if leaving_asi:
            bps += [b for b in self._of("asi-exit") if fault is not None or not b.fault_only]
        if bps:
            bps.sort(key=lambda b: b.num)
            size = self.cpu.cr3_sites[w.rip][1]
            self._pending = (w.rip + size, _Hit(bps, fault, w))

    def _after_cr3(self, addr: int) -> None:
        if self._pending is not None and self._pending[0] == addr:
            hit = self._pending[1]
            self._pending = None
            self._stop_now(hit)

    def _stop_now(self, hit: _Hit) -> None:
        if self._hit is None:          # the first reason wins (e.g. a #DF chain)
            self._hit = hit
            self.m.stop("breakpoint")

    # -- running ---------------------------------------------------------------------------------
    def cont(self, budget: int | None = None) -> Stop:
        """Run until a breakpoint hits, the machine halts, or ``budget``
        instructions (default: the debugger's budget) have run."""
        return self._resume(self.budget if budget is None else budget, stepping=False)

    def stepi(self, n: int = 1) -> Stop:
        """Run ``n`` instructions (fewer if a breakpoint hits first)."""
        return self._resume(n, stepping=True)

    def step(self) -> Stop:
        """Run one instruction."""
        return self.stepi(1)

    @property
    def alive(self) -> bool:
        return self._dead is None

    def _resume(self, budget: int, stepping: bool) -> Stop:
        if not self.attached:
            raise DebugError("the debugger is detached: run the machine itself")
        if self._dead is not None:
            raise DebugError(f"cannot run: {self._dead}")
        if budget < 1:
            raise DebugError(f"instruction count must be at least 1, not {budget}")
        self._hit = None
        self._pending = None
        rip = self.cpu.reg("rip")
        self._skip = rip if rip in self._hooked else None
        reason = self._run(budget)
        return self._make_stop(reason, stepping)

    def _run(self, n: int) -> str:
        try:
            return self.cpu.run(n)
        except TripleFault as e:
            self._dead = str(e)
            return "triple-fault"
        except GuestError as e:
            self._dead = str(e)
            return "error"

    def _make_stop(self, reason: str, stepping: bool) -> Stop:
        rip = self.cpu.reg("rip")
        hit, self._hit = self._hit, None
        pending, self._pending = self._pending, None
        message = ""
        if reason in ("triple-fault", "error"):
            message = self._dead
        elif reason == "breakpoint" and hit is not None:
            if pending is not None and pending[0] == rip:
                # a breakpoint right after a caught mov cr3: one stop for both
                hit = _Hit(pending[1].breakpoints + hit.breakpoints, pending[1].event, pending[1].cr3)
        elif rip in self._hooked and reason == "budget" and self._address_bps(rip):
            # the budget ran out at a breakpoint: report it (and a CR3 write just before)
            bps = self._address_bps(rip)
            if pending is not None and pending[0] == rip:
                bps = pending[1].breakpoints + bps
                hit = _Hit(bps, pending[1].event, pending[1].cr3)
            else:
                hit = _Hit(bps)
            reason = "breakpoint"
        elif pending is not None and pending[0] == rip:
            # the budget ran out just after a caught mov cr3
            hit, reason = pending[1], "breakpoint"
        elif reason == "halt":
            if self.m.kernel.read_data("panic_flag"):
                tail = bytes(self.m.console).decode(errors="replace").strip().splitlines()
                reason, message = "panic", "kernel panic: " + (" / ".join(tail[-3:]) or "no message")
            else:
                reason, message = "halt", "the machine halted: " + self.exit_summary()
            self._dead = message
        elif reason == "budget":
            reason = "step" if stepping else "budget"
        elif reason != "breakpoint":
            message = f"stopped by another hook ({reason})"
        if hit is not None and reason == "breakpoint":
            for b in hit.breakpoints:
                b.hits += 1
        cr3 = self.cpu.reg("cr3")
        return Stop(reason, rip, self.m.symbolize(rip), self.m.space_of(cr3), self.cpu.reg("cs") & 3,
                    tuple(hit.breakpoints) if hit and reason == "breakpoint" else (),
                    hit.event if hit and reason == "breakpoint" else None,
                    hit.cr3 if hit and reason == "breakpoint" else None, message)

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

    # -- state --------------------------------------------------------------------------------
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

    def root(self, space: str | None = None) -> int:
        """The page-table root of ``space`` (default: the one CR3 now selects)."""
        if space is None:
            return self.cpu.reg("cr3") & ADDR_MASK
        roots = self.spaces()
        if space not in roots:
            raise DebugError(f"unknown space {space!r}: choose from {', '.join(roots)}")
        return roots[space]

    def _process_of(self, space: str | None):
        name = (space or self.space).partition(".")[0]
        return next((p for p in self.m.processes if p.name == name), None)

    def read_virt(self, va: int | str, n: int, space: str | None = None) -> bytes:
        """``n`` bytes at ``va`` through a named space (default: the current
        CR3), read as the kernel would (CPL 0, SMAP off).  Addresses here may
        also be expressions, as :meth:`resolve` takes them."""
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
        proc = self._process_of(space)
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
        while n > 0:
            chunk = min(n, 4096 - (va & 0xFFF))
            try:
                out += self.read_virt(va, chunk, space)
            except DebugError:
                if not out:
                    raise
                break
            va, n = va + chunk, n - chunk
        return out

    # -- addresses ------------------------------------------------------------------------------
    def _va(self, va: int | str) -> int:
        if isinstance(va, str):
            return self.resolve(va)
        if not 0 <= va < 1 << 64:
            raise DebugError(f"address {va:#x} does not fit in 64 bits")
        return va

    def resolve(self, text: str) -> int:
        """An address expression: terms joined by ``+``/``-``; a term is a
        number (``0xffffffff81000000``, or hex/decimal as ``isoemu walk``
        takes), a register (``$rsp``), a kernel symbol (``do_syscall_64``) or
        a program label (``A:_start``, or ``_start`` when unambiguous)."""
        parts = re.split(r"\s*([+-])\s*", text.strip().lstrip("*").strip())
        if not parts or not parts[0]:
            raise DebugError(f"bad address {text!r}")
        total = self._term(parts[0])
        for op, term in zip(parts[1::2], parts[2::2]):
            if not term:
                raise DebugError(f"bad address {text!r}")
            v = self._term(term)
            total = total + v if op == "+" else total - v
        return total & 0xFFFFFFFFFFFFFFFF

    def _term(self, t: str) -> int:
        if t.startswith("$"):
            try:
                return self.regs[t[1:]]
            except KeyError:
                raise DebugError(f"unknown register {t!r}") from None
        if re.fullmatch(r"(0[xX])?[0-9a-fA-F]+|0[oObB][0-7]+", t):
            try:
                return parse_address(t)
            except IsoemuError as e:
                raise DebugError(str(e)) from None
        return self.symbol(t)

    def symbol(self, name: str) -> int:
        """A kernel symbol, ``P:label`` in process P's program, or a label
        found in exactly one address among the programs."""
        if ":" in name:
            pname, _, label = name.partition(":")
            p = self._process(pname)
            if not _has_label(p.image, label):
                raise DebugError(f"no label {label!r} in process {pname}'s program")
            return p.image.symbols[label]
        img = self.m.kernel.image
        if _has_label(img, name):
            return img.symbols[name]
        found = {p.image.symbols[name] for p in self.m.processes if _has_label(p.image, name)}
        if len(found) == 1:
            return found.pop()
        if found:
            raise DebugError(f"label {name!r} is ambiguous: write P:{name} (P a process name)")
        raise DebugError(f"unknown symbol {name!r}")

    def _process(self, name: str):
        try:
            return self.m.process(name)
        except ConfigError as e:
            raise DebugError(str(e)) from None


def _has_label(image, name: str) -> bool:
    return name in (image.labels or image.symbols)


__all__ = ["Breakpoint", "Cr3Write", "DebugError", "Debugger", "Insn", "Registers", "Stop",
           "PTI_USER_PGTABLE_BIT", "PTI_USER_PCID_BIT", "X86_CR3_PCID_NOFLUSH"]
