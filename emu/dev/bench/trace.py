"""The tracer: traced and untraced execution of a memory-heavy program."""

from __future__ import annotations


from emu.dev.bench.core import bench, best, figure


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
