"""The Debugger: breakpoints and running from stop to stop.

Where each kind of breakpoint stops, and why there (the kinds: stops.py):

* ``break_at(addr)``: before the instruction at ``addr`` runs, and before
  the machine's own hooks there (``add_code_hook(first=True)``), so that
  they run once, when the instruction does.
* ``break_cr3`` / ``catch_asi_exit``: just *after* the ``mov cr3``, so the
  registers show the new CR3 (without NOFLUSH, which hardware never stores)
  and the stop carries the write as a :class:`Cr3Write`.
* ``catch_fault`` / ``catch_syscall``: once the CPU has delivered the
  exception or made the SYSCALL, at the first instruction of the handler
  (``asm_exc_page_fault``, ``entry_SYSCALL_64``...), CPL 0, frame pushed.

Every run is bounded by an instruction budget, and Ctrl-C (SIGINT) stops it
with the machine intact (a stop with reason ``interrupted``).  Resuming from
an address breakpoint first steps over it, as gdb does.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, fields

from emu.errors import GuestError, IsoemuError
from emu.hw.microcode import TripleFault
from emu.linux.machine import DEFAULT_BUDGET, Event, Machine
from emu.parse import parse_count
from emu.tools.debug.errors import DebugError
from emu.tools.debug.inspection import Inspector
from emu.tools.debug.names import parse_syscall, parse_vector
from emu.tools.debug.stops import KINDS, Breakpoint, Cr3Write, Stop

_FIELDS = {f.name for f in fields(Breakpoint)} - {"num", "kind", "hits"}


@dataclass
class _Hit:
    breakpoints: list
    event: Event | None = None
    cr3: Cr3Write | None = None


def _count(n: int | str, what: str) -> int:
    try:
        return parse_count(n, what)
    except IsoemuError as e:
        raise DebugError(str(e)) from None


class Debugger(Inspector):
    """Breakpoints, stepping and inspection over a :class:`~emu.linux.machine.Machine`.

    Attaching boots the machine (processes must have been added).  ``budget``
    is the default instruction budget of :meth:`cont`.
    """

    def __init__(self, machine: Machine, budget: int | str = DEFAULT_BUDGET):
        if not machine.processes:
            raise DebugError("the machine has no processes: add one before attaching a debugger")
        self.budget = _count(budget, "budget")
        super().__init__(machine)
        self.breakpoints: list[Breakpoint] = []
        self.cr3_log: list[Cr3Write] = []          # every CR3 write seen while attached
        self._num = 0
        self._hit: _Hit | None = None
        self._pending: tuple | None = None         # (stop address, _Hit) after a mov cr3
        self._asi_fault: Event | None = None       # a fault's asi_exit, until its CR3 write
        self._dead: str | None = None              # why the machine cannot run on
        self._hooked: dict[int, int] = {}          # breakpoint address -> code hook
        self._skip: int | None = None              # the breakpoint being stepped over
        self._cr3_hooks: list[int] = []            # addresses after each mov cr3, see _sync_hooks
        machine.on_event(self._on_event)
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
        self.m.off_event(self._on_event)
        self._pending = self._hit = None

    def __enter__(self) -> "Debugger":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- breakpoints ---------------------------------------------------------------------------
    def add_breakpoint(self, kind: str, **what) -> Breakpoint:
        """A breakpoint of any kind of :data:`~emu.tools.debug.stops.KINDS`,
        its fields given as they are stored (``add_breakpoint("fault",
        vector=14)``); the methods below check and convert their arguments."""
        if not self.attached:
            raise DebugError("the debugger is detached: no new breakpoints")
        if kind not in KINDS:
            raise DebugError(f"unknown breakpoint kind {kind!r}: choose from {', '.join(KINDS)}")
        bad = set(what) - _FIELDS
        if bad:
            raise DebugError(f"a breakpoint has no field {sorted(bad)[0]!r}")
        self._num += 1
        bp = Breakpoint(self._num, kind, **what)
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
        return self.add_breakpoint("cr3", space=space)

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
        return self.add_breakpoint("address", address=addr, label="" if sym.startswith("0x") else sym,
                                   process=process)

    def catch_fault(self, vector: int | str | None = None) -> Breakpoint:
        """Stop when an exception is delivered (any, or this vector: 14, ``#PF``)."""
        return self.add_breakpoint("fault", vector=None if vector is None else parse_vector(vector))

    def catch_syscall(self, nr: int | str | None = None) -> Breakpoint:
        """Stop at ``entry_SYSCALL_64`` for a syscall (any, or this number or name)."""
        return self.add_breakpoint("syscall", nr=None if nr is None else parse_syscall(nr))

    def catch_asi_exit(self, fault_only: bool = False) -> Breakpoint:
        """Stop after each CR3 write that leaves an ASI restricted space (or
        only those a kernel page fault forced: the stub's asi_exit_on_fault)."""
        return self.add_breakpoint("asi-exit", fault_only=fault_only)

    def catch_stale(self, finding: str | None = None) -> Breakpoint:
        """Stop when the TLB model makes a finding (any, or this kind:
        ``stale-access``, ``freed-while-cached``...; docs/tlb.md)."""
        from emu.linux.config import nearest
        from emu.linux.tlbcheck import ALL_FINDINGS

        if self.m.tlb is None:
            raise DebugError("the TLB model is off (tlb=off): there is nothing to catch; run with --tlb check")
        if finding is not None and finding not in ALL_FINDINGS:
            raise DebugError(f"unknown TLB finding {finding!r}{nearest(finding, ALL_FINDINGS)}; "
                             f"known: {', '.join(ALL_FINDINGS)}")
        return self.add_breakpoint("stale", finding=finding)

    def tlb(self, pcid: int | None = None) -> list[dict]:
        """What the TLB may hold, per PCID (the global set has ``pcid``
        None): ``{pcid, current, spaces, stale}`` where ``spaces`` names the
        address spaces whose valid translations it may cache (their page
        tables were current since its last invalidation) and ``stale`` lists
        the entries it may still hold that the tables no longer give, as
        lines.  ``pcid`` selects one."""
        model = self.m.tlb.model if self.m.tlb is not None else None
        if model is None:
            raise DebugError("the TLB model is off (tlb=off): run with --tlb check")
        from emu.hw.tlb import GLOBAL

        out = []
        for p, roots, recs in model.holdings():
            key = None if p == GLOBAL else p
            if pcid is not None and key != pcid:
                continue
            sym = self.m.symbolize
            out.append({"pcid": key, "current": p == model.cur_pcid,
                        "spaces": [self.m.space_of(r) for r in roots],
                        "stale": [r.describe() + " made stale by " + r.write.describe(sym)
                                  + (" (its frame was freed since)" if r.freed is not None else "")
                                  for r in recs]})
        if pcid is not None and not out:
            known = ", ".join(f"{p:#x}" for p, _, _ in model.holdings() if p != GLOBAL)
            raise DebugError(f"pcid {pcid:#x} holds nothing; known: {known}")
        return out

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

    def _sync_hooks(self) -> None:
        """Hooks for what the breakpoints need, and no more: with an
        instruction budget every code hook costs every instruction a check
        (docs/unicorn-notes.md), which slows the whole run down."""
        want = {b.address for b in self.breakpoints if b.kind == "address"}
        for a in set(self._hooked) - want:
            self.cpu.del_code_hook(self._hooked.pop(a))
        for a in sorted(want - set(self._hooked)):
            self._hooked[a] = self.cpu.add_code_hook(a, self._at_breakpoint, first=True)
        # the instruction after every mov cr3: where after_insn kinds (cr3, asi-exit) stop.
        # QEMU ends a translated block at every CR write, so these are block-start
        # hooks, which cost nothing elsewhere.  Every function of a block-start
        # hook runs before a stop takes effect: the CPU layer's own there has run
        # (NOFLUSH stripped from CR3, given back to the register: emu/hw/microcode/cr3.py)
        after = any(KINDS[b.kind].after_insn for b in self.breakpoints)
        if after and not self._cr3_hooks:
            self._cr3_hooks = [addr + size for addr, (_, size, _) in sorted(self.cpu.cr3_sites.items())]
            for a in self._cr3_hooks:
                self.cpu.add_block_start_hook(a, self._after_cr3)
        elif not after and self._cr3_hooks:
            for a in self._cr3_hooks:
                self.cpu.del_block_start_hook(a, self._after_cr3)
            self._cr3_hooks = []

    def _at_breakpoint(self, addr: int) -> None:
        if self._skip == addr:       # resuming from this breakpoint: step over it
            self._skip = None
            return
        bps = self._address_bps(addr)
        if bps:
            self._stop_now(_Hit(bps))

    def _address_bps(self, addr: int) -> list[Breakpoint]:
        """The address breakpoints at ``addr`` that apply to the running process."""
        bps = [b for b in self.breakpoints if b.kind == "address" and b.address == addr]
        if any(b.process for b in bps):
            current = self.space.partition(".")[0]
            bps = [b for b in bps if b.process in (None, current)]
        return bps

    # -- events from the machine (called from inside CPU hooks) ----------------------------------
    def _on_event(self, ev: Event) -> None:
        cause = w = None
        if ev.kind == "asi_exit":
            self._asi_fault = ev                   # the cause of the CR3 write leaving ASI
        elif ev.kind == "cr3_write":
            w = Cr3Write.from_event(ev)
            self.cr3_log.append(w)
            if w.leaves_asi:
                cause, self._asi_fault = self._asi_fault, None
        now, after = [], []
        for b in self.breakpoints:
            kind = KINDS[b.kind]
            if kind.watches == ev.kind and kind.matches(b, ev, cause):
                (after if kind.after_insn else now).append(b)
        event = cause if w is not None else ev
        if after:
            # after_insn kinds watch 'mov cr3': a hook at the end of each stops there
            size = self.cpu.cr3_sites[ev.rip][1]
            self._pending = (ev.rip + size, _Hit(after, event, w))
        if now:
            self._stop_now(_Hit(now, event, w))

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
    def cont(self, budget: int | str | None = None) -> Stop:
        """Run until a breakpoint hits, the machine halts, Ctrl-C, or
        ``budget`` instructions (default: the debugger's budget) have run."""
        return self._resume(self.budget if budget is None else _count(budget, "budget"), stepping=False)

    def stepi(self, n: int | str = 1) -> Stop:
        """Run ``n`` instructions (fewer if a breakpoint hits first)."""
        return self._resume(_count(n, "instruction count"), stepping=True)

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
        self._hit = None
        self._pending = None
        rip = self.cpu.reg("rip")
        self._skip = rip if rip in self._hooked else None
        reason = self._run(budget)
        return self._make_stop(reason, stepping)

    def _run(self, n: int) -> str:
        try:
            return self.m.step(n)            # SIGINT stops it: 'interrupted'
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
        pending_here = pending is not None and pending[0] == rip
        message = ""
        if reason in ("triple-fault", "error"):
            message = self._dead
        elif reason == "breakpoint" and hit is not None:
            if pending_here:
                # a breakpoint right after a caught mov cr3: one stop for both
                hit = _Hit(pending[1].breakpoints + hit.breakpoints, pending[1].event, pending[1].cr3)
        elif reason in ("budget", "interrupted") and rip in self._hooked and self._address_bps(rip):
            # the run ended at a breakpoint: report it (and a CR3 write just before)
            bps = self._address_bps(rip)
            hit = _Hit(pending[1].breakpoints + bps, pending[1].event, pending[1].cr3) if pending_here \
                else _Hit(bps)
            reason = "breakpoint"
        elif reason in ("budget", "interrupted") and pending_here:
            # the run ended just after a caught mov cr3
            hit, reason = pending[1], "breakpoint"
        elif reason == "halt":
            if self.m.kernel.read_data("panic_flag"):
                tail = bytes(self.m.console).decode(errors="replace").strip().splitlines()
                reason, message = "panic", "kernel panic: " + (" / ".join(tail[-3:]) or "no message")
            else:
                reason, message = "halt", "the machine halted: " + self.exit_summary()
            self._dead = message
        elif reason == "interrupted":
            message = (f"interrupted at {rip:#x} in {self.m.symbolize(rip)} ({self.space}, CPL {self.cpl}) "
                       f"after at least {self.cpu.executed:,} instructions")
        elif reason == "budget":
            reason = "step" if stepping else "budget"
        elif reason != "breakpoint":
            message = f"stopped by another hook ({reason})"
        caught = hit is not None and reason == "breakpoint"
        if caught:
            for b in hit.breakpoints:
                b.hits += 1
        return Stop(reason, rip, self.m.symbolize(rip), self.space, self.cpl,
                    tuple(hit.breakpoints) if caught else (), hit.event if caught else None,
                    hit.cr3 if caught else None, message)
