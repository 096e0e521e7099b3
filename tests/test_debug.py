"""The debugger: CR3 events, breakpoints, stepping, inspection, the REPL, the walkthrough.

Expected CR3 values are computed from the machine's own page-table roots
(Machine.spaces()) with the rules of Linux's arch/x86/entry/calling.h
(SWITCH_TO_KERNEL_CR3 / SWITCH_TO_USER_CR3), arch/x86/mm/tlb.c (kernel PCID =
ASID + 1) and the stub's ASI (README.md, the mechanism table: ASI PCID =
kernel PCID | (class + 1) << 9; kernel_stub/asi.S), never copied from a run.
"""

import fcntl
import io
import os
import pty
import re
import runpy
import select
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from emu.linux import abi
from emu.tools.debug import DebugError, Debugger
from emu.linux.machine import Machine, MachineConfig
from emu.hw.paging import translate, ControlState
from emu.tools.ptdump import ptdump_lines

from .programs import EXIT

ROOT = Path(__file__).resolve().parent.parent
NOFLUSH = 1 << 63

GETPID = f"""
_start:
    mov eax, SYS_getpid
at_syscall:
    syscall
back:
    nop
{EXIT}"""

# the walkthrough's program: a syscall, then a kernel read of a sensitive
# address (this process's data page in the direct map) from inside ASI
SENSITIVE = f"""
_start:
    mov rax, USER_DATA
    mov byte ptr [rax], 1
    mov eax, SYS_direct_map_alias
    mov rdi, USER_DATA
    syscall
    mov rdi, rax
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 1
probe_syscall:
    syscall
{EXIT}"""


def debugger(src, cfg=None, record=False):
    m = Machine(cfg or MachineConfig(), programs=[("A", src)], record_events=record)
    return m, Debugger(m)


def label(m, name, proc="A"):
    return m.process(proc).image.symbols[name]


def mov_cr3_at(m, addr):
    """The kernel's 'mov cr3' instruction at addr."""
    ins = next(i for i in m.kernel.image.insns if i.addr == addr)
    assert ins.mnemonic == "mov" and ins.op_str.startswith("cr3, ")
    return ins


def run_to_halt(dbg, limit=200):
    stops = []
    for _ in range(limit):
        s = dbg.cont()
        stops.append(s)
        if s.reason != "breakpoint":
            return stops
    raise AssertionError("no halt")


# --- the CR3 event sequence of a syscall round trip ------------------------------------
def linux_syscall_cr3_writes(cfg, k_root, asi_root, user_cr3):
    """(function, old, new) of every CR3 write from SYSCALL to SYSRET, by calling.h."""
    kern_pcid = 1 if cfg.pcid else 0          # the first ASID, 0: kern_pcid(0) = 0 + 1
    out, cr3 = [], user_cr3
    if cfg.pti:
        # SWITCH_TO_KERNEL_CR3: set NOFLUSH (with PCID), clear bits 11 and 12
        new = (cr3 | (NOFLUSH if cfg.pcid else 0)) & ~0x1800
        out.append(("entry_SYSCALL_64", cr3, new))
        cr3 = new & ~NOFLUSH                   # hardware never stores bit 63
    if cfg.asi:
        # asi_enter: the restricted PGD; never NOFLUSH (kernel_stub/asi.S, __asi_enter)
        new = asi_root | ((kern_pcid | (abi.ASI_CLASS_USERSPACE + 1) << 9) if cfg.pcid else 0)
        out.append(("__asi_enter", cr3, new))
        cr3 = new
        new = k_root | kern_pcid               # asi_exit: the full kernel PGD
        out.append(("asi_exit", cr3, new))
        cr3 = new
    if cfg.pti:
        # SWITCH_TO_USER_CR3: bit 12 (user PGD) and, with PCID, bit 11 (user
        # PCID) and NOFLUSH (no flush of the user PCID is pending)
        new = cr3 | 0x1000 | ((0x800 | NOFLUSH) if cfg.pcid else 0)
        out.append(("syscall_return_via_sysret", cr3, new))
    return out


CONFIGS = [
    # pti, pcid, asi, la57
    (True, True, True, False),
    (True, False, True, False),
    (True, True, False, False),
    (False, True, True, False),
    (True, False, False, False),
    (False, False, False, False),
    (True, True, True, True),       # LA57: NOFLUSH leaves the register during the write
]


@pytest.mark.parametrize("pti,pcid,asi,la57", CONFIGS)
def test_syscall_round_trip_cr3_sequence(pti, pcid, asi, la57):
    cfg = MachineConfig(pti=pti, pcid=pcid, asi=asi, la57=la57)
    m, dbg = debugger(GETPID, cfg)
    spaces = m.spaces()
    k_root = spaces["A.kernel"]
    dbg.catch_syscall("getpid")
    at_entry = dbg.cont()
    assert (at_entry.reason, at_entry.event.nr) == ("breakpoint", 39)
    user_cr3 = dbg.regs["cr3"]
    # the user CR3: the PTI user half (+ 4 KiB) and the user PCID (kernel PCID | bit 11)
    kern_pcid = 1 if pcid else 0
    assert user_cr3 == (k_root | 0x1000 | kern_pcid | 0x800 if pti and pcid else
                        k_root | 0x1000 if pti else k_root | kern_pcid)
    assert m.space_of(user_cr3) == ("A.user" if pti else "A.kernel")    # without PTI, one PGD
    dbg.break_cr3()
    dbg.break_at("A:back")
    writes = []
    while True:
        s = dbg.cont()
        assert s.reason == "breakpoint"
        if s.cr3 is None:
            assert s.rip == label(m, "back") and s.cpl == 3
            break
        w = s.cr3
        site = mov_cr3_at(m, w.rip)
        # stopped just after the mov cr3, CR3 loaded without NOFLUSH
        assert s.rip == w.rip + site.size
        assert dbg.regs["cr3"] == w.new & ~NOFLUSH
        # ... and the source register as the guest left it (NOFLUSH and all)
        assert dbg.regs[site.op_str.split(", ")[1]] == w.new
        assert w.insn == f"{site.mnemonic} {site.op_str}"
        assert w.noflush == bool(w.new & NOFLUSH)
        assert w.pcid == ((w.new & 0xFFF) if pcid else None)
        assert (w.old_space, w.new_space) == (m.space_of(w.old), m.space_of(w.new))
        writes.append((w.symbol.split("+")[0], w.old, w.new))
    want = linux_syscall_cr3_writes(cfg, k_root, spaces.get("A.asi"), user_cr3)
    assert [(f, hex(o), hex(n)) for f, o, n in writes] == [(f, hex(o), hex(n)) for f, o, n in want]
    names = [(m.space_of(o), m.space_of(n)) for _, o, n in writes]
    assert names == [(m.space_of(o), m.space_of(n)) for _, o, n in want]


def test_pti_pcid_round_trip_bits():
    """The four writes of the default configuration, bit by bit."""
    m, dbg = debugger(GETPID)
    k, s = m.spaces()["A.kernel"], m.spaces()["A.asi"]
    dbg.catch_syscall(39)
    dbg.cont()
    dbg.break_cr3()
    got = [dbg.cont().cr3 for _ in range(4)]
    rows = [(w.new_space, w.root, w.pcid, w.noflush, bool(w.new & 1 << 12), bool(w.new & 1 << 11))
            for w in got]
    assert [(w.user_pgd, w.user_pcid) for w in got] == [r[4:] for r in rows]
    assert rows == [
        ("A.kernel", k, 0x001, True, False, False),     # entry: kernel PGD, kernel PCID, NOFLUSH
        ("A.asi", s, 0x401, False, False, False),       # asi_enter: ASI PCID bits 9-10
        ("A.kernel", k, 0x001, False, False, False),    # asi_exit
        ("A.user", k + 0x1000, 0x801, True, True, True),  # exit: user PGD + user PCID, NOFLUSH
    ]


@pytest.mark.parametrize("pattern,first_new_space", [
    ("A.asi", "A.asi"),
    ("*.asi", "A.asi"),
    ("A.kernel", "A.kernel"),
    ("A.user", "A.user"),
])
def test_break_cr3_into_a_space(pattern, first_new_space):
    m, dbg = debugger(GETPID)
    dbg.break_cr3(pattern)
    seen = []
    while (s := dbg.cont()).reason == "breakpoint":
        assert s.cr3.new_space == first_new_space == dbg.space      # stopped with it loaded
        seen.append(s.cr3.new_space)
    # every CR3 write into the space stopped, and only those
    assert seen == [w.new_space for w in dbg.cr3_log if w.new_space == first_new_space]
    assert len(seen) >= 1


def test_break_cr3_unknown_space():
    m, dbg = debugger(GETPID)
    with pytest.raises(DebugError, match="unknown space 'Z.user': choose from kernel, "):
        dbg.break_cr3("Z.user")


# --- breakpoints stopping at the right RIP ----------------------------------------------
FAULTS = f"""
_start:
    mov ecx, 3
loop_top:
    dec ecx
    jnz loop_top
marker:
    mov ebx, 7
    nop
    nop
    mov eax, SYS_getpid
at_syscall:
    syscall
after_syscall:
    mov rax, {{addr}}
pf_insn:
    {{insn}}
{EXIT}"""


def faults(insn="mov al, byte ptr [rax]", addr="0x1234"):
    return FAULTS.format(insn=insn, addr=addr)


# (name, program, set-up, expected kernel symbol or label at RIP, check of the stop)
BREAK_CASES = [
    ("kernel symbol", faults(), lambda d: d.break_at("do_syscall_64"), ("kernel", "do_syscall_64"),
     lambda m, d, s: s.cpl == 0 and d.regs["rsi"] == 39),
    ("program label", faults(), lambda d: d.break_at("A:marker"), ("A", "marker"),
     lambda m, d, s: s.cpl == 3 and d.regs["rbx"] != 7),
    ("label+offset", faults(), lambda d: d.break_at("A:marker+5"), ("A", "marker", 5),
     lambda m, d, s: d.regs["rbx"] == 7),
    ("raw address", faults(), lambda d: d.break_at(f"*{0x400000:#x}"), ("A", "_start"),
     lambda m, d, s: s.symbol == "A:_start"),
    ("#PF", faults(), lambda d: d.catch_fault(14), ("kernel", "asm_exc_page_fault"),
     lambda m, d, s: (s.event.vector, s.event.error_code, s.event.cr2, s.event.rip, s.cpl)
     == (14, 0x4, 0x1234, label(m, "pf_insn"), 0) and d.regs["cr2"] == 0x1234),
    ("#PF by name", faults("mov byte ptr [rax], 1"), lambda d: d.catch_fault("#PF"),
     ("kernel", "asm_exc_page_fault"),
     lambda m, d, s: (s.event.error_code, s.event.cr2) == (0x6, 0x1234)),
    ("#GP", faults(addr="0x8000000000000000"), lambda d: d.catch_fault("GP"),
     ("kernel", "asm_exc_general_protection"),
     lambda m, d, s: (s.event.vector, s.event.error_code, s.event.rip) == (13, 0, label(m, "pf_insn"))),
    ("#UD", faults("ud2"), lambda d: d.catch_fault(6), ("kernel", "asm_exc_invalid_op"),
     lambda m, d, s: (s.event.vector, s.event.rip) == (6, label(m, "pf_insn"))),
    ("any fault", faults("ud2"), lambda d: d.catch_fault(), ("kernel", "asm_exc_invalid_op"),
     lambda m, d, s: s.event.vector == 6),
    ("syscall number", faults(), lambda d: d.catch_syscall(39), ("kernel", "entry_SYSCALL_64"),
     lambda m, d, s: (s.event.nr, s.event.rip, d.regs["rcx"], s.cpl)
     == (39, label(m, "at_syscall"), label(m, "after_syscall"), 0)),
    ("syscall name", GETPID, lambda d: d.catch_syscall("exit"), ("kernel", "entry_SYSCALL_64"),
     lambda m, d, s: (s.event.nr, d.regs["rax"], s.event.rip) == (60, 60, label(m, "back") + 8)),
    ("page-aligned entry", GETPID, lambda d: d.break_at("entry_SYSCALL_64"), ("kernel", "entry_SYSCALL_64"),
     lambda m, d, s: (d.regs["rax"], d.space, s.cpl) == (39, "A.user", 0)),
]


@pytest.mark.parametrize("name,src,setup,where,check", BREAK_CASES, ids=[c[0] for c in BREAK_CASES])
def test_breakpoint_stops_at_the_right_rip(name, src, setup, where, check):
    m, dbg = debugger(src)
    bp = setup(dbg)
    s = dbg.cont()
    base = m.kernel.sym(where[1]) if where[0] == "kernel" else label(m, where[1], where[0])
    assert s.reason == "breakpoint"
    assert s.breakpoints == (bp,)
    assert s.rip == base + (where[2] if len(where) > 2 else 0)
    assert dbg.rip == s.rip
    assert check(m, dbg, s)
    assert bp.hits == 1


@pytest.mark.parametrize("setup", [
    lambda d: d.catch_fault(14),           # the program's only fault is #UD
    lambda d: d.catch_syscall(1),          # it never writes
    lambda d: d.catch_asi_exit(),          # ASI is off
])
def test_catchpoints_that_must_not_hit(setup):
    m, dbg = debugger(faults("ud2"), MachineConfig(asi=False))
    bp = setup(dbg)
    s = dbg.cont()
    assert s.reason == "halt" and bp.hits == 0
    assert s.message == "the machine halted: A killed by SIGILL"


def test_catch_asi_exit_forced_by_a_fault():
    m, dbg = debugger(SENSITIVE)
    bp = dbg.catch_asi_exit(fault_only=True)
    s = dbg.cont()
    site = mov_cr3_at(m, s.cr3.rip)
    assert s.breakpoints == (bp,)
    assert m.symbolize(site.addr).startswith("asi_exit+")
    assert s.rip == site.addr + site.size
    assert (s.cr3.old_space, s.cr3.new_space) == ("A.asi", "A.kernel")
    # the fault: the probe's read of A's data page through the direct map
    ctl = ControlState(smap=False)
    data_pa = translate(m.mem, m.spaces()["A.user"], abi.USER_DATA, 0, 3, ctl).pa
    assert s.event.rip == m.kernel.sym("probe_read_insn")
    assert s.event.address == m.layout.page_offset + data_pa
    assert s.event.error_code == 0                       # supervisor read, not present
    assert dbg.regs["cr3"] & ~0xFFF == m.spaces()["A.kernel"]


def test_catch_any_asi_exit_includes_routine_exits():
    m, dbg = debugger(SENSITIVE)
    dbg.catch_asi_exit()
    first = dbg.cont()
    # the first syscall leaves ASI normally (do_syscall_64's asi_exit): no fault
    assert first.event is None and first.cr3.symbol.startswith("asi_exit+")
    assert (first.cr3.old_space, first.cr3.new_space) == ("A.asi", "A.kernel")
    second = dbg.cont()
    assert second.event is not None and second.event.rip == m.kernel.sym("probe_read_insn")


def test_address_breakpoint_rearms_and_counts_hits():
    m, dbg = debugger(faults())
    bp = dbg.break_at("A:loop_top")
    rcx = []
    for _ in range(3):
        s = dbg.cont()
        assert s.rip == label(m, "loop_top") and s.breakpoints == (bp,)
        rcx.append(dbg.regs["rcx"])
    assert rcx == [3, 2, 1]
    assert bp.hits == 3
    dbg.delete(bp.num)
    assert dbg.breakpoints == []
    assert dbg.cont().reason == "halt"


# two processes running the same program: their labels share addresses
YIELD_TWICE = f"""
_start:
    mov ebx, 2
again:
    mov eax, SYS_sched_yield
    syscall
    dec ebx
    jnz again
{EXIT}"""


@pytest.mark.parametrize("where,process,stops", [
    # (break_at argument, process argument, the process of each stop at 'again')
    ("*0x400005", None, ["A", "B", "A", "B"]),      # a bare address: every process
    ("A:again", None, ["A", "A"]),                   # a P:label implies P
    ("B:again", None, ["B", "B"]),
    ("*0x400005", "B", ["B", "B"]),                  # explicit
    ("A:again", "B", ["B", "B"]),                    # explicit wins over the label's process
])
def test_address_breakpoints_per_process(where, process, stops):
    m = Machine(MachineConfig(), programs=[("A", YIELD_TWICE), ("B", YIELD_TWICE)])
    dbg = Debugger(m)
    assert label(m, "again") == label(m, "again", "B") == 0x400005
    bp = dbg.break_at(where, process)
    seen = []
    while (s := dbg.cont()).reason == "breakpoint":
        assert s.rip == 0x400005 and s.breakpoints == (bp,) and s.cpl == 3
        seen.append(s.space.partition(".")[0])
    assert s.reason == "halt"
    assert seen == stops and bp.hits == len(stops)
    assert bp.what().endswith(f" in process {bp.process}" if bp.process else "<A:again>")


def test_break_process_errors_and_listing():
    from emu.cli.debug import DebugShell

    m = Machine(MachineConfig(), programs=[("A", YIELD_TWICE), ("B", YIELD_TWICE)])
    dbg = Debugger(m)
    with pytest.raises(DebugError, match="no process named 'C': choose from A, B"):
        dbg.break_at("*0x400005", "C")
    out, err = io.StringIO(), io.StringIO()
    shell = DebugShell(dbg, interactive=False, stdout=out, stderr=err)
    shell.onecmd("break *0x400005 process B")
    shell.onecmd("break *0x400005 process")
    assert out.getvalue() == "Breakpoint 1 at 0x400005 <A:again> in process B\n"
    assert err.getvalue() == "error: usage: break *ADDR [process P]\n"


def test_detach_leaves_the_machine_as_if_never_debugged():
    progs = [("A", YIELD_TWICE), ("B", YIELD_TWICE)]
    plain = Machine(MachineConfig(), programs=progs, record_events=False)
    plain.boot()
    hooks = (dict(plain.cpu._at_addr), plain.cpu.want_events)
    block_starts = {a: len(fns) for a, fns in plain.cpu._block_starts.items()}
    assert hooks[1] is False
    assert plain.run().reason == "halt"
    m = Machine(MachineConfig(), programs=progs, record_events=False)
    with Debugger(m) as dbg:
        dbg.break_cr3("B.user")
        dbg.catch_syscall("sched_yield")
        s = dbg.cont()
        # attached: the cr3_write events and the stops after each 'mov cr3' (block-start hooks)
        assert s.reason == "breakpoint" and sum(map(len, m.cpu._block_starts.values())) > sum(block_starts.values())
    assert (m.cpu._at_addr.keys(), m.cpu.want_events) == (hooks[0].keys(), hooks[1])
    assert {a: len(fns) for a, fns in m.cpu._block_starts.items()} == block_starts
    assert dbg.breakpoints == [] and dbg.space.startswith("A.")     # inspection still works
    with pytest.raises(DebugError, match="the debugger is detached"):
        dbg.cont()
    with pytest.raises(DebugError, match="the debugger is detached"):
        dbg.break_at("A:again")
    assert m.run().reason == "halt"
    assert m.exits == plain.exits and bytes(m.console) == bytes(plain.console)


def test_stepi_counts_instructions_and_steps_over_breakpoints():
    m, dbg = debugger(faults())
    dbg.break_at("A:marker")
    dbg.cont()
    s = dbg.stepi()
    assert (s.reason, s.rip, dbg.regs["rbx"]) == ("step", label(m, "marker") + 5, 7)
    s = dbg.stepi(2)
    assert s.rip == label(m, "marker") + 7                # two one-byte nops
    s = dbg.stepi(2)                                        # mov eax; syscall -> kernel entry
    assert (s.rip, s.cpl) == (m.kernel.sym("entry_SYSCALL_64"), 0)
    s = dbg.step()
    assert s.rip == m.kernel.sym("entry_SYSCALL_64") + 3     # swapgs is 3 bytes


def test_step_onto_a_cr3_write_reports_it():
    m, dbg = debugger(GETPID)
    dbg.catch_syscall(39)
    dbg.cont()
    dbg.break_cr3()
    site = next(a for a in m.cpu.cr3_sites if m.symbolize(a).startswith("entry_SYSCALL_64"))
    # step instruction by instruction up to and over the mov cr3
    for _ in range(20):
        s = dbg.stepi()
        if s.reason == "breakpoint":
            break
    assert s.cr3 is not None and s.cr3.rip == site
    assert s.rip == site + mov_cr3_at(m, site).size


def test_budget_bounds_every_run():
    m, dbg = debugger(f"_start:\n    jmp _start\n{EXIT}")
    s = dbg.cont(budget=1000)
    assert s.reason == "budget" and s.rip == label(m, "_start")
    assert str(s).startswith("budget used up at 0x400000 in A:_start")
    with pytest.raises(DebugError, match=r"^instruction count '0' is out of range \(1 \.\. "):
        dbg.stepi(0)


COUNTING_LOOP = f"""
_start:
    inc rbx
    jmp _start
{EXIT}"""


def test_sigint_stops_a_run_with_the_machine_intact():
    """SIGINT (Ctrl-C) during cont() ends it with a stop 'interrupted' where
    the CPU was; the machine runs on from there, instruction by instruction."""
    m, dbg = debugger(COUNTING_LOOP)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        s = dbg.cont(budget="100G")
    finally:
        timer.cancel()
    loop = {label(m, "_start"), label(m, "_start") + 3}           # inc rbx (3 bytes), jmp
    assert (s.reason, s.breakpoints, s.space, s.cpl) == ("interrupted", (), "A.user", 3)
    assert s.rip in loop and dbg.alive
    assert re.fullmatch(rf"interrupted at {s.rip:#x} in A:_start(\+0x3)? \(A\.user, CPL 3\) after at least "
                        r"[\d,]+ instructions", str(s))
    rbx = dbg.regs["rbx"]
    assert rbx > 0
    s = dbg.stepi(4)                                            # two more rounds of the loop
    assert (s.reason, s.rip, dbg.regs["rbx"]) == ("step", s.rip, rbx + 2) and s.rip in loop


def test_after_cr3_hooks_only_while_a_breakpoint_needs_them():
    m, dbg = debugger(GETPID)
    ends = {a + size for a, (_, size, _) in m.cpu.cr3_sites.items()}
    hooked = lambda: {a for a, fns in m.cpu._block_starts.items() if dbg._after_cr3 in fns}   # noqa: E731
    assert hooked() == set()
    bp = dbg.break_cr3()
    dbg.catch_asi_exit()
    assert hooked() == ends
    dbg.delete(bp.num)
    assert hooked() == ends                                    # the asi-exit catchpoint still needs them
    dbg.delete()
    assert hooked() == set()


def test_a_new_kind_of_catchpoint_is_a_row_of_the_tables(monkeypatch):
    """The extension points: a BreakKind in KINDS (the event it watches, when
    it matches, how it reads) and a Sub in the REPL's CATCH table; nothing in
    the Debugger changes.  Here: a catchpoint on the machine's
    'syscall_return' event."""
    from emu.cli import debug as repl
    from emu.tools.debug import KINDS, BreakKind

    kind = BreakKind("syscall-return", "Catchpoint", "catch return",
                     lambda b: "any syscall return" if b.nr is None else f"return from syscall {b.nr}",
                     lambda s: f"syscall {s.event.nr} returned {s.event.ret}", watches="syscall_return",
                     matches=lambda b, ev, cause: b.nr in (None, ev.nr))
    monkeypatch.setitem(KINDS, kind.name, kind)
    monkeypatch.setitem(repl.CATCH, "return", repl.Sub(
        "catch return [N]", "stop when a syscall returns",
        lambda sh, a: sh.dbg.add_breakpoint("syscall-return", nr=int(a[0]) if a else None)))
    m, dbg = debugger(GETPID)
    out, err = io.StringIO(), io.StringIO()
    shell = repl.DebugShell(dbg, interactive=False, stdout=out, stderr=err)
    for c in ("catch return 39", "c", "info breakpoints"):
        shell.onecmd(c)
    after = m.kernel.sym("entry_SYSCALL_64_after_call")
    assert out.getvalue().splitlines() == [
        "Catchpoint 1: return from syscall 39",
        f"Catchpoint 1: syscall 39 returned {m.process('A').pid}",
        f"=> {after:#x} <entry_SYSCALL_64_after_call>:\t" + dbg.disas(after, 1)[0].text,
        "Num  Type            Hits  What",
        "1    catch return    1     return from syscall 39"]
    assert err.getvalue() == ""
    with pytest.raises(DebugError, match="unknown breakpoint kind 'nosuch': choose from cr3, address, "):
        dbg.add_breakpoint("nosuch")


def test_halt_then_no_more_running():
    m, dbg = debugger(GETPID)
    s = dbg.cont()
    assert (s.reason, s.message) == ("halt", "the machine halted: A exited with status 0")
    assert not dbg.alive
    with pytest.raises(DebugError, match="cannot run: the machine halted"):
        dbg.cont()


def test_breakpoints_do_not_change_what_the_machine_does():
    """Breakpoints on instructions the machine itself hooks (a mov cr3 that
    strips NOFLUSH, the ASI-fault probe) must not fire those hooks twice."""
    ref = Machine(MachineConfig(), programs=[("A", SENSITIVE)])
    ref.run()
    m, dbg = debugger(SENSITIVE, record=True)
    noflush_sites = [a for a in m.cpu.cr3_sites if m.symbolize(a).startswith("entry_SYSCALL_64")]
    for where in ["asi_exit_on_fault", "do_exit", noflush_sites[0], "A:probe_syscall"]:
        dbg.break_at(where)
    stops = run_to_halt(dbg)
    assert len(stops) > 4 and stops[-1].reason == "halt"

    def trail(machine):
        return [(e.kind, e.get("rip"), e.get("old"), e.get("new"), e.get("noflush"))
                for e in machine.events if e.kind in ("cr3_write", "asi_exit", "exit", "exception")]
    assert trail(m) == trail(ref)
    assert not m.events_of("mmu_disagreement")


def test_cr2_survives_breakpoints_in_other_spaces():
    """Breakpoints in spaces other than the current one leave the fault path
    alone: the handler reads the faulting address from CR2.  (Breakpoints
    made with Unicorn's exits failed this: the exit - 1 translation at the
    end of each run overwrote CR2 and left a pending #PF.)"""
    m, dbg = debugger(faults())
    dbg.break_at("A:marker")                 # a user address: not executable from the kernel PGD
    dbg.break_at(0xFFFF_8000_0000_0000 + 0x1000)   # never mapped anywhere
    dbg.catch_fault(14)
    assert dbg.cont().rip == label(m, "marker")
    s = dbg.cont()
    assert s.event.cr2 == 0x1234 and dbg.regs["cr2"] == 0x1234
    after_read = next(i for i in m.kernel.image.insns
                      if i.addr > m.kernel.sym("exc_page_fault") and i.op_str == "r13, cr2")
    dbg.break_at(after_read.addr + after_read.size)
    dbg.cont()
    assert dbg.regs["r13"] == 0x1234         # what exc_page_fault read from CR2


# --- inspection ---------------------------------------------------------------------------------
DATA = f"""
_start:
    nop
    mov eax, SYS_getpid
    syscall
{EXIT}
.data
value: .quad 0x1122334455667788
"""


def test_inspection_api():
    m, dbg = debugger(DATA)
    dbg.break_at("A:_start")
    dbg.cont()
    spaces = dbg.spaces()
    assert spaces == m.spaces() and dbg.space == "A.user"
    va = label(m, "value")
    ctl = ControlState(smap=False)
    pa = translate(m.mem, spaces["A.user"], va, 0, 3, ctl).pa
    assert dbg.read_virt(va, 8) == bytes.fromhex("8877665544332211")
    assert dbg.read_virt(va, 8, "A.kernel") == dbg.read_phys(pa, 8) == bytes.fromhex("8877665544332211")
    # walk: the user mapping; kernel text is absent from the PTI user PGD
    t = dbg.walk(va, "A.user", "w", cpl=3)
    assert (t.fault, t.pa, t.user, t.writable, t.nx) == (None, pa, True, True, True)
    text = m.kernel.sym("do_syscall_64")
    f = dbg.walk(text, "A.user")
    assert (f.vector, f.error_code) == (14, 0)
    assert dbg.walk(text, "A.kernel").pa == m.kernel.kva_to_pa(text)
    assert dbg.ptdump("A.user") == ptdump_lines(m.mem, spaces["A.user"], 4)
    assert dbg.ptdump()[0] == "---[ User Space ]---"
    insns = dbg.disas(None, 3)
    assert [(i.text, i.symbol) for i in insns] == [("nop", "A:_start"), ("mov eax, 0x27", "A:_start+0x1"),
                                                    ("syscall", "A:_start+0x6")]
    kins = dbg.disas("do_syscall_64", 1, "A.kernel")[0]
    assert (kins.addr, kins.symbol) == (text, "do_syscall_64")
    regs = dbg.regs
    assert regs["rip"] == label(m, "_start") and regs["RIP"] == regs["pc"]
    assert regs["cr3"] == m.cpu.reg("cr3") and len(dict(regs)) == len(regs)
    assert regs["efer"] & 0x800                            # NXE
    with pytest.raises(KeyError):
        regs["xyz"]


# names an address expression may use: a label that is also a hexadecimal word,
# and a label with a kernel symbol's name
NAMES = f"""
_start:
    nop
bad:
    nop
do_syscall_64:
    nop
{EXIT}
.data
value: .quad 0x1122334455667788
"""


def _bad_note(m):
    return f"'bad' is read as the name bad ({label(m, 'bad'):#x}); write 0xbad for the number"


# (expression, its value from the machine's own tables, the notes it makes)
RESOLVE_CASES = [
    ("0x1000", lambda m: 0x1000, []),
    ("1000", lambda m: 0x1000, []),                                  # hexadecimal without 0x
    ("600000", lambda m: abi.USER_DATA, []),
    ("ffffffff81000000", lambda m: 0xFFFFFFFF81000000, []),
    ("ffff_ffff_8100_0000", lambda m: 0xFFFFFFFF81000000, []),
    ("USER_DATA + 10", lambda m: abi.USER_DATA + 0x10, []),         # offsets hexadecimal too
    ("DIRECT_MAP_BASE + 1000", lambda m: m.layout.page_offset + 0x1000, []),
    ("KERNEL_TEXT - 8", lambda m: m.layout.kernel_text - 8, []),
    ("value", lambda m: label(m, "value"), []),                      # a label of one program
    ("*A:value - 8", lambda m: label(m, "value") - 8, []),
    ("bad", lambda m: label(m, "bad"), [_bad_note]),                 # the name, with a note
    ("bad + 1", lambda m: label(m, "bad") + 1, [_bad_note]),
    ("0xbad", lambda m: 0xBAD, []),                                  # always the number
    ("do_syscall_64", lambda m: m.kernel.sym("do_syscall_64"),
     [lambda m: f"'do_syscall_64' is the kernel symbol ({m.kernel.sym('do_syscall_64'):#x}); "
                f"write A:do_syscall_64 for the label of process A"]),
    ("A:do_syscall_64", lambda m: label(m, "do_syscall_64"), []),
    ("do_syscall_64+10", lambda m: m.kernel.sym("do_syscall_64") + 0x10,
     [lambda m: f"'do_syscall_64' is the kernel symbol ({m.kernel.sym('do_syscall_64'):#x}); "
                f"write A:do_syscall_64 for the label of process A"]),
    ("$rsp + 10", lambda m: m.cpu.reg("rsp") + 0x10, []),
    ("$pc", lambda m: m.cpu.reg("rip"), []),
    ("$RIP-1", lambda m: m.cpu.reg("rip") - 1, []),
]


@pytest.mark.parametrize("expr,want,notes", RESOLVE_CASES, ids=[c[0] for c in RESOLVE_CASES])
def test_resolve(expr, want, notes):
    m, dbg = debugger(NAMES)
    assert dbg.resolve(expr) == want(m) & (1 << 64) - 1
    assert dbg.notes == [n(m) for n in notes]


def test_resolve_a_label_of_several_programs():
    """A label at one address in every program that has it is that address;
    at several, it is refused (processes share user addresses)."""
    other = f"_start:\n    nop\nagain:\n    nop\nonly_c:\n    nop\n{EXIT}"
    m = Machine(MachineConfig(), programs=[("A", YIELD_TWICE), ("B", YIELD_TWICE), ("C", other)])
    dbg = Debugger(m)
    assert dbg.resolve("_start") == label(m, "_start") == label(m, "_start", "C")
    assert dbg.resolve("only_c") == label(m, "only_c", "C")
    assert dbg.resolve("C:again") == label(m, "again", "C") != label(m, "again")
    with pytest.raises(DebugError) as e:
        dbg.resolve("again + 4")
    assert str(e.value) == "label 'again' is ambiguous: write P:again (P one of A, B, C)"
    assert dbg.notes == []


@pytest.mark.parametrize("expr,message", [
    ("nosuch", "bad address 'nosuch': unknown name 'nosuch'"),
    ("A:nosuch", "no label 'nosuch' in process A's program"),
    ("Q:_start", "no process named 'Q': choose from A"),
    ("$xyz", "bad address '$xyz': unknown register '$xyz'"),
    ("_start +", "bad address '_start +': it ends with an operator"),
    ("", "bad address '': empty"),
    ("-8", "bad address '-8': an address cannot be negative"),
    ("10000000000000000", "address '10000000000000000' is out of range (0x0 .. 0xffffffffffffffff)"),
    ("_start * 2", "bad address '_start * 2': expected + or - after '_start'"),
])
def test_resolve_errors(expr, message):
    m, dbg = debugger(DATA)
    with pytest.raises(DebugError) as e:
        dbg.resolve(expr)
    assert str(e.value) == message


def test_inspection_errors():
    m, dbg = debugger(DATA)
    with pytest.raises(DebugError, match="unknown space 'Z.kernel'"):
        dbg.read_virt(0x400000, 1, "Z.kernel")
    with pytest.raises(DebugError, match="is not readable in A.user: #PF"):
        dbg.read_virt(0xFFFFFFFF81000000, 8, "A.user")
    with pytest.raises(DebugError, match="outside guest RAM"):
        dbg.read_phys(m.mem.size - 4, 8)
    with pytest.raises(DebugError, match="unknown syscall 'nosuch'"):
        dbg.catch_syscall("nosuch")
    with pytest.raises(DebugError, match="vector 300 is out of range"):
        dbg.catch_fault(300)
    with pytest.raises(DebugError, match="no breakpoint number 9"):
        dbg.delete(9)
    with pytest.raises(DebugError, match="the machine has no processes"):
        Debugger(Machine(MachineConfig()))


# --- the REPL -------------------------------------------------------------------------------------
def isoemu(*args, stdin=None, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "emu.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def default_spaces():
    from emu.tools.matrix import MatrixMachine
    return MatrixMachine().m.spaces()


def test_repl_ex_on_the_default_machine():
    r = isoemu("debug", "-ex", "break cr3", "-ex", "c", "-ex", "info registers cr3 rip")
    sp = default_spaces()
    user = sp["A.user"] | 0x801
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and r.stderr == ""
    assert lines[0] == "Breakpoint 1: any CR3 write"
    assert lines[1].startswith(f"Breakpoint 1: cr3 {sp['A.kernel'] | 1:#x} -> {user | NOFLUSH:#x} "
                               f"(A.kernel -> A.user) pcid 0x801 noflush at "
                               f"swapgs_restore_regs_and_return_to_usermode+")
    assert lines[2].startswith("=> 0xffffffff812")
    assert re.fullmatch(rf"cr3\s+{user:#x}\s+\[ A\.user, pcid 0x801 \]", lines[3])
    assert re.fullmatch(r"rip\s+0xffffffff812\w+\s+<swapgs_restore_regs_and_return_to_usermode\+0x\w+>",
                        lines[4])


@pytest.fixture
def program(tmp_path):
    p = tmp_path / "prog.S"
    p.write_text(DATA)
    return p


def test_repl_through_stdin(program):
    """A program is process A whatever its file is called (break *A:label)."""
    m = Machine(MachineConfig(), programs=[("A", DATA)])
    start = label(m, "_start")
    cmds = "\n".join(["break *A:_start", "c", "info registers rax", "si 2", "frobnicate",
                      "x/2gx A:value", "x/1xw value", "quit", ""])
    r = isoemu("debug", str(program), stdin=cmds)
    lines = r.stdout.splitlines()
    assert lines[0] == f"Breakpoint 1 at {start:#x} <A:_start>"
    assert lines[1] == f"Breakpoint 1: {start:#x} in A:_start (A.user, CPL 3)"
    assert lines[2] == f"=> {start:#x} <A:_start>:\tnop"
    assert lines[3] == "rax            0x0                 0"
    assert lines[4] == f"=> {start + 6:#x} <A:_start+0x6>:\tsyscall"
    value = label(m, "value")
    assert lines[5] == f"{value:#x} <A:value>:\t0x1122334455667788\t0x0000000000000000"
    assert lines[6] == f"{value:#x} <A:value>:\t0x55667788"
    assert r.stderr == "error: unknown command 'frobnicate': try 'help'\n"
    assert r.returncode == 1                 # a command failed


def test_repl_name_option(program):
    r = isoemu("debug", str(program), "--name", "B", "-ex", "break *B:_start", "-ex", "info spaces")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.splitlines()[0] == "Breakpoint 1 at 0x400000 <B:_start>"
    assert "B.user" in r.stdout and "A.user" not in r.stdout


def test_repl_batch_file_and_ex_in_order(program, tmp_path):
    batch = tmp_path / "cmds.gdb"
    batch.write_text("# a comment\n\ncatch syscall getpid\ncontinue\n")
    r = isoemu("debug", str(program), "-ex", "info breakpoints", "--batch", str(batch), "-ex", "info b")
    lines = r.stdout.splitlines()
    assert r.returncode == 0 and r.stderr == ""
    assert lines[0] == "No breakpoints."
    assert lines[1] == "Catchpoint 1: syscall 39 (getpid)"
    assert lines[2] == "Catchpoint 1: syscall 39 (getpid) from 0x400006 <A:_start+0x6> in A.user"
    assert lines[3] == "=> 0xffffffff81200000 <entry_SYSCALL_64>:\tswapgs"
    assert lines[4:] == ["Num  Type            Hits  What",
                         "1    catch syscall   1     syscall 39 (getpid)"]


# (what, arguments (FILE: a file the case writes), the one line on stderr); exit status 2
CLI_REFUSALS = [
    ("missing batch file", ["--batch", "{dir}/nope"],
     "isoemu: cannot read {dir}/nope: No such file or directory"),
    ("batch file is a directory", ["--batch", "{dir}"], "isoemu: cannot read {dir}: Is a directory"),
    ("batch file not UTF-8", ["--batch", "{dir}/latin1.gdb"],
     "isoemu: cannot read {dir}/latin1.gdb: not UTF-8 text (byte 0xe9 at line 2)"),
    ("program not UTF-8", ["{dir}/latin1.S"],
     "isoemu: cannot read {dir}/latin1.S: not UTF-8 text (byte 0xe9 at line 2)"),
    ("bad process name", ["{dir}/prog.S", "--name", "a-b"], "isoemu: process name 'a-b': use letters, digits and _"),
    ("--name without a program", ["--name", "B"], "isoemu: --name names the process of PROGRAM.S: give a program"),
    ("budget in hexadecimal", ["{dir}/prog.S", "--budget", "0x1000"],
     "isoemu: bad --budget '0x1000': expected a decimal number such as 2000000 or 10M"),
    ("budget zero", ["{dir}/prog.S", "--budget", "0"],
     "isoemu: --budget '0' is out of range (1 .. 4,611,686,018,427,387,904)"),
]


@pytest.mark.parametrize("what,args,message", CLI_REFUSALS, ids=[c[0] for c in CLI_REFUSALS])
def test_repl_refuses_bad_input_in_one_line(what, args, message, tmp_path):
    (tmp_path / "prog.S").write_text(DATA)
    (tmp_path / "latin1.gdb").write_bytes(b"info spaces\n# caf\xe9\n")
    (tmp_path / "latin1.S").write_bytes(b"_start:\n    nop  # caf\xe9\n" + EXIT.encode())
    r = isoemu("debug", *[a.format(dir=tmp_path) for a in args], "-ex", "info spaces")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", message.format(dir=tmp_path) + "\n")


ADDRESS_NEEDED = ("an address is needed (ADDR: hexadecimal (600000 is 0x600000), a kernel symbol "
                  "(do_syscall_64), a program label (A:_start), a layout name (USER_DATA), a register "
                  "($rsp), joined with + and -; a word both a name and hexadecimal (a label bad) is the "
                  "name, with a note: 0xbad is the number)")
BAD_COMMANDS = [
    ("frobnicate", "unknown command 'frobnicate': try 'help'"),
    ("break", "break what? 'break cr3 [SPACE]' or 'break *ADDR' / 'break SYMBOL'"),
    ("break cr3 Z.user", "unknown space 'Z.user': choose from kernel, kernel.user, asi.global, "
                         "A.kernel, A.user, A.asi"),
    ("break nosuch", "bad address 'nosuch': unknown name 'nosuch'"),
    ("catch", "usage: catch fault [VECTOR] | catch syscall [N|NAME] | catch asi-exit [fault] | "
              "catch stale [FINDING]"),
    ("catch asi-exit now", "usage: catch asi-exit [fault]"),
    ("catch fault 999", "vector '999' is out of range (0 .. 255)"),
    # the names are the ABI table's, in its order (Linux's calls, then the project's)
    ("catch syscall nosuch", "unknown syscall 'nosuch': give a number or one of " + ", ".join(abi.SYSCALLS)),
    ("x/4qx 0", "bad format /4qx: x/NFU with N a decimal count, F one of x d u i, U one of b h w g"),
    ("x/4gx", ADDRESS_NEEDED),
    ("x/2gx 0xffffffff81000000 A.user", "0xffffffff81000000 is not readable in A.user: "
                                        "#PF 0x0 (not-present, read, supervisor)"),
    ("walk", ADDRESS_NEEDED),
    ("info", "usage: info breakpoints | info registers [REG...] | info spaces | info tlb [PCID]"),
    ("info spaces all", "usage: info spaces"),
    ("info registers xyz", "unknown register 'xyz'"),
    ("delete 42", "no breakpoint number 42"),
    ("delete x", "bad breakpoint number 'x': expected a decimal number, or hexadecimal with 0x"),
    ("si 0", "instruction count '0' is out of range (1 .. 4,611,686,018,427,387,904)"),
    ("si many", "bad instruction count 'many': expected a decimal number such as 2000000 or 10M"),
    ("continue 5", "usage: continue (the budget is set with --budget)"),
    ("ptdump Q.user", "unknown space 'Q.user': choose from kernel, kernel.user, asi.global, "
                      "A.kernel, A.user, A.asi"),
    ("help nosuch", "no command 'nosuch': try 'help'"),
]


@pytest.mark.parametrize("bad,message", BAD_COMMANDS, ids=[b for b, _ in BAD_COMMANDS])
def test_bad_commands_print_one_line_and_carry_on(bad, message):
    from emu.cli.debug import DebugShell

    m, dbg = debugger(DATA)
    out, err = io.StringIO(), io.StringIO()
    shell = DebugShell(dbg, interactive=False, stdout=out, stderr=err)
    for line in (bad, "info spaces"):
        assert shell.onecmd(line) is False
    assert err.getvalue() == f"error: {message}\n"
    assert out.getvalue().splitlines()[-6:] == [
        f"  {n:<12} {r:#018x}" if n != "A.kernel" else f"* {n:<12} {r:#018x}"
        for n, r in m.spaces().items()]
    assert shell.errors == 1


# the REPL's program: 'bad' is a label and a hexadecimal word; twenty nops to step through
REPL_PROG = f"""
_start:
    nop
bad:
{"    nop" + chr(10) * 1}""" + "    nop\n" * 19 + f"""after_nops:
    mov eax, SYS_getpid
    syscall
{EXIT}
.data
value: .quad 0x1122334455667788
       .quad 0x99
table: .byte 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
words: .long -2, 7, 0x80000000
"""


def _note_bad(m):
    return f"note: 'bad' is read as the name bad ({label(m, 'bad'):#x}); write 0xbad for the number"


def _insn(m, name, off=0, text="nop", mark="  "):
    a = label(m, name) + off
    return f"{mark} {a:#x} <A:{name}{f'+{off:#x}' if off else ''}>:\t{text}"


# (what, commands, stdout lines, stderr lines): each a function of the machine where
# it helps; every case starts at A:_start with no breakpoints
REPL_CASES = [
    # addresses are hexadecimal, 0x optional; names and layout names; offsets hexadecimal
    ("x hex without 0x", ["x/1gx 600000"], lambda m: [f"{abi.USER_DATA:#x} <A:value>:\t0x1122334455667788"], []),
    ("x layout name + hex", ["x/1gx USER_DATA + 8"],
     lambda m: [f"{abi.USER_DATA + 8:#x} <A:value+0x8>:\t0x0000000000000099"], []),
    ("x a label of one program", ["x value"], lambda m: [f"{label(m, 'value'):#x} <A:value>:\t0x1122334455667788"],
     []),
    ("x decimal count", ["x/10xb table"],
     lambda m: [f"{label(m, 'table'):#x} <A:table>:\t" + "\t".join(f"{i:#04x}" for i in range(1, 9)),
                f"{label(m, 'table') + 8:#x} <A:table+0x8>:\t0x09\t0x0a"], []),
    ("x signed words", ["x/3dw words"], lambda m: [f"{label(m, 'words'):#x} <A:words>:\t-2\t7\t-2147483648"], []),
    ("x unsigned halves", ["x/2uh words"], lambda m: [f"{label(m, 'words'):#x} <A:words>:\t65534\t65535"], []),
    ("a label that is hex: the label, noted", ["x/1i bad"], lambda m: [_insn(m, "bad")], [_note_bad]),
    ("0xbad: the number", ["x/1gx 0xbad"], [],
     ["error: 0xbad is not readable in the current space: #PF 0x0 (not-present, read, supervisor)"]),
    ("disas ADDR N, N decimal", ["disas bad 2"], lambda m: [_insn(m, "bad"), _insn(m, "bad", 1)], [_note_bad]),
    ("disas expression N", ["disas bad + 10 1"], lambda m: [_insn(m, "bad", 0x10)], [_note_bad]),
    ("si N is decimal", ["si 10"], lambda m: [_insn(m, "bad", 9, mark="=>")], []),
    ("break *A:label, continue", ["break *A:after_nops", "c"], lambda m: [
        f"Breakpoint 1 at {label(m, 'after_nops'):#x} <A:after_nops>",
        f"Breakpoint 1: {label(m, 'after_nops'):#x} in A:after_nops (A.user, CPL 3)",
        _insn(m, "after_nops", text="mov eax, 0x27", mark="=>")], []),
    ("delete takes 0x", ["break *A:bad", "delete 0x1", "info breakpoints"],
     lambda m: [f"Breakpoint 1 at {label(m, 'bad'):#x} <A:bad>", "No breakpoints."], []),
    ("catch fault 0xe", ["catch fault 0xe"], ["Catchpoint 1: #PF (vector 14)"], []),
    ("catch fault name", ["catch fault gp"], ["Catchpoint 1: #GP (vector 13)"], []),
    ("catch syscall 0x27", ["catch syscall 0x27"], ["Catchpoint 1: syscall 39 (getpid)"], []),
    ("info registers $reg", ["info registers $rip $sp"], lambda m: [
        f"rip            {label(m, '_start'):<#20x}<A:_start>",
        f"sp             {m.cpu.reg('rsp'):<#20x}{m.cpu.reg('rsp')}"], []),
    ("info r prefix", ["i r rflags"], lambda m: [f"rflags         {m.cpu.reg('rflags'):<#20x}[ IF ]"], []),
    # refused: one line each, and nothing else
    ("si in hex", ["si 0x10"], [],
     ["error: bad instruction count '0x10': expected a decimal number such as 2000000 or 10M"]),
    ("si a fraction", ["si 1.5"], [], ["error: bad instruction count '1.5': not a whole number"]),
    ("x/0", ["x/0gx value"], [], ["error: count '0' is out of range (1 .. 65,536)"]),
    ("x/N too big", ["x/65537bx value"], [], ["error: count '65537' is out of range (1 .. 65,536)"]),
    ("x/N not decimal", ["x/1.5gx value"], [],
     ["error: bad format /1.5gx: x/NFU with N a decimal count, F one of x d u i, U one of b h w g"]),
    ("x operator at the end", ["x/1gx value +"], [], ["error: bad address 'value +': it ends with an operator"]),
    ("x unknown name", ["x/1gx nosuch"], [], ["error: bad address 'nosuch': unknown name 'nosuch'"]),
    ("x negative", ["x/1gx -8"], [], ["error: bad address '-8': an address cannot be negative"]),
    ("x unknown register", ["x/1gx $xyz"], [], ["error: bad address '$xyz': unknown register '$xyz'"]),
    ("x unknown label of A", ["x/1gx A:nosuch"], [], ["error: no label 'nosuch' in process A's program"]),
    ("x unknown process", ["x/1gx Q:_start"], [], ["error: no process named 'Q': choose from A"]),
    ("catch fault 0x100", ["catch fault 0x100"], [], ["error: vector '0x100' is out of range (0x0 .. 0xff)"]),
    ("catch syscall -1", ["catch syscall -1"], [],
     ["error: syscall number '-1' is out of range (0 .. 18,446,744,073,709,551,615)"]),
    ("info ambiguous", ["info x"], [], ["error: usage: info breakpoints | info registers [REG...] | info spaces | "
                                        "info tlb [PCID]"]),
]


@pytest.mark.parametrize("what,commands,stdout,stderr", REPL_CASES, ids=[c[0] for c in REPL_CASES])
def test_repl_commands_exact_output(what, commands, stdout, stderr):
    from emu.cli.debug import DebugShell

    m, first = debugger(REPL_PROG)
    first.break_at("A:_start")
    assert first.cont().rip == label(m, "_start")
    first.detach()
    dbg = Debugger(m)                        # breakpoints numbered from 1
    out, err = io.StringIO(), io.StringIO()
    shell = DebugShell(dbg, interactive=False, stdout=out, stderr=err)
    want_out = stdout(m) if callable(stdout) else stdout
    want_err = [e(m) if callable(e) else e for e in stderr]
    for c in commands:
        assert shell.onecmd(c) is False
    assert out.getvalue().splitlines() == want_out
    assert err.getvalue().splitlines() == want_err
    assert shell.errors == sum(e.startswith("error: ") for e in want_err)
    assert dbg.notes == []                   # printed, then cleared


def test_info_breakpoints_lists_every_kind():
    from emu.cli.debug import DebugShell

    m, dbg = debugger(DATA)
    out = io.StringIO()
    shell = DebugShell(dbg, interactive=False, stdout=out)
    cmds = ["break cr3", "break cr3 *.asi", "b do_syscall_64", "break *A:_start+1", "catch fault",
            "catch fault #PF", "catch syscall", "catch syscall write", "catch asi-exit",
            "catch asi-exit fault"]
    for c in cmds:
        shell.onecmd(c)
    out.truncate(0)
    out.seek(0)
    shell.onecmd("info breakpoints")
    k = m.kernel.sym("do_syscall_64")
    assert out.getvalue().splitlines() == [
        "Num  Type            Hits  What",
        "1    cr3             0     any CR3 write",
        "2    cr3             0     CR3 write into *.asi",
        f"3    breakpoint      0     {k:#x} <do_syscall_64>",
        "4    breakpoint      0     0x400001 <A:_start+0x1>",
        "5    catch fault     0     any fault",
        "6    catch fault     0     #PF (vector 14)",
        "7    catch syscall   0     any syscall",
        "8    catch syscall   0     syscall 1 (write)",
        "9    catch asi-exit  0     any ASI exit",
        "10   catch asi-exit  0     ASI exits forced by a fault",
    ]
    assert shell.errors == 0
    shell.onecmd("delete 2 3")
    assert [b.num for b in dbg.breakpoints] == [1, 4, 5, 6, 7, 8, 9, 10]
    shell.onecmd("delete")
    assert dbg.breakpoints == []


def test_repl_help_lists_every_command():
    from emu.cli.debug import HELP, DebugShell

    m, dbg = debugger(DATA)
    out = io.StringIO()
    DebugShell(dbg, interactive=False, stdout=out).onecmd("help")
    text = out.getvalue()
    for cmd_, _ in HELP:
        assert cmd_ in text
    for word in ("break cr3", "catch asi-exit", "x/NFU", "info spaces", "disas"):
        assert word in text


def _read_until(fd, marker, timeout=60):
    buf = b""
    end = time.monotonic() + timeout
    while marker not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {marker!r}; got {buf!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", buf.decode(errors="replace")).replace("\r", "")


def _spawn_on_a_terminal(args, home):
    """isoemu on a pseudo-terminal that is its controlling terminal, so that
    Ctrl-C typed there (0x03) is a SIGINT to it, as in a shell."""
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = dict(os.environ, HOME=str(home), TERM="dumb")
    proc = subprocess.Popen([sys.executable, "-m", "emu.cli", *args], stdin=slave, stdout=slave,
                            stderr=slave, env=env, close_fds=True, preexec_fn=controlling_terminal)
    os.close(slave)
    return proc, master


def test_repl_under_a_pseudo_terminal(program, tmp_path):
    proc, master = _spawn_on_a_terminal(["debug", str(program)], tmp_path)
    try:
        intro = _read_until(master, b"(isoemu) ")
        assert f"isoemu debug: {program} as process A; stopped at " in intro
        assert "Type 'help' for commands." in intro
        os.write(master, b"break cr3 A.user\n")
        assert "Breakpoint 1: CR3 write into A.user" in _read_until(master, b"(isoemu) ")
        os.write(master, b"c\n")
        out = _read_until(master, b"(isoemu) ")
        assert re.search(r"Breakpoint 1: cr3 0x\w+ -> 0x\w+ \(A\.kernel -> A\.user\)", out)
        os.write(master, b"bogus\n")
        assert "error: unknown command 'bogus': try 'help'" in _read_until(master, b"(isoemu) ")
        os.write(master, b"info breakpoints\n")
        listing = _read_until(master, b"(isoemu) ")
        assert re.search(r"1    cr3             1     CR3 write into A\.user", listing)
        os.write(master, b"quit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    history = (tmp_path / ".isoemu_history").read_text()
    assert "break cr3 A.user" in history and "info breakpoints" in history


LOOP = "_start:\n    jmp _start\n"
INTERRUPTED = re.compile(r"interrupted at 0x400000 in A:_start \(A\.user, CPL 3\) after at least [\d,]+ "
                         r"instructions\n=> 0x400000 <A:_start>:\tjmp 0x400000\n")


def test_ctrl_c_stops_a_continue_and_the_session_goes_on(tmp_path):
    """Ctrl-C during 'continue' returns to the prompt with the machine intact;
    the next 'continue' runs on from there."""
    src = tmp_path / "loop.S"
    src.write_text(LOOP)
    proc, master = _spawn_on_a_terminal(["debug", str(src), "--budget", "100G"], tmp_path)
    try:
        _read_until(master, b"(isoemu) ")
        for _ in range(2):
            os.write(master, b"continue\n")
            time.sleep(1)
            os.write(master, b"\x03")                     # Ctrl-C
            out = _read_until(master, b"(isoemu) ", timeout=2)
            assert INTERRUPTED.search(out), out
            assert proc.poll() is None
            os.write(master, b"info registers rip\n")
            assert re.search(r"rip +0x400000 +<A:_start>\n", _read_until(master, b"(isoemu) "))
        # it runs on: a breakpoint in the loop stops the next continue
        os.write(master, b"break *A:_start\n")
        _read_until(master, b"(isoemu) ")
        os.write(master, b"c\n")
        assert "Breakpoint 1: 0x400000 in A:_start (A.user, CPL 3)" in _read_until(master, b"(isoemu) ")
        os.write(master, b"quit\n")
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_ctrl_c_stops_a_batch_with_status_130(tmp_path):
    src = tmp_path / "loop.S"
    src.write_text(LOOP)
    proc = subprocess.Popen([sys.executable, "-m", "emu.cli", "debug", str(src), "--budget", "100G",
                             "-ex", "info breakpoints", "-ex", "continue", "-ex", "info registers rip"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert proc.stdout.readline() == "No breakpoints.\n"      # the continue comes next
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    assert INTERRUPTED.fullmatch(out), out
    assert err == "isoemu: interrupted; 1 more command not run\n"


# --- the walkthrough script --------------------------------------------------------------------------
def test_walkthrough_prints_one_line_per_cr3_switch():
    script = ROOT / "scripts" / "cr3_walkthrough.py"
    r = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == ""
    # the same program run without the debugger: its own record of CR3 writes
    program = runpy.run_path(str(script), run_name="walkthrough")["PROGRAM"]
    ref = Machine(MachineConfig(), programs=[("A", program)])
    ref.run()
    want = ref.events_of("cr3_write")
    names = "|".join(re.escape(n) for n in ref.spaces())
    line_re = re.compile(rf"cr3 (0x[0-9a-f]+) -> (0x[0-9a-f]+)  ({names}) -> ({names}) +"
                         r"pcid (0x[0-9a-f]+|-) +(noflush)? +([A-Za-z_]\w*\+0x[0-9a-f]+)$")
    got = [line_re.fullmatch(ln) for ln in r.stdout.splitlines() if "cr3 0x" in ln]
    assert all(got), r.stdout
    assert [(int(g[1], 16), int(g[2], 16), g[3], g[4], g[6] is not None, g[7]) for g in got] == \
        [(e.old, e.new, e.old_space, e.new_space, bool(e.noflush), e.symbol) for e in want]
    lines = r.stdout.splitlines()
    # the fault-forced ASI exit is marked under its CR3 line
    i = next(i for i, ln in enumerate(lines) if ln.startswith("    ^ ASI exit: #PF 0x0 at "))
    assert "A.asi -> A.kernel" in lines[i - 1] and lines[i].endswith("by probe_read_insn")
    assert lines[-1] == "the machine halted: A exited with status 0"
