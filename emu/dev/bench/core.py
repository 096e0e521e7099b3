"""The bench framework: the group registry, timing, figures with same-run
baselines and targets, and the report (docs/architecture.md: a bench
figure goes in a ``@bench`` group function)."""

from __future__ import annotations

import os
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


def asm_root() -> str | None:
    """The repository's asm/ directory, or None (an installed package has none)."""
    root = os.path.join(os.path.abspath(__file__).rsplit(os.sep, 4)[0], "asm")      # <checkout>/emu/dev/bench/core.py
    return root if os.path.isdir(root) else None


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
