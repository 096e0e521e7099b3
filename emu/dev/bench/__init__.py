"""``isoemu bench``: speed figures, each beside a baseline measured in the
same run.

Every figure is measured in this process, on this machine, in the same run
as its baseline, so ratios stay meaningful across machines.  Nothing here
asserts a speed: tests check the report's shape, people read the numbers.
One module per group; :mod:`emu.dev.bench.core` has the registry and the
report.
"""

from emu.dev.bench.core import BENCHES, best, bench, figure, parse_targets, run_bench
from emu.dev.bench import paging, machine, tlb, trace, images, frag, startup, secret

#: the group modules, in report order (importing one registers its groups)
GROUPS = (paging, machine, tlb, trace, images, frag, startup, secret)
from emu.dev.bench.trace import BENCH_PROGRAM

__all__ = ["BENCHES", "BENCH_PROGRAM", "GROUPS", "bench", "best", "figure", "parse_targets", "run_bench"]
