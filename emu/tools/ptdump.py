"""ptdump: page tables in Linux's ``dump_pagetables`` format.

Reproduces arch/x86/mm/dump_pagetables.c as driven by mm/ptdump.c in Linux
6.1: the same walk ranges (the non-canonical and guard holes are skipped),
the same ``note_page`` state machine (a new line when the leaf's own flags,
the effective permissions or the level change, or a section marker is
crossed; one marker advances per entry; the final flush ends at address 0),
and the same columns.  Printed flags are the leaf entry's own bits; the
effective permissions (U/S and R/W ANDed down the walk, NX ORed) only decide
where lines break, exactly as in Linux.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from emu.linux.layout import Layout, layout_for
from emu.hw.paging import FLAGS_MASK as PTE_FLAGS_MASK
from emu.hw.paging import NX, P, PAT, PAT_LARGE, PCD, PS, PWT, RW, US, G, Level, PagingMode, TableVisitor, mode_for
from emu.hw.phys import PhysView

_LEVEL_NAME = ("pgd", "p4d", "pud", "pmd", "pte")
_UNITS = "BKMGTPE"


@dataclass(frozen=True)
class Run:
    """One ptdump line: a run of entries with equal flags at one level."""

    start: int
    end: int            # exclusive; 0 for the final run (Linux prints it so)
    level: str
    flags: int          # the leaf entry's own flag bits (0 for a hole)
    effective: int      # effective U/S, R/W, NX (0 for a hole)

    @property
    def present(self) -> bool:
        return bool(self.flags & P)

    @property
    def size(self) -> int:
        return (self.end - self.start) & 0xFFFFFFFFFFFFFFFF


def format_prot(flags: int, level: int) -> str:
    """printk_prot(): the 30 flag columns and the level name."""
    if not flags & P:
        cols = " " * 30
    else:
        cols = ("USR " if flags & US else "    ") + ("RW " if flags & RW else "ro ")
        cols += ("PWT " if flags & PWT else "    ") + ("PCD " if flags & PCD else "    ")
        cols += "PSE " if level <= 3 and flags & PS else "    "
        pat = (level == 4 and flags & PAT) or (level in (2, 3) and flags & PAT_LARGE)
        cols += "PAT " if pat else "    "
        cols += "GLB " if flags & G else "    "
        cols += "NX " if flags & NX else "x  "
    return cols + _LEVEL_NAME[level]


def format_range(start: int, end: int) -> str:
    delta = (end - start) & 0xFFFFFFFFFFFFFFFF
    unit = 0
    while not delta & 1023 and unit < len(_UNITS) - 1:
        delta >>= 10
        unit += 1
    return f"0x{start:016x}-0x{end:016x}   {delta:9d}{_UNITS[unit]} "


class _Dumper:
    """The note_page() state machine."""

    def __init__(self, layout: Layout, out: list[str] | None, runs: list[Run] | None):
        markers = [(a, n, 16 if n == "ESPfix Area" else 0) for a, n in layout.markers()]
        self.markers = markers + [(1 << 64, None, 0)]
        self.mi = 0
        self.level = -1
        self.start = 0
        self.prot = 0
        self.eff = 0
        self.lines = 0
        self.out = out
        self.runs = runs

    def _emit(self, text: str) -> None:
        if self.out is not None:
            self.out.append(text)

    def note(self, addr: int, level: int, val: int, eff: int) -> None:
        new_prot = val & PTE_FLAGS_MASK
        new_eff = eff if val else 0
        if self.level == -1:
            self.prot, self.eff, self.level = new_prot, new_eff, level
            self.start = addr
            self._emit(f"---[ {self.markers[0][1]} ]---")
            return
        next_marker = self.markers[self.mi + 1][0]
        crossed = level != -1 and addr >= next_marker
        if not (new_prot != self.prot or new_eff != self.eff or level != self.level or crossed):
            return
        max_lines = self.markers[self.mi][2]
        if not max_lines or self.lines < max_lines:
            self._emit(format_range(self.start, addr) + format_prot(self.prot, self.level))
        if self.runs is not None:
            self.runs.append(Run(self.start, addr, _LEVEL_NAME[self.level], self.prot, self.eff))
        self.lines += 1
        if crossed:
            if max_lines and self.lines > max_lines:
                n = self.lines - max_lines
                self._emit(f"... {n} entr{'y' if n == 1 else 'ies'} skipped ... ")
            self.mi += 1
            self.lines = 0
            self._emit(f"---[ {self.markers[self.mi][1]} ]---")
        self.start, self.prot, self.eff, self.level = addr, new_prot, new_eff, level


# Linux's ptdump level numbers (mm/ptdump.c): pgd 0, p4d 1 (folded at 4 levels), pud 2, pmd 3, pte 4
_LINUX_LEVEL = {name: i for i, name in enumerate(_LEVEL_NAME)}


class _Walk(TableVisitor):
    """mm/ptdump.c + mm/pagewalk.c: every entry, holes included, in order."""

    holes = True

    def __init__(self, mem: PhysView, root: int, mode: PagingMode, st: _Dumper):
        super().__init__(mem, root, mode)
        self.st = st

    def _effective(self, level: Level, entry: int, eff: int, nx: bool) -> int:
        # effective_prot(): the top level keeps every flag, the levels below
        # U/S and R/W ANDed and NX ORed (arch/x86/mm/dump_pagetables.c)
        if level is self.mode.top:
            return entry & PTE_FLAGS_MASK
        return (eff & (US | RW)) | (NX if nx else 0)

    def hole(self, va, level):
        self.st.note(va, _LINUX_LEVEL[level.name], 0, 0)      # pte_hole / an empty pte

    def leaf(self, va, level, entry, entry_pa, eff, nx):
        self.st.note(va, _LINUX_LEVEL[level.name], entry, self._effective(level, entry, eff, nx))

    nonpresent = leaf


def _walk(mem: PhysView, root: int, levels: int, st: _Dumper) -> None:
    """The two x86-64 ranges of dump_pagetables (the non-canonical hole and
    the guard hole below the LDT remap skipped), then the final flush."""
    lay = layout_for(levels)
    _Walk(mem, root, mode_for(levels), st).walk([(0, lay.user_end), (lay.ldt_base, 1 << 64)])
    st.note(0, -1, 0, 0)   # flush: the last run ends at address 0, as in Linux


def ptdump_lines(mem: PhysView, root: int, levels: int = 4) -> list[str]:
    """The dump as Linux prints it (one string per line, no newlines)."""
    out: list[str] = []
    _walk(mem, root, levels, _Dumper(layout_for(levels), out, None))
    return out


def ptdump_runs(mem: PhysView, root: int, levels: int = 4) -> Iterator[Run]:
    """The same runs as structured records (holes included)."""
    runs: list[Run] = []
    _walk(mem, root, levels, _Dumper(layout_for(levels), None, runs))
    return iter(runs)
