"""The fault matrix: which addresses fault, how, in which address space.

Boots the default machine (or a variant), runs one probe program as process
A and as process B, and probes standard regions in four spaces:

``A.user``    the table A's user code runs on, at CPL3: PTI's user PGD, the
              kernel table without PTI, the restricted table with asi=rfc2025;
``A.kernel``  A's kernel page table, at CPL0 (SYS_probe, space 0);
``A.asi``     A's ASI restricted page table, at CPL0 (SYS_probe, space 1):
              the userspace class (asi=on, rfc2025) or the 2019 RFC's KVM
              class (asi=rfc2019), docs/asi.md;
``B.user``    B's, at CPL3.

Every probe is machine code executed by the CPU (emu/tools/programs/
matrix_probe.S).  Each cell is compared with an expectation written out from
Linux's semantics and the SDM (:mod:`emu.tools.matrix_model`), not derived
from the machine.  The expectations follow every machine switch; they can be
computed for another configuration than the machine's (``run_matrix(cfg,
expect=...)``), which is how a test injects a regression (a machine without
SMEP against expectations with it) and watches the matrix catch it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from emu.linux import abi
from emu.linux.config import MachineConfig
from emu.linux.machine import Machine
from emu.hw.paging import error_code_words
from emu.tools.matrix_model import ACCESSES, Outcome, expected

__all__ = ["ACCESSES", "Outcome", "expected", "REGIONS", "REGION_NAMES", "Cell", "MatrixResult",
           "MatrixMachine", "run_matrix", "default_machine", "render"]

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs", "matrix_probe.S")

SPACE_CODES = {"A.user": 0, "A.kernel": 1, "A.asi": 2, "B.user": 0}

# va_kind codes of the probe program
K_ABS, K_SECRET, K_SECRET_DM, K_DATA_DM, K_A_SECRET, K_A_SECRET_DM, K_A_DATA_DM = range(7)
K_XPFO, K_XPFO_DM, K_A_XPFO, K_A_XPFO_DM = range(7, 11)
K_GMEM, K_GMEM_DM, K_GMEM_NODM_DM, K_A_GMEM, K_A_GMEM_DM, K_A_GMEM_NODM_DM = range(11, 17)


@dataclass(frozen=True)
class Region:
    name: str
    description: str


# Every execute probe lands on a 'ret' (0xc3), so that a fetch the page
# tables allow is seen to run and return rather than to run whatever bytes
# are there: the program's own 'ret' and kernel text's (probe_target_ret,
# entry_probe_ret); the probe program writes one at USER_DATA and in the
# secret page (so the direct-map alias of each holds one too); the stub's
# .data holds probe_data_ret, and its GDT page, past the GDT's limit,
# probe_cea_ret (kernel_stub/data.S); secretmem zeroes a released page, so
# the matrix writes a 'ret' into the freed frame before the second round; and
# it writes one at the lowest byte of each kernel stack, which nothing the
# stack holds reaches (THREAD_SIZE is far more than the stub uses).
REGIONS = [
    Region("user_text", "a 'ret' in the program's text"),
    Region("user_data", "USER_DATA, the program's data page (a 'ret' written there)"),
    Region("secret_user", "A's mapping of its memfd_secret page (a 'ret' written there)"),
    Region("secret_direct_map", "the direct-map alias of the secret page"),
    Region("xpfo_user", "A's mapping of a /dev/xpfo page (fallocate, mmap MAP_SHARED; a 'ret' written there)"),
    Region("xpfo_direct_map", "the direct-map alias of the /dev/xpfo page"),
    Region("direct_map", "the direct map of kernel data (non-sensitive): probe_data_ret's alias"),
    Region("direct_map_sensitive", "the direct-map alias of A's user data frame"),
    Region("kernel_text", "a 'ret' in kernel text"),
    Region("kernel_data", "kernel .data: probe_data_ret"),
    Region("entry_text", "a 'ret' in the entry text (PTI-cloned)"),
    Region("cpu_entry_area", "the cpu_entry_area's read-only GDT page: probe_cea_ret"),
    Region("kernel_stack", "A's kernel stack (vmalloc space, VMAP_STACK): the current stack"),
    Region("vmalloc", "B's kernel stack (vmalloc space): another task's"),
    Region("gmem_private_user", "A's mapping of a guest_memfd page made private (a 'ret' written while shared)"),
    Region("gmem_direct_map", "the direct-map alias of that private guest_memfd page"),
    Region("gmem_nodm_direct_map", "the direct-map alias of a private NO_DIRECT_MAP guest_memfd page"),
    Region("secret_direct_map_released", "the secret's direct-map alias after munmap and close"),
]
REGION_NAMES = [r.name for r in REGIONS]


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
                "error_code": self.got.error_code, "expected": self.want.text(),
                "expected_reason": self.want.reason, "pass": self.ok, "stale": self.stale}


@dataclass
class MatrixResult:
    config: MachineConfig
    spaces: list[str]
    cells: list[Cell]
    stats: dict[str, int] = field(default_factory=dict)
    stats_before_release: dict[str, int] = field(default_factory=dict)
    expected_config: MachineConfig | None = None     # None: the machine's own
    findings: list = field(default_factory=list)     # the TLB model's (emu.linux.tlbcheck.TlbFinding)
    asi_findings: list = field(default_factory=list)  # ASI's (emu.linux.asicheck.AsiFinding)

    @property
    def mismatches(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]

    @property
    def failed(self) -> bool:
        """A mismatch, a TLB finding or an ASI finding: each is a bug in the machine."""
        return bool(self.mismatches or self.findings or self.asi_findings)

    def as_dict(self) -> dict:
        out = {"config": self.config.switches()}
        if self.expected_config is not None and self.expected_config != self.config:
            out["expected_config"] = self.expected_config.switches()
        return {
            **out,
            "spaces": self.spaces,
            "regions": [{"name": r.name, "description": r.description} for r in REGIONS],
            "cells": [c.as_dict() for c in self.cells],
            "stats": self.stats,
            "findings": [f.as_dict() for f in self.findings],
            "asi_findings": [f.as_dict() for f in self.asi_findings],
            "summary": {"cells": len(self.cells), "mismatches": len(self.mismatches),
                        "findings": len(self.findings), "asi_findings": len(self.asi_findings)},
        }


def region_addresses(m: Machine) -> dict[str, tuple[int, int | str]]:
    """Region -> (va_kind, address or symbol) for process A."""
    k, lay = m.kernel, m.layout
    data_ret = k.sym("probe_data_ret")
    return {
        "user_text": (K_ABS, "user_ret"),
        "user_data": (K_ABS, abi.USER_DATA),
        "secret_user": (K_SECRET, 0),
        "secret_direct_map": (K_SECRET_DM, 0),
        "xpfo_user": (K_XPFO, 0),
        "xpfo_direct_map": (K_XPFO_DM, 0),
        "direct_map": (K_ABS, lay.page_offset + k.kva_to_pa(data_ret)),
        "direct_map_sensitive": (K_DATA_DM, 0),
        "kernel_text": (K_ABS, k.sym("probe_target_ret")),
        "kernel_data": (K_ABS, data_ret),
        "entry_text": (K_ABS, k.sym("entry_probe_ret")),
        # the GDT's read-only alias in the cpu_entry_area; per-CPU symbols
        # are offsets in the per-CPU area
        "cpu_entry_area": (K_ABS, k.cea["gdt"] + k.sym("probe_cea_ret") - k.sym("gdt_page")),
        # the lowest byte of A's and of B's THREAD_SIZE stack (kernel.py's slots)
        "kernel_stack": (K_ABS, _stack_bottom(lay, 0)),
        "vmalloc": (K_ABS, _stack_bottom(lay, 1)),
        "gmem_private_user": (K_GMEM, 0),
        "gmem_direct_map": (K_GMEM_DM, 0),
        "gmem_nodm_direct_map": (K_GMEM_NODM_DM, 0),
        "secret_direct_map_released": (K_SECRET_DM, 0),
    }


def _stack_bottom(lay, task: int) -> int:
    return lay.vmalloc_start + task * abi.VMAP_STACK_STRIDE


def _for_b(kind: int) -> int:
    """B probes A's dynamic addresses."""
    return {K_SECRET: K_A_SECRET, K_SECRET_DM: K_A_SECRET_DM, K_DATA_DM: K_A_DATA_DM,
            K_XPFO: K_A_XPFO, K_XPFO_DM: K_A_XPFO_DM, K_GMEM: K_A_GMEM, K_GMEM_DM: K_A_GMEM_DM,
            K_GMEM_NODM_DM: K_A_GMEM_NODM_DM}.get(kind, kind)


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
        addresses = region_addresses(m)
        for role, name in ((0, "A"), (1, "B")):
            round_end, plan = self._plan(role)
            lines = [".data", ".align 64", "probe_table:"]
            for region, space, acc in plan:
                kind, va = addresses[region]
                if role == 1:
                    kind = _for_b(kind)
                lines.append(f"    .quad {va}, {kind}, {ACCESSES.index(acc)}, {SPACE_CODES[space]}, "
                             f"0, 0, 0, 0")
            src = base_src.replace("role:           .quad 0", f"role:           .quad {role}")
            src = src.replace("round_end:      .quad 0", f"round_end:      .quad {round_end}")
            src += "\n".join(lines) + "\n"
            m.add_process(name, _assemble(m, src, len(plan), name))
            self.plans[name] = plan
        for task in (0, 1):
            # the execute probes' 'ret' at the bottom of each kernel stack
            va = _stack_bottom(m.layout, task)
            m.mem.write(m.kernel.stack_pages[va >> 12], b"\xc3")
        self.results: dict[str, list] = {}
        self.stats_at_yield: dict[str, int] = {}
        self.findings_at_yield = 0
        m.exit_hooks.append(self._on_exit)
        self.a, self.b = m.process("A"), m.process("B")
        m.boot()
        self._pause = False
        m.cpu.add_code_hook(self.a.image.symbols["matrix_yield"], self._at_yield)
        m.cpu.add_code_hook(self.a.image.symbols["matrix_released"], self._plant_released_ret)
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
        for a_slot, b_slot, n in (("va_secret", "va_a_secret", 3), ("va_xpfo", "va_a_xpfo", 2),
                                  ("va_gmem", "va_a_gmem", 3)):
            vals = [m.read_u64(self.a.image.symbols[a_slot] + 8 * i, "A.kernel") for i in range(n)]
            b_slots = self.b.image.symbols[b_slot]
            for i, v in enumerate(vals):
                m.mem.write_u64(m.pa_of(b_slots + 8 * i, f"{self.b.name}.kernel"), v)
        self.stats_at_yield = m.stats()
        self.findings_at_yield = len(m.findings)
        if self._pause:
            self._pause = False
            m.stop("paused")

    def _plant_released_ret(self, addr: int) -> None:
        # secretmem zeroed the released page (secretmem_free_folio); the
        # execute probe of its direct-map alias needs a 'ret' there
        m = self.m
        alias = m.read_u64(self.a.image.symbols["va_secret_dm"], "A.kernel")
        m.mem.write(alias - m.layout.page_offset, b"\xc3")

    def pause_at_yield(self) -> Machine:
        self._pause = True
        reason = self.m.step(20_000_000, exact=False)     # the budget only guards a runaway
        if reason != "paused":
            raise AssertionError(f"the default machine stopped early: {reason}")
        return self.m

    def finish(self, expect: MachineConfig | None = None) -> MatrixResult:
        """Run to the end; each cell's expectation is computed for ``expect``
        (default: the machine's own configuration)."""
        want_cfg = expect or self.cfg
        self.m.run(budget=20_000_000, exact=False)        # the budget only guards a runaway
        cells = []
        for name, plan in self.plans.items():
            for (region, space, acc), row in zip(plan, self.results[name]):
                va, kind, access, sp, vector, ec, asi, resolved = row
                got = _outcome(vector, ec, asi)
                want = expected(region, space, acc, want_cfg)
                cells.append(Cell(region, resolved, space, 3 if space.endswith(".user") else 0, acc,
                                  got, want))
        findings = self.m.findings
        stale = {(f.address >> 12, f.space, _probe_access(f), i >= self.findings_at_yield)
                 for i, f in enumerate(findings) if f.finding == "stale-access"}
        for c in cells:
            c.stale = (c.va >> 12, c.space, c.access, c.region == "secret_direct_map_released") in stale
        order = {s: i for i, s in enumerate(self.spaces)}
        cells.sort(key=lambda c: (REGION_NAMES.index(c.region), ACCESSES.index(c.access), order[c.space]))
        return MatrixResult(self.cfg, self.spaces, cells, self.m.stats(), self.stats_at_yield,
                            want_cfg if want_cfg != self.cfg else None, findings, self.m.asi_findings)


def run_matrix(cfg: MachineConfig | None = None, expect: MachineConfig | None = None) -> MatrixResult:
    """Run every probe; the result compares each cell with :func:`expected`
    for ``expect`` (default: ``cfg``, the machine's configuration)."""
    return MatrixMachine(cfg).finish(expect)


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
    lines = [f"fault matrix: {result.config.describe()}"]
    if result.expected_config is not None:
        have, want = result.config.switches(), result.expected_config.switches()
        diff = " ".join(f"{k}={v}" for k, v in want.items() if have[k] != v)
        lines.append(f"expectations for: {diff} (not the machine's)")
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
                     f"{_words(c.got)}, expected {c.want.text()} ({c.want.reason or 'allowed'})")
    if result.findings:
        k = len(result.findings)
        lines.append(f"{k} TLB finding{'s' if k != 1 else ''} (docs/tlb.md):")
        lines.extend(f"  {f.line()}" for f in result.findings)
    if result.asi_findings:
        k = len(result.asi_findings)
        lines.append(f"{k} ASI finding{'s' if k != 1 else ''} (docs/asi.md):")
        lines.extend(f"  {f.line()}" for f in result.asi_findings)
    return "\n".join(lines)


def _words(o: Outcome) -> str:
    return f" ({error_code_words(o.error_code)})" if o.vector == 14 else ""
