"""The vCPU device: the stub's KVM_RUN enters a guest through it (``out
PORT_VCPU, eax``; docs/architecture.md, the stub contract).

The stub decides everything Linux decides (memslots, private or shared,
which host frame backs a guest-physical page, what each exit means: kernel_stub/kvm_vm.S);
this device only does what the hardware does: it runs the guest on a second
CPU (:class:`emu.hw.vmx.Vcpu`) with the registers of the stub's vCPU object,
writes them back with the exit, and maps the pages the stub chose, as
VMLAUNCH/VMRESUME and the EPT would.
"""

from __future__ import annotations

from emu.errors import GuestError
from emu.hw.vmx import EXIT_REASON_PREEMPTION_TIMER, VCPU_REGS, Vcpu, VmExit
from emu.linux import abi, kvm_abi

_OPS = {v: k for k, v in kvm_abi.VCPU_OPS.items()}


class VcpuDevice:
    """One :class:`~emu.hw.vmx.Vcpu` per vCPU file of the stub."""

    def __init__(self, machine):
        """``machine``: the :class:`~emu.linux.machine.Machine` whose stub calls it."""
        self.m = machine
        self.vcpus: dict[int, Vcpu] = {}        # the vCPU file's kernel address -> its CPU
        self.running: Vcpu | None = None
        self.timeslice = kvm_abi.VCPU_TIMESLICE
        self.exits = 0

    def stop(self) -> None:
        """Ctrl-C: end the guest's run now (it exits as on its timer)."""
        if self.running is not None:
            self.running.stop()

    def port(self, port: int, size: int, value: int) -> int:
        cpu, k = self.m.cpu, self.m.kernel
        op = _OPS.get(value & 0xFFFFFFFF)
        file = cpu.reg("rdi")
        if op is None:
            raise GuestError(f"the stub's unknown vCPU device call {value & 0xFFFFFFFF} at {self.m.where()}")
        if op == "VCPU_OP_FREE":
            self.vcpus.pop(file, None)
            return 0
        if k.read_q(file + abi.FILE["type"]) != abi.FILE_KVM_VCPU:
            raise GuestError(f"the stub's vCPU device call on {file:#x}, not a vCPU file, at {self.m.where()}")
        v = self.vcpus.get(file)
        if v is None:
            v = self.vcpus[file] = Vcpu(self.m.mem)
        if op == "VCPU_OP_ZAP":
            v.zap()
            return 0
        if op == "VCPU_OP_MAP":
            gpa, hpa = cpu.reg("rsi"), cpu.reg("rdx")
            try:
                v.map(gpa, hpa)
            except ValueError as e:
                raise GuestError(f"the stub's vCPU map of {gpa:#x}: {e}, at {self.m.where()}") from None
            self.m.emit("vm_map", gpa=gpa, pa=hpa)
            return 0
        return self._run(v, file)

    def _run(self, v: Vcpu, file: int) -> int:
        k = self.m.kernel
        base = file + abi.FILE["pages"]
        regs = [k.read_q(base + kvm_abi.VCPU_REGS + 8 * i) for i in range(len(VCPU_REGS))]
        if self.m.cpu.stop_reason is not None:
            # a stop is pending (Ctrl-C between two runs): the guest is not
            # entered, and the exit is the timer's
            ex = VmExit(EXIT_REASON_PREEMPTION_TIMER)
        else:
            if self.m.asi is not None:
                self.m.asi.check_vm_entry()
            self.running = v
            try:
                regs, ex = v.run(regs, self.timeslice)
            finally:
                self.running = None
        for i, val in enumerate(regs):
            k.write_q(base + kvm_abi.VCPU_REGS + 8 * i, val)
        for name, val in (("reason", ex.reason), ("qualification", ex.qualification), ("gpa", ex.gpa),
                          ("value", ex.value)):
            k.write_q(base + kvm_abi.VCPU_EXIT[name], val)
        self.exits += 1
        self.m.emit("vm_exit", reason=ex.reason, qualification=ex.qualification, gpa=ex.gpa,
                    guest_rip=regs[VCPU_REGS.index("rip")], executed=ex.executed, vector=ex.vector)
        return ex.reason
