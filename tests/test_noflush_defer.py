"""The deferred NOFLUSH strip (emu/hw/microcode/cr3.py): after a CR3 write
that returns to user mode, bit 63 may stay in Unicorn's CR3 until the next
kernel entry.  Hardware never stores it (docs/architecture.md, Unicorn fact
5), so no observer may ever see it: the matrix, a looping program and the
whole asm suite give exactly the same cells, events, findings, counters and
registers with the deferral on and off (docs/performance.md, "The deferred
NOFLUSH strip")."""

from __future__ import annotations

import pytest

from emu.hw.microcode.cr3 import Cr3Sites
from emu.linux.machine import Machine, MachineConfig
from emu.linux.tlbcheck import returns_to_user
from emu.tools.asmtest import runner as asm_runner
from emu.tools.asmtest.command import discover
from emu.tools.matrix import run_matrix

from .programs import EXIT, getpid_loop

# system calls and output
LOOP = getpid_loop(50)

CONFIGS = [MachineConfig(), MachineConfig(pcid=False), MachineConfig(pti=False), MachineConfig(tlb="lazy"),
           MachineConfig(pcid=False, la57=True)]
IDS = ["pti-pcid-asi", "no-pcid", "asi-no-pti", "tlb-lazy", "no-pcid-la57"]


@pytest.fixture
def deferrals(monkeypatch):
    """How many strips were deferred (the CPU left with NOFLUSH to clear)."""
    seen = {"n": 0}
    real = Cr3Sites._strip_noflush_to_user

    def counting(self, addr):
        real(self, addr)
        seen["n"] += self._cr3_deferred
    monkeypatch.setattr(Cr3Sites, "_strip_noflush_to_user", counting)
    return seen


def _machine_outcome(m: Machine) -> tuple:
    regs = m.cpu.regs
    regs.read()
    return (m.exits, {k: bytes(v) for k, v in m.output.items()}, m.stats(), [f.line() for f in m.findings],
            [e.as_dict() for e in m.events], dict(regs.snapshot()), m.cpu.reg("cr3"))


def test_the_sites_that_return_to_user():
    """PTI's two switches to the user CR3 (before SYSRET and IRET), nothing else."""
    m = Machine(MachineConfig(), programs=[("A", LOOP)], record_events=False)
    m.boot()
    assert sorted(m.symbolize(a) for a in returns_to_user(m.kernel.image)) == \
        ["swapgs_restore_regs_and_return_to_usermode+0x86", "syscall_return_via_sysret+0x76"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matrix_equal(monkeypatch, deferrals, cfg):
    got = {}
    for mode in ("quiet", "never"):
        monkeypatch.setattr(Cr3Sites, "defer_noflush", mode)
        res = run_matrix(cfg)
        got[mode] = [c.__dict__ for c in res.cells]
        if mode == "quiet":
            # with PTI (4-level) the user-return strips were deferred
            assert (deferrals["n"] > 0) == bool(cfg.pti and cfg.pcid and not cfg.la57), deferrals
    assert got["quiet"] == got["never"]


@pytest.mark.parametrize("events", [False, True], ids=["quiet", "events"])
@pytest.mark.parametrize("exact", [False, True], ids=["guard", "exact"])
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_loop_equal(monkeypatch, deferrals, cfg, exact, events):
    """Events, findings, counters, output and every register at the end:
    ``always`` defers while events are recorded too, so every observer of
    an event (CR3 in ``syscall``, ``exception``, ``cr3_write``) is checked."""
    got = {}
    for mode in ("always", "never"):
        monkeypatch.setattr(Cr3Sites, "defer_noflush", mode)
        m = Machine(cfg, programs=[("A", LOOP)], record_events=events)
        m.run(budget=10_000_000, exact=exact)
        got[mode] = _machine_outcome(m)
        assert m.cpu.reg("cr3") >> 63 == 0
    assert got["always"] == got["never"]
    assert got["never"][0][1]["status"] == 0
    assert (deferrals["n"] >= 50) == bool(cfg.pcid and cfg.pti and not cfg.la57), deferrals


def asm_suite(monkeypatch, setups: dict) -> dict[str, list]:
    """Every asm test's variants under each setup (a name and a function
    that switches it on): results, events, findings, counters and the final
    registers, per variant."""
    runs: dict[str, list] = {}
    real_build, real_run = asm_runner.Runner.build, asm_runner.Runner.run

    def build(self):
        m = real_build(self)
        self._log = []
        m.on_event(lambda ev: self._log.append(ev.as_dict()))
        return m

    def run(self):
        real_run(self)
        m = self.m
        regs = m.cpu.regs
        regs.read()
        runs[name].append((self.variant.name(self.t.path), [f.lines() for f in self.res.failures], self._log,
                           m.stats(), [f.line() for f in m.findings], dict(regs.snapshot())))
    monkeypatch.setattr(asm_runner.Runner, "build", build)
    monkeypatch.setattr(asm_runner.Runner, "run", run)
    tests = discover(["asm/"])
    for name, setup in setups.items():
        runs[name] = []
        setup()
        for t in tests:
            asm_runner.run_variants(t)
        assert len(runs[name]) > 150
    return runs


def test_asm_suite_equal(monkeypatch, deferrals):
    """Every asm test's variants, the strip always deferred and never."""
    counts = {}

    def mode(m):
        def setup():
            counts[m] = deferrals["n"]
            monkeypatch.setattr(Cr3Sites, "defer_noflush", m)
        return setup
    runs = asm_suite(monkeypatch, {"always": mode("always"), "never": mode("never")})
    assert counts["never"] > 1000 and deferrals["n"] == counts["never"], (counts, deferrals)
    for a, b in zip(runs["always"], runs["never"], strict=True):
        assert a == b, a[0]


HOOKED = """_start:
    mov ebx, 20
.Lloop:
    mov eax, SYS_getpid
    syscall
after:
    nop
    jmp next
next:
    dec ebx
    jnz .Lloop
""" + EXIT


@pytest.mark.parametrize("kind", ["code", "block-start", "block"])
@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=IDS[:3])
def test_every_hook_kind_sees_the_stripped_cr3(monkeypatch, deferrals, cfg, kind):
    """A code hook right after the SYSCALL returns, a block-start hook after
    a jump, a block hook over everything (a tracer's): each reads CR3 while
    the strip is deferred, and must read what hardware holds."""
    got = {}
    for mode in ("always", "never"):
        monkeypatch.setattr(Cr3Sites, "defer_noflush", mode)
        m = Machine(cfg, programs=[("A", HOOKED)], record_events=False)
        m.boot()
        syms = m.process("A").image.symbols
        seen = []
        if kind == "code":
            m.cpu.add_code_hook(syms["after"], lambda a: seen.append(m.cpu.reg("cr3")))
        elif kind == "block-start":
            m.cpu.add_block_start_hook(syms["next"], lambda a: seen.append(m.cpu.reg("cr3")))
        else:
            m.cpu.add_block_hook(lambda a, size: a == syms["after"] and seen.append(m.cpu.reg("cr3")))
        m.run(budget=10_000_000, exact=False)
        got[mode] = seen
        assert len(seen) == 20 and all(v >> 63 == 0 for v in seen)
    assert got["always"] == got["never"]
    assert (deferrals["n"] >= 20) == bool(cfg.pcid and cfg.pti), deferrals


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=IDS[:2])
def test_a_run_stopped_in_user_mode(monkeypatch, cfg):
    """A run that ends in user mode (its budget ran out there) leaves CR3 as
    hardware holds it."""
    from emu.linux.machine import BudgetExhausted
    got = {}
    for mode in ("always", "never"):
        monkeypatch.setattr(Cr3Sites, "defer_noflush", mode)
        got[mode] = []
        # four user instructions an iteration (dec, jnz, mov, syscall): budgets 4
        # apart stop in user mode once an iteration, wherever the kernel path ends
        for budget in range(3000, 3400, 4):
            m = Machine(cfg, programs=[("A", LOOP)], record_events=False)
            with pytest.raises(BudgetExhausted):
                m.run(budget=budget)
            regs = m.cpu.regs
            regs.read()
            got[mode].append(dict(regs.snapshot()))
    assert got["always"] == got["never"]
    # some of them stopped in user mode, where the strip was deferred
    assert any(r["cs"] & 3 == 3 for r in got["always"])


# --- the TLB model's returns to user mode (emu/linux/tlbcheck.py) -------------------------------
def test_user_return_at_cr3_equal(monkeypatch):
    """With PTI the model learns of a return to user mode at the CR3 write
    to the user PGD, instead of from the return_to_user hooks and the next
    CR3 write observed: the same findings, events and counters in the asm
    suite (pti_user_noflush.S is found at user return) and the matrix."""
    from emu.linux.tlbcheck import TlbCheck

    def at_cr3(on):
        return lambda: monkeypatch.setattr(TlbCheck, "user_return_at_cr3", on)
    runs = asm_suite(monkeypatch, {"cr3": at_cr3(True), "hooks": at_cr3(False)})
    for a, b in zip(runs["cr3"], runs["hooks"], strict=True):
        assert a == b, a[0]
    assert any("stale-at-user-return" in line for r in runs["cr3"] for line in r[4])
    for cfg in CONFIGS:
        got = {}
        for on in (True, False):
            monkeypatch.setattr(TlbCheck, "user_return_at_cr3", on)
            got[on] = [c.__dict__ for c in run_matrix(cfg).cells]
        assert got[True] == got[False]
