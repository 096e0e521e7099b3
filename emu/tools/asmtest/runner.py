"""The runner: one configuration of a test on a freshly booted machine.

Faults are real: the CPU raises the exception, the stub resolves it or
delivers a signal, and the runtime linked after the program (runtime.S)
records and resumes it.  Python only watches: a code hook at the runtime's
decision point reads which site matched, the machine's ``exception`` events
supply vector, error code, CR2, RIP and address space, and code hooks at
the labelled instructions count executions and record what the expectation
kinds ask for (``records`` in emu/tools/asmtest/expect.py: the registers
after the instruction, the address space it ran in).  Only executions at
CPL3 count: an execute ``SYS_probe`` of the program's own code runs it at
CPL0 and is not an execution of the program.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from emu.asm import Image
from emu.errors import GuestError, IsoemuError
from emu.hw.paging import ADDR_MASK
from emu.hw.x86 import USER_REGISTERS
from emu.linux import abi
from emu.linux.config import nearest
from emu.linux.layout import layout_for
from emu.linux.machine import BudgetExhausted, Interrupted, KernelPanic, Machine
from emu.linux.program import user_symbols
from emu.tools.asmtest.expect import KINDS, BadExpectation, Expectation
from emu.tools.asmtest.format import AsmTest, AsmTestError, ProcessSpec, Variant, parse_file
from emu.tools.asmtest.report import AsmTestResult, Failure, error_failure, internal_failure
from emu.tools.asmtest.runtime import assemble_user, include_dirs, link_process, sites_for
from emu.tools.asmtest.values import parse_expr
from emu.tools.faults import describe_exception


@dataclass
class Signal:
    site: int                     # index into the site table, -1 if unexpected
    signo: int
    rip: int                      # the faulting RIP (sigcontext)
    event: object | None          # the CPL3 exception event behind it


@dataclass
class Oops:
    """The kernel oops (a stub panic) that ended the run, charged to the user
    instruction whose system call or exception the kernel was handling."""

    rip: int | None
    event: object | None          # the last kernel (CPL0) exception before it
    message: str


class _Names:
    """What expectation values may name: predefined symbols and the
    process's labels; and the machine's address spaces."""

    def __init__(self, symbols: dict[str, int], machine: Machine):
        self.symbols = symbols
        self.machine = machine

    def resolve(self, name: str) -> int | None:
        return self.symbols.get(name)

    def hint(self, names: list[str]) -> str:
        unknown = next((n for n in names if n not in self.symbols), None)
        return nearest(unknown, self.symbols) if unknown else ""

    def spaces(self) -> dict[str, int]:
        return self.machine.spaces()


class ProcessRun:
    """One process of one run: what it is, and what the hooks saw.  The
    expectation kinds' ``check`` functions read it (emu/tools/asmtest/expect.py)."""

    def __init__(self, runner: "Runner", spec: ProcessSpec, expectations: list[Expectation]):
        self.runner = runner
        self.spec = spec
        self.expectations = expectations
        self.user_img: Image | None = None
        self.image: Image | None = None
        self.sites = []
        self.process = None
        self.prepared: dict[int, object] = {}
        self.counts: dict[str, int] = {}
        self.pending: set[str] = set()
        self.captured: dict[str, list[dict[str, int]]] = {}
        self.spaces_seen: dict[str, list[int]] = {}
        self.signals: list[Signal] = []
        self.last_exc = None
        self.setup_failed: str | None = None
        self.entry_rip: int | None = None            # the user instruction that last entered the kernel
        self.findings: list[tuple[int | None, object]] = []   # (user RIP it is charged to, TlbFinding)
        self.asi_findings: list[tuple[int | None, object]] = []   # the same for ASI's (AsiFinding)
        self.last_kernel_exc = None                  # the last CPL0 exception while this process ran
        self.oops: Oops | None = None

    # -- what the checks read ------------------------------------------------------------------
    def reached(self, label: str) -> int:
        return self.counts.get(label, 0)

    def faults(self, label: str) -> list[Signal]:
        return [s for s in self.signals if s.site >= 0 and self.sites[s.site].label == label]

    def fault_words(self, sig: Signal) -> str:
        return self.runner.fault_words(self, sig)

    def at(self, label: str) -> list[str]:
        src = self.runner.source(self, self.image.symbols[label])
        return [src] if src else []

    def source_of(self, addr: int | None) -> list[str]:
        src = self.runner.source(self, addr) if addr is not None else None
        return [src] if src else []

    def kernel_fault_words(self, ev) -> str:
        return describe_exception(ev.vector, ev.error_code, ev.cr2, ev.rip, self.runner.symbol(self, ev.rip),
                                  ev.space)

    def captures(self, label: str) -> list[dict[str, int]]:
        return self.captured.get(label, [])

    def roots(self, label: str) -> list[int]:
        return self.spaces_seen.get(label, [])

    def space_name(self, root: int) -> str:
        return self.runner.m.space_of(root)

    def findings_at(self, label: str, kind: str | None) -> list:
        addr = self.image.symbols[label]
        return [f for rip, f in self.findings if rip == addr and (kind is None or f.finding == kind)]

    def asi_findings_at(self, label: str, kind: str | None) -> list:
        addr = self.image.symbols[label]
        return [f for rip, f in self.asi_findings if rip == addr and (kind is None or f.kind == kind)]

    @property
    def asi_mode(self) -> str:
        return self.runner.m.config.asi

    @property
    def tlb_mode(self) -> str:
        return self.runner.m.config.tlb

    @property
    def exit(self) -> dict | None:
        return self.runner.m.exits.get(self.process.pid)

    @property
    def output(self) -> str:
        return bytes(self.runner.m.output.get(self.process.pid, b"")).decode("utf-8", errors="replace")


class Runner:
    """Builds and runs one configuration of a test, filling ``res``."""

    def __init__(self, test: AsmTest, variant: Variant, res: AsmTestResult, budget: int | None = None):
        self.t, self.variant, self.res = test, variant, res
        self.budget = budget or variant.budget
        self.procs: list[ProcessRun] = []
        self.m: Machine | None = None
        self.machine_findings: list = []     # TLB findings made while no test process was current
        self._reach_by_syscall: dict[tuple[int, int], list] = {}   # (id of a ProcessRun, RIP) -> label arrivals

    # -- build ---------------------------------------------------------------------------------
    def _build(self, pr: ProcessRun, layout, dirs: list[str]) -> None:
        t, spec = self.t, pr.spec
        user = assemble_user(spec.source, t.path, layout, dirs, spec.line, spec.name)
        insns = {i.addr: i for i in user.insns}
        labels: list[str] = []
        for e in spec.expectations:            # every label is checked, in every configuration
            if e.label is None:
                continue
            if e.label not in user.labels:
                raise AsmTestError(f"{e.where}: unknown label {e.label!r}: {e.text}")
            addr = user.symbols[e.label]
            if addr not in insns:
                sec = user.section_of(addr)
                what = f"in {sec.name}" if sec else f"at {addr:#x}"
                raise AsmTestError(f"{e.where}: label {e.label!r} is not an instruction ({what}): {e.text}")
        for e in pr.expectations:
            if e.label is not None and e.label not in labels:
                labels.append(e.label)
        pr.user_img = user
        pr.sites = sites_for(user, labels)
        pr.image = link_process(spec.source, t.path, layout, user, pr.sites, dirs)

    def build(self) -> Machine:
        """The machine: every process loaded (program and runtime) and
        booted, values resolved, hooks in; not yet run."""
        t, cfg = self.t, self.variant.config
        layout = layout_for(cfg.levels)
        dirs = include_dirs(t.real_path)
        self.procs = [ProcessRun(self, spec, spec.expectations_for(cfg)) for spec in t.processes]
        for pr in self.procs:
            self._build(pr, layout, dirs)
        m = self.m = Machine(cfg, record_events=False)
        m.on_event(self._on_event)
        for pr in self.procs:
            entry = pr.image.symbols["__isoemu_rt_entry"]
            # the runtime is the entry point (as crt1 runs before main);
            # symbols stay the program's own, with _start where the test put it
            img = dataclasses.replace(pr.image, symbols={**pr.image.symbols, "_start": entry})
            pr.process = m.add_process(pr.spec.name, img, filename=t.path)
            pr.process.image = pr.image
        m.boot()
        symbols = user_symbols(layout)
        for pr in self.procs:
            names = _Names({**symbols, **{n: pr.user_img.symbols[n] for n in pr.user_img.labels}}, m)
            for e in pr.expectations:
                prepare = KINDS[e.kind].prepare
                if prepare is not None:
                    try:
                        pr.prepared[id(e)] = prepare(e, names)
                    except BadExpectation as x:
                        raise AsmTestError(f"{e.where}: {x}: {e.text}") from None
        self._install_hooks()
        return m

    def run(self) -> None:
        """Run and judge.  Interrupted (Ctrl-C) is not a test failure: it
        propagates, naming the test."""
        m = self.build()
        try:
            m.run(self.budget)
        except Interrupted as e:
            raise Interrupted(f"{e}, in {self.variant.name(self.t.path)}") from None
        except BudgetExhausted:
            self._machine_failure(f"runaway: the instruction budget of {self.budget:,} ran out")
            return
        except KernelPanic as e:
            if not self._expected_oops(str(e)):
                self._machine_failure(f"the machine stopped: {e}")
                return
        except GuestError as e:
            self._machine_failure(f"the machine stopped: {e}")
            return
        oopsed = any(pr.oops is not None for pr in self.procs)
        for pr in self.procs:
            self._evaluate(pr, default_exit=not oopsed)
        for f in self.machine_findings:
            what = "TLB" if hasattr(f, "finding") else "ASI"
            self.res.failures.append(Failure(f"unexpected {what} finding outside the test's processes", [f.line()]))

    # -- hooks ---------------------------------------------------------------------------------
    def _install_hooks(self) -> None:
        by_addr: dict[int, list] = {}
        before: dict[int, set[str]] = {}      # address -> the instruction ending there, in each process
        for pr in self.procs:
            img = pr.image
            by_addr.setdefault(img.symbols["__isoemu_rt_decided"], []).append((pr, self._on_decided))
            by_addr.setdefault(img.symbols["__isoemu_rt_setup_failed"], []).append((pr, self._on_setup_failed))
            insns = {i.addr: i for i in pr.user_img.insns}
            ends = {i.addr + i.size: f"{i.mnemonic} {i.op_str}".rstrip() for i in img.insns}
            records: dict[str, set[str]] = {}
            for e in pr.expectations:
                if e.label:
                    records.setdefault(e.label, set()).update(KINDS[e.kind].records)
            for label, what in records.items():
                addr = img.symbols[label]
                reach = self._reach(label, "space" in what)
                if addr in insns and insns[addr].mnemonic == "syscall":
                    # the syscall event of that RIP (_on_event): no hook at all
                    self._reach_by_syscall.setdefault((id(pr), addr), []).append(reach)
                else:
                    by_addr.setdefault(addr, []).append((pr, reach))
                if "regs" in what:
                    by_addr.setdefault(addr + insns[addr].size, []).append((pr, self._capture(label)))
            for addr in by_addr:
                before.setdefault(addr, set()).add(ends.get(addr, "?"))
        for addr, cbs in by_addr.items():
            # after a syscall (most labels' register captures) a block-start hook:
            # a code hook would cost every instruction of the counted run a check
            # (docs/architecture.md, Unicorn fact 13)
            after = before[addr].pop() if len(before[addr]) == 1 else "?"
            self.m.cpu.add_site_hook(addr, after, self._dispatch(cbs))

    def _dispatch(self, cbs):
        m = self.m

        def hook(addr: int) -> None:
            if m.cpu.reg("cs") & 3 != 3:
                return
            p = m.current_process()
            for pr, fn in cbs:
                if pr.process is p:
                    fn(pr)
        return hook

    def _reach(self, label: str, space: bool):
        cpu = self.m.cpu

        def fn(pr: ProcessRun) -> None:
            pr.counts[label] = pr.counts.get(label, 0) + 1
            pr.pending.add(label)
            if space:
                pr.spaces_seen.setdefault(label, []).append(cpu.reg("cr3") & ADDR_MASK)
        return fn

    def _capture(self, label: str):
        cpu = self.m.cpu

        def fn(pr: ProcessRun) -> None:
            if label in pr.pending:
                pr.pending.discard(label)
                pr.captured.setdefault(label, []).append({r: cpu.reg(r) for r in USER_REGISTERS})
        return fn

    def _on_decided(self, pr: ProcessRun) -> None:
        cpu = self.m.cpu
        idx = cpu.reg("rbx")
        idx = -1 if idx >= 1 << 63 else idx
        ev = pr.last_exc
        pr.last_exc = None
        pr.signals.append(Signal(idx, cpu.reg("rdi"), cpu.reg("rcx"), ev))

    def _on_setup_failed(self, pr: ProcessRun) -> None:
        rax = self.m.cpu.reg("rax")
        rax = rax - (1 << 64) if rax >= 1 << 63 else rax
        pr.setup_failed = f"rt_sigaction(signal {self.m.cpu.reg('rdi')}) returned {rax}"

    def _on_event(self, ev) -> None:
        kind = ev.kind
        if kind not in ("exception", "syscall", "stale", "asi_finding"):
            return
        pr = next((pr for pr in self.procs if pr.process is not None and pr.process.pid == ev.get("pid")), None)
        if kind == "stale":
            self._on_finding(pr, ev)
        elif kind == "asi_finding":
            self._on_asi_finding(pr)
        elif ev.get("cpl") == 3 and pr is not None:
            pr.entry_rip = ev.get("rip")
            if kind == "syscall":
                for fn in self._reach_by_syscall.get((id(pr), pr.entry_rip), ()):
                    fn(pr)
            if kind == "exception":
                pr.last_exc = ev
        elif kind == "exception" and pr is not None:
            pr.last_kernel_exc = ev

    def _expected_oops(self, message: str) -> bool:
        """A panic that a test expects (``LABEL oops``) is an outcome, not a
        machine failure: it is charged to the process that was running and
        the instruction whose system call or exception the kernel handled."""
        if not any(e.kind == "oops" for pr in self.procs for e in pr.expectations):
            return False
        pr = self._proc_of(self.m.current_process())
        if pr is None:
            return False
        pr.oops = Oops(pr.entry_rip, pr.last_kernel_exc, message)
        return True

    def _on_finding(self, pr: ProcessRun | None, ev) -> None:
        """Charge a TLB finding to the user instruction it was made at: the
        one executing, or the one whose system call or exception the kernel
        was handling (docs/asm-tests.md)."""
        f = self.m.tlb.findings[-1]
        if pr is None:
            self.machine_findings.append(f)
            return
        rip = f.rip if f.rip < self.m.layout.kernel_half else pr.entry_rip
        pr.findings.append((rip, f))

    def _on_asi_finding(self, pr: ProcessRun | None) -> None:
        """An ASI finding (a kernel access from a critical section) is charged
        to the user instruction whose system call or exception the kernel
        was handling, as a TLB finding is."""
        f = self.m.asi.findings[-1]
        if pr is None:
            self.machine_findings.append(f)
            return
        pr.asi_findings.append((pr.entry_rip, f))

    # -- words ---------------------------------------------------------------------------------
    def source(self, pr: ProcessRun | None, addr: int) -> str | None:
        """``at file:line: text`` of the instruction at a user address."""
        if pr is None or not pr.user_img.contains(addr):
            return None
        ln = pr.image.line_at(addr)
        if ln is None:
            return None
        text = ln.text
        if ln.file == self.t.path and 0 < ln.line <= len(self.t.lines):
            text = self.t.lines[ln.line - 1].strip()
        return f"at {ln.file}:{ln.line}: {text}"

    def symbol(self, pr: ProcessRun | None, addr: int) -> str:
        if addr >= self.m.layout.kernel_half:
            return self.m.symbolize(addr)
        if pr is not None:
            s = pr.image.symbolize(addr)
            if s:
                return f"{pr.spec.name}:{s}"
        return f"{addr:#x}"

    def fault_words(self, pr: ProcessRun, sig: Signal) -> str:
        ev = sig.event
        if ev is None:
            return f"{abi.SIGNAL_NAMES.get(sig.signo, sig.signo)} at RIP {sig.rip:#x} ({self.symbol(pr, sig.rip)})"
        return describe_exception(ev.vector, ev.error_code, ev.cr2, ev.rip, self.symbol(pr, ev.rip), ev.space)

    # -- judging -------------------------------------------------------------------------------
    def _machine_failure(self, msg: str) -> None:
        m = self.m
        rip = m.cpu.reg("rip")
        pr = self._proc_of(m.current_process())
        details = [f"stopped at RIP {rip:#x} ({self.symbol(pr, rip)}), CPL {m.cpu.reg('cs') & 3}, "
                   f"space {m.space_of(m.cpu.reg('cr3'))}"]
        src = self.source(pr, rip)
        if src:
            details.append(src)
        self.res.failures.append(Failure(msg, details))
        for pr in self.procs:
            self._unexpected(pr)

    def _proc_of(self, p) -> ProcessRun | None:
        for pr in self.procs:
            if pr.process is p and p is not None:
                return pr
        return None

    def _insn_addr(self, pr: ProcessRun, ev) -> int:
        """The address of the instruction behind an exception: its RIP, except
        for traps (#BP, #OF), which report the instruction after it."""
        if ev.vector in (3, 4):
            for ins in pr.user_img.insns:
                if ins.addr + ins.size == ev.rip:
                    return ins.addr
        return ev.rip

    def _unexpected(self, pr: ProcessRun) -> None:
        for sig in pr.signals:
            if sig.site >= 0:
                continue
            rip = self._insn_addr(pr, sig.event) if sig.event is not None else sig.rip
            if rip == pr.image.symbols["__isoemu_rt_end_of_text"]:
                self.res.failures.append(Failure(f"process {pr.spec.name} ran past the end of its code "
                                                 f"(no SYS_exit)"))
                continue
            details = [self.fault_words(pr, sig)]
            src = self.source(pr, rip)
            if src:
                details.append(src)
            self.res.failures.append(Failure(f"unexpected fault in process {pr.spec.name}", details))
        # a fault whose signal never reached the runtime's handler (the program
        # replaced it, or the signal frame could not be written: a bad stack)
        ev = pr.last_exc
        info = self.m.exits.get(pr.process.pid) if pr.process is not None else None
        if ev is not None and info is not None and info.get("signal") and \
                not any(s.site < 0 for s in pr.signals):
            details = [describe_exception(ev.vector, ev.error_code, ev.cr2, ev.rip, self.symbol(pr, ev.rip),
                                          ev.space)]
            src = self.source(pr, self._insn_addr(pr, ev))
            if src:
                details.append(src)
            details.append(f"{info['signal']} was not delivered to the runtime's handler")
            self.res.failures.append(Failure(f"unexpected fault in process {pr.spec.name}", details))

    def _unexpected_findings(self, pr: ProcessRun) -> None:
        want = [(pr.image.symbols[e.label], e.finding) for e in pr.expectations if e.kind == "stale"]
        for rip, f in pr.findings:
            if any(rip == a and k in (None, f.finding) for a, k in want):
                continue
            where = self.source(pr, rip) if rip is not None else None
            details = [f.line()] + ([where] if where else [])
            self.res.failures.append(Failure(f"unexpected TLB finding in process {pr.spec.name}", details))
        want = [(pr.image.symbols[e.label], e.finding) for e in pr.expectations if e.kind == "asi"]
        for rip, f in pr.asi_findings:
            if any(rip == a and k in (None, f.kind) for a, k in want):
                continue
            where = self.source(pr, rip) if rip is not None else None
            details = [f.line()] + ([where] if where else [])
            self.res.failures.append(Failure(f"unexpected ASI finding in process {pr.spec.name}", details))

    def _evaluate(self, pr: ProcessRun, default_exit: bool = True) -> None:
        fail = self.res.failures
        if pr.setup_failed:
            fail.append(Failure(f"the runtime of process {pr.spec.name} could not start: {pr.setup_failed}"))
            return
        self._unexpected(pr)
        self._unexpected_findings(pr)
        exp = pr.expectations
        if pr.oops is not None and not any(e.kind == "oops" for e in exp):
            fail.append(Failure(f"unexpected oops in process {pr.spec.name}: {pr.oops.message}",
                                pr.source_of(pr.oops.rip)))
        # a run an oops ended has no exits to expect by default
        if default_exit and not any(e.kind == "exit" for e in exp):
            default = Expectation(self.t.path, 0, "", "exit", status=parse_expr("0", "exit"))
            pr.prepared[id(default)] = 0
            exp = exp + [default]
        for e in exp:
            kind = KINDS[e.kind]
            data = pr.prepared.get(id(e))
            got = kind.check(e, data, pr)
            if got is None:
                continue
            if not e.line:
                head = f"{self.t.path}: expected exit 0 (the default)"
            elif kind.headline is not None:
                head = f"{e.where}: {kind.headline(e, data, pr)}"
            else:
                head = f"{e.where}: expected {e.describe()}"
            fail.append(Failure(head, got))


# --- entry points ---------------------------------------------------------------------------
def run_variant(test: AsmTest, variant: Variant, budget: int | None = None) -> AsmTestResult:
    """Run one configuration; never raises for a broken test (every problem
    is a Failure in the result) except :class:`Interrupted` (Ctrl-C)."""
    t0 = time.perf_counter()
    res = AsmTestResult(variant.name(test.path))
    try:
        Runner(test, variant, res, budget).run()
    except Interrupted:
        raise
    except IsoemuError as e:
        res.failures.append(error_failure(e))
    except Exception as e:  # noqa: BLE001 - a bug in isoemu fails this test, not the whole run
        res.failures.append(internal_failure(e))
    res.seconds = time.perf_counter() - t0
    return res


def load(test: AsmTest | str, name: str | None = None) -> AsmTest:
    return parse_file(test, name) if isinstance(test, str) else test


def run_variants(test: AsmTest | str, budget: int | None = None, name: str | None = None,
                 overrides: dict[str, str] | None = None) -> list[AsmTestResult]:
    """Every configuration of a test (a parsed :class:`AsmTest` or a path,
    which reports call ``name`` if given), one result each; a file that
    cannot be parsed is one failed result."""
    t0 = time.perf_counter()
    try:
        t = load(test, name)
        variants = t.variants(overrides)
    except IsoemuError as e:
        path = (name or test) if isinstance(test, str) else test.path
        return [AsmTestResult(path, [error_failure(e)], time.perf_counter() - t0)]
    return [run_variant(t, v, budget) for v in variants]


def run_test(test: AsmTest | str, budget: int | None = None, name: str | None = None,
             variant: Variant | str | None = None, overrides: dict[str, str] | None = None) -> AsmTestResult:
    """Run a test: one configuration (``variant``: a Variant or its id such
    as ``'pti=off'``), or all of them in one result whose failures are
    prefixed with their configuration (``[pti=off] t.S:3: expected ...``)."""
    t0 = time.perf_counter()
    path = (name or test) if isinstance(test, str) else test.path
    try:
        t = load(test, name)
        if isinstance(variant, str):
            variant = t.variant(variant, overrides)
    except IsoemuError as e:
        return AsmTestResult(path, [error_failure(e)], time.perf_counter() - t0)
    if variant is not None:
        return run_variant(t, variant, budget)
    results = run_variants(t, budget, overrides=overrides)
    if len(results) == 1:
        return results[0]
    res = AsmTestResult(t.path, seconds=time.perf_counter() - t0)
    for r, v in zip(results, t.variants(overrides)):
        for f in r.failures:
            res.failures.append(Failure(f"[{v.id}] {f.headline}", f.details))
    return res


def build_machine(test: AsmTest | str, variant: Variant | str | None = None) -> Machine:
    """The machine a test (parsed, or a path) runs on, booted but not run:
    for tracing or stepping through a test.  ``variant`` names the
    configuration (default: the first).  Raises for a broken test."""
    t = load(test)
    if isinstance(variant, str):
        variant = t.variant(variant)
    v = variant or t.variants()[0]
    return Runner(t, v, AsmTestResult(v.name(t.path))).build()
