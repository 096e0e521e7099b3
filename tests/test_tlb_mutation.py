"""Mutation test of the stub's TLB invalidation (docs/tlb.md): each
invalidation routine turned into a bare ``ret``, and each invalidating
instruction turned into NOPs, must make a named scenario fail.  Before the
TLB model, none of these mutants failed any test: Unicorn flushes its whole
TLB on every CR3 write and on any INVPCID, so the stub's PCID bookkeeping was
unobservable.

A scenario is a small user program run as an asm test (emu/tools/asmtest)
in one configuration: its expectations are Linux's behaviour, and the
runner fails it on any TLB finding it did not expect.  Each row of
:data:`MUTANTS` names the scenario that must catch the mutant; the scenario
passes on the unmutated stub (test_scenarios_pass_unmutated)."""

from __future__ import annotations

import contextlib
import textwrap

import pytest

from emu.linux.machine import Machine
from emu.tools.asmtest import run_test

NOP = 0x90

# --- scenarios -------------------------------------------------------------------------------------
# munmap a touched page, touch it again: the page must fault, and nothing stale
MUNMAP = """
; expect: touch ok
; expect: touch_again fault 14 0x4
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ + PROT_WRITE
    mov r10d, MAP_PRIVATE + MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    syscall
    mov r13, rax
touch:
    mov byte ptr [r13], 0x77
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
    syscall
touch_again:
    mov al, byte ptr [r13]
    sys_exit 0
"""
# a secret page leaves the direct map at its first touch: the kernel's read
# of its alias must fault, then the page goes back at close
SECRET = """
; expect: touch ok
; expect: probe_read rax=-EFAULT
; expect: probe_released rax=0
.include "isoemu.inc"
.text
_start:
    secret_map r13
touch:
    mov byte ptr [r13], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    sys_probe probe_read, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
    syscall
    mov eax, SYS_close
    mov rdi, r12
    syscall
    sys_probe probe_released, r14, PROBE_READ, PROBE_FULL
    sys_exit 0
"""
# mprotect a written page read-only: the next write must fault
MPROTECT = """
; expect: touch ok
; expect: write_again fault 14 0x7
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ + PROT_WRITE
    mov r10d, MAP_PRIVATE + MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    syscall
    mov r13, rax
touch:
    mov byte ptr [r13], 0x77
    mov eax, SYS_mprotect
    mov rdi, r13
    mov esi, 4096
    mov edx, PROT_READ
    syscall
write_again:
    mov byte ptr [r13], 0x78
    sys_exit 0
"""
PROGRAMS = {"munmap": MUNMAP, "secret": SECRET, "mprotect": MPROTECT}

# Two processes: A takes a secret page out of the direct map, flushing its own
# PCID and marking the others for a flush at their next use (invalidate_other,
# arch/x86/mm/tlb.c), while B's kernel PCID may cache the page's direct-map
# entry; then B's kernel reads the page's alias, which A's program hands over
# (through Python, as the fault matrix does): it must fault.  The page is A's
# second: the first split the direct map's 2 MiB page, and the split's own
# flush of every PCID (cpa's flush_tlb_all) would hide the missing one.
TWO_A = """
_start:
    mov eax, SYS_sched_yield
    syscall                     # B's first system calls
    secret_map r13, 8192, 8192
    mov byte ptr [r13], 0x5a    # the first page: the direct map's 2 MiB page is split (and all flushed)
    mov eax, SYS_sched_yield
    syscall                     # B's kernel runs again: its PCID may cache the new 4 KiB entries
    mov byte ptr [r13 + 4096], 0x5b     # the second page: only its entry changes
    mov eax, SYS_direct_map_alias
    lea rdi, [r13 + 4096]
    syscall
    mov r14, rax
publish:
    mov eax, SYS_sched_yield
    syscall                     # B probes
    sys_exit 0
"""
TWO_B = """
_start:
    mov eax, SYS_getpid
    syscall
    mov eax, SYS_sched_yield
    syscall                     # A makes its secret file and takes its first page
    mov eax, SYS_getpid
    syscall
    mov eax, SYS_sched_yield
    syscall                     # A takes its second page
    mov rdi, qword ptr [rip + alias]
    mov eax, SYS_probe
    mov esi, PROBE_READ
    mov edx, PROBE_FULL
    syscall
    cmp rax, -EFAULT
    setne dil
    movzx edi, dil
    mov eax, SYS_exit
    syscall                     # exit 0: the probe faulted
.data
alias: .quad 0
"""


def two_processes(config: str) -> list[str]:
    """The problems of the two-process scenario: findings, then B's verdict."""
    from emu.linux.config import MachineConfig, parse_assignments
    from emu.linux.program import assemble_program

    m = Machine(MachineConfig().with_switches(parse_assignments([CONFIGS[config]])), record_events=False)
    inc = '.include "isoemu.inc"\n.text\n'
    from emu.tools.asmtest.runtime import include_dirs
    dirs = include_dirs(__file__)
    a = m.add_process("A", assemble_program(inc + TWO_A, "A.S", m.layout, include_dirs=dirs))
    b = m.add_process("B", assemble_program(inc + TWO_B, "B.S", m.layout, include_dirs=dirs))
    m.boot()

    def publish(addr):
        if m.current_process() is a:
            m.mem.write_u64(m.pa_of(b.image.symbols["alias"], "B.kernel"), m.cpu.reg("r14"))
    m.cpu.add_code_hook(a.image.symbols["publish"], publish)
    m.run(20_000_000)
    problems = [f.line() for f in m.findings]
    if m.exits[b.pid]["status"] != 0:
        problems.append("B's kernel read A's secret through the direct map")
    return problems

# configurations that take the different flush paths of arch/x86/mm/tlb.c
CONFIGS = {
    "pti+pcid+invpcid": "asi=off",
    "pti+pcid": "asi=off,invpcid=off",
    "pti+pcid+asi": "invpcid=off",
    "pti": "asi=off,pcid=off",
    "nopti": "pti=off,asi=off",
    "pmd-cache": "asi=off,unmapped=pmd-cache",
    "pmd-cache+noinvpcid": "asi=off,unmapped=pmd-cache,invpcid=off",
}

# --- mutants ------------------------------------------------------------------------------------------
# (name, kernel function, what: "ret" for the whole routine, or (mnemonic, nth) for one instruction,
#  the scenario that catches it: (program, configuration))
MUTANTS = {
    "flush_tlb_all": ("flush_tlb_all", "ret", ("secret", "pmd-cache")),
    "invalidate_user_asid": ("invalidate_user_asid", "ret", ("munmap", "pti+pcid")),
    "flush_tlb_one_user": ("flush_tlb_one_user", "ret", ("munmap", "nopti")),
    "flush_tlb_one_kernel": ("flush_tlb_one_kernel", "ret", ("secret", "pti+pcid")),
    "flush_tlb_mm_local": ("flush_tlb_mm_local", "ret", ("munmap", "pti+pcid")),
    "flush_tlb_kernel_range": ("flush_tlb_kernel_range", "ret", ("secret", "pti+pcid")),
    "flush_tlb_all: invpcid": ("flush_tlb_all", ("invpcid", 0), ("secret", "pmd-cache")),
    "flush_tlb_all: first mov cr4": ("flush_tlb_all", ("mov cr4", 0), ("secret", "pmd-cache+noinvpcid")),
    "flush_tlb_all: second mov cr4": ("flush_tlb_all", ("mov cr4", 1), ("cr4-kept", "pmd-cache+noinvpcid")),
    "flush_tlb_one_user: invlpg": ("flush_tlb_one_user", ("invlpg", 0), ("munmap", "nopti")),
    "flush_tlb_one_user: invpcid": ("flush_tlb_one_user", ("invpcid", 0), ("munmap", "pti+pcid+invpcid")),
    "invalidate_user_asid: bts": ("invalidate_user_asid", ("bts", 0), ("munmap", "pti+pcid")),
    "flush_tlb_one_kernel: invalidate_other": ("flush_tlb_one_kernel", ("mov qword ptr gs:", 0),
                                               ("two-processes", "pti+pcid")),
    "flush_tlb_mm_local: mov cr3": ("flush_tlb_mm_local", ("mov cr3", 0), ("munmap", "pti")),
}


def _function_insns(img, func: str) -> list:
    start = img.symbols[func]
    end = min(a for n, a in img.symbols.items() if a > start and not n.startswith("."))
    return [i for i in img.insns if start <= i.addr < end]


def _patch(m: Machine, mutant: str) -> None:
    func, what, _ = MUTANTS[mutant]
    img = m.kernel.image
    if what == "ret":
        addr, data = img.symbols[func], b"\xc3"
    else:
        text, nth = what
        hits = [i for i in _function_insns(img, func) if f"{i.mnemonic} {i.op_str}".startswith(text)]
        ins = hits[nth]
        addr, data = ins.addr, bytes([NOP]) * ins.size
    m.mem.write(m.pa_of(addr), data)
    m.cpu.flush_code_cache()


@contextlib.contextmanager
def mutated(mutant: str):
    """Every machine booted inside runs the stub with ``mutant`` applied."""
    boot = Machine.boot

    def boot_mutated(self):
        fresh = self.cpu is None
        boot(self)
        if fresh:
            _patch(self, mutant)
    Machine.boot = boot_mutated
    try:
        yield
    finally:
        Machine.boot = boot


class _Result:
    def __init__(self, problems: list[str]):
        self.failures = problems


def cr4_kept(config: str) -> list[str]:
    """The secret program; CR4 must end as it started.  flush_tlb_all without
    INVPCID toggles CR4.PGE off and on (native_flush_tlb_global): the first
    write already flushes everything, so only this catches a lost second
    one, which would leave global pages off for good."""
    from emu.tools.asmtest import build_machine

    with _source_file(textwrap.dedent(SECRET).lstrip(), "secret.S", CONFIGS[config]) as path:
        m = build_machine(path)
        before = m.cpu.reg("cr4")
        m.run(20_000_000)
        after = m.cpu.reg("cr4")
    return [f.line() for f in m.findings] + ([f"CR4 {before:#x} -> {after:#x}"] if after != before else [])


def scenario_result(program: str, config: str):
    if program == "two-processes":
        return _Result(two_processes(config))
    if program == "cr4-kept":
        return _Result(cr4_kept(config))
    src = textwrap.dedent(PROGRAMS[program]).lstrip()
    name = f"{program}[{config}].S"
    return run_test_source(src, name, CONFIGS[config])


@contextlib.contextmanager
def _source_file(src: str, name: str, switches: str):
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, name)
        with open(path, "w") as f:
            f.write(f"; isoemu: {switches.replace(',', ' ')}\n" + src)
        yield path


def run_test_source(src: str, name: str, switches: str):
    with _source_file(src, name, switches) as path:
        return run_test(path, name=name)


SCENARIOS = sorted({MUTANTS[m][2] for m in MUTANTS})


@pytest.mark.parametrize("program,config", SCENARIOS, ids=[f"{p}/{c}" for p, c in SCENARIOS])
def test_scenarios_pass_unmutated(program, config):
    res = scenario_result(program, config)
    assert res.failures == [], [f.headline for f in res.failures]


@pytest.mark.parametrize("mutant", list(MUTANTS))
def test_mutant_is_caught(mutant):
    program, config = MUTANTS[mutant][2]
    with mutated(mutant):
        res = scenario_result(program, config)
    assert res.failures, f"{mutant}: {program}/{config} still passes"


def test_every_invalidation_site_has_a_mutant():
    """Every routine of kernel_stub/tlb.S and every invalidating instruction
    of the stub (INVLPG, INVPCID, MOV to CR4) has a row above: a new one
    without a scenario that needs it fails here."""
    from emu.linux.kernel import link_kernel
    from emu.linux.layout import layout_for

    img = link_kernel(layout_for(4))
    code = {i.addr for i in img.insns}
    routines = {name for name, addr in img.symbols.items()
                if addr in code and not name.startswith(".") and (ln := img.line_at(addr)) is not None
                and ln.file.endswith("/tlb.S")}
    covered = {func for func, what, _ in MUTANTS.values() if what == "ret"}
    assert routines == covered
    sites = set()
    for ins in img.insns:
        text = f"{ins.mnemonic} {ins.op_str}"
        if ins.mnemonic in ("invlpg", "invpcid") or text.startswith("mov cr4,"):
            sites.add(ins.addr)
    mutated_sites = set()
    for func, what, _ in MUTANTS.values():
        if what != "ret":
            text, nth = what
            hits = [i for i in _function_insns(img, func) if f"{i.mnemonic} {i.op_str}".startswith(text)]
            mutated_sites.add(hits[nth].addr)
    missing = sorted(sites - mutated_sites)
    assert not missing, [img.symbolize(a) for a in missing]
