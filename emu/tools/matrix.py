"""The fault matrix: which addresses fault, how, in which address space.

Boots the default machine (or a variant), runs one probe program as process
A and as process B, and probes standard regions in four spaces:

``A.user``    A's user page table, at CPL3;
``A.kernel``  A's kernel page table, at CPL0 (SYS_probe, space 0);
``A.asi``     A's ASI restricted page table, at CPL0 (SYS_probe, space 1);
``B.user``    B's user page table, at CPL3.

Every probe is machine code executed by the CPU (emu/programs/
matrix_probe.S).  Each cell is compared with an expectation written out from
Linux's semantics as tables, one per page table and design
(emu/tools/matrix_expected.py), not derived from the machine.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from emu.linux import abi
from emu.linux.config import MachineConfig
from emu.linux.machine import Machine
from emu.hw.paging import error_code_words
from emu.tools.matrix_expected import expected_text

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs", "matrix_probe.S")

ACCESSES = ("r", "w", "x")
SPACE_CODES = {"A.user": 0, "A.kernel": 1, "A.asi": 2, "B.user": 0}

# va_kind codes of the probe program
K_ABS, K_SECRET, K_SECRET_DM, K_DATA_DM, K_A_SECRET, K_A_SECRET_DM, K_A_DATA_DM = range(7)


@dataclass(frozen=True)
class Region:
    name: str
    description: str


REGIONS = [
    Region("user_text", "a 'ret' in the program's text"),
    Region("user_data", "USER_DATA, the program's data page"),
    Region("secret_user", "A's mapping of its memfd_secret page"),
    Region("secret_direct_map", "the direct-map alias of the secret page"),
    Region("direct_map", "the direct map of kernel data (non-sensitive)"),
    Region("direct_map_sensitive", "the direct-map alias of A's user data frame"),
    Region("kernel_text", "a 'ret' in kernel text"),
    Region("kernel_data", "kernel .data"),
    Region("entry_text", "a 'ret' in the entry text (PTI-cloned)"),
    Region("cpu_entry_area", "the cpu_entry_area (read-only IDT page)"),
    Region("kernel_stack", "A's kernel stack (vmalloc space, VMAP_STACK): the current stack"),
    Region("vmalloc", "B's kernel stack (vmalloc space): another task's"),
    Region("secret_direct_map_released", "the secret's direct-map alias after munmap and close"),
]
REGION_NAMES = [r.name for r in REGIONS]


@dataclass
class Outcome:
    """ok | fault | asi_exit_ok | asi_exit_fault, with vector/error code."""

    outcome: str
    vector: int | None = None
    error_code: int | None = None

    def text(self) -> str:
        if self.outcome == "ok":
            return "ok"
        if self.outcome == "asi_exit_ok":
            return "asi-exit→ok"
        if self.vector == 14:
            f = f"#PF {self.error_code:#x}"
        elif self.vector == 13:
            f = f"#GP({self.error_code:#x})"
        else:
            f = f"vector {self.vector}"
        return ("asi-exit→" if self.outcome == "asi_exit_fault" else "") + f

    def key(self):
        return (self.outcome, self.vector, self.error_code)


def ok() -> Outcome:
    return Outcome("ok")


def pf(ec: int, asi_exit: bool = False) -> Outcome:
    return Outcome("asi_exit_fault" if asi_exit else "fault", 14, ec)


# --- the expectation model (Linux semantics) ----------------------------------------
def expected(region: str, space: str, access: str, cfg: MachineConfig) -> Outcome:
    """What Linux does, from the tables of emu/tools/matrix_expected.py."""
    return parse_outcome(expected_text(region, space, access, cfg))


def parse_outcome(text: str) -> Outcome:
    """``ok``, ``#PF 0x4``, ``asi-exit→ok``, ``asi-exit→#PF 0x3`` as an Outcome."""
    asi_exit = text.startswith("asi-exit→")
    rest = text.removeprefix("asi-exit→")
    if rest == "ok":
        return Outcome("asi_exit_ok" if asi_exit else "ok")
    if rest.startswith("#PF "):
        return pf(int(rest[4:], 16), asi_exit)
    raise ValueError(f"matrix cell {text!r}: want ok, #PF 0xEC, or either after asi-exit→")


# --- running --------------------------------------------------------------------------------
@dataclass
class Cell:
    region: str
    va: int
    space: str
    cpl: int
    access: str
    got: Outcome
    want: Outcome

    @property
    def ok(self) -> bool:
        return self.got.key() == self.want.key()

    def as_dict(self) -> dict:
        return {"region": self.region, "va": f"{self.va:#x}", "space": self.space, "cpl": self.cpl,
                "access": self.access, "outcome": self.got.outcome, "vector": self.got.vector,
                "error_code": self.got.error_code, "expected": self.want.text(), "pass": self.ok}


@dataclass
class MatrixResult:
    config: MachineConfig
    spaces: list[str]
    cells: list[Cell]
    stats: dict[str, int] = field(default_factory=dict)
    stats_before_release: dict[str, int] = field(default_factory=dict)

    @property
    def mismatches(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]

    def as_dict(self) -> dict:
        cfg = self.config
        return {
            "config": {"pti": cfg.pti, "pcid": cfg.pcid, "asi": cfg.asi, "smep": cfg.smep,
                       "smap": cfg.smap, "la57": cfg.la57, "ram": cfg.ram},
            "spaces": self.spaces,
            "regions": [{"name": r.name, "description": r.description} for r in REGIONS],
            "cells": [c.as_dict() for c in self.cells],
            "stats": self.stats,
            "summary": {"cells": len(self.cells), "mismatches": len(self.mismatches)},
        }


def _region_va(name: str, m: Machine) -> tuple[int, int | str]:
    """(va_kind, address or symbol) of a region for process A."""
    k = m.kernel
    lay = m.layout
    if name == "user_text":
        return K_ABS, "user_ret"
    if name == "user_data":
        return K_ABS, abi.USER_DATA
    if name == "secret_user":
        return K_SECRET, 0
    if name in ("secret_direct_map", "secret_direct_map_released"):
        return K_SECRET_DM, 0
    if name == "direct_map":
        return K_ABS, lay.page_offset + abi.KERNEL_PHYS + abi.KSECTIONS[".data"]
    if name == "direct_map_sensitive":
        return K_DATA_DM, 0
    if name == "kernel_text":
        return K_ABS, k.sym("probe_target_ret")
    if name == "kernel_data":
        return K_ABS, k.sym("page_offset_base")
    if name == "entry_text":
        return K_ABS, k.sym("entry_probe_ret")
    if name == "cpu_entry_area":
        return K_ABS, lay.cpu_entry_area
    if name in ("kernel_stack", "vmalloc"):
        # the lowest page of the task's THREAD_SIZE stack (its kernel.py slot)
        task = 0 if name == "kernel_stack" else 1
        return K_ABS, lay.vmalloc_start + task * abi.VMAP_STACK_STRIDE
    raise KeyError(name)


def _for_b(kind: int) -> int:
    """B probes A's dynamic addresses."""
    return {K_SECRET: K_A_SECRET, K_SECRET_DM: K_A_SECRET_DM, K_DATA_DM: K_A_DATA_DM}.get(kind, kind)


class MatrixMachine:
    """The default machine: process A (with a secret page) and process B, both
    running the probe program.  ``pause_at_yield`` stops it when A has set up
    and touched its secret and finished its probes: the moment the
    inspection commands show."""

    def __init__(self, cfg: MachineConfig | None = None):
        self.cfg = cfg = cfg or MachineConfig()
        self.spaces = ["A.user", "A.kernel"] + (["A.asi"] if cfg.asi_on else []) + ["B.user"]
        with open(PROGRAM) as f:
            base_src = f.read() + "\n.text\nuser_ret:\n    ret\n"
        self.m = m = Machine(cfg, record_events=False)
        self.plans: dict[str, list[tuple[str, str, str]]] = {}
        for role, name in ((0, "A"), (1, "B")):
            round_end, plan = self._plan(role)
            lines = [".data", ".align 64", "probe_table:"]
            for region, space, acc in plan:
                kind, va = _region_va(region, m)
                if role == 1:
                    kind = _for_b(kind)
                lines.append(f"    .quad {va}, {kind}, {ACCESSES.index(acc)}, {SPACE_CODES[space]}, "
                             f"0, 0, 0, 0")
            src = base_src.replace("role:           .quad 0", f"role:           .quad {role}")
            src = src.replace("round_end:      .quad 0", f"round_end:      .quad {round_end}")
            src += "\n".join(lines) + "\n"
            m.add_process(name, _assemble(m, src, len(plan), name))
            self.plans[name] = plan
        self.results: dict[str, list] = {}
        self.stats_at_yield: dict[str, int] = {}
        m.exit_hooks.append(self._on_exit)
        self.a, self.b = m.process("A"), m.process("B")
        m.boot()
        self._pause = False
        m.cpu.add_code_hook(self.a.image.symbols["matrix_yield"], self._at_yield)
        for p in (self.a, self.b):
            m.cpu.add_code_hook(p.image.symbols["record_error_code"], self._hardware_error_code)

    def _plan(self, role: int) -> tuple[int, list]:
        a_spaces = [s for s in self.spaces if s.startswith("A.")]
        spaces_here = a_spaces if role == 0 else ["B.user"]
        first = [r for r in REGION_NAMES if r != "secret_direct_map_released"]
        plan = [(r, s, acc) for r in first for s in spaces_here for acc in ACCESSES]
        round_end = len(plan)
        if role == 0:
            plan += [("secret_direct_map_released", s, acc) for s in spaces_here for acc in ACCESSES]
        return round_end, plan

    def _on_exit(self, machine: Machine, p) -> None:
        plan = self.plans[p.name]
        base = p.image.symbols["probe_table"]
        raw = machine.read_virt(base, 64 * len(plan), f"{p.name}.kernel")
        self.results[p.name] = [struct.unpack_from("<8Q", raw, 64 * i) for i in range(len(plan))]

    def _hardware_error_code(self, addr: int) -> None:
        exc = self.m.cpu.last_user_exception
        if exc is not None and exc[1] is not None:
            self.m.cpu.set_reg("rcx", exc[1])

    def _at_yield(self, addr: int) -> None:
        # A has set up its secret: hand its dynamic addresses to B, and note the
        # counters before the release
        m = self.m
        if m.current_process() is not self.a:
            return
        vals = [m.read_u64(self.a.image.symbols["va_secret"] + 8 * i, "A.kernel") for i in range(3)]
        b_slots = self.b.image.symbols["va_a_secret"]
        for i, v in enumerate(vals):
            m.mem.write_u64(m.pa_of(b_slots + 8 * i, f"{self.b.name}.kernel"), v)
        self.stats_at_yield = m.stats()
        if self._pause:
            self._pause = False
            m.stop("paused")

    def pause_at_yield(self) -> Machine:
        self._pause = True
        reason = self.m.step(20_000_000)
        if reason != "paused":
            raise AssertionError(f"the default machine stopped early: {reason}")
        return self.m

    def finish(self) -> MatrixResult:
        self.m.run(budget=20_000_000)
        cells = []
        for name, plan in self.plans.items():
            for (region, space, acc), row in zip(plan, self.results[name]):
                va, kind, access, sp, vector, ec, asi, resolved = row
                got = _outcome(vector, ec, asi)
                want = expected(region, space, acc, self.cfg)
                cells.append(Cell(region, resolved, space, 3 if space.endswith(".user") else 0, acc,
                                  got, want))
        order = {s: i for i, s in enumerate(self.spaces)}
        cells.sort(key=lambda c: (REGION_NAMES.index(c.region), ACCESSES.index(c.access), order[c.space]))
        return MatrixResult(self.cfg, self.spaces, cells, self.m.stats(), self.stats_at_yield)


def run_matrix(cfg: MachineConfig | None = None) -> MatrixResult:
    """Run every probe; the result compares each cell with :func:`expected`."""
    return MatrixMachine(cfg).finish()


def default_machine(cfg: MachineConfig | None = None) -> Machine:
    """The default machine paused with A's secret page live (for walk/ptdump/check)."""
    return MatrixMachine(cfg).pause_at_yield()


def _assemble(m: Machine, src: str, count: int, name: str):
    from emu.linux.program import assemble_program
    return assemble_program(src, f"matrix_probe.S ({name})", m.layout, {"PROBE_COUNT": count})


def _outcome(vector: int, ec: int, asi: int) -> Outcome:
    if vector == 0:
        return Outcome("asi_exit_ok" if asi else "ok")
    return Outcome("asi_exit_fault" if asi else "fault", vector, ec)


# --- rendering --------------------------------------------------------------------------------
def render(result: MatrixResult, color: bool = False) -> str:
    spaces = result.spaces
    cells = {(c.region, c.access, c.space): c for c in result.cells}
    width = 22
    red = "\x1b[31m" if color else ""
    green = "\x1b[32m" if color else ""
    reset = "\x1b[0m" if color else ""
    cfg = result.config
    lines = [f"fault matrix: pti={'on' if cfg.pti else 'off'} pcid={'on' if cfg.pcid else 'off'} "
             f"asi={cfg.asi} smep={'on' if cfg.smep else 'off'} "
             f"smap={'on' if cfg.smap else 'off'} la57={'on' if cfg.la57 else 'off'} "
             f"ram={cfg.ram >> 20}M"]
    header = f"{'region':<28} {'':2} " + " ".join(f"{s:<{width}}" for s in spaces)
    lines.append(header)
    lines.append("-" * len(header))
    for region in REGION_NAMES:
        for acc in ACCESSES:
            row = [f"{region:<28} {acc:<2}"]
            present = False
            for s in spaces:
                c = cells.get((region, acc, s))
                if c is None:
                    row.append(f"{'':<{width}}")
                    continue
                present = True
                txt = c.got.text()
                if c.ok:
                    row.append(f"{green}{txt:<{width}}{reset}" if color else f"{txt:<{width}}")
                else:
                    bad = f"{txt} (want {c.want.text()})"
                    row.append(f"{red}{bad:<{width}}{reset}" if color else f"{bad:<{width}}")
            if present:
                lines.append(" ".join(row).rstrip())
    n, bad = len(result.cells), len(result.mismatches)
    lines.append("")
    lines.append(f"{n} cells, {bad} mismatch{'es' if bad != 1 else ''}")
    for c in result.mismatches:
        lines.append(f"  MISMATCH {c.region} {c.access} in {c.space} at {c.va:#x}: got {c.got.text()}"
                     f"{_words(c.got)}, expected {c.want.text()}")
    return "\n".join(lines)


def _words(o: Outcome) -> str:
    return f" ({error_code_words(o.error_code)})" if o.vector == 14 else ""
