"""The kernel stub against the fragmentation model (docs/frag.md, "The stub
against the model").

One workload of secret pages: M processes, each with a memfd_secret file of
N pages that it touches one by one and then yields; once every process
holds its pages they exit in turn, which releases their files.  The last
L of them ("late") yield first, and allocate only after the others have
exited, so they reuse what the others freed.  It runs twice:

* in the kernel stub under ``unmapped=STRATEGY`` (and ``collapse=``), as
  real processes; every call into the unmapped allocator
  (kernel_stub/unmapped.S) is observed at its leave hook: the DirectMap
  counters and vm events the stub keeps, and the TLB model's flushes issued
  inside the allocator (emu/linux/unmapped.py);
* in the model (:class:`emu.tools.frag.Experiment`), the same steps with the
  frames replayed: the model's page allocator hands out the frames the stub
  got (its pages, or its 2 MiB blocks), so both take the same pages out of
  the same direct map.

The figures after each model step are compared with the stub's after the
matching call (an ``alloc`` step is one call, an ``exit`` N frees and one
release), as differences from boot: the stub's boot already made the
kernel image's direct-map alias read-only, which the model does not have.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.errors import ConfigError, IsoemuError
from emu.hw.paging import RW
from emu.hw.phys import PAGE_SIZE, SIZE_2M, FrameKind
from emu.linux.config import MachineConfig
from emu.linux.machine import Machine
from emu.tools.frag.run import FIGURES, Experiment
from emu.tools.frag.workload import Step

#: the figures both sides have
COMPARED = ("DirectMap4k", "DirectMap2M", "DirectMap1G", "level2_splits", "level3_splits", "collapses",
            "tlb_full_flushes", "tlb_invlpg")
#: the stub's counter (Machine.stats) behind each compared figure
STUB_STATS = {"DirectMap4k": ("DirectMap4k",), "DirectMap2M": ("DirectMap2M",), "DirectMap1G": ("DirectMap1G",),
              "level2_splits": ("direct_map_level2_splits",), "level3_splits": ("direct_map_level3_splits",),
              "collapses": ("direct_map_level2_collapses", "direct_map_level3_collapses"),
              "tlb_full_flushes": ("unmapped_tlb_full_flushes",), "tlb_invlpg": ("unmapped_tlb_invlpg",)}
MAX_PROCESSES = 6
BUDGET = 50_000_000


class CrossCheckError(IsoemuError):
    """The stub's run did not follow the workload (a bug in the stub or here)."""


@dataclass
class CrossCheck:
    """One strategy's run on both sides: the compared figures after each step, as changes from boot."""

    strategy: str
    collapse: bool
    processes: int
    pages: int
    late: int
    steps: list[str] = field(default_factory=list)
    stub: list[dict[str, int]] = field(default_factory=list)
    model: list[dict[str, int]] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)

    def mismatches(self) -> list[str]:
        out = [f"stub TLB finding: {f}" for f in self.findings]
        for step, s, m in zip(self.steps, self.stub, self.model):
            for name in COMPARED:
                if s[name] != m[name]:
                    out.append(f"{step}: {name} stub {s[name]} model {m[name]}")
        return out

    @property
    def end(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.stub[-1], self.model[-1]


def program(pages: int, late: bool = False) -> str:
    """A process's program: a secret file of ``pages`` pages, each touched, then a yield, then exit
    (``late``: a yield first)."""
    yield_ = "    mov eax, SYS_sched_yield\n    syscall\n"
    touches = "\n".join(f"    mov byte ptr [r13 + {i * PAGE_SIZE}], 1" for i in range(pages))
    return (f'.include "isoemu.inc"\n.text\n_start:\n{yield_ if late else ""}'
            f"    secret_map r13, {pages * PAGE_SIZE}, {pages * PAGE_SIZE}\n{touches}\n{yield_}    sys_exit 0\n")


def workload(processes: int, pages: int, late: int = 0) -> list[Step]:
    """The model's steps: every page of the early processes allocated, process by process, then
    they exit; then the late ones, the same way."""
    def wave(ps):
        return [Step("alloc", f"p{p}.k{i}", 1, owner=f"p{p}", where=f"p{p} page {i}") for p in ps
                for i in range(pages)] + [Step("exit", f"p{p}", where=f"p{p} exits") for p in ps]
    return wave(range(processes - late)) + wave(range(processes - late, processes))


def run_stub(strategy: str, collapse: bool, processes: int, pages: int, late: int, ram: int, pool: int,
             inject: frozenset = frozenset()):
    """The stub's figures after each allocator call (with the call), at boot, the 2M pages its
    boot made read-only, and its TLB findings."""
    cfg = MachineConfig(unmapped=strategy, collapse=collapse, ram=ram, unmapped_pool=pool, asi="off", inject=inject)
    m = Machine(cfg, [(f"P{p}", program(pages, p >= processes - late)) for p in range(processes)],
                record_events=False)
    m.boot()
    calls: list[tuple[str, int, dict[str, int]]] = []

    def figures() -> dict[str, int]:
        st = m.stats()
        return {name: sum(st[k] for k in keys) for name, keys in STUB_STATS.items()} | \
            {"blocks": st["unmapped_blocks"]}

    boot = figures()
    # the 2M pages the stub's boot made read-only (the kernel image's alias, which split a 1G page)
    base = m.layout.page_offset
    read_only = [leaf.va - base for leaf in m.kernel.init_pgd.leaves(base, base + ram)
                 if leaf.size == SIZE_2M and not leaf.entry & RW]
    m.unmapped_flushes.listeners.append(lambda op, a, b, result: calls.append((op, result, figures())))
    m.run(BUDGET)
    bad = [p.name for p in m.processes if m.exits.get(p.pid, {}).get("status") != 0]
    if bad:
        raise CrossCheckError(f"frag --stub: process {bad[0]} of the stub did not exit with status 0")
    return calls, boot, read_only, [f.line() for f in m.findings]


def cross_check(strategy: str, collapse: bool = False, processes: int = 3, pages: int = 2, late: int = 0,
                ram: int = 256 << 20, pool: int = 16 << 20, inject: frozenset = frozenset()) -> CrossCheck:
    """``strategy`` in the stub (``inject``: its injections) and in the model, compared."""
    if not 1 <= processes <= MAX_PROCESSES:
        raise ConfigError(f"frag --stub: {processes} processes: use 1 .. {MAX_PROCESSES}")
    if not 1 <= pages <= 64:
        raise ConfigError(f"frag --stub: {pages} pages a process: use 1 .. 64 (a memfd's limit here)")
    if not 0 <= late < processes:
        raise ConfigError(f"frag --stub: {late} late processes of {processes}: use 0 .. {processes - 1}")
    calls, boot, read_only, findings = run_stub(strategy, collapse, processes, pages, late, ram, pool, inject)
    steps = workload(processes, pages, late)
    want = [c for st in steps for c in (["alloc"] if st.op == "alloc" else ["free"] * pages + ["release"])]
    if [c[0] for c in calls] != want:
        raise CrossCheckError(f"frag --stub: the stub's allocator calls were {[c[0] for c in calls]}, "
                              f"not the workload's {want}")
    # the frames the model's page allocator must hand out, in order
    replay: list[tuple[int, int]] = []
    blocks = boot["blocks"]
    for op, result, fig in calls:
        if op == "alloc" and strategy == "page":
            replay.append((0, result))
        elif op == "alloc" and fig["blocks"] > blocks:
            replay.append((9, result & -SIZE_2M))
        blocks = fig["blocks"]
    ex = Experiment(strategy, ram=ram, collapse=collapse, pool=pool, check="full")
    for pa in read_only:                        # the stub's boot shape, then figures from there
        ex.dm.make_read_only(pa)
    ex.dm.flush_all()                           # (boot: before any translation is used)
    base = ex.figures()
    frames = ex.dm.mem.frames
    held = set(replay)
    for order, pa in held:                      # placeholders: the model's own tables go elsewhere
        frames.alloc_at(pa, FrameKind.KERNEL_DATA, order, "replay")
    queue = list(replay)

    def buddy(order: int, kind: FrameKind, owner: str) -> int | None:
        if not queue or queue[0][0] != order:
            raise CrossCheckError(f"frag --stub: the model asked for an order-{order} frame the stub never took")
        pa = queue.pop(0)[1]
        if (order, pa) in held:
            held.discard((order, pa))
            frames.free(pa)
        return frames.alloc_at(pa, kind, order, owner)

    ex.s.buddy = buddy
    for i, st in enumerate(steps, 1):
        ex.step(i, st)
    ex.check_full()
    model = [{n: row[FIGURES.index(n)] - base[FIGURES.index(n)] for n in COMPARED} for row in ex.run.steps[1:]]
    ex.dm.mem.close()
    # the stub's figures after the call that ends each step
    ends, i = [], 0
    for st in steps:
        i += 1 if st.op == "alloc" else pages + 1
        ends.append(calls[i - 1][2])
    stub = [{n: f[n] - boot[n] for n in COMPARED} for f in ends]
    return CrossCheck(strategy, collapse, processes, pages, late, [st.where for st in steps], stub, model, findings)


def to_json(checks: list[CrossCheck]) -> dict:
    return {"figures": list(COMPARED), "checks": [
        {"strategy": c.strategy, "collapse": c.collapse, "processes": c.processes, "pages": c.pages, "late": c.late,
         "steps": c.steps, "stub": c.stub, "model": c.model, "mismatches": c.mismatches()} for c in checks]}


def table(checks: list[CrossCheck]) -> str:
    """The end figures of each check, stub and model side by side, and the verdict."""
    head = f"{'figure (change from boot)':28}" + "".join(
        f"{c.strategy + ('+collapse' if c.collapse else ''):>22}" for c in checks)
    lines = [head, f"{'':28}" + "".join(f"{'stub':>11}{'model':>11}" for _ in checks)]
    for name in COMPARED:
        lines.append(f"{name:28}" + "".join(f"{c.end[0][name]:>11}{c.end[1][name]:>11}" for c in checks))
    lines.append(f"{'steps that differ':28}" + "".join(
        f"{len({m.split(':')[0] for m in c.mismatches()}):>22}" for c in checks))
    return "\n".join(lines)
