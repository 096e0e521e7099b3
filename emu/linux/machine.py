"""The machine: the kernel stub and its processes, running on the CPU.

Typical use::

    m = Machine(MachineConfig(), programs=[("A", source_a), ("B", source_b)])
    result = m.run(budget=1_000_000)          # until every process has exited
    for ev in m.events_of("cr3_write"):
        print(ev)

Events carry the instruction's ``symbol+offset`` and the names of the
address spaces involved (``A.user``, ``A.kernel``, ``A.asi``, ``kernel``).
"""

from __future__ import annotations

import contextlib
import signal
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

from emu.linux import abi, kvm_abi
from emu.asm import Image
from emu.errors import AllocError, ConfigError, GuestError
from emu.linux.config import MachineConfig
from emu.linux.kernel import KernelBuilder, Process
from emu.linux.asicheck import AsiCheck
from emu.linux.tlbcheck import TlbCheck, returns_to_user
from emu.linux.unmapped import UnmappedFlushes
from emu.linux.vcpu import VcpuDevice
from emu.hw.cpu import CpuConfig
from emu.hw.microcode import System
from emu.hw.microcode import loop as event_loop
from emu.hw.x86 import vector_name
from emu.hw.paging import ADDR_MASK, ControlState, Fault, error_code_words, read_virt, translate
from emu.hw.phys import FrameKind
from emu.linux.program import assemble_program

DEFAULT_BUDGET = 10_000_000


class BudgetExhausted(GuestError):
    """The instruction budget ran out (a runaway guest, or too small a budget)."""


class Interrupted(GuestError):
    """The run was interrupted (Ctrl-C): the message says where."""

    exit_status = 130


class KernelPanic(GuestError):
    """The stub panicked (an oops, an unhandled kernel trap, a double fault)."""


class Event:
    """Something the machine did, in order (``seq``)."""

    __slots__ = ("seq", "kind", "data")

    def __init__(self, seq: int, kind: str, data: dict):
        self.seq, self.kind, self.data = seq, kind, data

    def __getattr__(self, name):
        try:
            return self.data[name]
        except KeyError:
            raise AttributeError(name) from None

    def get(self, name, default=None):
        return self.data.get(name, default)

    def as_dict(self) -> dict:
        return {"seq": self.seq, "kind": self.kind, **self.data}

    def __repr__(self):
        fields = ", ".join(f"{k}={v:#x}" if isinstance(v, int) and k not in ("pid", "vector", "nr", "cpl")
                           else f"{k}={v!r}" for k, v in self.data.items())
        return f"Event#{self.seq}({self.kind}: {fields})"


@dataclass
class RunResult:
    reason: str                       # halt | stopped | breakpoint
    events: list[Event] = field(default_factory=list)


def _stub_insns(img: Image) -> tuple[frozenset, tuple]:
    """Addresses after the stub's 'hlt's, addresses of its 'out's: two scans
    of its ~10,000 instructions made once per image, not at every boot."""
    return (frozenset(ins.addr + ins.size for ins in img.insns if ins.mnemonic == "hlt"),
            tuple(ins.addr for ins in img.insns if ins.mnemonic == "out"))


class Machine:
    """A booted machine.  Processes are added before the first run."""

    def __init__(self, config: MachineConfig | None = None, programs: list[tuple[str, str | Image]] = (),
                 *, record_events: bool = True):
        self.config = config or MachineConfig()
        self._kb = KernelBuilder(self.config)
        self.kernel = self._kb.build()
        self.mem = self.kernel.mem
        self.layout = self.kernel.layout
        self.record_events = record_events
        self.events: list[Event] = []
        self._seq = 0
        self.console = bytearray()
        self.output: dict[int, bytearray] = {}
        self.exits: dict[int, dict] = {}
        self.cpu: System | None = None
        self.exit_hooks: list[Callable[["Machine", Process], None]] = []
        self.tlb: TlbCheck | None = None           # the TLB model's checks (config.tlb != "off")
        self.unmapped_flushes: UnmappedFlushes | None = None   # flushes inside the unmapped allocator
        self.asi: AsiCheck | None = None           # ASI findings and flush events (config.asi != "off")
        self.vcpus = VcpuDevice(self)               # the device KVM_RUN enters guests through
        self._listeners: list[Callable[[Event], None]] = []
        self._roots: dict[int, str] = {}
        for name, prog in programs:
            self.add_process(name, prog)

    # -- set-up --------------------------------------------------------------------
    def add_process(self, name: str, program: str | Image, *, filename: str | None = None) -> Process:
        if self.cpu is not None:
            raise ConfigError("processes are added before the machine first runs")
        if not name.replace("_", "").isalnum():
            raise ConfigError(f"process name {name!r}: use letters, digits and _")
        img = program if isinstance(program, Image) else \
            assemble_program(program, filename or f"{name}.S", self.layout)
        p = self._kb.add_process(name, img)
        self.output[p.pid] = bytearray()
        return p

    @property
    def processes(self) -> list[Process]:
        return self.kernel.processes

    def process(self, name: str) -> Process:
        for p in self.kernel.processes:
            if p.name == name:
                return p
        raise ConfigError(f"no process named {name!r}: choose from "
                          f"{', '.join(p.name for p in self.kernel.processes)}")

    def boot(self) -> None:
        """Finish the boot: per-CPU state, the CPU, and its hooks."""
        if self.cpu is not None:
            return
        k, cfg = self.kernel, self.config
        self._kb.finish()
        first = k.processes[0]
        cpu = System(self.mem, CpuConfig(la57=cfg.la57), sink=self._sink)
        cpu.want_events = self.record_events or bool(self._listeners)
        self.cpu = cpu
        pcid = 1 if cfg.pcid else 0
        ctl = ControlState(wp=True, smep=cfg.smep, smap=cfg.smap, pke=cfg.pke, la57=cfg.la57, nxe=cfg.nx)
        cpu.boot_state(cr3=first.pgd | pcid, ctl=ctl, pcide=cfg.pcid,
                       gdtr=(k.cea["gdt"], abi.GDT_ENTRIES * 8 - 1), idtr=(k.cea["idt"], 256 * 16 - 1),
                       tr=(k.cea["tss"], abi.TSS_SIZE - 1, abi.TSS_SELECTOR),
                       star=(abi.USER32_CS << 48) | (abi.KERNEL_CS << 32), lstar=k.sym("entry_SYSCALL_64"),
                       fmask=abi.SYSCALL_FMASK, gs_base=k.percpu_base, kernel_gs_base=0,
                       rip=k.sym("ret_from_fork"), rsp=first.stack_top - abi.PT_SIZE)
        cpu.ports[abi.PORT_HYPERCALL] = self._hypercall
        cpu.ports[abi.PORT_CONSOLE] = self._console
        cpu.ports[kvm_abi.PORT_VCPU] = self.vcpus.port
        self._name_roots()
        self.user_return_cr3_sites = k.image.derived("returns_to_user", returns_to_user)
        if cfg.tlb != "off":
            # before the CR3 sites: every one of them then feeds the model
            self.tlb = TlbCheck(self)
            self.unmapped_flushes = UnmappedFlushes(self, self.tlb)
        self._install_cr3_sites()
        self._install_probes()
        if cfg.asi_on:
            self.asi = AsiCheck(self)

    def _install_cr3_sites(self) -> None:
        """Every CR3 write the stub declares (``.cr3_write [noflush]``)."""
        img = self.kernel.image
        self._cr3_insns = {s.addr: s.name for s in img.sites_of("cr3_write")}
        for s in img.sites_of("cr3_write"):
            self.cpu.add_cr3_site(s.addr, s.operand, s.size, may_set_noflush=s.noflush,
                                  returns_to_user=s.addr in self.user_return_cr3_sites)
        for n in (0, 4):
            for s in img.sites_of(f"cr{n}_write"):
                self.cpu.add_cr_site(s.addr, s.size, n, s.operand)
        hlt_after, outs = img.derived("stub_insns", _stub_insns)
        self.cpu.hlt_sites = set(hlt_after)
        # the hypercalls and the console read RIP (events, findings)
        self.cpu.sync_rip_at(outs)

    # the stub's declared hooks (``.hook NAME``) and what observes them:
    # always, and only while someone records events
    HOOKS = {"exit": "_on_exit", "asi_fault_exit": "_on_asi_fault", "asi2019_fault_exit": "_on_asi2019_fault",
             "asi_abort": "_on_asi_abort"}
    EVENT_HOOKS = {"syscall_return": "_on_syscall_return"}

    def _install_probes(self) -> None:
        """Python's observation points in the stub: the declared hooks."""
        for name, method in self.HOOKS.items():
            self._hook(name, getattr(self, method))
        self._event_probe_hooks: list = []
        if self.cpu.want_events:
            self._install_event_probes()

    def hook_site(self, name: str, fn):
        """Call fn(addr) at the stub's declared ``.hook NAME``; a handle for
        :meth:`unhook_site`."""
        return self._hook(name, fn)

    def unhook_site(self, handle) -> None:
        self.cpu.del_site_hook(handle)

    def _hook(self, name: str, fn):
        site = self.kernel.image.site("hook", name)
        if site is None:
            raise GuestError(f"the kernel stub declares no '.hook {name}' (kernel_stub/*.S)")
        return self.cpu.add_site_hook(site.addr, site.after, fn)

    def _install_event_probes(self) -> None:
        """Probes that only make events: installed while someone records."""
        if not self._event_probe_hooks:
            self._event_probe_hooks = [self._hook(name, getattr(self, method))
                                       for name, method in self.EVENT_HOOKS.items()]

    def _remove_event_probes(self) -> None:
        for h in self._event_probe_hooks:
            self.cpu.del_site_hook(h)
        self._event_probe_hooks = []

    def _name_roots(self) -> None:
        k = self.kernel
        self._roots[k.init_pgd.root] = "kernel"
        if self.config.pti:
            self._roots[k.init_pgd.user_root] = "kernel.user"
        if k.asi_global is not None:
            self._roots[k.asi_global.root] = "asi.global"
        for p in k.processes:
            self._roots[p.pgd] = f"{p.name}.kernel"
            if self.config.pti:
                self._roots[p.user_pgd] = f"{p.name}.user"
            if p.asi_pgd:
                self._roots[p.asi_pgd] = f"{p.name}.asi"

    # -- naming ----------------------------------------------------------------------------
    def space_of(self, cr3: int) -> str:
        """The address-space name of a CR3 value (PCID and NOFLUSH ignored)."""
        return self._roots.get(cr3 & ADDR_MASK, f"cr3@{cr3 & ADDR_MASK:#x}")

    def spaces(self) -> dict[str, int]:
        """name -> page-table root.  Without PTI, P.user is the table user code
        runs on: P.kernel, or P.asi with the 2025 RFC (docs/asi.md)."""
        out = {}
        for root, name in self._roots.items():
            out[name] = root
        if not self.config.pti:
            for p in self.kernel.processes:
                out[f"{p.name}.user"] = p.asi_pgd if self.config.asi == "rfc2025" else p.pgd
        if not self._roots:
            self._name_roots()
            return self.spaces()
        return out

    def current_process(self) -> Process | None:
        return self.kernel.process_by_task(self.kernel.current_task())

    def symbolize(self, addr: int, process: Process | None = None) -> str:
        """``symbol+offset`` in the kernel, or in the program of ``process``
        (default: the current process) for user addresses; hex otherwise."""
        if addr >= self.layout.kernel_half:
            s = self.kernel.image.symbolize(addr)
            return s or f"{addr:#x}"
        p = process or (self.current_process() if self.cpu else None)
        if p is not None:
            s = p.image.symbolize(addr)
            if s:
                return f"{p.name}:{s}"
        return f"{addr:#x}"

    # -- events ----------------------------------------------------------------------------
    def on_event(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)
        if self.cpu is not None:
            self.cpu.want_events = True
            self._install_event_probes()
            if self.asi is not None:
                self.asi.events_wanted(True)

    def off_event(self, fn: Callable[[Event], None]) -> None:
        """Remove a listener added with :meth:`on_event` (a detaching tracer)."""
        if fn in self._listeners:
            self._listeners.remove(fn)
        if self.cpu is not None and not self.record_events and not self._listeners:
            self.cpu.want_events = False
            self._remove_event_probes()
            if self.asi is not None:
                self.asi.events_wanted(False)

    def emit(self, kind: str, **fields) -> None:
        """Record an event (``rip``, ``cr3`` and ``pid`` are named for you)."""
        self._sink(kind, **fields)

    def _sink(self, kind: str, **f) -> None:
        if not self.record_events and not self._listeners:
            return
        self._seq += 1
        if "rip" in f and f["rip"] is not None:
            f["symbol"] = self.symbolize(f["rip"])
        if "cr3" in f:
            f["space"] = self.space_of(f["cr3"])
        if kind == "cr3_write":
            f["old_space"] = self.space_of(f["old"])
            f["new_space"] = self.space_of(f["new"])
            f["insn"] = self._cr3_insns.get(f["rip"], "")
        p = self.current_process()
        f["pid"] = p.pid if p else None
        ev = Event(self._seq, kind, f)
        if self.record_events:
            self.events.append(ev)
        for fn in self._listeners:
            fn(ev)

    def events_of(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    # -- devices -----------------------------------------------------------------------------
    def _hypercall(self, port: int, size: int, value: int) -> int:
        """The allocator device: eax = op, rdi = order or pa, rsi = kind, rdx = flags.

        Out of guest memory is the guest's to handle (rax = 0).  A request
        the stub should never make (an unknown kind or order, freeing a frame
        that is free, reserved or still referenced) stops the machine with a
        GuestError naming the stub's RIP and symbol.  A Python error here is
        isoemu's own bug: it propagates as itself, with a note saying where
        the guest was."""
        cpu = self.cpu
        rdi, rsi, rdx = cpu.reg("rdi"), cpu.reg("rsi"), cpu.reg("rdx")
        op = value & 0xFFFFFFFF
        p = self.current_process()
        owner = p.name if p else "kernel"
        frames = self.mem.frames
        try:
            if op == abi.HC_ALLOC:
                if rsi not in FrameKind.__members__.values() or rsi == FrameKind.FREE:
                    raise self._device_error(f"alloc of unknown frame kind {rsi}")
                if rdi not in frames.ORDERS:
                    raise self._device_error(f"alloc of order {rdi} (the allocator takes 0, 9 or 18)")
                kind = FrameKind(rsi)
                try:
                    pa = frames.alloc(kind, rdi, owner, bool(rdx & 1))
                except AllocError as e:           # out of guest memory: the guest gets 0
                    self._sink("alloc_failed", order=rdi, frame_kind=FrameKind(rsi).name.lower(), reason=str(e))
                    return 0
                if self.tlb is not None:
                    self.tlb.frame_allocated(pa, kind, frames.ORDERS[rdi])
                self._sink("alloc", pa=pa, order=rdi, frame_kind=kind.name.lower(), sensitive=bool(rdx & 1))
                return pa
            if op == abi.HC_FREE:
                try:
                    info = frames.info(rdi)
                    if self.tlb is not None and info.kind != FrameKind.FREE:
                        # before the allocator zeroes it: the audit sees the frame as it was
                        self.tlb.frame_freed(info.pa, info.kind, info.size)
                    frames.free(rdi)
                except AllocError as e:
                    raise self._device_error(f"free: {e}") from None
                self._sink("free", pa=rdi)
                return 0
            raise self._device_error(f"unknown allocator call {op}")
        except GuestError:
            raise
        except Exception as e:
            e.add_note(f"in the allocator device, called by the stub at {self.where()}")
            raise

    def _device_error(self, what: str) -> GuestError:
        return GuestError(f"the stub's {what} at {self.where()}")

    def _console(self, port: int, size: int, value: int) -> None:
        b = value & 0xFF
        self.console.append(b)
        p = self.current_process()
        if p is not None:
            self.output[p.pid].append(b)
        return None

    # -- probes at stub symbols ---------------------------------------------------------------
    def _on_exit(self, addr: int) -> None:
        """At do_exit(code): rdi holds the status (SysV ABI)."""
        k = self.kernel
        task = k.current_task()
        p = k.process_by_task(task)
        status = self.cpu.reg("rdi")
        killed = k.read_q(task + abi.TASK["killed_by"])
        info = {"pid": p.pid if p else None, "name": p.name if p else "?", "status": status,
                "signal": abi.SIGNAL_NAMES.get(killed) if killed else None, "fault": None}
        exc = self.cpu.last_user_exception
        if killed and exc is not None:
            # the kill follows the process's own last fault (force_sig_fault)
            vector, error_code, cr2, rip, cr3 = exc
            info["fault"] = {"vector": vector, "error_code": error_code, "cr2": cr2, "rip": rip, "cr3": cr3}
        if p:
            self.exits[p.pid] = info
            for fn in self.exit_hooks:
                fn(self, p)
        self._sink("exit", rip=addr, process=info["name"], status=status, signal=info["signal"])

    def _on_asi_fault(self, addr: int, cr3: int | None = None) -> None:
        """exc_page_fault leaving ASI: rbx = pt_regs, r12 = error code, r13 = CR2;
        ``cr3`` the restricted CR3 it faulted on (default: the one loaded)."""
        cpu = self.cpu
        regs = cpu.reg("rbx")
        rip = self.kernel.read_q(regs + abi.PT["rip"])
        self._sink("asi_exit", rip=rip, address=cpu.reg("r13"), error_code=cpu.reg("r12"),
                   cr3=cpu.reg("cr3") if cr3 is None else cr3)

    def _on_asi2019_fault(self, addr: int) -> None:
        """The 2019 RFC's abort of a session by a #PF, at the exception's entry
        (asi_start_abort), before CR3 is restored: pt_regs are above the
        return address into idtentry_body, the error code in orig_ax."""
        cpu, k = self.cpu, self.kernel
        regs = cpu.reg("rsp") + 8
        self._sink("asi_exit", rip=k.read_q(regs + abi.PT["rip"]), address=cpu.reg("cr2"),
                   error_code=k.read_q(regs + abi.PT["orig_rax"]), cr3=cpu.reg("cr3"))

    def _on_asi_abort(self, addr: int) -> None:
        self._sink("asi_abort", rip=addr)

    def _on_syscall_return(self, addr: int) -> None:
        rsp = self.cpu.reg("rsp")
        nr = self.kernel.read_q(rsp + abi.PT["orig_rax"])
        ret = self.kernel.read_q(rsp + abi.PT["rax"])
        self._sink("syscall_return", nr=nr, ret=ret if ret < 1 << 63 else ret - (1 << 64))

    # -- running ---------------------------------------------------------------------------------
    def run(self, budget: int = DEFAULT_BUDGET, exact: bool = True) -> RunResult:
        """Run until every process has exited (or a stop is requested).

        Raises :class:`BudgetExhausted` when ``budget`` instructions did not
        suffice, :class:`Interrupted` on Ctrl-C (SIGINT), :class:`KernelPanic`
        on a stub panic, and :class:`~emu.hw.microcode.TripleFault` on a
        triple fault.  ``exact=False``: the budget only guards against a
        runaway, and the run is faster (:meth:`emu.hw.microcode.EventLoop.run`).
        """
        self.boot()
        start = len(self.events)
        with self.sigint_stops():
            reason = self.cpu.run(budget, exact)
        if self.tlb is not None:
            self.tlb.audit()
        if reason == "budget":
            raise BudgetExhausted(f"instruction budget of {budget:,} exhausted at {self.where()}")
        if reason == "guard":
            raise BudgetExhausted(f"runaway: no end within {event_loop.GUARD_SECONDS:g} s (the guard of an uncounted run), "
                                  f"stopped near {self.where()}")
        if reason == "interrupted":
            raise Interrupted(f"interrupted at {self.where()}, after at least {self.cpu.executed:,} "
                              f"instructions")
        if reason == "halt":
            panic = self.panic_message()
            if panic:
                raise KernelPanic(panic)
        return RunResult(reason, self.events[start:])

    def panic_message(self) -> str | None:
        """``kernel panic: <the console's last lines>`` if the stub panicked, else None."""
        if self.cpu is None or not self.kernel.read_data("panic_flag"):
            return None
        tail = bytes(self.console).decode(errors="replace").strip().splitlines()
        return "kernel panic: " + (" / ".join(tail[-3:]) if tail else "no message")

    def step(self, count: int = 1, exact: bool = True) -> str:
        """Run at most ``count`` instructions; never raises for the budget.

        Returns 'budget' (count reached), 'halt', 'interrupted' (Ctrl-C), or
        the reason a hook gave to :meth:`stop` (e.g. a breakpoint).  For
        debuggers and tracers: the machine stays usable after any of them.
        ``exact`` as for :meth:`run`.
        """
        self.boot()
        with self.sigint_stops():
            return self.cpu.run(count, exact)

    @contextlib.contextmanager
    def sigint_stops(self):
        """While running: SIGINT (Ctrl-C) stops the CPU before its next
        instruction, with the reason 'interrupted', instead of raising
        KeyboardInterrupt in the middle of a hook.  Outside the main thread
        (where Python cannot take signals) nothing changes."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        cpu = self.cpu

        def on_sigint(signum, frame):
            cpu.stop("interrupted")
            self.vcpus.stop()

        previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def stop(self, reason: str) -> None:
        """Ask a running machine to stop before the next instruction (from a hook)."""
        self.cpu.stop(reason)

    @property
    def halted(self) -> bool:
        return self.cpu is not None and self.cpu._halted()

    def where(self) -> str:
        """RIP, symbol, CPL and address space, for error messages."""
        cpu = self.cpu
        rip = cpu.reg("rip")
        cpl = cpu.reg("cs") & 3
        return f"RIP {rip:#x} ({self.symbolize(rip)}), CPL {cpl}, space {self.space_of(cpu.reg('cr3'))}"

    def inject_interrupt(self, vector: int = abi.TIMER_VECTOR) -> bool:
        self.boot()
        return self.cpu.inject_interrupt(vector)

    def stats(self) -> dict[str, int]:
        """Linux's counters (DirectMap*, splits, secret pages, ASI exits) and,
        with the TLB model, its flushes, dropped entries and findings."""
        s = self.kernel.stats()
        if self.tlb is not None:
            s.update({f"tlb_{k}": v for k, v in self.tlb.stats().items()})
            s.update(self.unmapped_flushes.stats())
        return s

    @property
    def findings(self) -> list:
        """The TLB model's findings so far (empty with tlb=off)."""
        return list(self.tlb.findings) if self.tlb is not None else []

    @property
    def asi_findings(self) -> list:
        """ASI's findings so far: sensitive accesses from a critical section
        (emu.linux.asicheck.AsiFinding; empty with asi=off)."""
        return list(self.asi.findings) if self.asi is not None else []

    # -- guest memory access --------------------------------------------------------------------
    def read_virt(self, va: int, n: int, space: str | None = None) -> bytes:
        """Read ``n`` bytes at ``va`` through a named space (default: the
        current CR3) as the kernel would (CPL 0, SMAP off)."""
        root = self.spaces()[space] if space else self.cpu.reg("cr3")
        got = read_virt(self.mem, root, va, n, 0, 0, ControlState(la57=self.config.la57, smap=False))
        if isinstance(got, Fault):
            raise GuestError(f"{got.va:#x} is not readable in {space or 'the current space'}: {got.describe()}")
        return got

    def pa_of(self, va: int, space: str | None = None) -> int:
        """The physical address of ``va`` in a named space (default: the
        current CR3), as the kernel would reach it; GuestError if it faults."""
        root = self.spaces()[space] if space else self.cpu.reg("cr3")
        t = translate(self.mem, root, va, 0, 0, ControlState(la57=self.config.la57, smap=False))
        if t.fault:
            raise GuestError(f"{va:#x} is not mapped in {space or 'the current space'}: {t.describe()}")
        return t.pa

    def read_u64(self, va: int, space: str | None = None) -> int:
        return struct.unpack("<Q", self.read_virt(va, 8, space))[0]


def describe_fault(ev: Event) -> str:
    """One line for an exception event."""
    if ev.vector == 14:
        return f"#PF {ev.error_code:#x} ({error_code_words(ev.error_code)}) at {ev.cr2:#x}"
    if ev.error_code is not None:
        return f"{vector_name(ev.vector)}({ev.error_code:#x})"
    return vector_name(ev.vector)
