"""The event loop: runs the CPU in slices, owns the hooks, and hands events
to the microcode steps and to its users (docs/architecture.md).

Hooks are the CPU layer's only way to see the guest: code hooks (before an
instruction), bounded block-start hooks (before a translated block that
starts at an address: free elsewhere), whole-range block hooks (tracers),
and the instruction hooks of the steps (SYSCALL, OUT, faults, invalid
opcodes).  Python exceptions cannot cross a ctypes callback: the first one
stops the CPU and :meth:`EventLoop.run` re-raises it.
"""

from __future__ import annotations

import time
from typing import Callable

from unicorn import unicorn_const as UC

from emu.errors import GuestError
from emu.hw.cpu import C, Cpu, ends_translation_block
from emu.hw.x86 import RF_AC as RFLAGS_AC
from emu.hw.microcode.regs import RegFile
from emu.hw.paging import ControlState, WalkCache, control_state_of

#: instructions per counted ``emu_start``: a stop requested by a signal handler
#: (Ctrl-C) waits at most one slice, a few hundredths of a second of untraced
#: guest code on a quiet host (8M, before, took up to ~1 s on a loaded one)
SLICE = 2_000_000
#: a run that need not count (``exact=False``) runs uncounted for at most this
#: long in all; then it ends as a runaway (docs/performance.md, "The budget")
GUARD_SECONDS = 10.0


class EventLoop(Cpu):
    """A Unicorn CPU, its hooks and the run loop; the microcode steps are
    mixed in by :class:`emu.hw.microcode.System`."""

    def __init__(self, mem, config=None, sink: Callable | None = None):
        super().__init__(mem, config)
        self.regs = RegFile(self.hv)
        self.sink = sink or (lambda kind, **f: None)
        self._informational_cr3: list[int] = []
        self._info_hooked: dict[int, int] = {}      # 'mov cr3' address -> the address after it (hooked)
        self._cr3_site_ending_at: dict[int, int] = {}   # the address after a 'mov cr3' -> its address
        self._cr3_before = 0                         # CR3 before the next write (the cr3_write event's 'old')
        self._want_events = sink is not None     # cheap paths skip building events
        self.ports: dict[int, Callable[[int, int, int], int | None]] = {}
        self._code_hooks: dict[int, tuple] = {}
        self._at_addr: dict[int, tuple[int, list]] = {}    # addr -> (hook, [(id, fn)]): add_code_hook
        self._last_hook_id = 0
        self._error: BaseException | None = None
        self.stop_reason: str | None = None
        # addr -> (reg id, size, may carry NOFLUSH): every 'mov cr3, reg' of the kernel
        self.cr3_sites: dict[int, tuple[int, int, bool]] = {}
        self._block_starts: dict[int, list] = {}      # addr -> [fn]: add_block_start_hook
        self._block_start_handles: dict[int, int] = {}  # addr -> its Unicorn block hook
        self._pending_restore: tuple | None = None    # LA57: (register, value with NOFLUSH)
        self._cr3_deferred = False                    # Unicorn's CR3 holds a NOFLUSH to strip (cr3.py)
        self._cr3 = None                              # CR3's reader and writer (live.py), made with the sites
        self._last_block_start: int | None = None     # the block-start hook that fired last
        self._suppress_block_start: int | None = None
        self.hlt_sites: set[int] | None = None        # addresses right after each 'hlt' (see _halted)
        self._decode_cache: dict[tuple[int, bytes], object] = {}     # (rip, bytes) -> capstone's CsInsn
        self._cs_engine = None                        # capstone, made at the first decode
        self.mmu_disagreements = 0
        self.pending_irqs: list[int] = []
        self.last_user_exception: tuple | None = None
        self.run_observers: list[Callable[[bool], None]] = []   # see run()
        self.executed = 0           # instructions of the completed slices of the last run()
        self._rerun: tuple | None = None
        self.walks = WalkCache(mem)
        self._nxe = False
        # the TLB model (emu.hw.tlb) and what feeds it; see tlbsites.py
        self.tlb = None
        self.tlb_lazy = False                         # serve refused accesses through stale translations
        self.serve_scratch: list[int] = []            # frames for the lazy mode's private tables
        self.invalidation_observers: list[Callable[[str], None]] = []
        self.cr3_observers: list[Callable[[int], None]] = []
        # called after a CR3 write that returns to user mode (cr3.py), once it is told
        self.user_return_observers: list[Callable[[], None]] = []
        self._to_user_sites: set[int] = set()
        self._actions: list[Callable[[], None]] = []  # work a hook left for the run loop
        self._user_snapshot = None                    # a clean CPL-3 context (lazy mode)
        self._cr_shadow: dict[int, int] = {}          # last value of CR0 and CR4 seen at a site

    @property
    def _cs(self):
        """capstone, loaded at the first instruction Python decodes (an invalid
        opcode, a fault's instruction): a run that needs none never loads it."""
        if self._cs_engine is None:
            import capstone

            self._cs_engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
            self._cs_engine.detail = True
        return self._cs_engine

    # -- hooks ------------------------------------------------------------------------
    def _guard(self, fn, retval=None, settle: bool = True):
        """Python exceptions cannot cross a ctypes callback: keep the first one
        and stop the CPU; run() re-raises it.  ``settle``: a deferred NOFLUSH
        is cleared first (cr3.py; the SYSCALL step clears it itself)."""
        def wrapped(*args):
            try:
                if settle and self._cr3_deferred:
                    self.settle_cr3()
                return fn(*args)
            except BaseException as e:   # noqa: BLE001 - re-raised by run()
                self._hook_failed(e)
                return retval
        return wrapped

    def _hook_failed(self, e: BaseException) -> None:
        """A hook raised: keep the first error and stop the CPU; run() re-raises
        it (Python exceptions cannot cross a ctypes callback)."""
        if self._error is None:
            self._error = e
        C.emu_stop(self.hv)

    def _call_all(self, fns, a: int, until_stop: bool) -> None:
        """Run hook functions in order.  The first exception stops the CPU
        (run() re-raises it); with ``until_stop`` so does a stop request."""
        for f in fns:
            try:
                f(a)
            except BaseException as e:   # noqa: BLE001 - re-raised by run()
                self._hook_failed(e)
                return
            if until_stop and self.stop_reason is not None:
                return

    def add_code_hook(self, addr: int, fn: Callable[[int], None], first: bool = False) -> int:
        """Call fn(addr) before the instruction at addr executes.

        The functions of one address run in the order added (``first``: before
        the others) until one stops the CPU.  A debugger's breakpoint goes
        first: the stop comes before the instruction, and functions that had
        already run would run again when the CPU resumes there.
        """
        entry = self._at_addr.get(addr)
        if entry is None:
            fns: list = []

            def hook(uch, a, size, ud):
                if self._cr3_deferred:
                    self.settle_cr3()
                self._call_all([f for _, f in fns], a, until_stop=True)
            h = self.add_hook("code", hook, addr, addr)
            self._code_hooks[h] = addr
            entry = self._at_addr[addr] = (h, fns)
            self.flush_code_cache()   # Unicorn fact 9: a hook added after translation fires only after a flush
        self._last_hook_id -= 1        # negative: never a Unicorn handle (see del_code_hook)
        entry[1].insert(0 if first else len(entry[1]), (self._last_hook_id, fn))
        return self._last_hook_id

    def add_block_start_hook(self, addr: int, fn: Callable[[int], None], first: bool = False) -> None:
        """Call fn(addr) before the instruction at ``addr``, which must start
        a translated block every time it runs (the instruction before it ends
        one: a branch, call, ret, 'mov crN', ...).

        A bounded block hook costs nothing elsewhere, unlike a code hook:
        with an instruction budget, Unicorn runs every instruction through
        the whole list of code hooks (docs/architecture.md, Unicorn fact 13).
        A stop before the instruction (a breakpoint there) does not make fn
        run twice: the next run skips its first call if it starts at addr.
        The functions run in the order added (``first``: before the others).
        """
        fns = self._block_starts.get(addr)
        if fns is None:
            fns = self._block_starts[addr] = []

            def hook(uch, a, size, ud):
                if self._cr3_deferred:
                    self.settle_cr3()
                if self._suppress_block_start == a:
                    self._suppress_block_start = None
                    return
                self._last_block_start = a
                if len(fns) == 1:
                    # the common case in one function: no copy, no loop
                    try:
                        fns[0](a)
                    except BaseException as e:   # noqa: BLE001 - re-raised by run()
                        self._hook_failed(e)
                    return
                # all of them, even after a stop request: the suppression
                # above would keep them from running when the CPU resumes
                self._call_all(tuple(fns), a, until_stop=False)
            h = self.add_hook("block", hook, addr, addr)
            self._code_hooks[h] = addr
            self._block_start_handles[addr] = h
            self.flush_code_cache()
        fns.insert(0 if first else len(fns), fn)

    def del_block_start_hook(self, addr: int, fn: Callable[[int], None]) -> None:
        """Remove a function added with :meth:`add_block_start_hook`; the
        Unicorn hook goes with the address's last function."""
        fns = self._block_starts.get(addr)
        if fns and fn in fns:
            fns.remove(fn)
            if not fns:
                del self._block_starts[addr]
                self.del_code_hook(self._block_start_handles.pop(addr))

    def add_site_hook(self, addr: int, after: str, fn: Callable[[int], None]):
        """Call fn(addr) before the instruction at ``addr``, whose predecessor
        is the instruction ``after`` (a declared site of the stub): a
        block-start hook when every arrival starts a translated block, a code
        hook otherwise.  Returns a handle for :meth:`del_site_hook`."""
        if ends_translation_block(after):
            self.add_block_start_hook(addr, fn)
            return ("block", addr, fn)
        return ("code", self.add_code_hook(addr, fn))

    def del_site_hook(self, handle) -> None:
        if handle[0] == "block":
            self.del_block_start_hook(handle[1], handle[2])
        else:
            self.del_code_hook(handle[1])

    def add_block_hook(self, fn: Callable[[int, int], None]) -> int:
        """Call fn(addr, size) at the start of every translated block executed."""
        def hook(uch, a, size, ud):
            try:
                if self._cr3_deferred:
                    self.settle_cr3()
                fn(a, size)
            except BaseException as e:   # noqa: BLE001
                self._hook_failed(e)
        h = self.add_hook("block", hook)
        self._code_hooks[h] = None
        self.flush_code_cache()
        return h

    def del_code_hook(self, h: int) -> None:
        if h < 0:                      # a function of add_code_hook
            for addr, (uh, fns) in self._at_addr.items():
                if any(i == h for i, _ in fns):
                    fns[:] = [(i, f) for i, f in fns if i != h]
                    if not fns:
                        del self._at_addr[addr]
                        self.del_code_hook(uh)
                    return
            return
        if h in self._code_hooks:
            self.del_hook(h)
            del self._code_hooks[h]

    # -- the run loop -----------------------------------------------------------------
    def run(self, budget: int, exact: bool = True) -> str:
        """Run up to ``budget`` instructions from the current RIP.

        Returns why it stopped: 'budget', 'halt', or a reason given to
        :meth:`stop`.  Errors raised in hooks (triple fault...) propagate.
        Runs in slices of at most :data:`SLICE` instructions, so a stop
        requested outside any hook (a signal handler) takes effect within a
        slice: :attr:`executed` counts the instructions of the completed
        slices.  Each ``emu_start`` is bracketed by calls to
        :attr:`run_observers` (``fn(True)`` before, ``fn(False)`` after, also
        when a hook raised).

        ``exact=False``, for a budget that only guards against a runaway
        guest: the run counts no instructions (a count costs every
        instruction a call into Unicorn, fact 14); a watchdog bounds it to
        :data:`GUARD_SECONDS` of wall-clock time instead, and a run that
        reaches it ends with the reason 'guard'.  That stop comes from
        another thread, at any instruction: the run is never continued after
        it (Unicorn fact 14).  Ctrl-C stops it at the next hook that runs
        Python, or at the guard.
        """
        self.stop_reason = None
        self._error = None
        self.executed = 0
        self._deliver_pending_irq()
        left = budget
        # (tlb=lazy's served accesses single-step counted in the middle of an
        # uncounted run, tlbsites.py: the CPU layer flushes translated blocks
        # at each switch, Unicorn fact 14)
        guard_end = None if exact else time.monotonic() + GUARD_SECONDS
        while left > 0 and not self.stop_reason:
            rip = self.reg("rip")
            # a block-start hook that fired for the instruction at RIP before the
            # last stop must not fire again for the same arrival
            self._suppress_block_start = rip if rip == self._last_block_start else None
            self.note_cr3()
            for fn in tuple(self.run_observers):
                fn(True)
            if exact:
                n = min(left, SLICE)
                err = self.emu_start(rip, n)
            else:
                n = 0
                err, timed_out = self.emu_start_watched(rip, max(guard_end - time.monotonic(), 0.0))
                if timed_out and not self.stop_reason:
                    self.stop_reason = "guard"
            if self._cr3_deferred:
                self.settle_cr3()           # what every reader sees (cr3.py)
            try:
                for fn in tuple(self.run_observers):
                    fn(False)
            except BaseException:   # noqa: BLE001 - an error from a hook wins
                if self._error is None:
                    raise
            if self._error is not None:
                e, self._error = self._error, None
                self._rerun = None
                raise e
            if err:
                raise GuestError(f"CPU stopped: {UC_ERRORS.get(err, err)} at RIP {self.reg('rip'):#x}")
            if self._actions:
                # work a hook could not do inside emu_start (a #GP after a CR
                # write, a lazy-mode access): done here, then the run goes on
                actions, self._actions = self._actions, []
                for act in actions:
                    left -= act()
                continue
            if self._rerun is not None:
                executed, prepare = self._rerun
                self._rerun = None
                prepare()
                left -= executed
                self.executed += executed
            elif self.stop_reason or self._halted():
                break
            elif n:
                left -= n                 # the slice ran to its end
                self.executed += n
            # else: an uncounted run a hook stopped without a reason: it goes on
            if self.stop_reason:
                break
        if self.stop_reason:
            return self.stop_reason
        if self._halted():
            return "halt"
        return "budget"

    def later(self, action: Callable[[], int]) -> None:
        """From a hook: stop, and have the run loop call ``action()`` (which
        returns the instructions it executed) before it goes on."""
        self._actions.append(action)
        C.emu_stop(self.hv)

    def rerun(self, executed: int, prepare: Callable[[], None]) -> None:
        """From a block hook: stop before the block's first instruction, call
        ``prepare()`` once the CPU is stopped (to add code hooks, say: a hook
        added after a block was translated only fires once the translation
        cache is flushed, Unicorn fact 9), then continue the same :meth:`run` with the
        budget less ``executed``, the instructions run so far by this
        ``emu_start`` (the caller counts them; a run's caller sees no stop).

        Relies on Unicorn checking for a stop request between a block's
        UC_HOOK_BLOCK callbacks and its first instruction (verified here)."""
        self._rerun = (executed, prepare)
        C.emu_stop(self.hv)

    def stop(self, reason: str) -> None:
        self.stop_reason = reason
        C.emu_stop(self.hv)

    def _halted(self) -> bool:
        """Did the run end on a 'hlt'?  Unicorn just stops, with RIP after it.
        With ``hlt_sites`` (the kernel's hlt instructions) the answer is exact;
        otherwise the byte before RIP decides, which a budget stop right after
        an instruction ending in 0xf4 would fool."""
        self.regs.read()
        rip = self.regs["rip"]
        if self.hlt_sites is not None:
            return rip in self.hlt_sites
        pa = self._pa(rip - 1, 2)
        return pa is not None and self.mem.read(pa, 1) == b"\xf4"

    # -- control state ---------------------------------------------------------------------
    def ctl(self, rflags: int | None = None) -> ControlState:
        """The control state from the registers last read (interned objects)."""
        r = self.regs
        return control_state_of(r["cr0"], r["cr4"], self._nxe,
                                bool((r["rflags"] if rflags is None else rflags) & RFLAGS_AC))

    def _pa(self, va: int, access: int, cpl: int = 0) -> int | None:
        """Physical address through the CR3 last read (implicit supervisor access)."""
        r = self.regs
        t = self.walks.translate(r["cr3"], va, access, cpl, self.ctl(0))
        return None if t.fault else t.pa

    def _read_reg(self, reg: int) -> int:
        return self._reg(reg).read()

    def _write_reg(self, reg: int, value: int) -> None:
        self._reg(reg).write(value)


UC_ERRORS = {UC.UC_ERR_READ_UNMAPPED: "read from unmapped physical memory",
             UC.UC_ERR_WRITE_UNMAPPED: "write to unmapped physical memory",
             UC.UC_ERR_FETCH_UNMAPPED: "fetch from unmapped physical memory",
             UC.UC_ERR_INSN_INVALID: "invalid instruction",
             UC.UC_ERR_EXCEPTION: "unhandled CPU exception"}
