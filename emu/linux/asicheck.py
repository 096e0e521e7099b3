"""The machine's side of ASI (docs/asi.md): findings and flush events.

The stub decides everything (kernel_stub/asi.S); this module observes its
declared hooks:

* ``asi_critical_access`` (exc_page_fault): a kernel access from an ASI
  critical section, between asi_enter and asi_relax, to memory the restricted
  table does not map but the full one does.  The 2025 RFC v2 warns
  (VM_WARN_ONCE in arch/x86/mm/fault.c: "ASI-sensitive data access from
  critical section"); here it is a finding: an ``asi_finding`` event and an
  :class:`AsiFinding` in ``Machine.asi_findings`` (beside the TLB model's
  ``Machine.findings``).  Counted by the stub in ``asi_critical_findings``.
* each VM entry (the vCPU device calls :meth:`AsiCheck.check_vm_entry`): the
  machine's own check, not the RFC's, that the guest runs from the KVM
  class's restricted space; otherwise a ``vm-entry-unrestricted`` finding.
* ``asi_flush`` (asi_uarch_flush): one flush of the 2025 RFC's taint policy,
  an ``asi_flush`` event with ``flush`` = ``ibpb``, ``rsb`` or ``l1d`` and the
  CPU's taints before it.  Counted by the stub in ``asi_flush_counts``; the
  event only while someone records events.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.hw.paging import error_code_words
from emu.linux import abi

FINDING_KIND = "sensitive-access-in-critical-section"
#: the machine's own check at each VM entry (not the RFC's): the guest must run
#: from the KVM class's restricted space, the point of the class
VM_ENTRY_KIND = "vm-entry-unrestricted"
#: every kind of ASI finding (asm tests: ``; expect: LABEL asi [FINDING]``)
ASI_FINDINGS = (FINDING_KIND, VM_ENTRY_KIND)
_TAINT_NAMES = {v: k.removeprefix("ASI_TAINT_").lower() for k, v in abi.ASI_TAINTS.items()}


def taint_names(taints: int) -> list[str]:
    """``['kernel_data', 'user_control']``, in bit order."""
    return [name for bit, name in sorted(_TAINT_NAMES.items()) if taints & bit]


@dataclass(frozen=True)
class AsiFinding:
    """A sensitive access from a critical section."""

    kind: str
    address: int            # the faulting address (CR2)
    error_code: int
    rip: int
    symbol: str
    space: str              # the restricted space the access faulted in
    pid: int | None

    def line(self) -> str:
        if self.kind == VM_ENTRY_KIND:
            return f"{self.kind}: the guest entered from {self.space} at {self.symbol}"
        return (f"{self.kind}: {self.address:#x} ({error_code_words(self.error_code)}) at {self.symbol} "
                f"in {self.space}")

    def as_dict(self) -> dict:
        return {"kind": self.kind, "address": self.address, "error_code": self.error_code, "rip": self.rip,
                "symbol": self.symbol, "space": self.space, "pid": self.pid}


class AsiCheck:
    """Attach to a booted machine with an ASI design (``asi`` not ``off``)."""

    def __init__(self, machine):
        self.m = machine
        self.findings: list[AsiFinding] = []
        machine.hook_site("asi_critical_access", self._on_critical_access)
        self._flush_hook = None
        self.events_wanted(machine.cpu.want_events)

    def events_wanted(self, wanted: bool) -> None:
        """Observe the taint policy's flushes only while events are recorded."""
        if wanted and self._flush_hook is None:
            self._flush_hook = self.m.hook_site("asi_flush", self._on_flush)
        elif not wanted and self._flush_hook is not None:
            self.m.unhook_site(self._flush_hook)
            self._flush_hook = None

    def _on_critical_access(self, addr: int) -> None:
        """At asi_critical_access_found: rbx = pt_regs, r12 = error code,
        r13 = CR2 (exc_page_fault's registers)."""
        m, cpu = self.m, self.m.cpu
        rip = m.kernel.read_q(cpu.reg("rbx") + abi.PT["rip"])
        p = m.current_process()
        space = self._restricted_space(p)
        f = AsiFinding(FINDING_KIND, cpu.reg("r13"), cpu.reg("r12"), rip, m.symbolize(rip), space,
                       p.pid if p else None)
        self.findings.append(f)
        m.emit("asi_finding", rip=rip, finding=f.kind, address=f.address, error_code=f.error_code,
               restricted=space)

    def check_vm_entry(self) -> None:
        """At each VM entry (the vCPU device's RUN, from kvm_vcpu_run): the
        host must be on the current process's restricted table, loaded for
        the KVM class (its per-CPU ``asi_curr_class``; the 2019 RFC's table is
        the KVM class's only).  Otherwise the guest runs beside the whole
        kernel mapped: a ``vm-entry-unrestricted`` finding, charged like the
        RFC's warning to the system call being handled (``KVM_RUN``)."""
        m = self.m
        p = m.current_process()
        space = m.space_of(m.cpu.reg("cr3"))
        if space == self._restricted_space(p) and (
                m.config.asi == "rfc2019" or m.kernel.read_percpu("asi_curr_class") == abi.ASI_CLASS_KVM):
            return
        rip = m.cpu.reg("rip")
        f = AsiFinding(VM_ENTRY_KIND, 0, 0, rip, m.symbolize(rip), space, p.pid if p else None)
        self.findings.append(f)
        m.emit("asi_finding", rip=rip, finding=f.kind, address=0, error_code=0, restricted=space)

    def _restricted_space(self, p) -> str:
        return f"{p.name}.asi" if p is not None else "?"

    def _on_flush(self, addr: int) -> None:
        """At asi_uarch_flush(kind): rdi = ASI_FLUSH_*."""
        m, cpu = self.m, self.m.cpu
        kind = abi.ASI_FLUSHES[cpu.reg("rdi")]
        taints = m.kernel.read_percpu("asi_taints")
        # asi_maybe_flush_* pushes nothing: above its return address is its caller's,
        # in the transition (__asi_enter or asi_exit)
        where = m.kernel.read_q(cpu.reg("rsp") + 8)
        m.emit("asi_flush", rip=where, flush=kind, taints=taint_names(taints))
