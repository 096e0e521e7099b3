"""``isoemu frag``: direct-map fragmentation as an experiment (docs/frag.md).

Workloads (presets or a file) run against a model of the direct map made of
the project's page-table object and TLB model, under each strategy for
memory taken out of the direct map (mainline secretmem's pages, the v6
per-file PMD cache, a pool reserved at boot, Rapoport's unmapped_alloc),
with or without collapsing large pages back; the figures after every step.
"""

from emu.tools.frag.directmap import DirectMap
from emu.tools.frag.run import (DEFAULT_RAM, FIGURES, INJECTIONS, Experiment, InvariantError, Run, run_all,
                                run_strategy)
from emu.tools.frag.strategies import STRATEGIES
from emu.tools.frag.workload import PRESETS, Step, parse_workload, preset

__all__ = ["DEFAULT_RAM", "DirectMap", "Experiment", "FIGURES", "INJECTIONS", "InvariantError", "PRESETS",
           "Run", "STRATEGIES", "Step", "parse_workload", "preset", "run_all", "run_strategy"]
