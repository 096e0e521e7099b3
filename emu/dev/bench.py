"""``isoemu bench``: speed figures, each beside a raw-Unicorn baseline.

Every figure is measured in this process, on this machine, in the same run
as its baseline, so ratios stay meaningful across machines.  Nothing here
asserts a speed: tests check the report's shape, people read the numbers.
"""

from __future__ import annotations

import platform
import time
from typing import Callable

from emu.errors import ConfigError

BENCHES: list[tuple[str, Callable[[bool], list[dict]]]] = []


def bench(name: str):
    def deco(fn):
        BENCHES.append((name, fn))
        return fn
    return deco


def best(fn: Callable[[], int], repeat: int = 3) -> tuple[float, int]:
    """Best wall time of ``repeat`` runs; fn returns its operation count."""
    fastest, n = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        n = fn()
        fastest = min(fastest, time.perf_counter() - t)
    return fastest, n


def figure(name: str, value: float, unit: str, *, baseline: float | None = None,
           baseline_name: str | None = None, higher_is_better: bool = True,
           target: str | None = None, note: str | None = None) -> dict:
    """One figure of the report.  ``target`` is text such as ``">= 1e5, ratio <= 2"``:
    comma-separated conditions on the value or (``ratio ...``) on the slowdown;
    the report carries it as data too (``targets``: ``{of, op, value, met}``
    each, and ``met``: all of them, None without a target)."""
    fig = {"name": name, "value": value, "unit": unit, "target": target}
    if baseline is not None:
        fig["baseline"] = baseline
        fig["baseline_name"] = baseline_name
        # the slowdown: isoemu's cost per operation over the baseline's
        fig["ratio"] = baseline / value if higher_is_better else value / baseline
        fig["ratio_meaning"] = "slowdown: isoemu time per operation / baseline time per operation"
    fig["targets"] = parse_targets(target, value, fig.get("ratio"))
    fig["met"] = all(t["met"] for t in fig["targets"]) if fig["targets"] else None
    if note:
        fig["note"] = note
    return fig


_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
        "<": lambda a, b: a < b}


def parse_targets(target: str | None, value: float, ratio: float | None) -> list[dict]:
    """``">= 1e5, ratio <= 2"`` as ``[{of: value, op: >=, value: 1e5, met}, {of: ratio, ...}]``."""
    out = []
    for part in (target or "").split(","):
        words = part.split()
        if not words:
            continue
        of = "value"
        if words[0] == "ratio":
            of, words = "ratio", words[1:]
        op = words[0] if words else ""
        try:
            limit = float(words[1]) if len(words) == 2 and op in _OPS else None
        except ValueError:
            limit = None
        if limit is None:
            raise ValueError(f"bench target {target!r}: write e.g. '>= 1e5' or 'ratio <= 2'")
        actual = value if of == "value" else ratio
        if actual is None:
            raise ValueError(f"bench target {target!r}: a ratio target needs a baseline")
        out.append({"of": of, "op": op, "value": limit, "met": bool(_OPS[op](actual, limit))})
    return out


# --- page tables: the page-table object, walker, ptdump ----------------------
@bench("page tables")
def bench_paging(quick: bool) -> list[dict]:
    from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc

    from emu.hw.cpu import Cpu
    from emu.dev.demo import build_demo
    from emu.linux.layout import LAYOUT_4LEVEL
    from emu.hw.paging import PAGE_KERNEL, ControlState, PageTable, translate
    from emu.hw.phys import GiB, MiB, PhysMem
    from emu.tools.ptdump import ptdump_lines

    figs = []
    # 1. PTEs written per second: a direct map of all RAM with 4 KiB pages.
    ram = 512 * MiB if quick else 4 * GiB

    def build() -> int:
        mem = PhysMem(ram)
        pt = PageTable.create(mem, policies=())
        pt.map(LAYOUT_4LEVEL.page_offset, 0, ram, PAGE_KERNEL, page_size=4096)
        mem.close()
        return ram >> 12

    dt, n = best(build, 1 if not quick else 2)
    # baseline: the same PTE values through the binding's uc.mem_write, one entry per call
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 64 * MiB, UC_PROT_ALL)
    m = 20000

    def raw() -> int:
        v = PAGE_KERNEL
        for i in range(m):
            uc.mem_write(0x100000 + 8 * (i & 0x7FFFF), (v | (i << 12)).to_bytes(8, "little"))
        return m

    bdt, bn = best(raw)
    figs.append(figure(f"pte_writes_per_s ({ram >> 30 or ram / GiB:g} GiB direct map, 4K pages)",
                       n / dt, "PTE/s", baseline=bn / bdt, baseline_name="uc.mem_write per PTE",
                       target=">= 5e6"))

    # 2. ptdump of the default kernel tables, and walker translations.
    demo = build_demo()
    sp_mem, root = demo.mem, demo.kernel.root
    dt, _ = best(lambda: len(ptdump_lines(sp_mem, root)), 5)
    figs.append(figure("ptdump_seconds (default kernel tables)", dt, "s", target="< 0.05",
                       note="pwndbg's native scanner: ~0.09 s on a real kernel"))

    ctl = ControlState()
    vas = [demo.kernel_text + 4096 * (i % 16) for i in range(64)] + \
          [LAYOUT_4LEVEL.page_offset + (i << 21) + 0x123 for i in range(64)]
    reps = 20000 if quick else 100000

    def walks() -> int:
        for i in range(reps):
            translate(sp_mem, root, vas[i & 127], 0, 0, ctl)
        return reps

    dt, n = best(walks)
    cpu = Cpu(sp_mem)
    cpu.enable_paging(root, ctl)
    hw = cpu.hw_translate
    flush = cpu.flush_tlb

    def hw_walks() -> int:
        for i in range(reps):
            flush()
            hw(vas[i & 127], 0)
        return reps

    bdt, bn = best(hw_walks)
    figs.append(figure("walker_translations_per_s", n / dt, "walks/s", baseline=bn / bdt,
                       baseline_name="uc_vmem_translate after a TLB flush", target=">= 3e5"))
    return figs


# --- raw-Unicorn baselines: the same loops, a hook that only redirects RIP ----------------
class _RawLoop:
    """A user loop in plain Unicorn (paging on, one page table, no
    microcode).  ``syscalls``: the SYSCALL hook leaves RIP after the
    instruction (Unicorn adds 2).  ``faults``: the interrupt hook restores a
    snapshot (the only way to clear QEMU's pending exception, docs/architecture.md,
    Unicorn fact 3) and moves RIP past the faulting 2-byte load."""

    SOURCE = """
syscalls:
    syscall
    dec rbx
    jnz syscalls
    hlt
faults:
    mov al, byte ptr [rsi]
    dec rbx
    jnz faults
    hlt
"""

    def __init__(self):
        from unicorn import x86_const as X

        from emu.asm import link
        from emu.hw.cpu import Cpu, OneReg
        from emu.hw.microcode import RegFile
        from emu.hw.paging import PAGE_SHARED_EXEC, ControlState, PageTable
        from emu.hw.phys import FrameKind, MiB, PhysMem

        self.mem = PhysMem(32 * MiB)
        pt = PageTable.create(self.mem)
        pa = self.mem.frames.alloc(FrameKind.USER, 9, "bench")
        pt.map(0x400000, pa, 2 * MiB, PAGE_SHARED_EXEC)
        self.img = link([("<raw baseline>", self.SOURCE)], {".text": 0x400000})
        self.mem.write(pa, self.img.sections[".text"].data)
        cpu = self.cpu = Cpu(self.mem)
        cpu.enable_paging(pt.root, ControlState(smap=False, smep=False))
        cpu.save_snapshot()
        regs = RegFile(cpu.hv)
        restore = cpu.restore_snapshot

        rip = OneReg(cpu, X.UC_X86_REG_RIP)
        back = self.img.symbols["syscalls"]

        def on_syscall(uch, ud):
            rip.write(back)           # to the instruction after the syscall (Unicorn adds 2)

        def on_intr(uch, intno, ud):
            regs.read()
            restore()
            regs["rip"] = regs["rip"] + 2
            regs.write()

        cpu.add_hook("syscall", on_syscall)
        cpu.add_hook("intr", on_intr)

    def run(self, label: str, n: int) -> int:
        cpu = self.cpu
        cpu.set_reg("rbx", n)
        cpu.set_reg("rsi", 0x10000000)          # unmapped: every load faults
        cpu.emu_start(self.img.symbols[label], 4 * n + 8)
        if cpu.reg("rbx") != 0:
            raise RuntimeError(f"raw baseline {label}: loop stopped early")
        return n


# --- the microcode on a bare system ---------------------------------
_BARE_KERNEL = """
entry_syscall:
    cmp eax, 1
    je .Lhalt
    sysret
.Lhalt:
    hlt
page_fault:
    add rsp, 8
    add qword ptr [rsp], 2
    iretq
"""
_BARE_USER = """
syscalls:
    syscall
    dec rbx
    jnz syscalls
    mov eax, 1
    syscall
faults:
    mov al, byte ptr [rsi]
    dec rbx
    jnz faults
    mov eax, 1
    syscall
"""


@bench("microcode")
def bench_microcode(quick: bool) -> list[dict]:
    from emu.dev.bare import bare_system

    n = 5000 if quick else 50000
    raw = _RawLoop()
    b = bare_system(_BARE_KERNEL, _BARE_USER, gates={14: "page_fault"}, lstar="entry_syscall")

    def bare(label: str) -> int:
        b.start_user(label, rbx=n, rax=0, rsi=0x10000000)
        if b.cpu.run(6 * n + 16) != "halt" or b.cpu.reg("rbx") != 0:
            raise RuntimeError(f"bench: bare {label} loop did not finish")
        return n

    figs = []
    for label, name, target in (
            ("syscalls", "bare_syscall_round_trips_per_s (SYSCALL microcode + sysret)", "ratio <= 2"),
            ("faults", "bare_faults_per_s (#PF through the IDT + iretq)", ">= 1e5, ratio <= 2")):
        dt, k = best(lambda: bare(label))
        bdt, bk = best(lambda: raw.run(label, n))
        figs.append(figure(name, k / dt, "1/s", baseline=bk / bdt,
                           baseline_name="raw Unicorn loop, hook only redirects RIP", target=target))
    return figs


# --- the stub: syscalls, probes, secret memory, the matrix (issues: machine, isolation) --
def _loop_program(body: str, n: int) -> str:
    return (f"_start:\n    mov ebx, {n}\n.Lloop:\n{body}    dec ebx\n    jnz .Lloop\n"
            "    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n")


def _time_program(cfg, src: str, n: int) -> float:
    """Seconds per iteration of a looping user program (boot excluded)."""
    from emu.linux.machine import Machine

    def once() -> int:
        m = Machine(cfg, programs=[("A", src)], record_events=False)
        m.boot()
        t = time.perf_counter()
        m.run(2_000_000_000)
        once.dt = time.perf_counter() - t
        if m.exits.get(1, {}).get("status") != 0:
            raise RuntimeError(f"bench program failed: {m.exits}")
        return n

    fastest = float("inf")
    for _ in range(2):
        once()
        fastest = min(fastest, once.dt)
    return fastest / n


_GETPID = "    mov eax, SYS_getpid\n    syscall\n"
_PROBE = ("    mov eax, SYS_probe\n    mov rdi, {va}\n    xor esi, esi\n    mov edx, {space}\n"
          "    syscall\n")
_SECRET = """    mov eax, SYS_memfd_secret
    xor edi, edi
    syscall
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ + PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
    syscall
    mov r13, rax
    mov byte ptr [rax], 1
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
    syscall
    mov eax, SYS_close
    mov rdi, r12
    syscall
"""


@bench("machine")
def bench_machine(quick: bool) -> list[dict]:
    from emu.linux.machine import MachineConfig
    from emu.tools.matrix import run_matrix

    n = 2000 if quick else 20000
    raw = _RawLoop()
    bdt, bk = best(lambda: raw.run("syscalls", n))
    raw_rate = bk / bdt
    figs = []
    for cfg, what, target in ((MachineConfig(), "PTI+PCID+ASI", ">= 5e4"),
                              (MachineConfig(pti=False, asi=False), "no PTI, no ASI", None)):
        per = _time_program(cfg, _loop_program(_GETPID, n), n)
        figs.append(figure(f"stub_syscall_round_trips_per_s ({what}, getpid)", 1 / per, "1/s",
                           baseline=raw_rate, baseline_name="raw Unicorn syscall loop, hook only redirects RIP",
                           target=target))
    # SYS_probe: kernel data through the ASI tables (no exit), and the direct
    # map of USER_DATA (sensitive: an ASI exit each time)
    for va, what in (("KERNEL_DATA", "kernel data, A.asi"), ("USER_DATA", "user data via STAC, A.kernel")):
        space = 1 if va == "KERNEL_DATA" else 0
        per = _time_program(MachineConfig(), _loop_program(_PROBE.format(va=va, space=space), n), n)
        figs.append(figure(f"probes_per_s (SYS_probe: {what})", 1 / per, "1/s", baseline=raw_rate,
                           baseline_name="raw Unicorn syscall loop, hook only redirects RIP", target=">= 1e5"))
    k = max(n // 20, 100)
    per = _time_program(MachineConfig(), _loop_program(_SECRET, k), k)
    figs.append(figure("secret_page_lifecycles_per_s (memfd_secret, ftruncate, mmap, first-touch fault "
                       "removing the direct map, munmap, close restoring it)", 1 / per, "1/s"))
    dt, _ = best(lambda: len(run_matrix().cells), 2)
    cells = len(run_matrix().cells)
    figs.append(figure("matrix_seconds (boot + every cell, default machine)", dt, "s", target="< 2"))
    figs.append(figure("matrix_probes_per_s (cells / matrix time)", cells / dt, "1/s"))
    return figs


# --- the TLB model --------------------------------------------------------------------------
_MEMORY_BODY = "    push rbx\n    mov rax, qword ptr [rsp]\n    add qword ptr [rsp], rax\n    pop rax\n"


@bench("tlb")
def bench_tlb(quick: bool) -> list[dict]:
    """What the TLB model (tlb=check, the default) costs against tlb=off, in
    the same run: a user loop that never enters the kernel, getpid with
    PTI+PCID+ASI (four CR3 writes a call), and the asm suite."""
    from emu.linux.machine import MachineConfig

    figs = []
    n = 200_000 if quick else 2_000_000
    off, on = _paired(MachineConfig(tlb="off"), MachineConfig(), _loop_program(_MEMORY_BODY, n), n)
    figs.append(figure("tlb_check_user_loop_iterations_per_s (push, load, add to memory, pop; no kernel entry)",
                       on, "1/s", baseline=off, baseline_name="the same with tlb=off", target="ratio <= 1.11",
                       note="target: tlb=check at least 0.9x the speed of tlb=off"))
    n = 2000 if quick else 20000
    off, on = _paired(MachineConfig(tlb="off"), MachineConfig(), _loop_program(_GETPID, n), n)
    figs.append(figure("tlb_check_getpid_per_s (PTI+PCID+ASI)", on, "1/s", baseline=off,
                       baseline_name="the same with tlb=off", target="ratio <= 2",
                       note="target: tlb=check at least 0.5x the speed of tlb=off"))
    suite = _asm_suite()
    if suite:
        from emu.tools.asmtest import run_variants

        def run(mode: str) -> int:
            return sum(len(run_variants(f, overrides={"tlb": mode})) for f in suite)
        k = run("check")                          # assemble and cache every image first
        t_off = t_on = float("inf")
        for _ in range(1 if quick else 3):        # alternated: the host's noise hits both
            t_off = min(t_off, best(lambda: run("off"), 1)[0])
            t_on = min(t_on, best(lambda: run("check"), 1)[0])
        figs.append(figure(f"tlb_check_asm_suite_seconds ({len(suite)} files, {k} configurations; asm/tlb "
                           f"excluded: its expectations need the model)", t_on, "s", baseline=t_off,
                           baseline_name="the same with tlb=off", higher_is_better=False,
                           target="ratio <= 1.5"))
    return figs


def _paired(base, cfg, src: str, n: int, rounds: int = 3) -> tuple[float, float]:
    """Iterations per second of ``src`` on ``base`` and on ``cfg``, the best
    of ``rounds`` alternated runs each (a noisy host slows both alike)."""
    a = b = 0.0
    for _ in range(rounds):
        a = max(a, 1 / _time_program(base, src, n))
        b = max(b, 1 / _time_program(cfg, src, n))
    return a, b


def _asm_suite() -> list[str]:
    """The repository's asm/ tests (none in an installed package), without asm/tlb."""
    import os

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "asm")
    if not os.path.isdir(root):
        return []
    from emu.tools.asmtest.command import discover

    return [f for f in discover([root]) if os.sep + "tlb" + os.sep not in f]


# --- the tracer -------------------------------------------------------------------------
BENCH_PROGRAM = """
# memory-heavy user code: loads, stores, read-modify-writes and stack traffic
# over a 4 KiB buffer, forever
.text
_start:
    mov rbx, USER_DATA
    xor ecx, ecx
loop:
    mov rax, qword ptr [rbx + rcx*8]
    add rax, 1
    mov qword ptr [rbx + rcx*8 + 8], rax
    add qword ptr [rbx], rax
    mov rdx, qword ptr [rip + counter]
    mov qword ptr [rip + counter], rdx
    push rax
    pop rdx
    inc ecx
    and ecx, 0x1fe
    jmp loop
.data
counter: .quad 0
"""


@bench("trace")
def bench_tracing(quick: bool) -> list[dict]:
    """Traced and untraced execution of :data:`BENCH_PROGRAM` on the default
    machine, each beside raw Unicorn running the same loop through the same
    page tables (at CPL 0, no microcode): with no hook, and with an empty
    Python code hook (the binding's ``hook_add``).  All in this run.

    Traced twice: with every record kept by the tracer (made a
    :class:`Record` when someone looks, :attr:`Tracer.records`), and with
    every record handed out as a :class:`Record` one at a time by
    :meth:`Tracer.run`, as :func:`iter_trace` and ``isoemu trace`` do."""
    from unicorn import UC_HOOK_CODE

    from emu.hw.paging import ControlState
    from emu.linux.machine import BudgetExhausted, Machine, MachineConfig
    from emu.tools.trace import DEFAULT_CHUNK, Tracer

    from emu.hw.cpu import Cpu

    m = Machine(MachineConfig(), programs=[("A", BENCH_PROGRAM)], record_events=False)
    m.boot()
    m.step(50_000)                                   # boot, enter the loop
    n_fast = 5_000_000 if quick else 50_000_000
    n_slow = 100_000 if quick else 1_000_000
    tracer = Tracer(m)
    kept, streamed = [], []

    def untraced() -> int:
        m.step(n_fast)
        return n_fast

    def traced() -> int:
        with tracer:
            for done in range(0, n_slow, DEFAULT_CHUNK):
                m.step(min(DEFAULT_CHUNK, n_slow - done))
                kept.append(tracer.discard())
        return n_slow

    def traced_streamed() -> int:
        n = 0
        with tracer:
            try:
                for _ in tracer.run(n_slow, DEFAULT_CHUNK):
                    n += 1
            except BudgetExhausted:           # the loop never ends
                pass
        streamed.append(n)
        return n_slow

    raw = Cpu(m.mem)
    raw.enable_paging(m.cpu.reg("cr3"), ControlState(smep=False, smap=False))
    for n in ("rip", "rsp", "rbx", "rcx"):
        raw.set_reg(n, m.cpu.reg(n))

    def raw_run(count: int):
        def go() -> int:
            raw.emu_start(raw.reg("rip"), count)
            return count
        return go

    t_untraced, _ = best(untraced)
    t_raw, _ = best(raw_run(n_fast))
    h = raw.uc.hook_add(UC_HOOK_CODE, lambda *a: None)
    raw.flush_code_cache()
    t_hook, _ = best(raw_run(n_slow))
    raw.uc.hook_del(h)
    t_traced, _ = best(traced, 3)
    t_streamed, _ = best(traced_streamed, 3)
    t_after, _ = best(untraced)
    baselines = {"raw Unicorn, no hooks": n_fast / t_raw,
                 "raw Unicorn, empty Python code hook": n_slow / t_hook}
    figs = []
    for name, ips, target in (
            ("traced_insn_per_s (memory-heavy user loop, every access recorded)", n_slow / t_traced, ">= 1e6"),
            ("traced_streamed_insn_per_s (the same, each record handed out as a Record by Tracer.run)",
             n_slow / t_streamed, None),
            ("untraced_insn_per_s (the same loop, no tracer)", n_fast / t_untraced, ">= 5e7")):
        fig = figure(name, ips, "insn/s", baseline=baselines["raw Unicorn, no hooks"],
                     baseline_name="raw Unicorn, no hooks", target=target)
        fig["baselines"] = dict(baselines)
        fig["ratios"] = {k: v / ips for k, v in baselines.items()}     # slowdowns, as "ratio"
        figs.append(fig)
    figs[0]["note"] = (f"{sum(kept) / (3 * n_slow):.2f} records per instruction, kept as tuples and made "
                       f"Records on demand; {tracer.anchor_count} anchors")      # three timed runs
    figs[1]["note"] = f"{sum(streamed) / (3 * n_slow):.2f} records per instruction"
    figs[2]["note"] = f"after the tracer detached: {n_fast / t_after:.3g} insn/s"
    return figs


# --- real-kernel images (docs/images.md, "Speed") ---------------------------------------------
#: pwndbg's page-table scanner on the same extracted fixture, measured by hand
#: (docs/images.md, "Speed": how); not run here, pwndbg is not a dependency
PWNDBG_NOTE = ("pwndbg's page-table scanner (gdb-pt-dump's parse_tables) on the same fixture: "
               "0.042 s quiet, 0.076 s loaded (docs/images.md, \"Speed\")")


def image_fixtures() -> list:
    """The committed real-kernel fixtures (tests/fixtures/linux61-*.elf), in a checkout."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
    return sorted(root.glob("linux61-*.elf"))


@bench("images")
def bench_images(quick: bool) -> list[dict]:
    """ptdump, walk and check of a real Linux 6.1 kernel's tables (an
    extracted fixture, a fresh read of the file each time), each beside the
    same work without the visitor's memoization in this run (ESPfix's
    65,536 aliases walked one by one)."""
    from emu.hw.image import ImageMem
    from emu.tools import lint, ptdump
    from emu.tools.detect import image_translate
    from emu.tools.image import open_image

    fixtures = image_fixtures()
    if not fixtures:
        raise ConfigError("the images benchmarks need the repository's tests/fixtures/linux61-*.elf "
                          "(run isoemu bench from a checkout, or --only another group)")
    figs = []
    for path in fixtures[:1] if quick else fixtures:
        name = path.stem
        setup = open_image(str(path))
        layout, root, ctl = setup.layout, setup.root, setup.ctl

        def fresh():
            return ImageMem(str(path))          # the tables read from the file again

        def do_ptdump(memoize: bool = True) -> int:
            return len(ptdump.ptdump_lines(fresh(), root, ctl.mode, layout, memoize=memoize))

        def do_check(memoize: bool = True) -> int:
            return len(lint.check(fresh(), root, ctl.mode, ctl.maxphyaddr, lint.LINTS, layout, ctl.nxe,
                                  memoize=memoize))

        def do_walk() -> int:
            s = open_image(str(path))               # the whole command: open, detect, walk
            image_translate(s.mem, s.root, s.layout.kernel_text, s.ctl)
            return 1

        lines = do_ptdump()
        t_pt, _ = best(do_ptdump, 5)
        t_check, _ = best(do_check, 5)
        t_walk, _ = best(do_walk, 5)
        # the baseline: the same walks, every subtree walked each time it is referenced
        t_pt0, _ = best(lambda: do_ptdump(False), 1)
        t_check0, _ = best(lambda: do_check(False), 1)
        base = "the same without memoization (every ESPfix alias walked)"
        figs.append(figure(f"image_ptdump_seconds ({name}, {lines} lines)", t_pt, "s", baseline=t_pt0,
                           baseline_name=base, higher_is_better=False, target="<= 0.05", note=PWNDBG_NOTE))
        figs.append(figure(f"image_check_seconds ({name})", t_check, "s", baseline=t_check0,
                           baseline_name=base, higher_is_better=False, target="<= 0.1"))
        figs.append(figure(f"image_walk_seconds ({name}: open, detect, one walk)", t_walk, "s",
                           target="<= 0.05"))
    return figs


def run_bench(quick: bool = False, only: list[str] | None = None) -> dict:
    if only:
        names = [name for name, _ in BENCHES]
        for o in only:
            if not any(o in name for name in names):
                raise ConfigError(f"--only {o}: no benchmark group matches (groups: {', '.join(names)})")
    figs = []
    for name, fn in BENCHES:
        if only and not any(o in name for o in only):
            continue
        figs.extend(fn(quick))
    import unicorn
    targeted = [f for f in figs if f.get("met") is not None]
    return {"machine": {"python": platform.python_version(), "unicorn": unicorn.__version__,
                        "cpu": platform.processor() or platform.machine()},
            "quick": quick, "figures": figs,
            "summary": {"figures": len(figs), "with_target": len(targeted),
                        "met": sum(1 for f in targeted if f["met"]),
                        "missed": [f["name"] for f in targeted if not f["met"]]}}
