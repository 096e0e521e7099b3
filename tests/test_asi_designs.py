"""The ASI designs of ``asi=`` (docs/asi.md), each as its source has it.

Sources of the expectations: the 2019 RFC ("[RFC v2 00/27] Kernel Address
Space Isolation", Alexandre Chartre, 11 July 2019: load_cr3() of the ASI
page table, asi_start_abort/asi_finish_abort at every interrupt and
exception, asi_fault() retrying on the full tables, the current stack mapped
per session), the 2025 RFC v2 ("[PATCH RFC v2 00/29] Address Space Isolation
(ASI)", Brendan Jackman, 10 January 2025: 20/29 flushing CR3 writes and
invalidate_other, 25/29 the user critical section, 27/29 the taint policy,
28/29 PTI disabled), and the ASI branch's enum asi_exit_reason.
"""

import pytest

from emu.cli.main import main
from emu.errors import ConfigError
from emu.linux import abi
from emu.linux.config import MachineConfig, PtiMode
from emu.linux.machine import Machine
from emu.tools import asi_designs
from emu.tools.asmtest import discover, run_variants
from emu.tools.matrix import run_matrix

from .programs import EXIT

DESIGNS = ("off", "on", "rfc2019", "rfc2025")
NOFLUSH = 1 << 63


# --- the switch ------------------------------------------------------------------------------
@pytest.mark.parametrize("settings,pti,asi", [
    ({}, "auto", "on"),
    ({"asi": "off"}, "auto", "off"),
    ({"asi": "rfc2019"}, "auto", "rfc2019"),
    ({"asi": "rfc2019", "pti": "off"}, "off", "rfc2019"),
    ({"asi": "RFC2025"}, "off", "rfc2025"),              # pti=auto: "disabled by ASI"
    ({"asi": "rfc2025", "pti": "auto"}, "off", "rfc2025"),
    ({"asi": "rfc2025", "pti": "off"}, "off", "rfc2025"),
    ({"asi": "on", "pti": "off"}, "off", "on"),
])
def test_the_switch(settings, pti, asi):
    cfg = MachineConfig().with_switches(settings)
    assert (cfg.pti, cfg.asi, cfg.switches()["asi"]) == (pti, asi, asi)
    assert bool(cfg.pti) == (pti != "off") and bool(cfg.asi) == (asi != "off")


@pytest.mark.parametrize("settings,message", [
    ({"asi": "rfc2025", "pti": "on"}, "asi=rfc2025 runs without PTI (the RFC disables it: 'disabled by ASI'); "
                                      "drop pti=on, or use asi=on for PTI with ASI"),
    ({"asi": "rfc2024"}, "asi=rfc2024: use one of off, on, rfc2019, rfc2025 (did you mean 'rfc2025'?)"),
    ({"asi": "yes"}, "asi=yes: use one of off, on, rfc2019, rfc2025"),
])
def test_the_switch_refuses(settings, message):
    with pytest.raises(ConfigError) as ei:
        MachineConfig().with_switches(settings)
    assert str(ei.value) == message


def test_the_api_keeps_on_and_off():
    assert [MachineConfig(asi=v).asi for v in (True, False, "rfc2019")] == ["on", "off", "rfc2019"]
    assert MachineConfig(asi="rfc2025").replace(asi="on").pti is PtiMode.AUTO   # leaving rfc2025
    assert MachineConfig(asi="rfc2025", pti=False).replace(smep=False).pti is PtiMode.OFF


def test_cli_refuses_a_combination_in_one_line(capsys):
    rc = main(["matrix", "--set", "asi=rfc2025", "--set", "pti=on"])
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err == ("isoemu: asi=rfc2025 runs without PTI (the RFC disables it: 'disabled by ASI'); drop "
                   "pti=on, or use asi=on for PTI with ASI\n")


# --- address-space switches, syscall by syscall -------------------------------------------------
# The spaces CR3 enters from a syscall to the first user instruction after it
# (emu/tools/asi_designs.py's program), written out from each design:
# today's model enters ASI in the syscall and leaves it before PTI's return;
# the 2019 RFC enters only for its class (the probe's session, aborted by the
# #PF: the exception entry restores CR3, the handler retries unrestricted);
# the 2025 RFC stays on the restricted table the user ran on, until a fault
# or a context switch exits and the return to user mode enters again.
COSTS = {
    "off": {"getpid": ["A.kernel", "A.user"],
            "probe sensitive": ["A.kernel", "A.user"],
            "sched_yield": ["A.kernel", "B.kernel", "B.user", "B.kernel", "A.kernel", "A.user"]},
    "on": {"getpid": ["A.kernel", "A.asi", "A.kernel", "A.user"],
           "probe sensitive": ["A.kernel", "A.asi", "A.kernel", "A.user"],
           "sched_yield": ["A.kernel", "A.asi", "A.kernel", "B.kernel", "B.user", "B.kernel", "B.asi", "B.kernel",
                           "A.kernel", "A.user"]},
    "rfc2019": {"getpid": ["A.kernel", "A.user"],
                "probe sensitive": ["A.kernel", "A.asi", "A.kernel", "A.user"],
                "sched_yield": ["A.kernel", "B.kernel", "B.user", "B.kernel", "A.kernel", "A.user"]},
    "rfc2025": {"getpid": [],
                "probe sensitive": ["A.kernel", "A.asi"],
                "sched_yield": ["A.kernel", "B.kernel", "B.asi", "B.kernel", "A.kernel", "A.asi"]},
}
# the taint policy's flushes (the 2025 RFC only): leaving ASI flushes the
# control taints the user left (IBPB, RSB), entering the user domain flushes
# the kernel's data (L1D); a context switch also turns them into other-MM taints
FLUSHES = {"off": (0, 0, 0), "on": (0, 0, 0), "rfc2019": (0, 0, 0), "rfc2025": (0, 3, 6)}


@pytest.mark.parametrize("design", DESIGNS)
def test_address_space_switches_per_syscall(design):
    costs = asi_designs.syscall_costs(MachineConfig(asi=design))
    assert {n: c.spaces for n, c in costs.items()} == COSTS[design]
    assert {n: c.cr3_writes for n, c in costs.items()} == {n: len(s) for n, s in COSTS[design].items()}
    assert tuple(c.flushes for c in costs.values()) == FLUSHES[design]
    # an ASI exit is a write from a restricted space to a full one; the user ran
    # on A.asi with the 2025 RFC, on A.user otherwise
    start = "A.asi" if design == "rfc2025" else "A.user"
    assert {n: c.asi_exits for n, c in costs.items()} == \
        {n: sum(1 for a, b in zip([start] + s, s) if a.endswith(".asi") and not b.endswith(".asi"))
         for n, s in COSTS[design].items()}


def cr3_values(m, since=0):
    return [(e.symbol.split("+")[0], e.new) for e in m.events_of("cr3_write") if e.seq > since]


PROBE_ALIAS = """
_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov rdi, rax
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 1
probe:
    syscall
after_probe:
""" + EXIT


@pytest.mark.parametrize("design,inject,want", [
    # RFC v2: the restricted PCID is kern_pcid | (class + 1) << 9, the userspace class 1;
    # neither transition sets NOFLUSH (20/29)
    ("on", "none", lambda p: [("__asi_enter", p.asi_pgd | 0x401), ("asi_exit", p.pgd | 0x001)]),
    ("rfc2025", "none", lambda p: [("asi_exit", p.pgd | 0x001), ("__asi_enter", p.asi_pgd | 0x401)]),
    ("on", "asi_exit_noflush", lambda p: [("__asi_enter", p.asi_pgd | 0x401),
                                          ("asi_exit", p.pgd | 0x001 | NOFLUSH)]),
    # the 2019 RFC: load_cr3(asi->pgd) is PCID 0, flushing; the exit restores
    # __get_current_cr3_fast(): the kernel PCID, flushing
    ("rfc2019", "none", lambda p: [("asi2019_enter", p.asi_pgd), ("asi2019_restore_cr3", p.pgd | 0x001)]),
    ("rfc2019", "asi_enter_noflush", lambda p: [("asi2019_enter", p.asi_pgd | NOFLUSH),
                                                ("asi2019_restore_cr3", p.pgd | 0x001)]),
])
def test_the_cr3_values_of_a_transition(design, inject, want):
    """The ASI CR3 writes of one probe of sensitive memory in the restricted table."""
    m = Machine(MachineConfig(asi=design).with_switches({"asi": design, "inject": inject}),
                programs=[("A", PROBE_ALIAS)])
    m.boot()
    mark = []
    syms = m.process("A").image.symbols
    for label in ("probe", "after_probe"):
        m.cpu.add_code_hook(syms[label], lambda a: mark.append(m._seq))
    m.run()
    asi_writes = [(e.symbol.split("+")[0], e.new) for e in m.events_of("cr3_write")
                  if mark[0] < e.seq <= mark[1] and not e.symbol.startswith(("entry_", "syscall_", "swapgs"))]
    assert asi_writes == want(m.process("A"))


# --- exit reasons -----------------------------------------------------------------------------------
REASONS_PROGRAM = """
_start:
    mov eax, SYS_getpid
    syscall
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov rdi, rax
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 1
    syscall
    mov eax, SYS_probe
    mov rdi, KERNEL_DATA
    xor esi, esi
    xor edx, edx
    syscall
    mov eax, SYS_sched_yield
    syscall
""" + EXIT
YIELD_BACK = "_start:\n    mov eax, SYS_sched_yield\n    syscall\n" + EXIT


@pytest.mark.parametrize("design,fault,user_return,context_switch,tlb_flush,other", [
    # today's model: getpid and direct_map_alias leave ASI on the way back; the
    # sensitive probe exits on its #PF, the full-table probe explicitly; A's
    # yield (and B's) from a context switch; each exit_mmap before freeing
    # the page tables
    ("on", 1, 2, 2, 2, 1),
    # the 2025 RFC: no exit on the way back (the user runs restricted); the
    # 2019 RFC: only the probe's session, aborted by its #PF
    ("rfc2025", 1, 0, 2, 2, 1),
    ("rfc2019", 1, 0, 0, 0, 0),
    ("off", 0, 0, 0, 0, 0),
])
def test_exit_reasons(design, fault, user_return, context_switch, tlb_flush, other):
    m = Machine(MachineConfig(asi=design), programs=[("A", REASONS_PROGRAM), ("B", YIELD_BACK)])
    m.run()
    s = m.stats()
    got = tuple(s[k] for k in abi.ASI_EXIT_STATS)
    assert got == (fault, user_return, context_switch, tlb_flush, other)
    assert s["asi_exits"] == sum(got)


# --- the taint policy -------------------------------------------------------------------------------
def test_taint_policy_flushes_at_the_transitions():
    """RFC v2 27/29: asi_exit runs maybe_flush_control(NULL) (every control
    taint: IBPB and the RSB fill) and taints the kernel's data; entering the
    userspace domain flushes the L1D for KERNEL_DATA (its protect_data), then
    sets USER_CONTROL and USER_DATA."""
    m = Machine(MachineConfig(asi="rfc2025"), programs=[("A", PROBE_ALIAS)])
    m.boot()
    mark = []
    m.cpu.add_code_hook(m.process("A").image.symbols["probe"], lambda a: mark.append(m._seq))
    m.run()
    got = [(e.flush, e.symbol.split("+")[0], e.taints) for e in m.events_of("asi_flush") if e.seq > mark[0]]
    assert got[:3] == [("ibpb", "asi_exit", ["user_data", "user_control"]),
                       ("rsb", "asi_exit", ["user_data", "user_control"]),
                       ("l1d", "__asi_enter", ["kernel_data", "user_data"])]
    s = m.stats()
    assert (s["asi_flush_ibpb"], s["asi_flush_rsb"], s["asi_flush_l1d"]) == \
        tuple(sum(1 for e in m.events_of("asi_flush") if e.flush == k) for k in ("ibpb", "rsb", "l1d"))


@pytest.mark.parametrize("design", ["on", "rfc2019", "off"])
def test_no_taint_policy_outside_the_2025_rfc(design):
    m = Machine(MachineConfig(asi=design), programs=[("A", PROBE_ALIAS)])
    m.run()
    assert m.events_of("asi_flush") == []
    assert (m.stats()["asi_flush_ibpb"], m.stats()["asi_flush_l1d"]) == (0, 0)


def test_the_rsb_fill_is_the_real_loop():
    """fill_return_buffer is __FILL_RETURN_BUFFER(reg, RSB_CLEAR_LOOPS): half
    as many iterations of two calls, each call's return slot an int3 the CPU
    never reaches, the 16 bytes dropped, then lfence; it runs once per RSB
    flush of the taint policy."""
    m = Machine(MachineConfig(asi="rfc2025"), programs=[("A", PROBE_ALIAS)])
    m.boot()
    k = m.kernel
    start = k.sym("fill_return_buffer")
    body = []
    for ins in sorted(k.image.insns, key=lambda i: i.addr):
        if ins.addr >= start:
            body.append(ins.mnemonic)
            if ins.mnemonic == "ret":
                break
    assert body == ["mov", "call", "int3", "call", "int3", "add", "dec", "jne", "lfence", "ret"]
    first = next(i for i in k.image.insns if i.addr == start)
    assert first.op_str == f"eax, {abi.RSB_CLEAR_LOOPS // 2:#x}"
    fills = []
    m.cpu.add_code_hook(start, lambda a: fills.append(a))
    m.run()
    assert len(fills) == m.stats()["asi_flush_rsb"] >= 1


# --- the critical section ---------------------------------------------------------------------------
CRITICAL = """
_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov r12, rax
    mov rdi, r12
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 2
critical:
    syscall
    mov qword ptr [rip + result], rax
    mov rdi, KERNEL_DATA
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 2
    syscall
""" + EXIT + ".data\nresult: .quad 0\n"


@pytest.mark.parametrize("design,findings", [("on", 1), ("rfc2025", 1), ("rfc2019", 0), ("off", 0)])
def test_a_sensitive_access_in_the_critical_section_is_a_finding(design, findings):
    m = Machine(MachineConfig(asi=design), programs=[("A", CRITICAL)])
    m.boot()
    alias = m.layout.page_offset + m.pa_of(abi.USER_DATA, "A.kernel")
    m.run()
    assert len(m.asi_findings) == m.stats()["asi_critical_findings"] == findings
    assert len(m.events_of("asi_finding")) == findings
    if findings:
        f = m.asi_findings[0]
        assert (f.kind, f.address, f.error_code, f.symbol, f.space, f.pid) == \
            ("sensitive-access-in-critical-section", alias, 0x0, "probe_read_insn", "A.asi", 1)
        assert m.events_of("asi_abort")                           # the section was ended
    assert m.findings == []


def test_an_unexpected_asi_finding_fails_an_asm_test(tmp_path):
    src = open("asm/asi/critical_section.S").read()
    bad = tmp_path / "t.S"
    bad.write_text("\n".join(ln for ln in src.splitlines() if " asi sensitive" not in ln) + "\n")
    [r] = [r for r in run_variants(str(bad)) if "asi=rfc2025" in r.path]
    assert [f.headline for f in r.failures] == ["unexpected ASI finding in process A"]
    assert r.failures[0].details[0].startswith("sensitive-access-in-critical-section: ")


# --- the 2019 RFC's sessions ----------------------------------------------------------------------------
def test_a_2019_session_maps_the_current_stack_only_while_it_lasts():
    m = Machine(MachineConfig(asi="rfc2019"), programs=[("A", PROBE_ALIAS)])
    m.boot()
    p = m.process("A")
    stack = m.layout.vmalloc_start                       # task 0's
    seen = {}

    def mapped(tag):
        return lambda a: seen.setdefault(tag, [m.pa_of(stack + i * 4096, "A.asi") if _maps(m, stack + i * 4096)
                                               else None for i in range(abi.THREAD_SIZE // 4096)])
    m.cpu.add_code_hook(m.kernel.sym("probe_asi_critical"), mapped("in"))
    m.cpu.add_code_hook(p.image.symbols["probe"] + 2, mapped("after"))
    m.run()
    frames = [m.kernel.stack_pages[(stack >> 12) + i] for i in range(abi.THREAD_SIZE // 4096)]
    assert seen == {"in": frames, "after": [None] * len(frames)}


def _maps(m, va):
    try:
        m.pa_of(va, "A.asi")
        return True
    except Exception:
        return False


def test_a_2019_session_ends_at_an_interrupt():
    """asi_start_abort at the interrupt's entry restores the saved CR3; the
    handler runs on the full tables; asi_finish_abort ends the session: no
    CR3 write back into the restricted table (the 2025 RFC would re-enter)."""
    m = Machine(MachineConfig(asi="rfc2019"), programs=[("A", PROBE_ALIAS)])
    m.boot()
    k = m.kernel
    h = m.cpu.add_code_hook(k.sym("probe_asi_critical"), lambda a: m.stop("in session"))
    assert m.step(1_000_000) == "in session"
    m.cpu.del_code_hook(h)
    assert m.space_of(m.cpu.reg("cr3")) == "A.asi"
    start = m._seq
    assert m.inject_interrupt(abi.TIMER_VECTOR)
    m.run()
    assert m.space_of(k.read_percpu("last_irq_cr3")) == "A.kernel"
    writes = [(e.symbol.split("+")[0], e.new_space) for e in m.events_of("cr3_write") if e.seq > start]
    assert writes[0] == ("asi2019_restore_cr3", "A.kernel")
    assert ("asi2019_enter", "A.asi") not in writes
    s = m.stats()
    assert (s["asi_other_exits"], s["asi_fault_exits"]) == (1, 0)      # the probe ran unrestricted


def test_the_2025_rfc_runs_user_code_on_the_restricted_table():
    m = Machine(MachineConfig(asi="rfc2025"), programs=[("A", PROBE_ALIAS)])
    m.boot()
    p = m.process("A")
    cr3 = []
    m.cpu.add_code_hook(p.image.symbols["probe"], lambda a: cr3.append(m.cpu.reg("cr3")))
    m.run()
    assert cr3 == [p.asi_pgd | 0x401]
    assert m.spaces()["A.user"] == p.asi_pgd and m.space_of(cr3[0]) == "A.asi"


def test_an_interrupt_in_user_mode_stays_restricted_with_the_2025_rfc():
    """The user critical section is only interrupted (asi_intr_enter): the
    handler runs on the restricted table, and nothing switches back."""
    m = Machine(MachineConfig(asi="rfc2025"), programs=[("A", "_start:\nspin:\n    nop\n    nop\n" + EXIT)])
    m.boot()
    k = m.kernel
    h = m.cpu.add_code_hook(m.process("A").image.symbols["spin"], lambda a: m.stop("user"))
    assert m.step(1_000_000) == "user"
    m.cpu.del_code_hook(h)
    start = m._seq
    assert m.inject_interrupt(abi.TIMER_VECTOR)
    m.run()
    assert m.space_of(k.read_percpu("last_irq_cr3")) == "A.asi"
    exit_call = next(e.seq for e in m.events_of("syscall") if e.seq > start)
    assert [e for e in m.events_of("cr3_write") if start < e.seq < exit_call] == []


# --- the matrix, the asm suite and the comparison under every design --------------------------------
@pytest.mark.parametrize("design", DESIGNS)
def test_matrix_matches_with_no_finding(design):
    r = run_matrix(MachineConfig(asi=design))
    assert (r.mismatches, r.findings, r.asi_findings) == ([], [], [])


@pytest.mark.parametrize("design,inject,caught", [
    # the injection each design's flushes answer for, and the matrix sees it
    ("on", "asi_exit_noflush", True),
    ("rfc2025", "asi_exit_noflush", True),
    # the flushing transitions hide secretmem's missing flush from the matrix's
    # probes: the next asi_exit (or the 2019 session's restore) flushes the PCID
    ("off", "secretmem_noflush", True),
    ("on", "secretmem_noflush", False),
    ("rfc2019", "secretmem_noflush", False),
    ("rfc2025", "secretmem_noflush", False),
])
def test_the_matrix_and_the_injections(design, inject, caught):
    r = run_matrix(MachineConfig(asi=design, inject=frozenset({inject})))
    assert r.mismatches == [] and bool(r.findings) == caught


@pytest.mark.parametrize("design", DESIGNS)
def test_the_asm_suite_has_no_unexpected_finding_in_any_design(design):
    """Overridden to another design a test may fail its expectations (it was
    written for one), never with a finding nobody expected."""
    bad = []
    for f in discover(["asm"]):
        for r in run_variants(f, overrides={"asi": design}):
            bad += [(r.path, x.headline) for x in r.failures if "unexpected" in x.headline and "finding"
                    in x.headline]
    assert bad == []


def test_the_comparison_is_the_measurement():
    c = asi_designs.compare()
    assert not c.failed
    text = asi_designs.render(c)
    rows = {ln[:30].strip(): ln[30:].split() for ln in text.splitlines() if ln.startswith(("getpid", "probe",
                                                                                             "sched_yield"))}
    assert rows["getpid cr3 writes"] == [str(len(COSTS[d]["getpid"])) for d in DESIGNS]
    assert rows["probe sensitive cr3 writes"] == [str(len(COSTS[d]["probe sensitive"])) for d in DESIGNS]
    # A.kernel reads the same in every design: the full table does not change
    assert "A.kernel is the same in every design" in text
    doc = asi_designs.as_dict(c)
    assert doc["designs"] == list(DESIGNS) and len(doc["cells"]) == 18 * 3


@pytest.mark.parametrize("design,leaves_at", [("on", "asi_exit"), ("rfc2025", "asi_exit"),
                                              ("rfc2019", "asi2019_restore_cr3")])
def test_the_debugger_catches_a_forced_exit_in_every_design(design, leaves_at):
    """'catch asi-exit fault' pairs the CR3 write leaving ASI with the #PF that
    forced it; the 2019 RFC's abort is observed at the exception's entry, so
    the pair comes in the same order as with the 2025 mechanics."""
    from emu.tools.debug import Debugger

    m = Machine(MachineConfig(asi=design), programs=[("A", PROBE_ALIAS)])
    dbg = Debugger(m)
    dbg.catch_asi_exit(fault_only=True)
    stops = []
    while (s := dbg.cont()).reason == "breakpoint":
        stops.append((s.cr3.symbol.split("+")[0], s.event.kind, s.event.symbol))
    assert stops == [(leaves_at, "asi_exit", "probe_read_insn")]


# --- the boot-time scan for non-sensitive frames ----------------------------------------------
def test_nonsensitive_frames_found_as_a_byte_scan_finds_them():
    """boot_direct_map's marks and memchr find exactly the frames a scan for
    each non-sensitive kind byte finds, in order: tails of large frames
    (kind | 0x80), runs at both ends, every kind byte."""
    import random
    import re

    from emu.hw.phys import FrameKind
    from emu.hw.phys import byte_runs
    from emu.linux.asi import NONSENSITIVE_KINDS, _NONSENSITIVE_MARKS

    byte = re.compile(b"[" + b"".join(re.escape(bytes([k])) for k in sorted(NONSENSITIVE_KINDS)) + b"]")
    rng = random.Random(7)
    kinds = [bytearray(rng.choice(list(range(11)) + [k | 0x80 for k in range(1, 11)]) for _ in range(n))
             for n in (1, 2, 7, 512, 4096)]
    kinds += [bytearray([FrameKind.PGTABLE]) * 9, bytearray(16), bytearray([FrameKind.KERNEL_STACK | 0x80]) * 3,
              bytearray([FrameKind.PGTABLE, 0, FrameKind.KERNEL_DATA, FrameKind.KERNEL_STACK])]
    for kind in kinds:
        want = [m.start() for m in byte.finditer(kind)]
        got = [pfn for lo, hi in byte_runs(kind.translate(_NONSENSITIVE_MARKS)) for pfn in range(lo, hi)]
        assert got == want
