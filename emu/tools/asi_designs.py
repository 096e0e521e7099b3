"""The ASI designs side by side (docs/asi.md): the fault matrix cell by cell,
and what one system call costs in address-space switches.

``compare(base)`` runs the fault matrix once per design of ``asi=`` (``off``,
``on``, ``rfc2019``, ``rfc2025``; every other switch from ``base``) and
measures, on a fresh machine per design, the CR3 writes, ASI exits and the
taint policy's flushes of three system calls made by one program:

* ``getpid``: the cheapest round trip;
* ``probe sensitive``: SYS_probe of the direct-map alias of the program's own
  data page (a user frame: sensitive) in the restricted table (rdx = 1), which
  has to leave ASI; without ASI, on the full table;
* ``sched_yield``: a context switch to another process and back, counted from
  the call to its return.

Everything is measured on the machine, never written down: the README's
table is this module's output.  ``isoemu matrix --asi-designs`` prints it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from emu.linux.config import ASI_DESIGNS, MachineConfig
from emu.linux.machine import Machine
from emu.tools.matrix import ACCESSES, REGION_NAMES, MatrixResult, run_matrix

DESIGNS = tuple(ASI_DESIGNS)
#: the syscalls measured, in the order the program makes them
SYSCALLS = ("getpid", "probe sensitive", "sched_yield")
#: what is counted per syscall: event kinds, and their names in the table
COUNTS = ("cr3_writes", "asi_exits", "flushes")

# A: getpid (warm-up), then the three measured calls, each between two labels;
# B only yields back.  The probe reads the alias of USER_DATA (a user frame).
_PROGRAM_A = """
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_getpid
    syscall
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov r12, rax
    mov eax, SYS_getpid
getpid_start:
    syscall
getpid_end:
    mov rdi, r12
    mov eax, SYS_probe
    xor esi, esi
    mov edx, {space}
probe_start:
    syscall
probe_end:
    mov eax, SYS_sched_yield
yield_start:
    syscall
yield_end:
    sys_exit 0
"""
_PROGRAM_B = """
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_sched_yield
    syscall
    sys_exit 0
"""
_MARKS = {"getpid": ("getpid_start", "getpid_end"), "probe sensitive": ("probe_start", "probe_end"),
          "sched_yield": ("yield_start", "yield_end")}


@dataclass
class SyscallCost:
    """What one system call did, from the SYSCALL to the first user
    instruction after it (a context switch included)."""

    cr3_writes: int
    asi_exits: int
    flushes: int                       # IBPB, RSB fills and L1D flushes of the taint policy
    spaces: list[str] = field(default_factory=list)   # the spaces CR3 entered, in order


def syscall_costs(cfg: MachineConfig) -> dict[str, SyscallCost]:
    """Measure the three system calls on a fresh machine of ``cfg``."""
    m = Machine(cfg)
    a = m.add_process("A", _PROGRAM_A.format(space=1 if cfg.asi else 0))
    m.add_process("B", _PROGRAM_B)
    m.boot()
    marks: dict[str, int] = {}
    for label in (lab for pair in _MARKS.values() for lab in pair):
        m.cpu.add_code_hook(a.image.symbols[label], lambda addr, label=label: marks.setdefault(label, m._seq))
    m.run()
    out = {}
    for name, (start, end) in _MARKS.items():
        evs = [e for e in m.events if marks[start] < e.seq <= marks[end]]
        writes = [e for e in evs if e.kind == "cr3_write"]
        out[name] = SyscallCost(len(writes),
                                sum(1 for e in writes if m.space_of(e.old).endswith(".asi")
                                    and not m.space_of(e.new).endswith(".asi")),
                                sum(1 for e in evs if e.kind == "asi_flush"),
                                [e.new_space for e in writes])
    return out


@dataclass
class Comparison:
    base: MachineConfig
    matrices: dict[str, MatrixResult]
    costs: dict[str, dict[str, SyscallCost]]

    def cell(self, design: str, region: str, space: str, access: str) -> str | None:
        for c in self.matrices[design].cells:
            if (c.region, c.space, c.access) == (region, space, access):
                return c.got.text()
        return None

    @property
    def failed(self) -> bool:
        return any(r.failed for r in self.matrices.values())


def compare(base: MachineConfig | None = None) -> Comparison:
    """Every design of ``asi=`` on ``base`` (default: the default machine).
    ``pti`` is left to each design (``auto``: off with rfc2025)."""
    base = base or MachineConfig()
    matrices, costs = {}, {}
    for d in DESIGNS:
        cfg = base.replace(asi=d)
        matrices[d] = run_matrix(cfg)
        costs[d] = syscall_costs(cfg)
    return Comparison(base, matrices, costs)


# --- rendering ------------------------------------------------------------------------------------
def _short(text: str | None) -> str:
    """``#PF 0x4`` -> ``4``, ``asi-exit→#PF 0x3`` -> ``x→3``, ``asi-exit→ok`` -> ``x→ok``."""
    if text is None:
        return "-"
    exit_ = text.startswith("asi-exit→")
    t = text.removeprefix("asi-exit→")
    t = t.removeprefix("#PF 0x")
    return ("x→" if exit_ else "") + t


def table_rows(c: Comparison, only_differing: bool = True) -> list[tuple[str, str, list[str]]]:
    """(region, access, [A.user per design..., A.asi per ASI design...])."""
    asi_designs = [d for d in DESIGNS if d != "off"]
    rows = []
    for region in REGION_NAMES:
        for acc in ACCESSES:
            user = [_short(c.cell(d, region, "A.user", acc)) for d in DESIGNS]
            asi = [_short(c.cell(d, region, "A.asi", acc)) for d in asi_designs]
            if only_differing and len(set(user)) == 1 and len(set(asi)) == 1:
                continue
            rows.append((region, acc, user + asi))
    return rows


def render(c: Comparison, only_differing: bool = True) -> str:
    asi_designs = [d for d in DESIGNS if d != "off"]
    heads = [f"user:{d}" for d in DESIGNS] + [f"asi:{d}" for d in asi_designs]
    w = max(len(h) for h in heads) + 1
    lines = [f"ASI designs side by side: {c.base.replace(asi='on').describe().replace('asi=on', 'asi=*')}",
             "cells: ok, the #PF error code in hex, x→ when ASI exited first; rows where every design "
             "agrees are left out" if only_differing else "cells: ok, the #PF error code in hex, x→ when "
             "ASI exited first",
             "A.kernel " + ("is" if _kernel_same(c) else "is NOT") + " the same in every design; B.user "
             "reads as A.user"]
    head = f"{'region':<27} {'':2}" + "".join(f"{h:>{w}}" for h in heads)
    lines += [head, "-" * len(head)]
    for region, acc, cells in table_rows(c, only_differing):
        lines.append(f"{region:<27} {acc:<2}" + "".join(f"{x:>{w}}" for x in cells))
    lines.append("")
    lines.append(f"{'per syscall':<27} {'':2}" + "".join(f"{d:>{w}}" for d in DESIGNS))
    for name in SYSCALLS:
        for what in COUNTS:
            vals = [getattr(c.costs[d][name], what) for d in DESIGNS]
            lines.append(f"{name + ' ' + what.replace('_', ' '):<30}" + "".join(f"{v:>{w}}" for v in vals))
    bad = [d for d, r in c.matrices.items() if r.failed]
    lines.append("")
    lines.append("every matrix matches Linux, no finding" if not bad else
                 "MISMATCH or finding in: " + ", ".join(bad) + " (isoemu matrix --set asi=...)")
    return "\n".join(lines)


def _kernel_same(c: Comparison) -> bool:
    return all(len({c.cell(d, region, "A.kernel", acc) for d in DESIGNS}) == 1
               for region in REGION_NAMES for acc in ACCESSES)


def as_dict(c: Comparison) -> dict:
    return {
        "base": c.base.switches(),
        "designs": list(DESIGNS),
        "cells": [{"region": r, "access": a, "columns": dict(zip(
            [f"A.user:{d}" for d in DESIGNS] + [f"A.asi:{d}" for d in DESIGNS if d != "off"], cells))}
            for r, a, cells in table_rows(c, only_differing=False)],
        "syscalls": {d: {n: vars(v) for n, v in c.costs[d].items()} for d in DESIGNS},
        "matrices": {d: {"cells": len(r.cells), "mismatches": len(r.mismatches), "findings": len(r.findings),
                         "asi_findings": len(r.asi_findings)} for d, r in c.matrices.items()},
    }
