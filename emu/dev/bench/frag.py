"""The fragmentation experiment (docs/frag.md): a churn of unmapped
allocations per strategy, against the page allocator alone."""

from __future__ import annotations

import time

from emu.dev.bench.core import bench, figure


def _allocator_alone(steps, ram: int) -> float:
    """The baseline: the same allocations and frees on the bare frame
    allocator, no direct map, no TLB model."""
    from emu.hw.phys import FrameKind, PhysMem

    mem = PhysMem(ram)
    try:
        fa = mem.frames
        live: dict[str, list[int]] = {}
        by_owner: dict[str, list[str]] = {}
        t = time.perf_counter()
        for st in steps:
            if st.op in ("alloc", "kernel"):
                live[st.name] = [fa.alloc(FrameKind.SECRET, 0, st.owner) for _ in range(st.pages)]
                by_owner.setdefault(st.owner, []).append(st.name)
            elif st.op == "free":
                for pa in live.pop(st.name, ()):
                    fa.free(pa)
            else:
                for name in by_owner.pop(st.name, ()):
                    for pa in live.pop(name, ()):
                        fa.free(pa)
        return time.perf_counter() - t
    finally:
        mem.close()


@bench("frag")
def bench_frag(quick: bool) -> list[dict]:
    from emu.tools.frag import DEFAULT_RAM, STRATEGIES, preset, run_strategy

    n = 1000 if quick else 10_000
    steps = preset("churn", seed=1, allocations=n)
    base = min(_allocator_alone(steps, DEFAULT_RAM) for _ in range(3))
    figs = []
    for s in STRATEGIES:
        t = min(run_strategy(steps, s, ram=DEFAULT_RAM, check="step").seconds for _ in range(1 if quick else 2))
        figs.append(figure(f"frag_churn_seconds ({s}, {n} allocations, {len(steps)} steps, 4G)", t, "s",
                           baseline=base, baseline_name="the same steps on the bare frame allocator",
                           higher_is_better=False, target="<= 5",
                           note="issue target: 10,000 allocations per strategy in a few seconds"))
    return figs
