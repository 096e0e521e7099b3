"""The fault matrix: which addresses fault, how, in which address space.

Boots the default machine (or a variant), runs one probe program as process
A and as process B, and probes standard regions in four spaces:

``A.user``    A's user page table, at CPL3;
``A.kernel``  A's kernel page table, at CPL0 (SYS_probe, space 0);
``A.asi``     A's ASI restricted page table, at CPL0 (SYS_probe, space 1);
``B.user``    B's user page table, at CPL3.

Every probe is machine code executed by the CPU (emu/programs/
matrix_probe.S).  Each cell is compared with an expectation written out from
Linux's semantics (:func:`expected`), not derived from the machine.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from emu.linux import abi
from emu.linux.config import MachineConfig
from emu.linux.machine import Machine
from emu.hw.paging import error_code_words

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
    """What Linux does.  Error codes per SDM 4.7: bit 0 present, 1 write,
    2 user, 4 instruction fetch."""
    w = access == "w"
    x = access == "x"
    if space in ("A.user", "B.user"):
        # CPL3: U/S must allow, W for writes, no NX for fetches
        user = 4
        acc = (2 if w else 0) | (16 if x else 0)
        if region == "secret_user" and space == "B.user":
            return pf(user | acc)                         # not mapped in B
        if region in ("user_text",):
            return pf(1 | user | acc) if w else ok()      # read-only, executable
        if region in ("user_data", "secret_user"):
            return pf(1 | user | acc) if x else ok()      # RW, NX
        if region == "secret_direct_map":
            return pf(user | acc)                         # the secret's direct-map PTE is not present
        if region in ("entry_text", "cpu_entry_area"):
            return pf(1 | user | acc)                     # mapped in the user PGD, supervisor
        # direct map, kernel image: PTI keeps them out of the user PGD (not present);
        # without PTI they are present but supervisor (the Meltdown-exposed layout)
        return pf((1 if not cfg.pti else 0) | user | acc)
    # CPL0 (kernel or ASI): SMAP allowed by STAC, SMEP forbids user fetches, WP
    acc = (2 if w else 0) | (16 if x else 0)
    asi = space == "A.asi"
    if asi and region in _ABSENT_FROM_ASI:
        # not mapped in the restricted tables: the access faults there (not
        # present), ASI exits, and kernel_access_ok() decides: retry (then ok)
        # or carry on with the original, not-present error code
        full = expected(region, "A.kernel", access, cfg)
        return Outcome("asi_exit_ok") if full.outcome == "ok" else pf(acc, asi_exit=True)
    if region == "secret_direct_map":
        return pf(acc)                                    # the direct-map PTE is cleared
    if region == "user_text":
        if w:
            return pf(1 | acc, asi_exit=asi)              # read-only (WP)
        return pf(1 | acc, asi_exit=asi) if x else ok()   # SMEP
    if region in ("user_data", "secret_user"):
        return pf(1 | acc, asi_exit=asi) if x else ok()   # SMEP (and NX); the user half is mapped in ASI
    if region in ("kernel_text", "entry_text"):
        return pf(1 | acc, asi_exit=asi) if w else ok()   # read-only, executable
    if region in ("kernel_data", "direct_map"):
        return pf(1 | acc, asi_exit=asi) if x else ok()   # RW, NX; non-sensitive: in ASI
    if region == "cpu_entry_area":
        return pf(1 | acc, asi_exit=asi) if (w or x) else ok()   # read-only, NX
    if region in ("direct_map_sensitive", "secret_direct_map_released"):
        return pf(1 | acc) if x else ok()                 # RW NX in the full direct map
    raise KeyError(region)


# Sensitive memory: never mapped in ASI's restricted tables
_ABSENT_FROM_ASI = {"secret_direct_map", "direct_map_sensitive", "secret_direct_map_released"}


def expected_released_user(space: str, access: str, cfg: MachineConfig) -> Outcome:
    acc = (2 if access == "w" else 0) | (16 if access == "x" else 0)
    return pf((1 if not cfg.pti else 0) | 4 | acc)


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
    stale: bool = False          # the TLB model found a stale translation for this access

    @property
    def ok(self) -> bool:
        return self.got.key() == self.want.key()

    def as_dict(self) -> dict:
        return {"region": self.region, "va": f"{self.va:#x}", "space": self.space, "cpl": self.cpl,
                "access": self.access, "outcome": self.got.outcome, "vector": self.got.vector,
                "error_code": self.got.error_code, "expected": self.want.text(), "pass": self.ok,
                "stale": self.stale}


@dataclass
class MatrixResult:
    config: MachineConfig
    spaces: list[str]
    cells: list[Cell]
    stats: dict[str, int] = field(default_factory=dict)
    stats_before_release: dict[str, int] = field(default_factory=dict)
    findings: list = field(default_factory=list)     # the TLB model's (emu.linux.tlbcheck.TlbFinding)

    @property
    def mismatches(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]

    @property
    def failed(self) -> bool:
        """A mismatch or a TLB finding: either is a bug in the machine."""
        return bool(self.mismatches or self.findings)

    def as_dict(self) -> dict:
        cfg = self.config
        return {
            "config": {"pti": cfg.pti, "pcid": cfg.pcid, "asi": cfg.asi, "smep": cfg.smep,
                       "smap": cfg.smap, "la57": cfg.la57, "ram": cfg.ram},
            "spaces": self.spaces,
            "regions": [{"name": r.name, "description": r.description} for r in REGIONS],
            "cells": [c.as_dict() for c in self.cells],
            "stats": self.stats,
            "findings": [f.as_dict() for f in self.findings],
            "summary": {"cells": len(self.cells), "mismatches": len(self.mismatches),
                        "findings": len(self.findings)},
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
        self.spaces = ["A.user", "A.kernel"] + (["A.asi"] if cfg.asi else []) + ["B.user"]
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
        self.findings_at_yield = 0
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
        self.findings_at_yield = len(m.findings)
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
                if region == "secret_direct_map_released" and space == "A.user":
                    want = expected_released_user(space, acc, self.cfg)
                cells.append(Cell(region, resolved, space, 3 if space.endswith(".user") else 0, acc,
                                  got, want))
        findings = self.m.findings
        stale = {(f.address >> 12, f.space, _probe_access(f), i >= self.findings_at_yield)
                 for i, f in enumerate(findings) if f.finding == "stale-access"}
        for c in cells:
            c.stale = (c.va >> 12, c.space, c.access, c.region == "secret_direct_map_released") in stale
        order = {s: i for i, s in enumerate(self.spaces)}
        cells.sort(key=lambda c: (REGION_NAMES.index(c.region), ACCESSES.index(c.access), order[c.space]))
        return MatrixResult(self.cfg, self.spaces, cells, self.m.stats(), self.stats_at_yield, findings)


def run_matrix(cfg: MachineConfig | None = None) -> MatrixResult:
    """Run every probe; the result compares each cell with :func:`expected`."""
    return MatrixMachine(cfg).finish()


def default_machine(cfg: MachineConfig | None = None) -> Machine:
    """The default machine paused with A's secret page live (for walk/ptdump/check)."""
    return MatrixMachine(cfg).pause_at_yield()


def _assemble(m: Machine, src: str, count: int, name: str):
    from emu.linux.program import assemble_program
    return assemble_program(src, f"matrix_probe.S ({name})", m.layout, {"PROBE_COUNT": count})


def _probe_access(f) -> str:
    """The access a stale-access finding was made at: the probe's load or
    store (kernel_stub/syscalls.S, SYS_probe), else a fetch."""
    if f.symbol.startswith("probe_read"):
        return "r"
    if f.symbol.startswith("probe_write"):
        return "w"
    return "x"


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
             f"asi={'on' if cfg.asi else 'off'} smep={'on' if cfg.smep else 'off'} "
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
                txt = c.got.text() + (" stale" if c.stale else "")
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
    if result.findings:
        k = len(result.findings)
        lines.append(f"{k} TLB finding{'s' if k != 1 else ''} (docs/tlb.md):")
        lines.extend(f"  {f.line()}" for f in result.findings)
    return "\n".join(lines)


def _words(o: Outcome) -> str:
    return f" ({error_code_words(o.error_code)})" if o.vector == 14 else ""
