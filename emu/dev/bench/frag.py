"""``isoemu frag`` (docs/frag.md): the churn preset under each strategy,
beside the same run without the TLB model."""

from __future__ import annotations

from emu.dev.bench.core import bench, figure


@bench("frag")
def bench_frag(quick: bool) -> list[dict]:
    """Seconds for the churn preset (10,000 unmapped allocations among
    ordinary ones; 1,000 with --quick) per strategy, step checks on,
    beside the same with the TLB model off (tlb=False: the direct map and
    its counters only)."""
    from emu.tools.frag import STRATEGIES, preset, run_strategy

    n = 1_000 if quick else 10_000
    steps = preset("churn", seed=1, allocations=n)
    figs = []
    for name in STRATEGIES:
        on = min(run_strategy(steps, name).seconds for _ in range(1 if quick else 2))
        off = min(run_strategy(steps, name, tlb=False, check="off").seconds for _ in range(1 if quick else 2))
        figs.append(figure(f"frag_churn_seconds ({name}, {n:,} unmapped allocations, {len(steps):,} steps)", on,
                           "s", baseline=off, baseline_name="the same without the TLB model or checks",
                           higher_is_better=False, target="<= 5",
                           note="issue 16: 10,000 allocations per strategy in a few seconds"))
    return figs
