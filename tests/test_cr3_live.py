"""CR3 read and written in the live CPU state (emu/hw/microcode/live.py):
found and verified per CPU, the API where it is not, and the same answers
as the API everywhere (docs/performance.md, "CR3 in the live CPU state")."""

from __future__ import annotations

import ctypes

import pytest

from emu.hw.microcode import live
from emu.linux.machine import Machine, MachineConfig
from emu.tools.matrix import run_matrix

from .test_noflush_defer import CONFIGS, IDS, LOOP, asm_suite

SPIN = "_start:\n    jmp _start\n"


def booted(cfg=None) -> Machine:
    m = Machine(cfg or MachineConfig(), programs=[("A", SPIN)], record_events=False)
    m.boot()
    return m


def test_found_and_verified_on_this_build():
    m = booted()
    cr3 = m.cpu._cr3
    assert isinstance(cr3, ctypes.c_uint64)
    assert cr3.value == m.cpu.reg("cr3")
    # a write there is the CPU's CR3, with no TLB flush (the value read back through the API)
    was = cr3.value
    cr3.value = was ^ 0x18
    assert m.cpu.reg("cr3") == was ^ 0x18
    cr3.value = was


def test_the_api_when_the_state_is_not_found(monkeypatch):
    monkeypatch.setattr(live, "live_state_address", lambda cpu: None)
    m = booted()
    assert isinstance(m.cpu._cr3, live._ApiCr3)
    assert live.cr3_access(m.cpu, "api").value == m.cpu.reg("cr3")
    m2 = Machine(MachineConfig(), programs=[("A", LOOP)], record_events=False)
    m2.run(budget=10_000_000)       # the machine works through the API
    assert isinstance(m2.cpu._cr3, live._ApiCr3) and m2.exits[1]["status"] == 0


def test_the_api_when_the_slot_does_not_follow(monkeypatch):
    """A state address whose CR3 slot is wrong (8 bytes off): refused."""
    real = live.live_state_address
    monkeypatch.setattr(live, "live_state_address", lambda cpu: real(cpu) + 8)
    assert isinstance(booted().cpu._cr3, live._ApiCr3)


def test_check_mode_catches_a_wrong_slot():
    """An injected wrong location: the first access raises."""
    m = booted()
    checked = live._CheckedCr3(m.cpu, ctypes.c_uint64(0))
    with pytest.raises(RuntimeError, match="live CR3 0x0 != Unicorn's"):
        checked.value


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_matrix_and_loop_equal(monkeypatch, cfg):
    """``check``: every access through both, compared; and the answers of
    the API alone."""
    got = {}
    for mode in ("check", "api"):
        monkeypatch.setattr(live, "MODE", mode)
        res = run_matrix(cfg)
        m = Machine(cfg, programs=[("A", LOOP)], record_events=False)
        m.run(budget=10_000_000, exact=False)
        kind = type(m.cpu._cr3)
        assert kind is (live._CheckedCr3 if mode == "check" else live._ApiCr3)
        regs = m.cpu.regs
        regs.read()
        got[mode] = ([c.__dict__ for c in res.cells], m.exits, m.stats(), [f.line() for f in m.findings],
                     dict(regs.snapshot()))
    assert got["check"] == got["api"]


def test_asm_suite_equal(monkeypatch):
    def mode(name):
        return lambda: monkeypatch.setattr(live, "MODE", name)
    runs = asm_suite(monkeypatch, {"check": mode("check"), "api": mode("api")})
    for a, b in zip(runs["check"], runs["api"], strict=True):
        assert a == b, a[0]
