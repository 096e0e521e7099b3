"""ptdump: page tables in Linux's ``dump_pagetables`` format.

Reproduces arch/x86/mm/dump_pagetables.c as driven by mm/ptdump.c in Linux
6.1: the same walk ranges (the non-canonical and guard holes are skipped),
the same ``note_page`` state machine (a new line when the leaf's own flags,
the effective permissions or the level change, or a section marker is
crossed; one marker advances per entry; the final flush ends at address 0),
and the same columns.  Printed flags are the leaf entry's own bits; the
effective permissions (U/S and R/W ANDed down the walk, NX ORed) only decide
where lines break, exactly as in Linux.  The section markers come from a
:class:`~emu.linux.layout.Layout` (a real kernel's: docs/images.md).

Speed (docs/images.md, "Speed"): zero entries come in runs, and a subtree
referenced many times is walked once (the visitor's memoization): its
sequence of states is recorded, then replayed wherever it recurs, in O(1)
where the dump prints nothing (ESPfix past its 16 lines) and no marker
falls inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from emu.errors import TableError
from emu.hw.paging import FLAGS_MASK as PTE_FLAGS_MASK
from emu.hw.paging import NX, P, PAT, PAT_LARGE, PCD, PS, PWT, RW, US, G, Level, PagingMode, TableVisitor, mode_for
from emu.hw.phys import PhysView
from emu.linux.layout import Layout, layout_for
from emu.linux.pte import inverted_pfn

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
    entry: int = 0      # the raw first entry of the run (0 for a hole)

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


def entry_note(entry: int) -> str:
    """``  0x8000000000000025`` (the run's first raw entry), with an inverted
    PFN decoded (L1TF: emu/linux/pte.py)."""
    pfn = inverted_pfn(entry)
    return f"  {entry:#018x}" + (f"  PFN inverted: {pfn:#x}" if pfn is not None else "")


class _Summary:
    """The states a subtree goes through, relative to its start: ``first``,
    then ``n`` changes; ``parts`` hold (offset, state) changes and
    (offset, _Summary) children; ``last``/``last_off`` the final state and
    where it began."""

    __slots__ = ("first", "last", "last_off", "n", "parts", "span")

    def __init__(self):
        self.first = None
        self.last = None
        self.last_off = 0
        self.n = 0
        self.parts: list = []
        self.span = 0

    def add_state(self, off: int, state) -> None:
        if state == self.last and self.first is not None:
            return
        if self.first is None:
            self.first = state
        else:
            self.n += 1
        self.last, self.last_off = state, off
        self.parts.append((off, state))

    def add_summary(self, off: int, s: "_Summary") -> None:
        if s.first is None:
            return
        if self.first is None:
            self.first = s.first
            self.last_off = off
        elif s.first != self.last:
            self.n += 1
            self.last_off = off
        self.n += s.n
        if s.n:
            self.last_off = off + s.last_off
        self.last = s.last
        self.parts.append((off, s))


class _Dumper:
    """The note_page() state machine."""

    def __init__(self, layout: Layout, out: list[str] | None, runs: list[Run] | None, entries: bool = False):
        self.entries = entries
        markers = [(a, n, 16 if n == "ESPfix Area" else 0) for a, n in layout.markers()]
        self.markers = markers + [(1 << 64, None, 0)]
        self.mi = 0
        self.level = -1
        self.start = 0
        self.prot = 0
        self.eff = 0
        self.entry = 0
        self.lines = 0
        self.out = out
        self.runs = runs
        self.rec: list[tuple[int, _Summary]] = []     # subtrees being recorded, innermost last

    def _emit(self, text: str) -> None:
        if self.out is not None:
            self.out.append(text)

    def note(self, addr: int, level: int, val: int, eff: int) -> None:
        """note_page(): ``val`` the entry (0 for a hole), ``eff`` its effective permissions."""
        self.note_state(addr, level, val & PTE_FLAGS_MASK, eff if val else 0, val)

    def note_state(self, addr: int, level: int, new_prot: int, new_eff: int, val: int = 0) -> None:
        if self.rec:
            base, s = self.rec[-1]
            s.add_state(addr - base, (level, new_prot, new_eff))
        if self.level == -1:
            self.prot, self.eff, self.level, self.entry = new_prot, new_eff, level, val
            self.start = addr
            self._emit(f"---[ {self.markers[0][1]} ]---")
            return
        next_marker = self.markers[self.mi + 1][0]
        crossed = level != -1 and addr >= next_marker
        if not (new_prot != self.prot or new_eff != self.eff or level != self.level or crossed):
            return
        max_lines = self.markers[self.mi][2]
        if not max_lines or self.lines < max_lines:
            line = format_range(self.start, addr) + format_prot(self.prot, self.level)
            self._emit(line + entry_note(self.entry) if self.entries and self.entry else line)
        if self.runs is not None:
            self.runs.append(Run(self.start, addr, _LEVEL_NAME[self.level], self.prot, self.eff, self.entry))
        self.lines += 1
        if crossed:
            if max_lines and self.lines > max_lines:
                n = self.lines - max_lines
                self._emit(f"... {n} entr{'y' if n == 1 else 'ies'} skipped ... ")
            self.mi += 1
            self.lines = 0
            self._emit(f"---[ {self.markers[self.mi][1]} ]---")
        self.start, self.prot, self.eff, self.level, self.entry = addr, new_prot, new_eff, level, val

    def note_run(self, addr: int, level: int, val: int, eff: int, count: int, span: int) -> None:
        """``count`` equal entries from ``addr``: Linux notes each, and all but
        the first change nothing unless they cross a section marker."""
        self.note(addr, level, val, eff)
        end = addr + count * span
        last = addr
        while True:
            marker = self.markers[self.mi + 1][0]
            at = max(marker, last + span)
            at = addr + -(-(at - addr) // span) * span       # the first entry at or above it
            if at >= end:
                return
            self.note(at, level, val, eff)
            last = at

    # -- memoized subtrees -------------------------------------------------------------
    def begin(self, addr: int) -> None:
        self.rec.append((addr, _Summary()))

    def end(self, span: int) -> _Summary:
        base, s = self.rec.pop()
        s.span = span
        if self.rec:
            pbase, parent = self.rec[-1]
            parent.add_summary(base - pbase, s)
        return s

    def replay(self, s: _Summary, addr: int) -> bool:
        """Note a recorded subtree again at ``addr``; False when a section
        marker falls inside it (the compressed states would miss the break)."""
        if s.first is None:
            return True
        mi = self.mi + (1 if self.markers[self.mi + 1][0] <= addr else 0)
        if self.markers[mi + 1][0] < addr + s.span:
            return False
        rec = self.rec
        self.rec = []                   # the notes below are the summary's, recorded once
        try:
            self._play(s, addr)
        finally:
            self.rec = rec
        if rec:
            pbase, parent = rec[-1]
            parent.add_summary(addr - pbase, s)
        return True

    def _play(self, s: _Summary, addr: int) -> None:
        self.note_state(addr, *s.first)
        max_lines = self.markers[self.mi][2]
        if self.runs is None and max_lines and self.lines >= max_lines:
            # nothing to print: each change is one more line counted
            self.lines += s.n
            if s.n:
                self.start = addr + s.last_off
                self.level, self.prot, self.eff = s.last
            return
        for off, part in s.parts:
            if isinstance(part, _Summary):
                self._play(part, addr + off)
            else:
                self.note_state(addr + off, *part)


# Linux's ptdump level numbers (mm/ptdump.c): pgd 0, p4d 1 (folded at 4 levels), pud 2, pmd 3, pte 4
_LINUX_LEVEL = {name: i for i, name in enumerate(_LEVEL_NAME)}


class _Walk(TableVisitor):
    """mm/ptdump.c + mm/pagewalk.c: every entry, holes included, in order."""

    holes = True

    def __init__(self, mem: PhysView, root: int, mode: PagingMode, st: _Dumper, problems: list[str] | None,
                 memoize: bool):
        super().__init__(mem, root, mode)
        self.st = st
        self.problems = problems
        self.top = self.mode.top
        self.seen: set = set()
        # replaying prints the same lines, but runs and --entries need every raw entry
        self.memoize = memoize and st.runs is None and not st.entries
        self.leaf_runs = st.runs is None and not st.entries

    def _effective(self, level: Level, entry: int, eff: int, nx: bool) -> int:
        # effective_prot(): the top level keeps every flag, the levels below
        # U/S and R/W ANDed and NX ORed (arch/x86/mm/dump_pagetables.c)
        if level is self.top:
            return entry & PTE_FLAGS_MASK
        return (eff & (US | RW)) | (NX if nx else 0)

    def hole_run(self, va, level, count):
        self.st.note_run(va, _LINUX_LEVEL[level.name], 0, 0, count, level.size)   # pte_hole / empty ptes

    def leaf(self, va, level, entry, entry_pa, eff, nx):
        self.st.note(va, _LINUX_LEVEL[level.name], entry, self._effective(level, entry, eff, nx))

    nonpresent = leaf

    def leaf_run(self, va, level, words, i, j, table_pa, eff, nx):
        # entries with equal flag bits change nothing after the first (but markers)
        e = words[i]
        if j - i == 1:
            self.st.note(va, _LINUX_LEVEL[level.name], e, self._effective(level, e, eff, nx))
        else:
            self.st.note_run(va, _LINUX_LEVEL[level.name], e, self._effective(level, e, eff, nx), j - i,
                             level.size)

    nonpresent_run = leaf_run

    def broken(self, error: TableError) -> None:
        if self.problems is None:
            raise error
        key = getattr(error, "key", str(error))
        if key not in self.seen:       # once, however many aliases reach it
            self.seen.add(key)
            self.problems.append(f"{error} (skipped)")

    def begin_subtree(self, va):
        self.st.begin(va)
        return va

    def end_subtree(self, token):
        return self.st.end(0)

    def replay(self, summary, va, span):
        summary.span = span
        return self.st.replay(summary, va)


def _walk(mem: PhysView, root: int, mode: PagingMode, lay: Layout, st: _Dumper,
          problems: list[str] | None, memoize: bool = True) -> None:
    """The two x86-64 ranges of dump_pagetables (the non-canonical hole and
    the guard hole below the LDT remap skipped), then the final flush."""
    _Walk(mem, root, mode, st, problems, memoize).walk([(0, lay.user_end), (lay.guard_hole_end, 1 << 64)])
    st.note(0, -1, 0, 0)   # flush: the last run ends at address 0, as in Linux


def _setup(levels: int | PagingMode, layout: Layout | None) -> tuple[PagingMode, Layout]:
    mode = levels if isinstance(levels, PagingMode) else mode_for(levels)
    return mode, layout or layout_for(mode.depth)


def ptdump_lines(mem: PhysView, root: int, levels: int | PagingMode = 4, layout: Layout | None = None,
                 problems: list[str] | None = None, entries: bool = False, memoize: bool = True) -> list[str]:
    """The dump as Linux prints it (one string per line, no newlines).
    With a ``problems`` list, a table outside memory or a loop is skipped
    and described there once, instead of raising TableError.  ``entries``
    ends each line with its run's first raw entry (:func:`entry_note`).
    ``memoize=False`` walks every reference to a repeated subtree (the
    same lines, slower: a benchmark's baseline)."""
    mode, lay = _setup(levels, layout)
    out: list[str] = []
    _walk(mem, root, mode, lay, _Dumper(lay, out, None, entries), problems, memoize)
    return out


def ptdump_runs(mem: PhysView, root: int, levels: int | PagingMode = 4, layout: Layout | None = None,
                problems: list[str] | None = None) -> Iterator[Run]:
    """The same runs as structured records (holes included), each with its
    first raw entry."""
    mode, lay = _setup(levels, layout)
    runs: list[Run] = []
    _walk(mem, root, mode, lay, _Dumper(lay, None, runs), problems)
    return iter(runs)
