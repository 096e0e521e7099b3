"""The experiment's results as a table, as JSON and as a plot (docs/frag.md)."""

from __future__ import annotations

import io
import os

from emu.errors import ConfigError
from emu.hw.paging import fmt_size
from emu.tools.frag.run import FIGURES, Run
from emu.tools.frag.strategies import ReservedStrategy
from emu.tools.frag.workload import Step

#: what each figure is, for the table and the JSON
UNITS = {"DirectMap4k": "kB", "DirectMap2M": "kB", "DirectMap1G": "kB", "stranded_kB": "kB",
         "unmovable_kB": "kB", "unmapped_kB": "kB"}
PEAKS = ("reach", "stranded_kB", "unmovable_kB", "unmapped_kB")


def to_json(runs: list[Run], about: dict, steps: list[str]) -> dict:
    """``{workload, figures, strategies: {NAME: {total, peak, steps}}, step_names}``."""
    return {
        **about,
        "figures": list(FIGURES),
        "step_names": ["boot"] + steps,
        "strategies": {r.strategy: {"collapse": r.collapse, "allocations": r.allocations,
                                    "total": r.total, "peak": {p: r.peak(p) for p in PEAKS},
                                    "steps": r.steps} for r in runs},
    }


def table(runs: list[Run], about: dict) -> str:
    """The totals of every strategy side by side, and the peaks."""
    w = max(14, *(len(r.strategy) + 2 for r in runs))
    n = about["allocations"]
    lines = [f"workload {about['workload']}: {about['steps']} steps, {n} unmapped allocation{'s' * (n != 1)}; "
             f"ram {about['ram']}, collapse {'on' if about['collapse'] else 'off'}"
             + (f", reserved pool {about['pool']}" if any(r.strategy == "reserved" for r in runs) else ""),
             f"{'at the end':<28}" + "".join(f"{r.strategy:>{w}}" for r in runs)]
    for name in FIGURES:
        label = name + (" (kB)" if UNITS.get(name) == "kB" and not name.endswith("_kB") else "")
        lines.append(f"{label:<28}" + "".join(f"{r.total[name]:>{w}}" for r in runs))
    lines.append(f"{'peak':<28}")
    for name in PEAKS:
        lines.append(f"{'  ' + name:<28}" + "".join(f"{r.peak(name):>{w}}" for r in runs))
    return "\n".join(lines)


def step_table(run: Run, steps: list[str]) -> str:
    """Every step of one strategy: the step, then its figures."""
    short = ("4k", "2M", "1G", "l2sp", "l3sp", "coll", "fullfl", "invlpg", "inval", "reach", "strandK",
             "unmovK", "fail", "unmapK")
    head = f"{run.strategy}{' (collapse)' if run.collapse else ''}"
    lines = [head, f"{'step':<34}" + "".join(f"{s:>9}" for s in short)]
    for text, row in zip(["boot"] + steps, run.steps):
        lines.append(f"{text[:33]:<34}" + "".join(f"{v:>9}" for v in row))
    return "\n".join(lines)


# --- the plot ---------------------------------------------------------------------------------
PANELS = (
    ("direct map (MiB)", (("DirectMap4k", 1 / 1024), ("DirectMap2M", 1 / 1024), ("DirectMap1G", 1 / 1024)), True),
    ("TLB entries to cover it (reach)", (("reach", 1),), False),
    ("splits and collapses", (("level2_splits", 1), ("level3_splits", 1), ("collapses", 1)), False),
    ("TLB flushes", (("tlb_full_flushes", 1), ("tlb_invlpg", 1)), False),
    ("memory (MiB)", (("unmapped_kB", 1 / 1024), ("stranded_kB", 1 / 1024), ("unmovable_kB", 1 / 1024)), False),
)


def describe(name: str, steps: list[Step], ram: int, pool: int, collapse: bool) -> dict:
    """What the table, the JSON and the plot say of the run (``about``)."""
    return {"workload": name, "steps": len(steps), "allocations": sum(st.op == "alloc" for st in steps),
            "ram": fmt_size(ram), "pool": fmt_size(pool or ReservedStrategy.DEFAULT_POOL), "collapse": collapse}


def plot(runs: list[Run], about: dict, path: str) -> None:
    """One column a strategy, one row a group of figures, over the steps;
    PNG or SVG as the file name ends."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".png", ".svg"):
        raise ConfigError(f"--plot {path}: the file name must end in .png or .svg")
    data = plot_bytes(runs, about, ext[1:])
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise ConfigError(f"--plot {path}: {e.strerror}") from None


def plot_bytes(runs: list[Run], about: dict, fmt: str) -> bytes:
    """The plot as PNG or SVG bytes (``isoemu report`` embeds them)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        matplotlib.rcParams["svg.fonttype"] = "none"     # SVG text stays text (searchable, testable)
        import matplotlib.pyplot as plt
    except ImportError:                                     # pragma: no cover (a pinned dependency)
        raise ConfigError("--plot needs matplotlib (pip install -e .)") from None
    cols = len(runs)
    fig, axes = plt.subplots(len(PANELS), cols, figsize=(3.4 * cols + 0.6, 2.3 * len(PANELS)),
                             sharex="col", sharey="row", squeeze=False)
    for c, run in enumerate(runs):
        xs = range(len(run.steps))
        for r, (title, series, stacked) in enumerate(PANELS):
            ax = axes[r][c]
            ys = [[row[FIGURES.index(n)] * k for row in run.steps] for n, k in series]
            labels = [n for n, _ in series]
            if stacked:
                ax.stackplot(xs, *ys, labels=labels, step="post", alpha=0.85)
            else:
                for y, lab in zip(ys, labels):
                    ax.step(xs, y, where="post", label=lab, linewidth=1.3)
            if r == 0:
                ax.set_title(run.strategy + (" + collapse" if run.collapse else ""), fontsize=11)
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            if c == cols - 1:
                ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[-1][c].set_xlabel("step", fontsize=8)
    fig.suptitle(f"isoemu frag: workload {about['workload']} ({about['steps']} steps), ram {about['ram']}",
                 fontsize=11)
    fig.tight_layout()
    out = io.BytesIO()
    try:
        fig.savefig(out, format=fmt, dpi=90)
    finally:
        plt.close(fig)
    return out.getvalue()
