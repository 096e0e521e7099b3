"""The budget as a runaway guard (``exact=False``): no instruction count, a
watchdog instead, and the same answers as an exact run
(docs/performance.md, "The budget")."""

from __future__ import annotations

import os
import select
import signal
import threading

import pytest

import emu.hw.cpu as cpu_module
import emu.hw.microcode.loop as loop
from emu.linux.machine import BudgetExhausted, Interrupted, Machine, MachineConfig

from .programs import getpid_loop

SPIN = "_start:\n    jmp _start\n"
# a finite program: system calls and output
WORK = getpid_loop(300)


@pytest.fixture
def quick_watchdog(monkeypatch):
    monkeypatch.setattr(loop, "GUARD_SECONDS", 0.05)


def outcome(m: Machine) -> tuple:
    stats = {k: v for k, v in m.stats().items()}
    return m.exits, bytes(m.output[1]), stats, [f.line() for f in m.findings]


@pytest.mark.parametrize("cfg", [MachineConfig(), MachineConfig(pti=False, asi=False),
                                 MachineConfig(tlb="lazy"), MachineConfig(pcid=False, la57=True)],
                         ids=["default", "no-pti-no-asi", "tlb-lazy", "no-pcid-la57"])
def test_guard_budget_gives_the_exact_runs_answer(cfg):
    got = {}
    for exact in (True, False):
        m = Machine(cfg, programs=[("A", WORK)], record_events=False)
        m.run(budget=10_000_000, exact=exact)
        got[exact] = outcome(m)
    assert got[False] == got[True]
    assert got[True][1] == b"ok\n" and got[True][0][1]["status"] == 0


def test_guard_budget_bounds_a_runaway(quick_watchdog):
    """Uncounted until the guard's time is up; then the run ends, never goes
    on (the watchdog's stop can land anywhere, Unicorn fact 14)."""
    m = Machine(programs=[("A", SPIN)], record_events=False)
    with pytest.raises(BudgetExhausted) as e:
        m.run(budget=5000, exact=False)
    assert str(e.value).startswith("runaway: no end within 0.05 s (the guard of an uncounted run), stopped near "
                                   "RIP 0x400000 (A:_start)")
    assert m.cpu.executed == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_guard_bounds_a_runaway_in_a_forked_child(quick_watchdog):
    """A process that forks after a watched run (``isoemu test -j`` forks its
    workers) leaves the watchdog thread behind: the child's watchdog starts
    afresh, and its runaway still ends at the guard."""
    with pytest.raises(BudgetExhausted):
        Machine(programs=[("A", SPIN)], record_events=False).run(budget=5000, exact=False)
    assert cpu_module._WATCHDOG._thread is not None and cpu_module._WATCHDOG._thread.is_alive()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child: report in one byte, never return
        code = 1
        try:
            try:
                Machine(programs=[("A", SPIN)], record_events=False).run(budget=5000, exact=False)
            except BudgetExhausted as e:
                code = 0 if str(e).startswith("runaway: no end within 0.05 s") else 2
        finally:
            os.write(w, bytes([code]))
            os._exit(0)
    os.close(w)
    try:
        # the child's verdict; without a watchdog of its own it would spin for ever
        ready, _, _ = select.select([r], [], [], 30)
        got = os.read(r, 1) if ready else b"hung"
    finally:
        os.close(r)
        if got == b"hung":
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert got == b"\0"


def test_exact_budget_counts_from_the_start():
    m = Machine(programs=[("A", SPIN)], record_events=False)
    with pytest.raises(BudgetExhausted):
        m.run(budget=5000)
    assert m.cpu.executed == 5000


def test_ctrl_c_stops_an_uncounted_spin(monkeypatch):
    """SIGINT reaches Python only between calls into Unicorn or in a hook: in
    a spin without hooks, the guard's stop is what lets it in."""
    monkeypatch.setattr(loop, "GUARD_SECONDS", 0.5)
    m = Machine(programs=[("A", SPIN)], record_events=False)
    m.boot()
    timer = threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(Interrupted) as e:
            m.run(budget=300_000_000_000, exact=False)
    finally:
        timer.cancel()
    assert str(e.value).startswith("interrupted at RIP 0x400000 (A:_start), CPL 3, space A.user, after at least ")


@pytest.mark.parametrize("program,seconds,fired", [(SPIN, 0.05, True), (WORK, 30.0, False)],
                         ids=["spin-stopped-by-the-watchdog", "exit-before-the-deadline"])
def test_watched_start_says_whether_the_watchdog_stopped_it(program, seconds, fired):
    m = Machine(programs=[("A", program)], record_events=False)
    m.boot()
    err, timed_out = m.cpu.emu_start_watched(m.cpu.reg("rip"), seconds)
    assert (err, timed_out) == (0, fired)
    assert (m.exits.get(1, {}).get("status") == 0) != fired


@pytest.mark.parametrize("cfg", [MachineConfig(), MachineConfig(pti=False, asi=False),
                                 MachineConfig(asi="rfc2025"),
                                 MachineConfig(asi=False, inject=frozenset({"secretmem_noflush"})),
                                 MachineConfig(asi=False, inject=frozenset({"secretmem_noflush"}), tlb="lazy")],
                         ids=["default", "no-pti-no-asi", "asi-rfc2025", "secretmem-noflush",
                              "secretmem-noflush-lazy"])
def test_matrix_is_the_same_with_a_guard_budget(cfg, monkeypatch):
    """Every cell, finding and counter of the matrix, run with an exact budget
    and with a guard budget (what ``isoemu matrix`` uses)."""
    from emu.tools import matrix

    results = []
    for exact in (True, False):
        monkeypatch.setattr(Machine, "run", _forced(Machine.run, exact))
        r = matrix.run_matrix(cfg)
        results.append(([(c.region, c.access, c.space, c.got.text(), c.stale) for c in r.cells],
                        [f.line() for f in r.findings], r.stats))
        monkeypatch.undo()
    assert results[0] == results[1]


def _forced(run, exact: bool):
    def forced(self, budget=10_000_000, exact_=None, **kw):
        kw.pop("exact", None)
        return run(self, budget, exact=exact)
    return forced
