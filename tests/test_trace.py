"""Memory-access tracing: records checked against hand-computed addresses.

Every user program below puts its data (and, where stack accesses are under
test, its stack) in the USER_DATA page at 0x600000, so each expected virtual
address is a constant written out by hand.  Physical addresses are checked
against the reference walker through A's user page table, taken while the
process still exists (an exit hook).
"""

from collections import Counter
from functools import lru_cache
from pathlib import Path

import pytest
from keystone import KS_ARCH_X86, KS_MODE_64, Ks
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE

from emu.linux import abi
from emu.tools.asmtest import build_machine
from emu.hw.cpu import MSR_KERNEL_GS_BASE
from emu.errors import AddressError, ConfigError
from emu.linux.machine import BudgetExhausted, Machine, MachineConfig
from emu.hw.paging import ADDR_MASK, ControlState, translate
from emu.tools.trace import FIELDS, Record, StringPlan, Tracer, analyse, decode, iter_trace, trace_program

ROOT = Path(__file__).resolve().parent.parent
D = 0x600000            # USER_DATA
FS_BASE = D             # set through the API before the program runs
GS_BASE = D + 0x100     # the user GS base: KERNEL_GS_BASE until the first swapgs


def traced(src, cfg=None, *, user_bases=False, **opts):
    """Run ``src`` as process A under a tracer.  Returns (machine, records,
    walker pa of every user-space record's va, taken at exit)."""
    m = Machine(cfg or MachineConfig(), programs=[("A", src)], record_events=False)
    m.boot()
    if user_bases:
        # the stub has no arch_prctl and CR4.FSGSBASE is off: set the bases
        # from Python; transitions carry FS_BASE and KERNEL_GS_BASE
        m.cpu.set_reg("fs_base", FS_BASE)
        m.cpu.set_msr(MSR_KERNEL_GS_BASE, GS_BASE)
    t = Tracer(m, **opts)
    walked = {}

    def at_exit(machine, p):
        root = machine.spaces()["A.user"]
        for r in t.records:
            if r.space == "A.user" and r.cpl == 3:
                w = translate(machine.mem, root, r.va, {"r": 0, "w": 1, "x": 2}[r.kind], 3,
                              ControlState(la57=machine.config.la57))
                walked[(r.kind, r.va)] = None if w.fault else w.pa
    m.exit_hooks.append(at_exit)
    recs = list(t.run(budget=2_000_000, chunk=1_000_000))
    return m, recs, walked


def sym(m, label):
    return m.process("A").image.symbols[label]


def at(m, recs, label, kinds="rw"):
    return [r for r in recs if r.rip == sym(m, label) and r.kind in kinds]


def short(recs):
    return [(r.kind, r.va, r.size) for r in recs]


# --- the decoder: access plans of single instructions ---------------------------------
_ks = Ks(KS_ARCH_X86, KS_MODE_64)


def plan(text, addr=0x1000):
    code = bytes(_ks.asm(text, addr)[0])
    st = decode(code, addr)[0]
    return st, len(code)


STACK8 = lambda k, disp, base="rsp": (((k, 8),), None, base, None, 1, disp, False)  # noqa: E731

DECODER_CASES = [
    # text, expected operand plans (kinds, seg, base, index, scale, disp, addr32)
    ("mov rax, qword ptr [rbx + rcx*8 + 0x10]", [((("r", 8),), None, "rbx", "rcx", 8, 0x10, False)]),
    ("mov byte ptr [r12 + r13*2 - 3], 1", [((("w", 1),), None, "r12", "r13", 2, -3, False)]),
    ("add qword ptr [rax], rbx", [((("r", 8), ("w", 8)), None, "rax", None, 1, 0, False)]),
    ("cmpxchg qword ptr [rax], rbx", [((("r", 8), ("w", 8)), None, "rax", None, 1, 0, False)]),
    ("lea rax, [rbx + 8]", []),
    ("nop dword ptr [rax]", []),
    ("prefetcht0 byte ptr [rax]", []),
    ("clflush byte ptr [rax]", []),
    ("mov eax, dword ptr [ebx]", [((("r", 4),), None, "rbx", None, 1, 0, True)]),
    ("mov rax, qword ptr gs:[0x10]", [((("r", 8),), "gs", None, None, 1, 0x10, False)]),
    ("mov rax, qword ptr fs:[rbx]", [((("r", 8),), "fs", "rbx", None, 1, 0, False)]),
    ("movzx eax, byte ptr [rsi]", [((("r", 1),), None, "rsi", None, 1, 0, False)]),
    ("movdqu xmm0, xmmword ptr [rax]", [((("r", 16),), None, "rax", None, 1, 0, False)]),
    ("movsd xmm0, qword ptr [rax]", [((("r", 8),), None, "rax", None, 1, 0, False)]),   # SSE, not a string op
    ("fxsave [rax]", [((("w", 512),), None, "rax", None, 1, 0, False)]),
    ("push rax", [STACK8("w", -8)]),
    ("push 0x2b", [STACK8("w", -8)]),
    ("push ax", [((("w", 2),), None, "rsp", None, 1, -2, False)]),
    ("push qword ptr [rax + 8]", [((("r", 8),), None, "rax", None, 1, 8, False), STACK8("w", -8)]),
    ("pop rdx", [STACK8("r", 0)]),
    # SDM POP: an RSP-based destination is addressed after the increment
    ("pop qword ptr [rsp + 8]", [STACK8("r", 0), ((("w", 8),), None, "rsp", None, 1, 16, False)]),
    ("call qword ptr [rax]", [((("r", 8),), None, "rax", None, 1, 0, False), STACK8("w", -8)]),
    ("pushfq", [STACK8("w", -8)]),
    ("popfq", [STACK8("r", 0)]),
    ("ret", [STACK8("r", 0)]),
    ("leave", [STACK8("r", 0, "rbp")]),
    ("iretq", [((("r", 40),), None, "rsp", None, 1, 0, False)]),
    ("syscall", []),
    ("sysret", []),
    ("rep movsb", [StringPlan("r", 1, "rsi", None, True, False), StringPlan("w", 1, "rdi", None, True, False)]),
    ("rep stosq", [StringPlan("w", 8, "rdi", None, True, False)]),
    ("lodsw", [StringPlan("r", 2, "rsi", None, False, False)]),
    ("repe cmpsd", [StringPlan("r", 4, "rsi", None, True, False), StringPlan("r", 4, "rdi", None, True, False)]),
]


@pytest.mark.parametrize("text,expected", DECODER_CASES, ids=[c[0] for c in DECODER_CASES])
def test_decoder_plans(text, expected):
    st, _ = plan(text)
    assert list(st.ops) == expected


# register effects (emu/tools/trace/effects.py): what the data-flow analysis follows
M64 = (1 << 64) - 1
EFFECT_CASES = [
    ("push rax", (("add", "rsp", -8),)),
    ("pop rbx", (("add", "rsp", 8), ("load", "rbx", 0, 8))),
    ("pop fs", (("add", "rsp", 8), ("opaque", "fs_base"))),
    ("popfq", (("add", "rsp", 8), ("opaque", "df"))),
    ("ret 0x10", (("add", "rsp", 0x18),)),
    ("leave", (("copy", "rsp", "rbp"), ("add", "rsp", 8), ("load", "rbp", 0, 8))),
    ("enter 0x20, 0", (("add", "rsp", -8), ("copy", "rbp", "rsp"), ("add", "rsp", -0x20))),
    ("std", (("df", 1),)),
    ("lodsq", (("strstep", "rsi", 8), ("opaque", "rax"))),
    ("movsb", (("strstep", "rsi", 1), ("strstep", "rdi", 1))),
    ("rep movsb", (("opaque", "rcx"), ("opaque", "rdi"), ("opaque", "rsi"))),    # QEMU: one iteration a block
    ("mov eax, 0xffffffff", (("set", "rax", 0xFFFFFFFF),)),
    ("mov ax, 5", (("opaque", "rax"),)),                                          # a 16-bit write merges
    ("mov eax, ebx", (("copy", "rax", "rbx"), ("zx32", "rax"))),
    ("mov rax, cr3", (("entry", "rax", "cr3"),)),
    ("movzx eax, byte ptr [rsi]", (("load", "rax", 0, 1),)),
    ("lea rax, [rbx + rcx*8 + 0x10]", (("lea", "rax", ((), None, "rbx", "rcx", 8, 0x10, False)),)),
    ("sub rax, rbx", (("sum", "rax", "rbx", -1),)),
    ("sub rax, rax", (("set", "rax", 0),)),
    ("xor eax, eax", (("set", "rax", 0),)),
    ("and rax, 0xfff", (("alu", "rax", "and", ("imm", 0xFFF), 8),)),
    ("shl rax, 3", (("mul", "rax", 8),)),
    ("shl eax, 3", (("alu", "rax", "shl", ("imm", 3), 4), ("zx32", "rax"))),
    ("imul rdx, rcx, 0x10", (("copy", "rdx", "rcx"), ("mul", "rdx", 0x10))),
    ("neg rax", (("mul", "rax", M64),)),
    ("dec ecx", (("add", "rcx", -1), ("zx32", "rcx"))),
    ("add rax, qword ptr [rbx]", (("opaque", "rax"),)),
    ("cpuid", (("opaque", "rax"), ("opaque", "rbx"), ("opaque", "rcx"), ("opaque", "rdx"))),
    ("syscall", (("opaque", "df"), ("opaque", "r11"), ("opaque", "rcx"))),     # the microcode's SYSCALL
]


@pytest.mark.parametrize("text,expected", EFFECT_CASES, ids=[c[0] for c in EFFECT_CASES])
def test_decoder_effects(text, expected):
    assert plan(text)[0].eff == expected


def test_decoder_rip_relative_is_absolute():
    st, size = plan("mov dword ptr [rip + 0x100], eax", 0x401000)
    assert st.ops == (((("w", 4),), None, None, None, 1, 0x401000 + size + 0x100, False),)


@pytest.mark.parametrize("text,flags", [("mov cr3, rax", 3), ("mov cr4, rax", 3), ("invlpg byte ptr [rdi]", 3),
                                        ("stac", 2), ("popfq", 2), ("sysret", 2), ("iretq", 2),
                                        ("mov rax, cr3", 0), ("mov rax, rbx", 0), ("swapgs", 0)])
def test_decoder_state_flags(text, flags):
    """1: the walk cache is flushed; 2: CPL/CR3/control bits are re-read."""
    assert plan(text)[0].flags == flags


def test_decode_is_cached_by_bytes():
    code = bytes(_ks.asm("push rax; pop rbx", 0x5000)[0])
    assert decode(code, 0x5000) is decode(bytes(code), 0x5000)
    assert decode(code, 0x5000) is not decode(code, 0x6000)


def test_analyse_accepts_a_capstone_instruction():
    import capstone

    cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    cs.detail = True
    ins = next(cs.disasm(bytes(_ks.asm("mov qword ptr [rdi], rsi", 0)[0]), 0))
    assert analyse(ins).ops == (((("w", 8),), None, "rdi", None, 1, 0, False),)


# --- operands on the machine: one program, every operand kind ----------------------------
OPERANDS = """
_start:
    mov rbx, USER_DATA
    mov rsp, USER_DATA + 0x800
    mov rcx, 3
sib:    mov rax, qword ptr [rbx + rcx*8 + 0x10]
riprel: mov eax, dword ptr [rip + var]
rmw:    add qword ptr [rbx], 1
cx:     cmpxchg qword ptr [rbx], rcx
byte:   mov byte ptr [rbx + 7], 1
pushr:  push rax
popr:   pop rdx
pushm:  push qword ptr [rbx + 0x10]
popm:   pop qword ptr [rsp + 8]
callf:  call func
pushf:  pushfq
popf:   popfq
        mov rbp, USER_DATA + 0x100
lv:     leave
        mov rsp, USER_DATA + 0x800
fs:     mov rax, qword ptr fs:[0x20]
gs:     mov rax, qword ptr gs:[0x30]
        mov rsi, USER_DATA + 0x100
        mov rdi, USER_DATA + 0x200
        mov ecx, 16
movsup: rep movsb
        std
        mov rsi, USER_DATA + 0x10f
        mov rdi, USER_DATA + 0x20f
        mov ecx, 16
movsdn: rep movsb
        cld
        mov rdi, USER_DATA + 0x300
        mov ecx, 4
        xor eax, eax
stos:   rep stosq
        mov rsi, USER_DATA + 0x400
lods:   lodsq
        xor ecx, ecx
empty:  rep stosb
cross:  mov rax, qword ptr [rbx + 0xffc]
        mov eax, SYS_exit
        xor edi, edi
        syscall
func:   ret
.data
var: .quad 7
     .skip 8192
"""

OPERAND_CASES = [
    # label, expected (kind, va, size) records, in order
    ("sib", [("r", D + 3 * 8 + 0x10, 8)]),
    ("riprel", [("r", D, 4)]),                                   # var is the first quadword of .data
    ("rmw", [("r", D, 8), ("w", D, 8)]),
    ("cx", [("r", D, 8), ("w", D, 8)]),
    ("byte", [("w", D + 7, 1)]),
    ("pushr", [("w", D + 0x7F8, 8)]),
    ("popr", [("r", D + 0x7F8, 8)]),
    ("pushm", [("r", D + 0x10, 8), ("w", D + 0x7F8, 8)]),
    ("popm", [("r", D + 0x7F8, 8), ("w", D + 0x808, 8)]),       # RSP after the pop, + 8
    ("callf", [("w", D + 0x7F8, 8)]),
    ("func", [("r", D + 0x7F8, 8)]),                             # ret
    ("pushf", [("w", D + 0x7F8, 8)]),
    ("popf", [("r", D + 0x7F8, 8)]),
    ("lv", [("r", D + 0x100, 8)]),                               # pop rbp at the old RBP
    ("fs", [("r", FS_BASE + 0x20, 8)]),
    ("gs", [("r", GS_BASE + 0x30, 8)]),
    ("movsup", [("r", D + 0x100, 16), ("w", D + 0x200, 16)]),    # DF=0: [rsi, rsi+16)
    ("movsdn", [("r", D + 0x100, 16), ("w", D + 0x200, 16)]),    # DF=1: (rsi-16, rsi]
    ("stos", [("w", D + 0x300, 32)]),                            # 4 quadwords
    ("lods", [("r", D + 0x400, 8)]),
    ("empty", []),                                               # RCX = 0: no access
    ("cross", [("r", D + 0xFFC, 4), ("r", D + 0x1000, 4)]),      # split at the page boundary
]


@lru_cache(maxsize=None)
def operands_run():
    return traced(OPERANDS, user_bases=True)


@pytest.mark.parametrize("label,expected", OPERAND_CASES, ids=[c[0] for c in OPERAND_CASES])
def test_operand_addresses(label, expected):
    m, recs, walked = operands_run()
    got = at(m, recs, label)
    assert short(got) == expected
    for r in got:
        assert (r.cpl, r.space, r.fault) == (3, "A.user", None)
        assert r.pa == walked[(r.kind, r.va)]                   # the walker's translation
        assert r.symbol == f"A:{label}"
    assert len({r.seq for r in got}) <= 1                       # one instruction, one seq


def test_page_crossing_pieces_have_their_own_pa():
    m, recs, walked = operands_run()
    lo, hi = at(m, recs, "cross")
    assert lo.pa & 0xFFF == 0xFFC and hi.pa & 0xFFF == 0
    assert lo.pa == walked[("r", D + 0xFFC)] and hi.pa == walked[("r", D + 0x1000)]
    assert lo.seq == hi.seq


def test_rep_iterations_make_one_record_set():
    """QEMU runs REP one iteration per block: no record, fetch or seq per iteration."""
    m, recs, _ = operands_run()
    rep = sym(m, "movsup")
    assert [r for r in recs if r.kind == "x" and r.va == rep] == []
    seqs = [r.seq for r in at(m, recs, "movsup")]
    assert len(seqs) == 2 and seqs[0] == seqs[1]
    after = [r for r in recs if r.kind == "x" and r.va == rep + 2]   # the block after the rep
    assert len(after) == 1 and after[0].seq == seqs[0] + 1


def test_user_records_carry_the_user_cr3_and_pcid():
    m, recs, _ = operands_run()
    user = [r for r in recs if r.cpl == 3]
    p = m.process("A")
    assert user and {(r.cr3, r.pcid, r.space) for r in user} == {(p.user_pgd, 0x801, "A.user")}


def test_seq_is_monotonic_and_shared_within_an_instruction():
    _, recs, _ = operands_run()
    seqs = [r.seq for r in recs]
    assert seqs == sorted(seqs) and seqs[0] == 1
    by_seq = {}
    for r in recs:
        by_seq.setdefault(r.seq, set()).add(r.rip)
    assert all(len(rips) == 1 for rips in by_seq.values())


# --- the kernel: GS-relative per-CPU accesses around the CR3 switch --------------------------
@lru_cache(maxsize=None)
def getpid_run(pcid=True):
    src = "_start:\n    mov eax, SYS_getpid\n    syscall\n    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n"
    return traced(src, MachineConfig(pcid=pcid))


@pytest.mark.parametrize("pcid", [True, False])
def test_syscall_entry_gs_accesses_and_cr3_switch(pcid):
    m, recs, _ = getpid_run(pcid)
    k, p = m.kernel, m.process("A")
    entry = k.sym("entry_SYSCALL_64")
    first = [r for r in recs if r.rip == entry + 3 and r.kind != "x"][0]   # mov gs:[cpu_tss_rw + TSS_sp2], rsp
    assert (first.kind, first.va, first.size) == ("w", k.percpu_va("cpu_tss_rw") + abi.TSS_sp2, 8)
    assert (first.cpl, first.space, first.cr3, first.pcid) == (0, "A.user", p.user_pgd, 0x801 if pcid else None)
    top = next(i.addr for i in k.image.insns if i.addr > entry and i.mnemonic == "mov"
               and i.op_str.startswith("rsp, qword ptr gs:"))            # mov rsp, gs:[pcpu_top_of_stack]
    after = [r for r in recs if r.rip == top and r.kind != "x"][0]
    assert (after.kind, after.va, after.size) == ("r", k.percpu_va("pcpu_top_of_stack"), 8)
    assert (after.space, after.cr3, after.pcid) == ("A.kernel", p.pgd, 0x1 if pcid else None)
    assert first.seq < after.seq


def test_syscall_round_trip_visits_user_kernel_and_asi_spaces():
    _, recs, _ = getpid_run(True)
    order = []
    for r in recs:
        if not order or order[-1] != r.space:
            order.append(r.space)
    # ret_from_fork, user code, entry (user tables), kernel, ASI while in the syscall ...
    assert order[:5] == ["A.kernel", "A.user", "A.kernel", "A.asi", "A.kernel"]
    assert {r.space for r in recs} == {"A.kernel", "A.user", "A.asi"}


def test_iretq_reads_its_five_quadword_frame():
    m, recs, _ = getpid_run(True)
    iret = m.kernel.sym("native_irq_return_iret")
    top = m.kernel.cea["entry_stack_top"]
    first = [r for r in recs if r.rip == iret and r.kind == "r"][0]     # ret_from_fork's way to user mode
    assert (first.va, first.size, first.cpl, first.space, first.fault) == (top - 40, 40, 0, "A.user", None)


# --- faults and exception frames --------------------------------------------------------
FAULT_CASES = [
    # name, program, faulting label, kind, va, size, vector, error code, frame bytes
    ("user read of kernel text", "mov rbx, KERNEL_TEXT\nat: mov al, byte ptr [rbx]", "at", "r",
     "KERNEL_TEXT", 1, 14, 0x4, 48),
    ("user write to its read-only text", "lea rbx, [rip + _start]\nat: mov byte ptr [rbx], 0", "at", "w",
     "_start", 1, 14, 0x7, 48),
    ("non-canonical load", "mov rbx, 0x800000000000\nat: mov al, byte ptr [rbx]", "at", "r",
     0x800000000000, 1, 13, 0, 48),
    ("fetch from NX data", "mov rax, USER_DATA\nat: jmp rax", None, "x", D, 1, 14, 0x15, 48),
    ("ud2", "at: ud2", None, None, None, None, 6, None, 40),
]


@pytest.mark.parametrize("name,body,label,kind,va,size,vector,ec,frame", FAULT_CASES,
                         ids=[c[0] for c in FAULT_CASES])
def test_faulting_access_and_exception_frame(name, body, label, kind, va, size, vector, ec, frame):
    m, recs, _ = traced(f"_start:\n{body}\n")
    if va == "KERNEL_TEXT":
        va = m.layout.kernel_text
    elif va == "_start":
        va = sym(m, "_start")
    top = m.kernel.cea["entry_stack_top"]
    frames = [r for r in recs if r.cpl == 0 and r.kind == "w" and (r.va, r.size) == (top - frame, frame)]
    assert len(frames) == 1
    fw = frames[0]
    # the frame: supervisor writes through the current (user) tables, to the entry stack
    cea = translate(m.mem, m.spaces()["A.user"], top - frame, 1, 0, ControlState())
    assert (fw.size, fw.space, fw.pa, fw.fault) == (frame, "A.user", cea.pa, None)
    if kind is None:
        assert fw.rip == sym(m, "at")
        return
    faults = [r for r in recs if r.fault is not None]
    assert len(faults) == 1
    f = faults[0]
    assert (f.kind, f.va, f.size, f.pa, f.fault) == (kind, va, size, None, {"vector": vector, "error_code": ec})
    assert (f.cpl, f.space) == (3, "A.user")
    assert (fw.seq, fw.rip) == (f.seq, f.rip)          # attributed to the faulting instruction
    if label:
        assert f.rip == sym(m, label)
    assert m.exits[1]["signal"] == "SIGSEGV"


# --- instruction fetches: one record per block ------------------------------------------------
def test_fetch_records_per_block():
    src = """
_start:
    mov eax, 1
    add eax, 2
j1: jmp next
end1:
    ud2
next:
    mov ecx, 3
j2: jmp out
end2:
    ud2
out:
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""
    m, recs, walked = traced(src, kinds="x", space="A.user")
    user = [r for r in recs if r.cpl == 3]
    s = lambda n: sym(m, n)  # noqa: E731
    assert short(user) == [("x", s("_start"), s("end1") - s("_start")), ("x", s("next"), s("end2") - s("next")),
                           ("x", s("out"), 9)]                 # mov, xor, syscall: 5 + 2 + 2
    for r in user:
        assert r.rip == r.va and r.pa == walked[("x", r.va)] and r.symbol.startswith("A:")


# --- filters, chunking, detaching --------------------------------------------------------------
def test_filters_keep_seq_numbers():
    src = OPERANDS          # FS base 0 here: the program dies of SIGSEGV at 'fs:', after many records
    full = trace_program(src)
    key = lambda r: tuple(r)  # noqa: E731
    writes = trace_program(src, kinds="w")
    assert writes and [key(r) for r in writes] == [key(r) for r in full if r.kind == "w"]
    user = trace_program(src, space="A.user")
    assert user and [key(r) for r in user] == [key(r) for r in full if r.space == "A.user"]
    lo, hi = D + 0x7F8, D + 0x800
    ranged = trace_program(src, va_range=(lo, hi))
    assert ranged and [key(r) for r in ranged] == [key(r) for r in full if r.va < hi and r.va + r.size > lo]


def test_chunked_run_records_each_access_once():
    """A budget stop between two instructions must not record the unexecuted one."""
    one = [r[1:] for r in trace_program(OPERANDS, kinds="rw")]
    chunked = [r[1:] for r in trace_program(OPERANDS, kinds="rw", chunk=7)]
    assert one == chunked and len(one) > 100


def test_detach_removes_every_hook():
    m = Machine(MachineConfig(), programs=[("A", "_start:\n    jmp _start\n")], record_events=False)
    m.boot()
    hooks, listeners = len(m.cpu._code_hooks), len(m._listeners)
    t = Tracer(m, kinds="x")
    with t:
        # the block and code hooks, plus the probes that make events (frames, CR3 writes)
        assert len(m.cpu._code_hooks) > hooks + 2 and m.cpu.want_events
        m.step(5000)
    assert t.records
    n = len(t.records)
    assert (len(m.cpu._code_hooks), len(m._listeners), m.cpu.want_events) == (hooks, listeners, False)
    m.step(5000)
    assert len(t.records) == n


def test_runaway_program_stops_at_the_budget():
    it = iter_trace("_start:\n    jmp _start\n", kinds="x", budget=20_000, chunk=5000)
    got = []
    with pytest.raises(BudgetExhausted, match="instruction budget of 20,000 exhausted"):
        for r in it:
            got.append(r)
    assert got and all(r.kind == "x" for r in got)


@pytest.mark.parametrize("kw,error", [({"kinds": "q"}, ConfigError), ({"kinds": ""}, ConfigError),
                                      ({"va_range": (5, 5)}, AddressError)])
def test_bad_tracer_options(kw, error):
    m = Machine(MachineConfig(), programs=[("A", "_start:\n    jmp _start\n")])
    with pytest.raises(error):
        Tracer(m, **kw)


def test_unknown_space_is_refused_at_attach():
    m = Machine(MachineConfig(), programs=[("A", "_start:\n    jmp _start\n")])
    with pytest.raises(ConfigError, match="unknown space 'B.user'"):
        Tracer(m, space="B.user").attach()


def test_record_as_dict():
    r = Record((3, 0x400000, "A:_start", 3, 0x1000, 0x801, "A.user", "r", 0x600ffc, 4, None,
                {"vector": 14, "error_code": 4}))
    d = r.as_dict()
    assert list(d) == list(FIELDS) and d["fault"] == {"vector": 14, "error_code": 4}
    assert r.as_dict(hex_addresses=True)["va"] == "0x600ffc"


# --- a small program (also run by tests/test_trace_cli.py) ------------------------------
PROGRAM = """
_start:
    mov rbx, USER_DATA
    mov qword ptr [rbx + 8], 5
    mov rax, qword ptr [rbx + 8]
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""


# --- code that changes, blocks across pages, restarts ----------------------------------------
def test_rewritten_code_is_decoded_again():
    """The same bytes at the same place reuse their decoding; new bytes do not."""
    src = """
_start:
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ + PROT_WRITE + PROT_EXEC
    mov r10d, MAP_PRIVATE + MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    syscall
    mov r15, rax
    mov rbx, USER_DATA
    mov dword ptr [r15], 0xc3038b48     # mov rax, qword ptr [rbx]; ret
    call r15
    call r15
    mov dword ptr [r15], 0xc3038948     # mov qword ptr [rbx], rax; ret
    call r15
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""
    m, recs, _ = traced(src, space="A.user")
    code = [r for r in recs if r.kind == "x" and not r.symbol.startswith("A:") and r.cpl == 3]
    base = code[0].va
    body = [short([r for r in recs if r.rip == base and r.kind != "x" and r.seq == c.seq + 1])
            for c in code]
    assert [c.va for c in code] == [base] * 3 and base >> 40
    assert body == [[("r", D, 8)], [("r", D, 8)], [("w", D, 8)]]


def test_block_across_a_page_boundary_makes_two_fetch_records():
    src = """
_start:
    jmp over
    .skip 4080
over:
    mov rax, 0x1122334455667788
    mov rbx, 0x1122334455667788
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""
    m, recs, walked = traced(src, kinds="x", space="A.user")
    over = sym(m, "over")
    page = (over | 0xFFF) + 1
    assert over < page < over + 20
    got = [r for r in recs if r.rip == over]
    assert short(got) == [("x", over, page - over), ("x", page, over + 29 - page)]   # 10 + 10 + 5 + 2 + 2
    assert got[0].seq == got[1].seq and [r.pa for r in got] == [walked[("x", over)], walked[("x", page)]]


def test_demand_fault_then_retry():
    """A first touch of the stack faults (not present) and the instruction
    runs again after the fault handler: two records, two seqs."""
    m, recs, walked = traced("_start:\nat: push rax\n    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n")
    pushes = [r for r in at(m, recs, "at", "w") if r.cpl == 3]     # not the exception frame
    va = abi.USER_STACK_TOP - 16          # a process starts with RSP = USER_STACK_TOP - 8
    assert [(r.va, r.fault) for r in pushes] == [(va, {"vector": 14, "error_code": 6}), (va, None)]
    assert pushes[0].seq < pushes[1].seq and pushes[1].pa == walked[("w", va)]


def test_int3_frame_is_attributed_to_the_int3():
    m, recs, _ = traced("_start:\n    nop\nat: int3\n")
    top = m.kernel.cea["entry_stack_top"]
    frame = [r for r in recs if r.kind == "w" and (r.va, r.size) == (top - 40, 40)]
    assert len(frame) == 1 and (frame[0].rip, frame[0].symbol, frame[0].cpl) == (sym(m, "at"), "A:at", 0)


def test_asi_fault_then_retry_in_the_full_tables():
    """A sensitive direct-map read in the restricted tables faults; the #PF
    handler leaves ASI and the same instruction reads it through A.kernel."""
    src = """
_start:
    mov rbx, USER_DATA
    mov byte ptr [rbx], 1
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov rdi, rax
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 1
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""
    m, recs, walked = traced(src, MachineConfig())
    probe = m.kernel.sym("probe_read_insn")
    data_pa = walked[("w", D)]
    alias = m.layout.page_offset + data_pa
    got = [r for r in recs if r.rip == probe and r.kind == "r"]
    assert [(r.space, r.va, r.size, r.pa, r.fault) for r in got] == [
        ("A.asi", alias, 1, None, {"vector": 14, "error_code": 0}),
        ("A.kernel", alias, 1, data_pa, None)]
    frame = [r for r in recs if r.seq == got[0].seq and r.kind == "w"]
    assert len(frame) == 1 and (frame[0].size, frame[0].space, frame[0].cpl) == (48, "A.asi", 0)


def test_five_level_paging():
    m, recs, walked = traced(PROGRAM, MachineConfig(la57=True))
    user = [r for r in recs if r.cpl == 3 and r.kind != "x"]
    assert short(user) == [("w", D + 8, 8), ("r", D + 8, 8)]
    assert all(r.pa == walked[(r.kind, r.va)] is not None for r in user)


# --- values loaded inside a block and used by later addresses in it ------------------------
# A block's records are made from the registers at its start; a register loaded
# inside the block is recovered from the registers where the block ended, by
# reading the loaded bytes again, or else by an anchor (a code hook there).
IN_BLOCK = """
_start:
    mov rbx, USER_DATA
    mov rsp, USER_DATA + 0x800
    lea rax, [rbx + 0x100]
    mov qword ptr [rbx], rax            # D -> D+0x100
    lea rax, [rbx + 0x200]
    mov qword ptr [rbx + 0x108], rax    # D+0x108 -> D+0x200
    lea rax, [rbx + 0x300]
    mov qword ptr [rbx + 0x10], rax     # D+0x10 -> D+0x300, a stack
    jmp held
held:                                   # rdi still holds the loaded pointer when the block ends
    mov rdi, qword ptr [rbx]
h1: mov rcx, qword ptr [rdi + 8]
h2: mov qword ptr [rdi + 0x10], rcx
    jmp replayed
replayed:                               # rax is overwritten, but nothing is stored after the load
    mov rax, qword ptr [rbx]
r1: mov rdx, qword ptr [rax + 8]
r2: mov rsi, qword ptr [rdx]
    xor eax, eax
    jmp anchored
anchored:                               # overwritten, and a store follows the load
    mov rax, qword ptr [rbx]
    mov qword ptr [rbx + 0x20], rax
a1: mov rdx, qword ptr [rax + 8]
    xor eax, eax
    mov ecx, 3
    jmp scaled
scaled:                                 # an index scaled from the entry RCX, then overwritten
    imul rdx, rcx, 0x10
i1: mov rax, qword ptr [rbx + rdx]
    xor edx, edx
    jmp stack
stack:                                  # a stack pointer loaded, then pushes and pops
    mov rsp, qword ptr [rbx + 0x10]
s1: push rax
s2: push rbx
s3: pop rcx
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""

IN_BLOCK_CASES = [
    ("h1", [("r", D + 0x108, 8)]), ("h2", [("w", D + 0x110, 8)]),
    ("r1", [("r", D + 0x108, 8)]), ("r2", [("r", D + 0x200, 8)]),
    ("a1", [("r", D + 0x108, 8)]),
    ("i1", [("r", D + 0x30, 8)]),
    ("s1", [("w", D + 0x2F8, 8)]), ("s2", [("w", D + 0x2F0, 8)]), ("s3", [("r", D + 0x2F0, 8)]),
]


@lru_cache(maxsize=None)
def in_block_run():
    return traced(IN_BLOCK, kinds="rw")


@pytest.mark.parametrize("label,expected", IN_BLOCK_CASES, ids=[c[0] for c in IN_BLOCK_CASES])
def test_addresses_from_values_loaded_in_the_block(label, expected):
    m, recs, walked = in_block_run()
    got = at(m, recs, label)
    assert short(got) == expected
    assert all(r.pa == walked[(r.kind, r.va)] for r in got)


def test_only_the_unrecoverable_load_gets_an_anchor():
    """An implementation check: anchors cost every instruction a little."""
    m = Machine(MachineConfig(), programs=[("A", IN_BLOCK)], record_events=False)
    t = Tracer(m, kinds="rw")
    list(t.run(2_000_000))
    user = {a for a in t._anchors if a < m.layout.kernel_half}
    assert user == {sym(m, "a1")} and t.unresolved == 0


@pytest.mark.parametrize("program", ["OPERANDS", "IN_BLOCK"])
@pytest.mark.parametrize("chunk", [1, 3])
def test_stops_between_any_two_instructions(program, chunk):
    """Budget stops everywhere (mid-block, between REP iterations, before a
    block's first instruction): the same accesses as one uninterrupted run."""
    src = globals()[program]
    one = [r[1:] for r in trace_program(src, kinds="rw")]
    assert [r[1:] for r in trace_program(src, kinds="rw", chunk=chunk)] == one


@pytest.mark.parametrize("budget", [100, 1000, 4100, 7000])
def test_tracing_changes_nothing_the_machine_runs(budget):
    """Installing an anchor stops the CPU and runs on with the rest of the
    budget: after step(n), a traced machine is where an untraced one is."""
    from emu.hw.cpu import GPR_NAMES

    def state(m):
        return [m.cpu.reg(n) for n in GPR_NAMES + ("rip", "rflags", "cr3")]

    plain = Machine(MachineConfig(), programs=[("A", IN_BLOCK)], record_events=False)
    plain.step(budget)
    m = Machine(MachineConfig(), programs=[("A", IN_BLOCK)], record_events=False)
    with Tracer(m) as t:
        m.step(budget)
    assert t._anchors and state(m) == state(plain)


# --- differential: the tracer against Unicorn's own memory hooks ----------------------------
# Every program runs once with a tracer (kinds r and w) and with UC_HOOK_MEM_READ/WRITE
# hooks, which see what the CPU really accessed, by physical address (docs/tracing.md,
# "How it works").  Both sides become multisets of (kind, pa, size) at Unicorn's granularity:
#   * a page-crossing access is one Unicorn report (pa of its first byte, whole size):
#     the tracer's two pieces are merged back (OPERANDS' 'cross' has one);
#   * QEMU makes a string instruction's range one access per element, IRETQ's 40 bytes
#     five 8-byte pops, a 16-byte SSE access two halves: the tracer's ranges are cut so.
# Intentionally out of the comparison:
#   * the CPU's page walks and A/D-bit updates (physical accesses: no hook, no record);
#   * IRETQ's GDT reads (the CS/SS descriptors, 4-byte reads in the GDT): not recorded;
#   * exception delivery's IDT/TSS reads and frame writes, and INVPCID's descriptor read,
#     which the Python microcode makes (no hook).  The frame is recorded (frame_write
#     event): it is added to the Unicorn side as 8-byte slots; INVPCID's read is dropped;
#   * accesses that faulted (pa None): the CPU made none.
ASM_PROGRAMS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "asm").rglob("*.S"))
_ELEM = {"b": 1, "w": 2, "d": 4, "q": 8}


def _string_elements(m) -> dict[int, int]:
    """rip -> element size of every string instruction, from the assembler's listings."""
    out = {}
    for img in [m.kernel.image] + [p.image for p in m.processes]:
        for ins in img.insns:
            mn = ins.mnemonic.split()[-1]
            if mn[:4] in ("movs", "stos", "lods", "cmps", "scas") and len(mn) == 5 and mn[-1] in _ELEM:
                out[ins.addr] = _ELEM[mn[-1]]
    return out


def _unicorn_granularity(recs, elements, frame_pieces) -> Counter:
    out = Counter()
    access: list = []          # the records (page pieces) of one access

    def cut():
        first, total = access[0], sum(r.size for r in access)
        frame = first.kind == "w" and first.cpl == 0 and (first.va, first.size) in frame_pieces
        e = (not frame and elements.get(first.rip)) or min(total, 8)
        for off in range(0, total, e):
            va = first.va + off
            piece = next(r for r in access if r.va <= va < r.va + r.size)
            out[(first.kind, piece.pa + va - piece.va, min(e, total - off))] += 1
        access.clear()

    for r in recs:
        if access and not (r.seq == access[-1].seq and r.kind == access[-1].kind and r.va & 0xFFF == 0
                           and r.va == access[-1].va + access[-1].size):
            cut()
        access.append(r)
    if access:
        cut()
    return out


def trace_against_unicorn(m, budget=5_000_000):
    """(Unicorn's accesses, the tracer's) of one run of a booted machine, as multisets."""
    seen, frames, frame_pieces = [], [], set()
    ctl = ControlState(la57=m.config.la57)

    def on_mem(uc, access, pa, size, value, ud):
        seen.append(("w" if access == UC_MEM_WRITE else "r", pa, size))

    def on_frame(ev):
        if ev.kind == "frame_write":
            d = ev.data
            for off in range(0, d["size"], 8):       # the frame, as the CPU pushes it
                frames.append(("w", translate(m.mem, d["cr3"] & ADDR_MASK, d["va"] + off, 1, 0, ctl).pa, 8))
            va, n = d["va"], d["size"]
            while n:
                piece = min(n, 0x1000 - (va & 0xFFF))
                frame_pieces.add((va, piece))
                va, n = va + piece, n - piece

    m.cpu.uc.hook_add(UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, on_mem)
    m.cpu.flush_code_cache()
    m.on_event(on_frame)
    invpcid = {i.addr for i in m.kernel.image.insns if i.mnemonic == "invpcid"}
    tracer = Tracer(m, kinds="rw")
    recs = [r for r in tracer.run(budget) if r.fault is None and r.rip not in invpcid]
    gdt = translate(m.mem, m.kernel.init_pgd.root, m.kernel.cea["gdt"], 0, 0, ctl).pa
    unicorn = Counter(a for a in seen if not (a[0] == "r" and gdt <= a[1] < gdt + 8 * abi.GDT_ENTRIES))
    unicorn.update(frames)
    assert tracer.unresolved == 0
    return unicorn, _unicorn_granularity(recs, _string_elements(m), frame_pieces)


def assert_same_accesses(unicorn: Counter, traced: Counter) -> None:
    missing, extra = unicorn - traced, traced - unicorn
    assert sum(unicorn.values()) > 1000
    assert not missing and not extra, (f"Unicorn only: {sorted(missing.items())[:5]}; "
                                       f"tracer only: {sorted(extra.items())[:5]}")


@pytest.mark.parametrize("path", ASM_PROGRAMS)
def test_asm_program_accesses_match_unicorn(path):
    assert_same_accesses(*trace_against_unicorn(build_machine(str(ROOT / path))))


def test_operand_kinds_match_unicorn():
    """Every operand kind above (SIB, RIP-relative, FS/GS, pushes and pops,
    strings both ways, a page-crossing load) against the CPU's own accesses."""
    m = Machine(MachineConfig(), programs=[("A", OPERANDS)], record_events=False)
    m.boot()
    m.cpu.set_reg("fs_base", FS_BASE)
    m.cpu.set_msr(MSR_KERNEL_GS_BASE, GS_BASE)
    unicorn, traced = trace_against_unicorn(m)
    assert ("r", next(iter(k for k in traced if k[0] == "r" and k[2] == 8 and (k[1] & 0xFFF) == 0xFFC))[1], 8) \
        in unicorn                                      # 'cross': one report, first page's pa, 8 bytes
    assert_same_accesses(unicorn, traced)


def test_in_block_loads_match_unicorn():
    m = Machine(MachineConfig(), programs=[("A", IN_BLOCK)], record_events=False)
    m.boot()
    assert_same_accesses(*trace_against_unicorn(m))
