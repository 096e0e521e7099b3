"""The KVM class of ASI (docs/asi.md, "The KVM class"): what KVM_RUN's three
runs of asm/kvm/asi.S cost under each design, against a same-run baseline of
the same program without the runs (its set-up and exit), as exact counter
deltas; and the two injections, caught."""

from pathlib import Path

import pytest

from emu.linux.config import MachineConfig
from emu.linux.machine import Machine

SRC = (Path(__file__).parent.parent / "asm" / "kvm" / "asi.S").read_text()
_A = SRC.index("    kvm_run run1, rbp")
_B = SRC.index("exit3:\n    nop\n") + len("exit3:\n    nop\n")
BASE = SRC[:_A] + SRC[_B:]
KEYS = ("asi_kvm_entries", "asi_exits", "asi_fault_exits", "asi_user_return_exits", "asi_other_exits",
        "asi_flush_ibpb", "asi_flush_rsb", "asi_flush_l1d", "asi_critical_findings", "kernel_tlb_flushes")


def delta(design: str, inject: tuple = ()) -> tuple[tuple[int, ...], list]:
    stats, findings = [], []
    for src in (BASE, SRC):
        m = Machine(MachineConfig(asi=design, inject=inject), programs=[("A", src)])
        m.run(5_000_000)
        assert m.findings == []
        stats.append(m.stats())
        findings = [f.kind for f in m.asi_findings]
    return tuple(stats[1][k] - stats[0][k] for k in KEYS), findings


CASES = [
    # design, entries, exits, fault, user-return, other, ibpb, rsb, l1d, critical findings, kernel flushes
    # 7 VM entries: each run's first fetch is an EPT violation (the map starts empty), and the
    # first run's private write another.  No design flushes the kernel TLB for a run.
    ("off", (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)),
    # today's model: the private page's zeroing exits (#PF), each KVM_RUN's way back to user exits
    ("on", (7, 4, 1, 3, 0, 0, 0, 0, 0, 0)),
    # the 2019 RFC: every VM exit's handler aborts the session at its first access outside the
    # table (the kvm_run page, the guest_memfd index, the VMM's page tables)
    ("rfc2019", (7, 7, 7, 0, 0, 0, 0, 0, 0, 0)),
    # the 2025 RFC: the zeroing's #PF exit; the taint policy: L1D at each entry of the KVM class
    # (user or kernel data tainted), IBPB and the RSB fill at each return to the userspace class
    # (guest control tainted) and at the #PF exit (asi_exit's maybe_flush_control(NULL))
    ("rfc2025", (7, 1, 1, 0, 0, 4, 4, 4, 0, 0)),
]


@pytest.mark.parametrize("design, want", CASES)
def test_kvm_class_counters(design, want):
    got, findings = delta(design)
    assert (got, findings) == (want, [])


INJECTED = [
    # design, injection, its counters, its findings
    ("on", "asi_kvm_no_enter", (0, 3, 1, 2, 0, 0, 0, 0, 0, 0), ["vm-entry-unrestricted"] * 7),
    ("rfc2019", "asi_kvm_no_enter", (0, 0, 0, 0, 0, 0, 0, 0, 0, 0), ["vm-entry-unrestricted"] * 7),
    ("rfc2025", "asi_kvm_no_enter", (0, 1, 1, 0, 0, 1, 1, 1, 0, 0), ["vm-entry-unrestricted"] * 7),
    ("on", "asi_kvm_late_relax", (7, 4, 1, 3, 0, 0, 0, 0, 1, 0), ["sensitive-access-in-critical-section"]),
    ("rfc2025", "asi_kvm_late_relax", (7, 1, 1, 0, 0, 4, 4, 4, 1, 0), ["sensitive-access-in-critical-section"]),
    # no critical section in the 2019 RFC: relaxing late changes nothing
    ("rfc2019", "asi_kvm_late_relax", (7, 7, 7, 0, 0, 0, 0, 0, 0, 0), []),
]


@pytest.mark.parametrize("design, inject, want, findings", INJECTED)
def test_kvm_class_injections(design, inject, want, findings):
    assert delta(design, (inject,)) == (want, findings)
