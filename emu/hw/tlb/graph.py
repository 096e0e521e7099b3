"""Which roots reach a paging-structure entry, and what an entry maps.

The TLB model must know, for an entry that changes, every address space
(root) and linear address through which the processor could have used it:
the table graph keeps each table's parents (the entries that point at it) so
the paths from the roots can be found upward.  It also turns an entry into
the translations it provides (its leaves, with effective permissions), using
the tree visitor.
"""

from __future__ import annotations

from array import array
from typing import NamedTuple

from emu.hw.paging import ADDR_MASK, NX, P, PAGE_SIZE, RW, US, G, PagingMode, TableVisitor
from emu.hw.phys import PhysView




#: low byte of an entry -> 1 if it points at a table: present, and PS clear
#: (levels where PS makes a leaf) or whatever PS is (levels where it cannot)
_POINTER = bytes(int(bool(b & P) and not b & 0x80) for b in range(256))
_PRESENT = bytes(int(bool(b & P)) for b in range(256))


class Path(NamedTuple):
    """One way from a root to a table: the table's linear-address base (index
    space), its depth (0 = the root itself) and the rights of the levels above."""

    root: int
    base: int
    depth: int
    eff: int            # US|RW ANDed down to the table
    nx: bool            # XD ORed down to the table


class Leafish(NamedTuple):
    """A translation an entry provides: [va, va+size) -> pa with these rights
    (a tuple: a split makes 512 of them)."""

    va: int
    size: int
    pa: int
    level: str
    user: bool
    writable: bool
    nx: bool
    glob: bool
    pkey: int

    def covers(self, va: int) -> bool:
        return self.va <= va < self.va + self.size

    def grants_no_more_than(self, other: "Leafish") -> bool:
        """Does ``other`` map the same frames with at least these rights?"""
        return (self.pa - self.va == other.pa - other.va and (not self.user or other.user)
                and (not self.writable or other.writable) and (self.nx or not other.nx)
                and self.pkey == other.pkey)


class _Collect(TableVisitor):
    def __init__(self, mem, mode):
        super().__init__(mem, 0, mode)
        self.out: list[Leafish] = []
        self.tables: list[int] = []

    def table(self, va, level, e, epa, eff, nx):
        self.tables.append(e & ADDR_MASK)
        return True

    def leaf(self, va, level, e, epa, eff, nx):
        size = level.size
        self.out.append(Leafish(va, size, e & ADDR_MASK & ~(size - 1), level.name, bool(eff & US),
                                bool(eff & RW), nx, bool(e & G), (e >> 59) & 0xF))

    def broken(self, error):
        return                       # a malformed sub-tree provides nothing


def translations(mem: PhysView, mode: PagingMode, depth: int, va: int, entry: int, eff: int, nx: bool) -> list[Leafish]:
    """The translations entry ``entry`` at ``depth`` for ``va`` provides,
    with the rights of the levels above (``eff``, ``nx``)."""
    if not entry & P:
        return []
    level = mode.levels[depth]
    if mode.is_leaf(level, entry):
        # the common case (a PTE): what _Collect.leaf would make, without the visitor
        size = level.size
        e_eff = eff & entry
        return [Leafish(va, size, entry & ADDR_MASK & ~(size - 1), level.name, bool(e_eff & US),
                        bool(e_eff & RW), bool(nx or entry & NX), bool(entry & G), (entry >> 59) & 0xF)]
    v = _Collect(mem, mode)
    v.walk_entry(depth, va, entry, 0, eff, nx)
    return v.out


def uniform_leaves(mem: PhysView, mode: PagingMode, depth: int, va: int, entry: int, eff: int,
                   nx: bool) -> Leafish | None:
    """For an entry that points at a last-level table whose 512 entries all
    map consecutive frames with the same flags (a larger page just split, as
    cpa's __split_large_page fills it): the first of the 512 translations it
    provides, the others being the same shifted by one page each.  None for
    any other entry (then :func:`translations` enumerates them)."""
    if not entry & P or depth != mode.depth - 2 or mode.is_leaf(mode.levels[depth], entry):
        return None
    words = mem.page_words(entry & ADDR_MASK)
    if words is None:
        return None
    first = words[0]
    if not first & P or (first & ADDR_MASK) + 511 * PAGE_SIZE > ADDR_MASK:
        return None
    if words != array("Q", range(first, first + 512 * PAGE_SIZE, PAGE_SIZE)):
        return None
    return translations(mem, mode, depth + 1, va, first, eff & entry, bool(nx or entry & NX))[0]


class _Memo(NamedTuple):
    tables: tuple       # (table, its bytes) for every table the walk read
    out: list


class TableGraph:
    """Parents of every table reachable from the known roots."""

    def __init__(self, mem: PhysView, mode: PagingMode):
        self.mem = mem
        self.mode = mode
        self.roots: set[int] = set()
        self.parents: dict[int, set[int]] = {}       # table -> addresses of the entries pointing at it
        self._paths: dict[int, list[Path]] = {}
        # tables whose pointers are recorded: roots share most of their tables
        # (the kernel half), and every later change comes through entry_changed
        self._scanned: set[int] = set()
        self._memo: dict[tuple, _Memo] = {}

    def translations(self, depth: int, va: int, entry: int, eff: int, nx: bool) -> list[Leafish]:
        """:func:`translations`, with the sub-trees of table entries
        remembered: a sub-tree is enumerated again only if one of the tables
        it read changed (their bytes are kept and compared, so the answer is
        exactly the function's).  PTI clears a process's PGD entry in the
        kernel and the user PGD: the second enumerates nothing again."""
        level = self.mode.levels[depth]
        if not entry & P or self.mode.is_leaf(level, entry):
            return translations(self.mem, self.mode, depth, va, entry, eff, nx)
        key = (depth, va, entry, eff, nx)
        hit = self._memo.get(key)
        buf = self.mem.buf
        if hit is not None:
            for t, was in hit.tables:
                if buf[t:t + PAGE_SIZE] != was:
                    break
            else:
                return list(hit.out)
        v = _Collect(self.mem, self.mode)
        v.walk_entry(depth, va, entry, 0, eff, nx)
        if not v.broken_count:
            if len(self._memo) >= 256:
                self._memo.clear()
            tables = [entry & ADDR_MASK, *v.tables]
            self._memo[key] = _Memo(tuple((t, buf[t:t + PAGE_SIZE]) for t in tables), list(v.out))
        else:
            self._memo.pop(key, None)         # a malformed sub-tree is walked every time
        return v.out

    def add_root(self, root: int) -> None:
        root &= ADDR_MASK
        if root in self.roots:
            return
        self.roots.add(root)
        self._paths.clear()
        self._scan(root, 0)

    def _scan(self, table: int, depth: int) -> None:
        """Record the pointers below ``table`` (a new root or a newly linked table)."""
        if table in self._scanned or depth >= self.mode.depth - 1:
            return
        ents = self.mem.page_words(table)
        if ents is None:
            return
        self._scanned.add(table)
        # the pointers to tables, found in C: each entry's low byte (P, and PS
        # where a PS entry is a leaf: mode.is_leaf) marked 1 or 0, then memchr
        marks = ents.tobytes()[0::8].translate(_POINTER if self.mode.levels[depth].leaf_ok else _PRESENT)
        i = marks.find(1)
        while i >= 0:
            child = ents[i] & ADDR_MASK
            self.parents.setdefault(child, set()).add(table + 8 * i)
            self._scan(child, depth + 1)
            i = marks.find(1, i + 1)

    def entry_changed(self, epa: int, old: int, new: int, depth: int | None) -> None:
        """Keep the parent links right when the entry at ``epa`` (at
        ``depth``, if known) changes from ``old`` to ``new``."""
        changed = False
        if depth is None or depth >= self.mode.depth - 1:
            return
        level = self.mode.levels[depth]
        if old & P and not self.mode.is_leaf(level, old):
            ps = self.parents.get(old & ADDR_MASK)
            if ps is not None:
                ps.discard(epa)
                changed = True
        if new & P and not self.mode.is_leaf(level, new):
            child = new & ADDR_MASK
            self.parents.setdefault(child, set()).add(epa)
            self._scan(child, depth + 1)
            changed = True
        if changed:
            self._paths.clear()

    def table_freed(self, table: int) -> None:
        """A table frame went back to the allocator: its entries point nowhere."""
        end = table + PAGE_SIZE
        self._scanned.discard(table)
        for ps in self.parents.values():
            for epa in [e for e in ps if table <= e < end]:
                ps.discard(epa)
        self._paths.clear()

    def paths(self, table: int) -> list[Path]:
        """Every way from a root to ``table`` (empty for an unlinked table)."""
        got = self._paths.get(table)
        if got is None:
            self._paths[table] = []            # a loop back here contributes nothing
            got = self._paths[table] = self._find(table)
        return got

    def _find(self, table: int) -> list[Path]:
        out = []
        if table in self.roots:
            out.append(Path(table, 0, 0, US | RW, False))
        buf = self.mem.buf
        for epa in sorted(self.parents.get(table, ())):
            e = int.from_bytes(buf[epa:epa + 8], "little")
            if not e & P or e & ADDR_MASK != table:
                continue
            for pp in self.paths(epa & ~0xFFF):
                if pp.depth >= self.mode.depth - 1:
                    continue
                level = self.mode.levels[pp.depth]
                base = pp.base + (((epa & 0xFFF) >> 3) << level.shift)
                out.append(Path(pp.root, base, pp.depth + 1, pp.eff & e, pp.nx or bool(e & NX)))
        return out

    def depth_of(self, table: int) -> int | None:
        ps = self.paths(table)
        return ps[0].depth if ps else None
