"""Kernel entry (emu/hw/microcode/transition.py, plan.py): the fast paths
against the original one, from the same state at every transition, byte for
byte (docs/unicorn-notes.md, "Kernel entry")."""

from __future__ import annotations

import copy

import pytest

from emu.cli.main import main
from emu.dev.bare import loop_system, run_loop
from emu.hw.microcode.plan import FaultEntry
from emu.hw.microcode.transition import ENV, KernelEntry, TransitionMismatch, layout
from emu.hw.paging import Fault
from emu.hw.x86 import CR4_PGE
from emu.linux.config import MachineConfig
from emu.tools.matrix import run_matrix


def bare(variant: str, **kw):
    """The bench's SYSCALL and #PF loops on a bare system (emu/dev/bare.py);
    ``run_loop`` raises unless a loop halts with every round done."""
    b = loop_system(**kw)
    assert b.cpu.entry is not None
    return b


def test_layout_verified_on_this_build():
    """The pinned Unicorn's context layout is found and passes the API check:
    the in-place entry is the default here."""
    L = layout()
    assert L is not None and L.cc_op_eflags is not None


# (loop, entries of each kind: SYSCALL, delivery) -- each loop ends with the SYSCALL that halts
LOOPS = [("syscalls", 201, 0), ("faults", 1, 200)]


@pytest.mark.parametrize("label,syscalls,faults", LOOPS)
def test_bare_loops_every_transition_equal(monkeypatch, label, syscalls, faults):
    """``check``: at every transition the fast path and the original path run
    from the same state; any difference in registers, CPL, the CS/SS caches,
    the exception in flight or the frame raises."""
    monkeypatch.setenv(ENV, "check")
    b = bare("check")
    run_loop(b, label, 200)
    e = b.cpu.entry
    assert e.variant == "check"
    # every entry was compared (the first of each kind through the general path)
    assert e.checked == syscalls + faults


@pytest.mark.parametrize("variant", ["slow", "api", "inplace"])
def test_each_variant_runs_the_loops(monkeypatch, variant):
    monkeypatch.setenv(ENV, variant)
    b = bare(variant)
    run_loop(b, "syscalls", 50)
    run_loop(b, "faults", 50)
    e = b.cpu.entry
    assert (e.variant, e.why) == (variant, None)
    assert e.entries == 50 + 1 + 50 + 1


def test_inplace_falls_back_when_the_first_entry_differs(monkeypatch):
    """A layout that patches the wrong bytes is caught by the first entry's
    comparison with the slow path, and the CPU uses ``api`` from then on."""
    monkeypatch.setenv(ENV, "inplace")
    b = bare("inplace")
    e = b.cpu.entry
    e.L = copy.copy(e.L)            # (the verified layout is shared by the process)
    e.L.old_exception -= 8          # the injected error: the field next door
    e._patch_restore = e._make_patch()
    run_loop(b, "faults", 20)
    assert e.variant == "api"
    assert e.why.startswith("the first delivery entry differed from the slow path: old_exception: slow ")
    assert b.cpu._fast_fault is None


def test_check_mode_reports_a_difference(monkeypatch):
    """The equivalence check itself can fail: a fast SYSCALL that forgets R11."""
    monkeypatch.setenv(ENV, "check")
    b = bare("check")
    run_loop(b, "syscalls", 2)        # makes the fast closure
    cpu = b.cpu
    good = cpu._fast_syscall

    def bad():
        ok = good()
        cpu.set_reg("r11", 0x1234)
        return ok
    cpu._fast_syscall = bad
    b.start_user("syscalls", rbx=3, rax=0)
    with pytest.raises(TransitionMismatch, match="r11"):
        cpu.run(100)


def test_unknown_variant_is_one_clear_error(monkeypatch):
    monkeypatch.setenv(ENV, "fastest")
    with pytest.raises(Exception, match="ISOEMU_TRANSITION='fastest': expected one of"):
        bare("x")


CONFIGS = [MachineConfig(), MachineConfig(pti=False, asi=False), MachineConfig(pcid=False),
           MachineConfig(pti=False)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["pti-pcid-asi", "no-pti-no-asi", "no-pcid", "asi-no-pti"])
def test_matrix_equal_in_check_mode(monkeypatch, cfg):
    """The matrix runs without events: its SYSCALLs and faults take the fast
    entries, each compared with the slow path."""
    monkeypatch.setenv(ENV, "check")
    fast = {True: 0, False: 0}
    real = FaultEntry._make

    def make_counting(self):
        run = real(self)

        def counting(vector):
            took = run(vector)
            fast[took] += 1
            return took
        return counting
    monkeypatch.setattr(FaultEntry, "_make", make_counting)
    res = run_matrix(cfg)
    assert fast[True] > 50 and fast[False] == 0, fast
    monkeypatch.setenv(ENV, "slow")
    ref = run_matrix(cfg)
    assert [c.__dict__ for c in res.cells] == [c.__dict__ for c in ref.cells]


def test_asm_suite_equal_in_check_mode(monkeypatch, capsys):
    """The whole asm suite with every transition checked."""
    monkeypatch.setenv(ENV, "check")
    calls = {}
    for name in ("compare_fast", "_compare"):
        real = getattr(KernelEntry, name)

        def counting(self, kind, *a, real=real, name=name):
            calls[name, kind] = calls.get((name, kind), 0) + 1
            return real(self, kind, *a)
        monkeypatch.setattr(KernelEntry, name, counting)
    assert main(["test", "asm/"]) == 0
    # the tests record events: SYSCALL takes the general entry (compared
    # slow / api / in place), faults the planned one (compared with slow)
    assert calls[("_compare", "syscall")] > 500 and calls[("compare_fast", "delivery")] > 100, calls


# --- the walker cross-check ---------------------------------------------------------------
class LyingWalker:
    """The reference walker with an injected bug: faults at one page get
    error code bit 3 (RSVD) flipped."""

    def __init__(self, real, page: int):
        self.real, self.page = real, page

    def translate(self, cr3, va, access, cpl, ctl):
        t = self.real.translate(cr3, va, access, cpl, ctl)
        if va >> 12 == self.page and t.fault:
            return Fault(va, t.vector, t.error_code ^ 0x8, t.levels, t.raw)
        return t


# (entry variant, cross-check on, disagreements reported for 5 faults)
CROSS = [("inplace", True, 5), ("slow", True, 5), ("api", True, 5), ("check", True, 5),
         ("inplace", False, 0)]


@pytest.mark.parametrize("variant,on,reported", CROSS)
def test_cross_check_reports_an_injected_disagreement(monkeypatch, variant, on, reported):
    """Every #PF is walked again by the reference walker; a walker that
    disagrees with the CPU is reported on the fast (planned) entry too."""
    monkeypatch.setenv(ENV, variant)
    b = bare(variant)
    cpu = b.cpu
    cpu.walks = LyingWalker(cpu.walks, 0x10000000 >> 12)
    cpu.walker_cross_check = on
    run_loop(b, "faults", 5)
    assert cpu.mmu_disagreements == reported


def test_cross_check_event():
    events = []
    b = loop_system(sink=lambda kind, **f: events.append((kind, f)))
    b.cpu.walks = LyingWalker(b.cpu.walks, 0x10000000 >> 12)
    run_loop(b, "faults", 1)
    found = [f for k, f in events if k == "mmu_disagreement"]
    assert len(found) == 1
    assert (found[0]["va"], found[0]["cpu_error_code"]) == (0x10000000, 0x4)
    assert found[0]["walker"] == "#PF 0xc (not-present, read, user, reserved-bit)"


# --- block-start hooks: one function is called directly ----------------------------------
# (functions at the loop's label, arrivals for 3 iterations, what run() raises)
BLOCK_CASES = [(1, 3, None), (2, 3, None), (1, 1, ValueError), (2, 1, ValueError)]


@pytest.mark.parametrize("nfns,calls,raises", BLOCK_CASES)
def test_block_start_dispatch(nfns, calls, raises):
    """One function per address takes the direct call; more go through the
    loop; either way each runs once per arrival, in order, and the first
    exception stops the CPU and comes out of run()."""
    b = bare("inplace")
    cpu = b.cpu
    seen = []

    def make(k):
        def fn(a):
            seen.append((k, a))
            if raises is not None and k == nfns - 1:
                raise raises("from a block-start hook")
        return fn
    addr = b.user.symbols["faults"]
    for k in range(nfns):
        cpu.add_block_start_hook(addr, make(k))
    b.start_user("faults", rbx=3, rax=0, rsi=0x10000000)
    if raises is None:
        assert cpu.run(100) == "halt"
    else:
        with pytest.raises(raises, match="from a block-start hook"):
            cpu.run(100)
    assert seen == [(k, addr) for _ in range(calls) for k in range(nfns)]


@pytest.mark.parametrize("variant", ["inplace", "check"])
def test_cr4_not_the_snapshots(monkeypatch, variant):
    """CR4 changed after boot: the snapshot's hflags do not mirror it, so each
    entry takes the slow path with every register read (and in check mode
    the paths still agree)."""
    monkeypatch.setenv(ENV, variant)
    b = bare(variant)
    cpu = b.cpu
    cpu.set_reg("cr4", cpu.reg("cr4") ^ CR4_PGE)
    for label in ("syscalls", "faults"):
        b.start_user(label, rbx=20, rax=0, rsi=0x10000000, rdi=0x1234, r12=0x5678)
        assert cpu.run(200) == "halt"
        assert (cpu.reg("rbx"), cpu.reg("rdi"), cpu.reg("r12")) == (0, 0x1234, 0x5678)
    assert cpu.entry.entries == 42
