"""Kernel entry (emu/hw/microcode/transition.py, plan.py): the fast paths
against the original one, from the same state at every transition, byte for
byte (docs/unicorn-notes.md, "Kernel entry")."""

from __future__ import annotations

import copy

import pytest

from emu.cli.main import main
from emu.dev.bare import bare_system, loop_system, run_loop
from emu.hw.microcode import lazyflags
from emu.hw.microcode.context import check_live, live_state_address
from emu.hw.microcode.plan import FaultEntry
from emu.hw.microcode.transition import ENV, ENV_OFF, KernelEntry, TransitionMismatch, layout
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


@pytest.mark.parametrize("off", ["", "live", "flags", "live,flags"])
@pytest.mark.parametrize("label,syscalls,faults", LOOPS)
def test_bare_loops_every_transition_equal(monkeypatch, label, syscalls, faults, off):
    """``check``: at every transition the fast path and the original path run
    from the same state; any difference in registers, CPL, the CS/SS caches,
    the exception in flight or the frame raises.  With each of the fast
    entries' shortcuts on and off (the live state, RFLAGS computed)."""
    monkeypatch.setenv(ENV, "check")
    monkeypatch.setenv(ENV_OFF, off)
    b = bare("check")
    run_loop(b, label, 200)
    e = b.cpu.entry
    assert e.variant == "check"
    assert e.live == ("live" not in off)
    assert all(fn is None for fn in e.compute) == ("flags" in off)
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


# --- RFLAGS from the lazy-flag fields, the live CPU state ---------------------------------
def test_every_cc_op_verified_on_this_build():
    """Every cc_op but CC_OP_DYNAMIC passes the start-up check against the
    API: the fast entries read RFLAGS through the API for none of them."""
    table = lazyflags.verified(layout())
    assert [op for op, fn in enumerate(table) if fn is None] == [lazyflags.CC_OP["DYNAMIC"]]


def test_startup_check_drops_a_wrong_flags_function():
    """An injected error in one cc_op's computation (OF of DECQ at its one
    overflowing result; SUBB computed as SUBW) is caught by the start-up
    check: those cc_ops fall back to the API read, the others stay."""
    table = list(lazyflags.COMPUTE)
    decq, subb = lazyflags.CC_OP["DECQ"], lazyflags.CC_OP["SUBB"]
    good = table[decq]
    table[decq] = lambda dst, src, src2: good(dst, src, src2) ^ (0x800 if dst == 0x7FFFFFFFFFFFFFFF else 0)
    table[subb] = lazyflags.COMPUTE[lazyflags.CC_OP["SUBW"]]
    kept = lazyflags.check_table(table, layout())
    assert [op for op, fn in enumerate(kept) if fn is None] == [0, lazyflags.CC_OP["SUBB"], decq]


def test_each_cc_op_is_checked_at_its_first_use(monkeypatch):
    """The table the fast entries use checks an entry when it is first asked
    for, with the start-up check's cases: a wrong function is dropped then,
    and entries never asked for are never checked."""
    table = list(lazyflags.COMPUTE)
    decq, subq = lazyflags.CC_OP["DECQ"], lazyflags.CC_OP["SUBQ"]
    good = table[decq]
    table[decq] = lambda dst, src, src2: good(dst, src, src2) ^ (0x800 if dst == 0x7FFFFFFFFFFFFFFF else 0)
    v = lazyflags.Verified(table, layout())
    assert v.get(decq) is None and v.get(subq) is lazyflags.COMPUTE[subq]
    assert v.get(lazyflags.CC_OP["DYNAMIC"]) is None and v.get(10_000) is None
    assert sorted(v._ok) == sorted([decq, subq, lazyflags.CC_OP["DYNAMIC"], 10_000])
    # a bare SYSCALL loop asks for the few its instructions leave (a table of its own)
    monkeypatch.setattr(lazyflags, "_verified", [])
    b = bare("inplace")
    run_loop(b, "syscalls", 50)
    assert 0 < len(lazyflags.verified(layout())._ok) < lazyflags.CC_OP_NB


# (cc_op, cc_dst, cc_src, cc_src2, RFLAGS's arithmetic bits): the SDM's flags for each
FLAG_CASES = [("DECQ", 0, 1, 0, 0x45),                      # ZF PF, CF kept from src
              ("DECQ", 0x7FFFFFFFFFFFFFFF, 0, 0, 0x814),    # 0x8000...0 - 1: OF AF PF
              ("DECL", 0xFFFFFFFF, 0, 0, 0x94),             # 0 - 1 in 32 bits: SF AF PF
              ("SUBQ", 0xFFFFFFFFFFFFFFFF, 1, 0, 0x95),     # 0 - 1: CF SF AF PF
              ("SUBB", 0x7F, 1, 0, 0x810),                  # 0x80 - 1: OF AF, no PF
              ("ADDL", 0, 0xFFFFFFFF, 0, 0x55),             # 0xFFFFFFFF + 1: CF ZF AF PF
              ("LOGICQ", 0x8000000000000000, 0, 0, 0x84),   # SF PF
              ("INCW", 0x8000, 0, 0, 0x894),                # 0x7FFF + 1: OF SF AF PF
              ("SHLB", 0x02, 0x81, 0, 0x801),               # 0x81 << 1: CF, OF (CF ^ MSB)
              ("SARQ", 0, 1, 0, 0x45),                      # 1 >> 1: CF ZF PF
              ("MULQ", 6, 0, 0, 0x4),                       # no high half: PF only
              ("EFLAGS", 0, 0x8D5, 0, 0x8D5), ("CLR", 0, 0, 0, 0x44)]


@pytest.mark.parametrize("op,dst,src,src2,arith", FLAG_CASES)
def test_flags_table_of_exact_cases(op, dst, src, src2, arith):
    """A few operations whose flags the SDM fixes, through both the Python
    computation and QEMU's (the API read of the same fields)."""
    got = lazyflags.rflags(lazyflags.COMPUTE, 0x202, lazyflags.CC_OP[op], dst, src, src2, 1)
    assert got == 0x202 | arith
    assert lazyflags.check_table(lazyflags.COMPUTE, layout(), cases=[(dst, src, src2)])[lazyflags.CC_OP[op]] \
        is not None


FLAGS_KERNEL = """
entry_syscall:
    cmp eax, 1
    je .Lhalt
    sysretq
.Lhalt:
    hlt
"""
# one SYSCALL after each kind of flag-setting instruction (the cc_op it leaves)
FLAGS_USER = """
_start:
    syscall
    mov rax, -1
    add rax, 1
    syscall
    mov rax, 5
    stc
    adc rax, -6
    syscall
    mov rax, 0
    sub rax, 1
    syscall
    stc
    sbb rax, rax
    syscall
    mov rax, 0x80
    and al, 0xC0
    syscall
    mov ax, 0x7FFF
    inc ax
    syscall
    mov ebx, 0
    dec ebx
    syscall
    mov rax, 0x4000000000000001
    shl rax, 1
    syscall
    mov rax, -3
    sar rax, 1
    syscall
    mov rax, 0x100000000
    mov rbx, 0x100000000
    mul rbx
    syscall
    mov rax, 3
    mov rbx, 5
    blsr rax, rbx
    syscall
    mov rax, 0
    adcx rax, rbx
    syscall
    adox rax, rbx
    syscall
    xor eax, eax
    syscall
    popcnt rax, rbx
    syscall
    push 0x8D7
    popfq
    syscall
    mov eax, 1
    syscall
"""


def test_flags_of_real_instructions_in_check_mode(monkeypatch):
    """The cc_ops that real instructions leave at a SYSCALL, each compared
    (check mode) with the API's RFLAGS: R11 and the new RFLAGS; the fast
    entry computed every one of them."""
    monkeypatch.setenv(ENV, "check")
    seen = []
    real = lazyflags.verified

    def recording(L):
        return tuple(None if fn is None else (lambda d, s, s2, fn=fn, op=op: seen.append(op) or fn(d, s, s2))
                     for op, fn in enumerate(real(L)))
    monkeypatch.setattr(lazyflags, "verified", recording)
    b = bare_system(FLAGS_KERNEL, FLAGS_USER, gates={}, lstar="entry_syscall")
    b.start_user("_start")
    assert b.cpu.run(1000) == "halt"
    assert b.cpu.entry.checked == 18
    names = {v: k for k, v in lazyflags.CC_OP.items()}
    assert {names[op] for op in seen} >= {"ADDQ", "ADCQ", "SUBQ", "SBBQ", "LOGICB", "INCW", "DECL", "SHLQ",
                                          "SARQ", "MULQ", "BMILGQ", "ADCX", "ADOX", "CLR", "POPCNT",
                                          "EFLAGS"}, sorted(names[op] for op in set(seen))


@pytest.mark.parametrize("label,kind", [("syscalls", "r11"), ("faults", "frame")])
def test_check_mode_catches_a_wrong_flags_computation(monkeypatch, label, kind):
    """An error in the flags computation that the start-up check did not
    see (injected after it: CF inverted for every cc_op; the loops leave
    CC_OP_EFLAGS, QEMU having computed the flags for the jnz, and a table
    not this module's own turns off its inline case) is caught by check
    mode: in R11 at a SYSCALL, in the frame at a #PF."""
    monkeypatch.setenv(ENV, "check")
    real = lazyflags.verified

    def wrong(L):
        return tuple(None if fn is None else (lambda d, s, s2, fn=fn: fn(d, s, s2) ^ 1) for fn in real(L))
    monkeypatch.setattr(lazyflags, "verified", wrong)
    b = bare("check")
    with pytest.raises(TransitionMismatch, match=kind):
        run_loop(b, label, 5)


@pytest.mark.parametrize("guess", [None, (8, 8), (440, 8)], ids=["none", "wrong", "half-wrong"])
def test_live_state_search_when_the_known_path_fails(monkeypatch, guess):
    """The known path to the live state (context._live_path) is only a first
    try: with none, or a wrong one, the search finds the same address, and
    the path it keeps is the right one."""
    import emu.hw.microcode.context as context

    cpu = bare("inplace").cpu
    right = context.find_live_state(cpu)
    path = list(context._live_path)
    monkeypatch.setattr(context, "_live_path", [] if guess is None else [guess])
    assert right is not None and context.find_live_state(cpu) == right
    assert context._live_path == path


def test_live_state_found_and_checked():
    """The live CPU state is found on this build and passes the API check;
    the check refuses an address one field off."""
    b = bare("inplace")
    cpu = b.cpu
    base = live_state_address(cpu)
    assert base is not None and cpu.entry.live
    size = len(cpu.entry._fb)
    assert not check_live(cpu, base + 8, 40, size)
    assert check_live(cpu, base, 40, size)


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
    assert main(["test", "-j", "1", "asm/"]) == 0      # in this process: the counters see every entry
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
