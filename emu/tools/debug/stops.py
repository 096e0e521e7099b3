"""Breakpoints and stops: what the debugger stops on, and what it reports.

Every kind of breakpoint is one row of :data:`KINDS` (a :class:`BreakKind`):
its name, how ``info breakpoints`` lists it, which machine event it watches
and when that event matches, where the run stops, and how the stop reads.
The :class:`~emu.tools.debug.debugger.Debugger` dispatches events through
this table, so a new catchpoint on a new machine event is one row here, one
method of the Debugger that adds it, and one entry of the REPL's ``catch``
table (emu/cli/debug.py).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable

from emu.hw.paging import ADDR_MASK
from emu.hw.x86 import vector_name
from emu.linux.machine import Event, describe_fault
from emu.tools.debug.names import PTI_USER_PCID_BIT, PTI_USER_PGTABLE_BIT, is_asi_space, syscall_name


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

    @property
    def leaves_asi(self) -> bool:
        """From an ASI restricted space to a full one (an ASI exit)."""
        return is_asi_space(self.old_space) and not is_asi_space(self.new_space)

    def line(self) -> str:
        """One aligned line: values, spaces, PCID, NOFLUSH and where."""
        spaces = f"{self.old_space} -> {self.new_space}"
        pcid = "pcid -    " if self.pcid is None else f"pcid {self.pcid:#05x}"
        flush = "noflush" if self.noflush else "       "
        return (f"cr3 {self.old:#018x} -> {self.new:#018x}  {spaces:<24} {pcid} {flush}  "
                f"{self.symbol}")


@dataclass(eq=False)
class Breakpoint:
    """A breakpoint (``address``, ``cr3``) or a catchpoint (the other kinds).

    The fields a kind does not use stay at their defaults."""

    num: int
    kind: str                      # a key of KINDS
    space: str | None = None       # cr3: a space name or fnmatch pattern (None: any)
    address: int | None = None     # address
    vector: int | None = None      # fault (None: any)
    nr: int | None = None          # syscall (None: any)
    fault_only: bool = False       # asi-exit: only exits a page fault forced
    label: str = ""                # address: symbol+offset, for listings
    process: str | None = None     # address: only while this process's CR3 is loaded
    finding: str | None = None     # stale: the finding kind (None: any)
    hits: int = 0

    def what(self) -> str:
        """What it stops on, in words."""
        return KINDS[self.kind].describe(self)

    @property
    def noun(self) -> str:
        return KINDS[self.kind].noun


@dataclass
class Stop:
    """Why a run stopped, and where.

    ``reason``: ``breakpoint`` (``breakpoints`` says which), ``step`` (the
    requested number of instructions ran), ``budget`` (the budget ran out),
    ``interrupted`` (Ctrl-C: the machine is intact and runs on), ``halt``
    (every process exited), ``panic``, ``triple-fault`` or ``error`` (the
    machine cannot run on; ``message`` says why).
    """

    reason: str
    rip: int
    symbol: str
    space: str
    cpl: int
    breakpoints: tuple[Breakpoint, ...] = ()
    event: Event | None = None     # the event a catchpoint caught (exception, syscall, asi_exit...)
    cr3: Cr3Write | None = None    # the CR3 write a cr3 or asi-exit breakpoint caught
    message: str = ""

    @property
    def where(self) -> str:
        return f"{self.rip:#x} in {self.symbol} ({self.space}, CPL {self.cpl})"

    def __str__(self) -> str:
        if self.reason != "breakpoint":
            return self.message or {"step": self.where, "budget": f"budget used up at {self.where}"}.get(
                self.reason, f"{self.reason} at {self.where}")
        head = ", ".join(f"{b.noun} {b.num}" for b in self.breakpoints) + ": "
        return head + KINDS[self.breakpoints[0].kind].report(self)


# --- the kinds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BreakKind:
    """One kind of breakpoint.

    ``watches`` is the machine event (``Event.kind``) whose every occurrence
    ``matches(bp, event, cause)`` tests; ``cause`` is the event that forced
    this one (the ``asi_exit`` fault of a CR3 write leaving ASI), else None.
    A match stops the run at once (``after_insn`` False: the CPU is at the
    next instruction it will run, e.g. the handler's first), or right after
    the instruction that made the event (``after_insn`` True: a ``mov cr3``,
    so that the registers show its result).  Address breakpoints watch no
    event: the debugger hooks their addresses (``watches`` None).
    """

    name: str
    noun: str                                        # Breakpoint | Catchpoint
    listing: str                                     # the Type column of 'info breakpoints'
    describe: Callable[[Breakpoint], str]            # what it stops on
    report: Callable[[Stop], str]                    # a stop it caused, after "Breakpoint N: "
    watches: str | None = None
    matches: Callable[[Breakpoint, Event, "Event | None"], bool] | None = None
    after_insn: bool = False


def _describe_address(b: Breakpoint) -> str:
    return (f"{b.address:#x}" + (f" <{b.label}>" if b.label else "")
            + (f" in process {b.process}" if b.process else ""))


def _describe_fault(b: Breakpoint) -> str:
    return "any fault" if b.vector is None else f"{vector_name(b.vector)} (vector {b.vector})"


def _describe_syscall(b: Breakpoint) -> str:
    return "any syscall" if b.nr is None else f"syscall {b.nr} ({syscall_name(b.nr)})"


def _report_fault(s: Stop) -> str:
    ev = s.event
    return f"{describe_fault(ev)} at {ev.rip:#x} <{ev.symbol}> in {ev.space}, CPL {ev.cpl}"


def _report_syscall(s: Stop) -> str:
    ev = s.event
    return f"syscall {ev.nr} ({syscall_name(ev.nr)}) from {ev.rip:#x} <{ev.symbol}> in {ev.space}"


def _report_cr3(s: Stop) -> str:
    w = s.cr3
    text = (f"cr3 {w.old:#x} -> {w.new:#x} ({w.old_space} -> {w.new_space})"
            + (f" pcid {w.pcid:#x}" if w.pcid is not None else "")
            + (" noflush" if w.noflush else "") + f" at {w.symbol}: {w.insn}")
    if s.event is not None:
        text += f"; ASI exit forced by {describe_fault_event(s.event)}"
    return text


def _report_stale(s: Stop) -> str:
    from emu.linux.tlbcheck import TlbFinding

    d = s.event.data
    return TlbFinding(**{k: d[k] for k in TlbFinding.__dataclass_fields__}).line()


def describe_fault_event(ev: Event) -> str:
    """The page fault of an ``asi_exit`` event."""
    return f"#PF {ev.error_code:#x} at {ev.address:#x} by {ev.rip:#x} <{ev.symbol}>"


KINDS: dict[str, BreakKind] = {k.name: k for k in (
    BreakKind("cr3", "Breakpoint", "cr3",
              lambda b: "any CR3 write" if b.space is None else f"CR3 write into {b.space}",
              _report_cr3, watches="cr3_write", after_insn=True,
              matches=lambda b, ev, cause: b.space is None or fnmatch.fnmatchcase(ev.new_space, b.space)),
    BreakKind("address", "Breakpoint", "breakpoint", _describe_address, lambda s: s.where),
    BreakKind("fault", "Catchpoint", "catch fault", _describe_fault, _report_fault, watches="exception",
              matches=lambda b, ev, cause: b.vector in (None, ev.vector)),
    BreakKind("syscall", "Catchpoint", "catch syscall", _describe_syscall, _report_syscall,
              watches="syscall", matches=lambda b, ev, cause: b.nr in (None, ev.nr)),
    BreakKind("stale", "Catchpoint", "catch stale",
              lambda b: "any TLB finding" if b.finding is None else f"TLB finding {b.finding}",
              _report_stale, watches="stale", matches=lambda b, ev, cause: b.finding in (None, ev.finding)),
    BreakKind("asi-exit", "Catchpoint", "catch asi-exit",
              lambda b: "ASI exits forced by a fault" if b.fault_only else "any ASI exit",
              _report_cr3, watches="cr3_write", after_insn=True,
              matches=lambda b, ev, cause: (is_asi_space(ev.old_space) and not is_asi_space(ev.new_space)
                                            and (cause is not None or not b.fault_only))),
)}
BREAK_KINDS = tuple(KINDS)
