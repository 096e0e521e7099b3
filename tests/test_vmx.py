"""The vCPU of emu/hw/vmx.py on its own, and through the machine's vCPU
device (docs/guest_memfd.md, "The VM"): the exits a guest produces, with
their qualifications; the guest-physical map; the timeslice; Ctrl-C."""

import os
import signal
import threading

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks

from emu.errors import GuestError
from emu.hw.phys import PhysMem
from emu.hw.vmx import (EPT_VIOLATION_ACC_INSTR, EPT_VIOLATION_ACC_READ, EPT_VIOLATION_ACC_WRITE,
                        EXIT_REASON_EPT_VIOLATION, EXIT_REASON_HLT, EXIT_REASON_IO_INSTRUCTION,
                        EXIT_REASON_PREEMPTION_TIMER, EXIT_REASON_TRIPLE_FAULT, VCPU_REGS, Vcpu)
from emu.linux.config import MachineConfig
from emu.linux.machine import Interrupted, Machine

CODE, DATA = 0x10000, 0x11000          # host frames
GPA = 0x1000                           # where the guest's code is


def guest(src: str):
    mem = PhysMem(32 << 20)
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(src, GPA)[0])
    mem.write(CODE, code)
    v = Vcpu(mem)
    v.map(GPA, CODE)
    return v, mem


def regs(**kw):
    r = [0] * len(VCPU_REGS)
    r[VCPU_REGS.index("rip")] = GPA
    r[VCPU_REGS.index("rflags")] = 2
    for k, val in kw.items():
        r[VCPU_REGS.index(k)] = val
    return r


# (guest code, exit reason, qualification, gpa, value, vector)
EXITS = [
    ("mov ebx, 7; hlt", EXIT_REASON_HLT, 0, 0, 0, None),
    ("mov al, 0x41; out 0x10, al", EXIT_REASON_IO_INSTRUCTION, 0x10 << 16, 0, 0x41, None),
    ("mov dx, 0x3f8; mov eax, 0x1234; out dx, eax", EXIT_REASON_IO_INSTRUCTION, (0x3F8 << 16) | 3, 0, 0x1234, None),
    ("mov al, byte ptr [0x5008]", EXIT_REASON_EPT_VIOLATION, EPT_VIOLATION_ACC_READ, 0x5008, 0, None),
    ("mov rax, 0x800000006010; mov byte ptr [rax], 1", EXIT_REASON_EPT_VIOLATION, EPT_VIOLATION_ACC_WRITE,
     0x800000006010, 0, None),
    ("mov eax, 0x7000; jmp rax", EXIT_REASON_EPT_VIOLATION, EPT_VIOLATION_ACC_INSTR, 0x7000, 0, None),
    ("ud2", EXIT_REASON_TRIPLE_FAULT, 0, 0, 0, 6),
    ("xor ecx, ecx; div ecx", EXIT_REASON_TRIPLE_FAULT, 0, 0, 0, 0),
]


@pytest.mark.parametrize("src, reason, qual, gpa, value, vector", EXITS)
def test_exits(src, reason, qual, gpa, value, vector):
    v, _ = guest(src)
    _, ex = v.run(regs(), 1000)
    assert (ex.reason, ex.qualification, ex.gpa, ex.value, ex.vector) == (reason, qual, gpa, value, vector)


def test_registers_in_and_out():
    v, _ = guest("add rdi, rsi; mov r15, rdi; hlt")
    out, ex = v.run(regs(rdi=40, rsi=2), 1000)
    assert ex.reason == EXIT_REASON_HLT and ex.executed == 3
    assert out[VCPU_REGS.index("r15")] == 42 and out[VCPU_REGS.index("rip")] == GPA + 7   # after the hlt


def test_a_mapped_page_is_the_host_frame_and_zap_unmaps_it():
    v, mem = guest("mov byte ptr [0x5008], 0x77; hlt")
    _, ex = v.run(regs(), 100)
    assert (ex.reason, ex.gpa) == (EXIT_REASON_EPT_VIOLATION, 0x5008)
    v.map(0x5000, DATA)
    out, ex = v.run(regs(), 100)           # the same instruction again
    assert ex.reason == EXIT_REASON_HLT and mem.read(DATA + 8, 1) == b"\x77"
    v.zap()
    _, ex = v.run(regs(), 100)
    assert (ex.reason, ex.gpa) == (EXIT_REASON_EPT_VIOLATION, GPA)
    with pytest.raises(ValueError):
        v.map(0x5000, mem.size)


def test_the_timeslice_is_exact_and_the_run_resumes():
    v, _ = guest("spin: inc rax; jmp spin")
    out, ex = v.run(regs(), 1001)
    assert ex.reason == EXIT_REASON_PREEMPTION_TIMER and ex.executed == 1001
    assert out[VCPU_REGS.index("rax")] == 501
    out, ex = v.run(out, 1000)
    assert out[VCPU_REGS.index("rax")] == 1001


def test_stop_ends_a_run():
    v, _ = guest("spin: inc rax; jmp spin")
    timer = threading.Timer(0.05, v.stop)
    timer.start()
    _, ex = v.run(regs(), 10**12)
    timer.join()
    assert ex.reason == EXIT_REASON_PREEMPTION_TIMER and 0 < ex.executed < 10**12


SPIN_VMM = """
.include "kvm.inc"
.data
regs_buf: .zero KVM_REGS_SIZE
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x1000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | {flags}
    gmem_map r14, r13, 0x1000
    mov word ptr [r14], 0xfeeb          # jmp $
    kvm_memslot s, r12, 0, KVM_MEM_GUEST_MEMFD, 0, 0x1000, r14, r13, 0
    kvm_vcpu rbx, r15, r12
    lea rbp, [regs_buf]
    movabs rax, KVM_GPA_SHARED
    mov qword ptr [rbp + KVM_REGS_rip], rax
    vcpu_regs set, rbx, KVM_SET_REGS, rbp
.Lagain:
    kvm_run r, rbx
    jmp .Lagain
"""


def test_ctrl_c_stops_a_guest():
    """SIGINT while the guest spins: the run ends as Interrupted (exit status
    130), the guest's run cut short, though its timeslice is endless."""
    m = Machine(MachineConfig(asi="off"), programs=[("A", SPIN_VMM.format(flags=0))])
    m.boot()
    m.vcpus.timeslice = 10**12

    def on_map(ev):
        if ev.kind == "vm_map":
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()
    m.on_event(on_map)
    with pytest.raises(Interrupted):
        m.run(10**9)
    exits = m.events_of("vm_exit")
    assert exits[-1].reason == EXIT_REASON_PREEMPTION_TIMER and exits[-1].executed < 10**12


def test_a_guest_on_no_direct_map_memory_keeps_it_out_of_the_direct_map():
    m = Machine(MachineConfig(asi="off"),
                programs=[("A", SPIN_VMM.format(flags="GUEST_MEMFD_FLAG_NO_DIRECT_MAP"))])
    m.boot()
    m.vcpus.timeslice = 1000
    with pytest.raises(GuestError):         # the budget: the VMM runs the guest forever
        m.run(300_000)
    # every KVM_RUN maps the page afresh: always the same guest_memfd frame
    maps = {(e.gpa, e.pa) for e in m.events_of("vm_map")}
    assert len(maps) == 1 and m.mem.frames.info(maps.pop()[1]).kind.name == "GUEST_MEMFD"
    s = m.stats()
    assert (s["guest_memfd_pages"], s["guest_memfd_unmapped_pages"]) == (1, 1)
    assert m.findings == []
    assert len(m.events_of("vm_exit")) > 2


def test_the_device_refuses_an_unknown_call():
    m = Machine(MachineConfig(asi="off"), programs=[("A", """
.text
_start:
    mov eax, 9
    out PORT_VCPU, eax
""")])
    with pytest.raises(GuestError, match="vCPU device call 9"):
        m.run(100_000)


# Unicorn's instruction count against the Python code hook it replaced
# (emu/hw/vmx.py, Vcpu._run_counted): the same exits, registers and counts
# for every kind of exit, at every budget around it, in one slice or many.
COUNTED = [src for src, *_ in EXITS] + [
    "mov al, 1; out 0x10, al; nop",              # the count hook also counts the nop after the OUT
    "mov al, 1; out 0x10, al; jmp x; x: nop",
    "spin: inc rax; jmp spin",
    "mov ecx, 100; l: loop l; hlt",
    "mov rsp, 0x1800; push rax; call f; f: ret; hlt",
    "int3",
    "syscall",
]
RAW = [b"\x90\x90\x06",                          # push es: invalid in 64-bit mode
       b"\x90\x0f\xff",                          # an undefined opcode
       b"\x90" * 4094 + b"\xe6\x10" + b"\x90\x90"]   # an OUT at the end of the page


@pytest.mark.parametrize("slice_", [1_000_000, 7])
@pytest.mark.parametrize("code", [src.encode() for src in COUNTED] + RAW, ids=lambda c: c[:24].hex())
def test_counted_runs_equal_the_code_hook(monkeypatch, slice_, code):
    import emu.hw.vmx as vmx
    assert vmx.counter_offset() is not None         # else every run would be the reference
    monkeypatch.setattr(vmx, "SLICE", slice_)
    if code in RAW:
        text = code
    else:
        text = bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(code.decode(), GPA)[0])
    got = []
    for reference in (True, False):
        mem = PhysMem(32 << 20)
        mem.write(CODE, text)
        v = Vcpu(mem, reference=reference)
        assert (v._counter is None) == reference
        v.map(GPA, CODE)
        v.map(GPA + 0x1000, DATA)
        runs = [v.run(regs(), b) for b in (0, 1, 2, 3, 4, 5, 100, 1001, 4096, 4097)]
        got.append([(out, vars(ex)) for out, ex in runs])
    assert got[0] == got[1]


def test_the_kvm_tests_exit_the_same_with_the_code_hook(monkeypatch):
    """Every KVM_RUN of asm/kvm/ (every configuration): the same registers
    in, the same exits, registers out and instruction counts."""
    import functools

    import emu.hw.vmx as vmx
    import emu.linux.vcpu as vcpu_mod
    from emu.tools.asmtest.command import discover
    from emu.tools.asmtest.runner import run_variants

    real_run = vmx.Vcpu.run
    seen: list = []

    def recording(self, regs_in, budget):
        out, ex = real_run(self, regs_in, budget)
        seen.append((list(regs_in), budget, out, vars(ex).copy()))
        return out, ex

    monkeypatch.setattr(vmx.Vcpu, "run", recording)
    logs = []
    for reference in (True, False):
        seen = []
        monkeypatch.setattr(vcpu_mod, "Vcpu", functools.partial(vmx.Vcpu, reference=reference))
        results = [r for path in discover(["asm/kvm"]) for r in run_variants(path)]
        assert all(r.passed for r in results), [r.failures for r in results if not r.passed]
        logs.append(seen)
    assert len(logs[1]) > 100 and logs[0] == logs[1]
    assert any(ex["reason"] == EXIT_REASON_PREEMPTION_TIMER for *_, ex in logs[1])
