"""The machine: ring transitions, exception delivery, fixups, processes, errors.

Expected values come from the SDM (SYSCALL/SYSRET, 64-bit exception frames,
#DF rules) and Linux (entry_64.S, signal delivery), written out by hand.
"""

import re
import struct

import pytest

from emu.errors import GuestError
from emu.hw.phys import FrameKind
from emu.linux import abi
from emu.linux.machine import BudgetExhausted, KernelPanic, Machine, MachineConfig
from emu.hw.microcode import TripleFault
from emu.hw.paging import ControlState, translate

from .programs import EXIT, MMAP_ANON_PAGE


def machine(*programs, cfg=None):
    progs = [(chr(ord("A") + i), src) for i, src in enumerate(programs)]
    return Machine(cfg or MachineConfig(), programs=progs)


def sym(m, name, proc="A"):
    return m.process(proc).image.symbols[name]


def capture(m, addr, *regs, frame=0):
    """Record registers (and ``frame`` quadwords at RSP) each time the
    instruction at addr is reached."""
    seen = []
    m.boot()

    def hook(a):
        rec = {r: m.cpu.reg(r) for r in regs}
        if frame:
            rec["frame"] = struct.unpack(f"<{frame}Q", m.read_virt(m.cpu.reg("rsp"), 8 * frame))
        seen.append(rec)
    m.cpu.add_code_hook(addr, hook)
    return seen


def data_at_exit(m, proc, name, count):
    """The quadwords at a data label, read when the process exits."""
    out = {}

    def hook(machine, p):
        if p.name == proc:
            base = p.image.symbols[name]
            raw = machine.read_virt(base, 8 * count, f"{p.name}.kernel")
            out["v"] = list(struct.unpack(f"<{count}Q", raw))
    m.exit_hooks.append(hook)
    return out


def signed(v):
    return v - (1 << 64) if v >> 63 else v


# --- ring transitions --------------------------------------------------------------
FLAGS = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x400 | 0x800 | 0x40000 | 0x200 | 0x2   # CF PF AF ZF SF DF OF AC IF


def test_syscall_entry_and_sysret_state():
    src = f"""
_start:
    push {FLAGS}
    popfq
    mov eax, SYS_getpid
at_syscall:
    syscall
after_syscall:
    cld
{EXIT}"""
    m = machine(src)
    entry = capture(m, m.kernel.sym("entry_SYSCALL_64"), "cs", "ss", "rcx", "r11", "rflags", "cr3")
    user = capture(m, sym(m, "at_syscall"), "rflags", "cs", "cr3")
    back = capture(m, sym(m, "after_syscall"), "cs", "ss", "rflags", "rax", "cr3")
    m.run()
    e, u, b = entry[0], user[0], back[0]
    assert u["rflags"] == FLAGS and u["cs"] == abi.USER_CS
    assert (e["cs"], e["ss"]) == (abi.KERNEL_CS, abi.KERNEL_DS)      # from STAR[47:32]
    assert e["rcx"] == sym(m, "after_syscall")                       # RCX <- next RIP
    assert e["r11"] == FLAGS                                          # R11 <- RFLAGS
    assert e["rflags"] == (FLAGS & ~abi.SYSCALL_FMASK) | 2 == 2      # FMASK clears them all
    assert e["cr3"] == u["cr3"]                                       # SYSCALL does not touch CR3
    assert (b["cs"], b["ss"]) == (abi.USER_CS, abi.USER_DS)          # SYSRET: STAR[63:48] + 16 / + 8
    assert b["rflags"] == FLAGS and b["rax"] == 1
    assert b["cr3"] & ~(1 << 63) == b["cr3"]                          # NOFLUSH is never stored


def test_user_fault_frame_on_the_entry_stack():
    src = """
_start:
    mov rbx, KERNEL_TEXT
    mov rsp, 0x7fffffffe008
fault_here:
    mov al, byte ptr [rbx]
"""
    m = machine(src)
    at = capture(m, m.kernel.sym("asm_exc_page_fault"), "rsp", "cs", "ss", "cr2", "rflags", frame=6)
    m.run()
    h = at[0]
    top = m.kernel.cea["entry_stack_top"]
    assert h["rsp"] == top - 48                      # TSS.sp0, six quadwords (with an error code)
    assert (h["cs"], h["ss"]) == (abi.KERNEL_CS, 0)  # SS <- NULL on a privilege change
    assert h["cr2"] == m.layout.kernel_text
    assert not h["rflags"] & 0x200                   # an interrupt gate clears IF
    assert h["frame"] == (0x4, sym(m, "fault_here"), abi.USER_CS, 0x202, 0x7fffffffe008, abi.USER_DS)
    assert m.exits[1] == {"pid": 1, "name": "A", "status": 128 + 11, "signal": "SIGSEGV",
                          "fault": {"vector": 14, "error_code": 0x4, "cr2": m.layout.kernel_text,
                                    "rip": sym(m, "fault_here"), "cr3": m.spaces()["A.user"] | 0x801}}


def test_kernel_fault_frame_on_the_current_stack():
    src = f"""
_start:
    mov eax, SYS_probe
    mov rdi, VMALLOC_START + 0x800000
    xor esi, esi
    xor edx, edx
    syscall
{EXIT}"""
    m = machine(src)
    insn = m.kernel.sym("probe_read_insn")
    before = capture(m, insn, "rsp", "ss")
    at = capture(m, m.kernel.sym("asm_exc_page_fault"), "rsp", "cs", "ss", frame=6)
    m.run()
    b, h = before[0], at[0]
    assert h["rsp"] == (b["rsp"] & ~0xF) - 48         # same privilege: the current stack, aligned
    assert h["ss"] == b["ss"] == abi.KERNEL_DS        # unchanged
    ec, rip, cs, flags, rsp, ss = h["frame"]
    assert (ec, rip, cs, rsp, ss) == (0x0, insn, abi.KERNEL_CS, b["rsp"], abi.KERNEL_DS)
    assert flags & 0x200                              # IRQs were on in the syscall


def test_interrupt_injected_in_user_mode():
    src = f"""
_start:
    mov ecx, 1000
spin:
    dec ecx
    jnz spin
{EXIT}"""
    m = machine(src)
    stop = []
    m.boot()
    h = m.cpu.add_code_hook(sym(m, "spin"), lambda a: (stop.append(a), m.stop("spin")))
    at = capture(m, m.kernel.sym("asm_sysvec_apic_timer_interrupt"), "rsp", "rflags", frame=5)
    assert m.step(10_000) == "spin"
    m.cpu.del_code_hook(h)
    assert m.inject_interrupt(abi.TIMER_VECTOR) is True
    m.run()
    top = m.kernel.cea["entry_stack_top"]
    assert at[0]["rsp"] == top - 40                   # no error code: five quadwords
    assert at[0]["frame"][:2] == (sym(m, "spin"), abi.USER_CS)
    assert not at[0]["rflags"] & 0x200
    assert m.kernel.read_percpu("irq_count") == 1
    # the handler ran on the kernel page table (entered from user mode)
    assert m.space_of(m.kernel.read_percpu("last_irq_cr3")) == "A.kernel"
    assert m.exits[1]["status"] == 0


def test_interrupt_waits_for_if():
    m = machine("_start:\n    cli\n" + EXIT)      # cli at CPL3 is #GP (IOPL 0): the process dies
    m.boot()
    m.cpu.set_reg("rflags", 0x2)
    assert m.inject_interrupt(abi.TIMER_VECTOR) is False
    assert m.cpu.pending_irqs == [abi.TIMER_VECTOR]


# --- exceptions -----------------------------------------------------------------------
# (snippet, vector, error code, software, signal)
TRAPS = [
    ("xor edx, edx\n    xor eax, eax\n    xor ecx, ecx\ntrap:\n    div ecx", 0, None, False, "SIGFPE"),
    ("trap:\n    int3", 3, None, True, "SIGTRAP"),
    ("trap:\n    ud2", 6, None, False, "SIGILL"),
    ("trap:\n    hlt", 13, 0, False, "SIGSEGV"),
    ("mov rax, 0x8000000000000000\ntrap:\n    mov al, byte ptr [rax]", 13, 0, False, "SIGSEGV"),
    ("mov rax, KERNEL_TEXT\ntrap:\n    mov al, byte ptr [rax]", 14, 0x4, False, "SIGSEGV"),
    ("trap:\n    int 0x80", 13, 0x80 * 8 + 2, False, "SIGSEGV"),    # no gate: #GP(vector*8+2)
    ("mov rdi, USER_DATA\n    mov eax, 1\ntrap:\n    invpcid rax, [rdi]", 13, 0, False, "SIGSEGV"),
]


@pytest.mark.parametrize("snippet,vector,ec,software,signal", TRAPS, ids=[t[-1] + str(i) for i, t in enumerate(TRAPS)])
def test_traps_become_signals(snippet, vector, ec, software, signal):
    m = machine("_start:\n    " + snippet + "\n    nop\n")
    m.run()
    exc = next(e for e in m.events_of("exception") if e.vector == vector and e.cpl == 3)
    trap = sym(m, "trap")
    assert (exc.vector, exc.error_code) == (vector, ec)
    assert bool(exc.get("software")) == software
    # a trap (INT3) reports the next instruction; faults, including a #GP raised
    # while delivering INT n, report the instruction itself
    assert exc.rip == (trap + 1 if vector == 3 else trap)
    assert exc.space == "A.user" and exc.symbol.startswith("A:")
    assert m.exits[1]["signal"] == signal
    assert m.exits[1]["status"] == 128 + abi.SIGNALS[signal]


# (faulting address, the CPU's error code, sigcontext.err): Linux reports
# X86_PF_PROT for user accesses to kernel addresses (__bad_area_nosemaphore,
# arch/x86/mm/fault.c), so the not-present code 0x6 of PTI reads as 0x7
SIGFRAME_CASES = [("0x500123", 0x6, 0x6), ("KERNEL_TEXT", 0x6, 0x7)]


@pytest.mark.parametrize("address,cpu_ec,err", SIGFRAME_CASES)
def test_signal_handler_gets_linux_sigframe(address, cpu_ec, err):
    src = """
_start:
    lea rax, [rip + handler]
    mov qword ptr [rip + act], rax
    mov qword ptr [rip + act + 8], 0x04000000
    lea rax, [rip + restorer]
    mov qword ptr [rip + act + 16], rax
    mov eax, SYS_rt_sigaction
    mov edi, SIGSEGV
    lea rsi, [rip + act]
    xor edx, edx
    mov r10d, 8
    syscall
    mov rbx, ADDRESS
    mov r12, 0x1122334455667788
faulting:
    mov byte ptr [rbx], 1
resume:
    mov eax, SYS_exit
    mov edi, 42
    syscall
handler:
    mov qword ptr [rip + got], rdi
    mov eax, dword ptr [rsi + 8]
    mov qword ptr [rip + got + 8], rax
    mov rax, qword ptr [rsi + 16]
    mov qword ptr [rip + got + 16], rax
    mov rax, qword ptr [rdx + 40 + 152]
    mov qword ptr [rip + got + 24], rax
    mov rax, qword ptr [rdx + 40 + 160]
    mov qword ptr [rip + got + 32], rax
    mov rax, qword ptr [rdx + 40 + 128]
    mov qword ptr [rip + got + 40], rax
    mov rax, qword ptr [rdx + 40 + 32]
    mov qword ptr [rip + got + 48], rax
    lea rax, [rip + resume]
    mov qword ptr [rdx + 40 + 128], rax
    mov qword ptr [rdx + 40 + 32], 7
    ret
restorer:
    mov eax, SYS_rt_sigreturn
    syscall
.data
act: .zero 32
got: .zero 56
"""
    m = machine(src.replace("ADDRESS", address))
    regs = capture(m, sym(m, "resume"), "r12")
    out = data_at_exit(m, "A", "got", 7)
    m.run()
    signo, code, addr, got_err, trapno, rip, r12 = out["v"]
    va = 0x500123 if address == "0x500123" else m.layout.kernel_text
    assert (signo, code, addr) == (11, abi.SEGV_MAPERR, va)
    assert (got_err, trapno, rip) == (err, 14, sym(m, "faulting"))
    assert [e.error_code for e in m.events_of("exception") if e.cpl == 3] == [cpu_ec]
    assert r12 == 0x1122334455667788
    assert regs[0]["r12"] == 7                  # rt_sigreturn restored the edited sigcontext
    assert m.exits[1]["status"] == 42


# --- exception-table fixups and bad syscalls --------------------------------------------
# (rax nr, rdi, rsi, rdx, r10, r8, r9) -> rax
SYSCALL_CASES = [
    ((500, 0, 0, 0, 0, 0, 0), -38),
    ((1500, 0, 0, 0, 0, 0, 0), -38),
    ((0xFFFFFFFF, 0, 0, 0, 0, 0, 0), -38),
    ((abi.SYSCALLS["write"], 99, "USER_DATA", 1, 0, 0, 0), -9),
    ((abi.SYSCALLS["write"], 1, "KERNEL_TEXT", 4, 0, 0, 0), -14),
    ((abi.SYSCALLS["write"], 1, 0x500000, 4, 0, 0, 0), -14),
    ((abi.SYSCALLS["close"], 99, 0, 0, 0, 0, 0), -9),
    ((abi.SYSCALLS["read"], 0, "USER_DATA", 8, 0, 0, 0), 0),
    ((abi.SYSCALLS["mmap"], 0, 0, 3, 0x22, -1, 0), -22),
    ((abi.SYSCALLS["mmap"], 0, 4096, 3, 0x01, 99, 0), -9),
    ((abi.SYSCALLS["mmap"], 0, 4096, 3, 0x01, 1, 0), -19),
    ((abi.SYSCALLS["munmap"], 0x401, 4096, 0, 0, 0, 0), -22),
    ((abi.SYSCALLS["rt_sigaction"], 9, "USER_DATA", 0, 8, 0, 0), -22),
    ((abi.SYSCALLS["rt_sigaction"], 11, "USER_DATA", 0, 4, 0, 0), -22),
    ((abi.SYSCALLS["ftruncate"], 1, 4096, 0, 0, 0, 0), -22),
    ((abi.SYSCALLS["getpid"], 0, 0, 0, 0, 0, 0), 1),
    # probe: rax -14 plus rdx = #PF error code, r9 = vector (checked below)
    ((abi.SYSCALLS["probe"], "VMALLOC_START + 0x800000", 0, 0, 0, 0, 0), -14),
    ((abi.SYSCALLS["probe"], "VMALLOC_START + 0x800000", 1, 0, 0, 0, 0), -14),
    ((abi.SYSCALLS["probe"], 0x8000000000000000, 0, 0, 0, 0, 0), -14),
    ((abi.SYSCALLS["probe"], "KERNEL_DATA", 3, 0, 0, 0, 0), -22),
    ((abi.SYSCALLS["probe"], "KERNEL_DATA", 0, 3, 0, 0, 0), -22),
    ((abi.SYSCALLS["probe"], "KERNEL_DATA", 0, 2, 0, 0, 0), 0),      # in the critical section
    ((abi.SYSCALLS["probe"], "KERNEL_DATA", 0, 0, 0, 0, 0), 0),
    ((abi.SYSCALLS["direct_map_alias"], 0x500000, 0, 0, 0, 0, 0), -14),
    ((abi.SYSCALLS["direct_map_alias"], "KERNEL_TEXT", 0, 0, 0, 0, 0), -14),
]


def test_bad_syscalls_and_fixups():
    body = []
    for i, ((nr, *args), _) in enumerate(SYSCALL_CASES):
        body.append(f"    mov rax, {nr}")
        for reg, v in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args):
            body.append(f"    mov {reg}, {v}")
        body.append("    syscall")
        body.append(f"    mov qword ptr [rip + results + {24 * i}], rax")
        body.append(f"    mov qword ptr [rip + results + {24 * i + 8}], rdx")
        body.append(f"    mov qword ptr [rip + results + {24 * i + 16}], r9")
    src = "_start:\n" + "\n".join(body) + "\n" + EXIT + f".data\nresults: .zero {24 * len(SYSCALL_CASES)}\n"
    m = machine(src)
    out = data_at_exit(m, "A", "results", 3 * len(SYSCALL_CASES))
    m.run()
    got = [signed(out["v"][3 * i]) for i in range(len(SYSCALL_CASES))]
    assert got == [want for _, want in SYSCALL_CASES]
    probe = {i: (out["v"][3 * i + 1], out["v"][3 * i + 2]) for i in (16, 17, 18)}
    assert probe == {16: (0x0, 14), 17: (0x2, 14), 18: (0x0, 13)}   # read / write not present; #GP


# --- #DF and triple fault ------------------------------------------------------------------
FAULTING_USER = "_start:\n    mov rax, KERNEL_TEXT\nfault_here:\n    mov al, byte ptr [rax]\n"


def break_stacks(m, sp0=None, ist1=None):
    """Point TSS.sp0 / IST1 at unmapped addresses once A is in user mode, just
    before its fault (the kernel's own return path uses sp0 too)."""
    k = m.kernel
    tss = k.percpu_va("cpu_tss_rw")

    def hook(a):
        if sp0:
            k.write_q(tss + abi.TSS_sp0, sp0)
        if ist1:
            k.write_q(tss + abi.TSS_ist, ist1)
    m.boot()
    m.cpu.add_code_hook(sym(m, "fault_here"), hook)


def test_missing_entry_stack_is_a_double_fault():
    m = machine(FAULTING_USER)
    break_stacks(m, sp0=0xFFFFFE0000100000)
    at = capture(m, m.kernel.sym("asm_exc_double_fault"), "rsp", frame=6)
    with pytest.raises(KernelPanic, match="double fault at RIP"):
        m.run()
    excs = [(e.vector, e.error_code, e.nested) for e in m.events_of("exception")]
    assert excs == [(14, 0x4, False), (8, 0, True)]
    assert at[0]["rsp"] == m.kernel.cea["df_stack_top"] - 48      # IST1
    assert at[0]["frame"][:3] == (0, sym(m, "fault_here"), abi.USER_CS)


def test_missing_ist_stack_is_a_triple_fault():
    m = machine(FAULTING_USER)
    break_stacks(m, sp0=0xFFFFFE0000100000, ist1=0xFFFFFE0000200000)
    with pytest.raises(TripleFault) as e:
        m.run()
    cr3 = m.spaces()["A.user"]
    assert str(e.value) == (f"triple fault: #PF(0x4) -> #PF(0x2) -> #DF(0x0) -> #PF(0x2) while delivering "
                            f"#DF (RIP {sym(m, 'fault_here'):#x}, CPL 3, CR3 {cr3 | 0x801:#x})")


# --- processes, budget, panics ----------------------------------------------------------------
def test_processes_do_not_share_memory():
    a = """
_start:
    mov rax, USER_DATA
    mov byte ptr [rax + 0x100], 0x41
    mov eax, SYS_sched_yield
    syscall
    mov rax, USER_DATA
    movzx edi, byte ptr [rax + 0x100]
    mov eax, SYS_exit
    syscall
"""
    b = """
_start:
    mov rax, USER_DATA
    movzx ebx, byte ptr [rax + 0x100]
    mov byte ptr [rax + 0x100], 0x42
    mov edi, ebx
    mov eax, SYS_exit
    syscall
"""
    m = machine(a, b)
    m.boot()
    ctl = ControlState(smap=False)
    pa_a = translate(m.mem, m.spaces()["A.user"], abi.USER_DATA, 0, 3, ctl).pa
    pa_b = translate(m.mem, m.spaces()["B.user"], abi.USER_DATA, 0, 3, ctl).pa
    assert pa_a != pa_b
    m.run()
    assert (m.exits[1]["status"], m.exits[2]["status"]) == (0x41, 0)


def test_console_output_per_process():
    def writer(text):
        return f"""
_start:
    mov eax, SYS_write
    mov edi, 1
    lea rsi, [rip + msg]
    mov edx, {len(text)}
    syscall
    mov eax, SYS_sched_yield
    syscall
{EXIT}
msg: .ascii "{text}"
"""
    m = machine(writer("hello"), writer("world"))
    m.run()
    assert bytes(m.output[1]) == b"hello" and bytes(m.output[2]) == b"world"
    assert bytes(m.console) == b"helloworld"


def test_budget_exhaustion_names_the_place():
    m = machine("_start:\n    jmp _start\n")
    with pytest.raises(BudgetExhausted) as e:
        m.run(budget=5000)
    assert str(e.value) == ("instruction budget of 5,000 exhausted at RIP 0x400000 (A:_start), CPL 3, "
                            "space A.user")


def test_unhandled_kernel_trap_panics():
    m = machine("_start:\n    mov eax, SYS_getpid\n    syscall\n" + EXIT)
    getpid = m.kernel.sym("sys_getpid")
    m.mem.write(getpid - m.layout.kernel_map, b"\x0f\x0b")      # ud2 in kernel text
    with pytest.raises(KernelPanic, match=r"unhandled trap in kernel mode: vector\(0x0+6\)"):
        m.run()


def test_invpcid_emulation_flushes_user_pcid_on_munmap():
    src = f"""
_start:
{MMAP_ANON_PAGE}    mov rbx, rax
    mov byte ptr [rbx], 1
    mov eax, SYS_munmap
    mov rdi, rbx
    mov esi, 4096
    syscall
{EXIT}"""
    m = machine(src)
    m.run()
    inv = m.events_of("invpcid")
    assert (inv[0].type, inv[0].pcid, inv[0].addr) == (0, 0x801, abi.MMAP_BASE)   # user PCID of ASID 0


# --- the allocator device ------------------------------------------------------------------------
@pytest.mark.parametrize("op, order, kind, message", [
    (1, 0, 99, "the stub's alloc of unknown frame kind 99 at RIP"),
    (1, 0, 0, "the stub's alloc of unknown frame kind 0 at RIP"),
    (1, 3, 6, "the stub's alloc of order 3 (the allocator takes 0, 9 or 18) at RIP"),
    (2, 0x8000000, 0, "the stub's free: double free of frame 0x8000000 at RIP"),
    (7, 0, 0, "the stub's unknown allocator call 7 at RIP"),
])
def test_bad_allocator_calls_stop_the_machine(op, order, kind, message):
    """A request the stub should never make is a GuestError naming where,
    not a guest out-of-memory."""
    m = Machine(MachineConfig(), programs=[("A", "_start:\n" + EXIT)])
    m.boot()
    m.cpu.set_reg("rdi", order)
    m.cpu.set_reg("rsi", kind)
    m.cpu.set_reg("rdx", 0)
    with pytest.raises(GuestError, match=re.escape(message)):
        m._hypercall(abi.PORT_HYPERCALL, 4, op)


def test_python_errors_in_the_allocator_are_not_out_of_memory(monkeypatch):
    m = Machine(MachineConfig(), programs=[("A", "_start:\n" + EXIT)])
    m.boot()

    def broken(*a, **k):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(m.mem.frames, "alloc", broken)
    m.cpu.set_reg("rdi", 0)
    m.cpu.set_reg("rsi", int(FrameKind.USER))
    with pytest.raises(ZeroDivisionError) as e:
        m._hypercall(abi.PORT_HYPERCALL, 4, abi.HC_ALLOC)
    assert any("in the allocator device, called by the stub at RIP" in n for n in e.value.__notes__)


def test_out_of_guest_memory_is_the_guests():
    m = Machine(MachineConfig(ram=32 << 20), programs=[("A", "_start:\n" + EXIT)])
    m.boot()
    m.cpu.set_reg("rdi", 18)                    # 1 GiB: never available in 32 MiB
    m.cpu.set_reg("rsi", int(FrameKind.USER))
    assert m._hypercall(abi.PORT_HYPERCALL, 4, abi.HC_ALLOC) == 0
    (ev,) = m.events_of("alloc_failed")
    assert (ev.order, ev.frame_kind) == (18, "user") and ev.reason.startswith("out of guest memory")
