"""Address-space maps: what a space maps, how two spaces differ, and where
a physical frame is mapped (``isoemu diff``, ``isoemu whereis``, the
report's VA maps; docs/views.md).

One walk per space with the tree visitor (:class:`~emu.hw.paging.TableVisitor`,
memoized, so ESPfix's 65,536 aliases of one stack page cost one subtree),
giving *runs*: maximal ranges of leaves with contiguous virtual and physical
addresses, one page size and the same effective permissions (U/S and R/W
ANDed down the levels, XD ORed: SDM Vol. 3A 4.6.1).  A non-present leaf that
still holds a PFN stored inverted (L1TF, arch/x86/include/asm/pgtable-invert.h:
what ``set_direct_map_invalid_noflush`` leaves of a secret page's direct-map
entry, mm/secretmem.c) is kept as a *removed* mapping of that frame.

Frames are described by a frame source: on the built-in machine the frame
allocator's kind, owner and sensitivity (the stub's HC_SENSITIVE flag, and
ASI's rule that user and secret memory are sensitive: emu/linux/asi.py); on
a memory image what the tables themselves say (a frame is a page table of
one of the given roots, or RAM of the image, or absent from it).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import NamedTuple

from emu.errors import AddressError, TableError
from emu.hw.paging import ADDR_MASK, RW, US, G, PagingMode, TableVisitor, fmt_size
from emu.hw.phys import PAGE_SIZE, FrameKind
from emu.linux.pte import inverted_pfn

#: run flags: user (U/S), writable (R/W), executable (no XD), global (G)
U, W, X, GLOBAL = 1, 2, 4, 8
PERMS = U | W | X


def perm_text(flags: int) -> str:
    """``user rw-``, ``kernel r-x``: the effective permissions of a run."""
    return (f"{'user' if flags & U else 'kernel'} r{'w' if flags & W else '-'}{'x' if flags & X else '-'}"
            + (" G" if flags & GLOBAL else ""))


class Run(NamedTuple):
    """[va, end) maps [pa, pa + end - va) with pages of ``page`` bytes."""

    va: int
    end: int
    pa: int
    page: int
    flags: int

    @property
    def size(self) -> int:
        return self.end - self.va


class Removed(NamedTuple):
    """A non-present leaf at [va, end) still holding ``pa``'s PFN, inverted."""

    va: int
    end: int
    pa: int
    level: str


@dataclass
class SpaceMap:
    """Everything one page-table tree maps."""

    name: str
    root: int
    mode: PagingMode
    runs: list[Run]
    removed: list[Removed]
    tables: set[int]                 # the frames of the tree's tables
    problems: list[str] = field(default_factory=list)   # broken parts, skipped

    def mapped_bytes(self) -> int:
        return sum(r.end - r.va for r in self.runs)


class _Runs(TableVisitor):
    memoize = True
    leaf_runs = True

    def __init__(self, mem, root, mode):
        super().__init__(mem, root, mode)
        self.runs: list[tuple] = []
        self.removed: list[tuple] = []
        self.tables = {self.root}
        self.problems: dict = {}

    def leaf_run(self, va, level, words, i, j, table_pa, eff, nx):
        span = level.size
        mask = ADDR_MASK & ~(span - 1)
        flags = (U if eff & US else 0) | (W if eff & RW else 0) | (0 if nx else X) | (GLOBAL if words[i] & G else 0)
        runs = self.runs
        start = i
        for k in range(i + 1, j + 1):
            if k == j or words[k] & mask != (words[k - 1] & mask) + span:
                runs.append((va + (start - i) * span, va + (k - i) * span, words[start] & mask, span, flags))
                start = k

    def nonpresent(self, va, level, entry, entry_pa, eff, nx):
        if level.leaf_ok:
            pfn = inverted_pfn(entry)
            if pfn is not None:
                self.removed.append((va, va + level.size, pfn << 12, level.name))

    def table(self, va, level, entry, entry_pa, eff, nx):
        self.tables.add(entry & ADDR_MASK)
        return True

    def broken(self, error: TableError) -> None:
        self.problems.setdefault(getattr(error, "key", str(error)), f"{error}; not walked")

    def begin_subtree(self, va):
        return va, len(self.runs), len(self.removed)

    def end_subtree(self, token):
        va, n_runs, n_removed = token
        return ([(a - va, b - va, pa, page, fl) for a, b, pa, page, fl in self.runs[n_runs:]],
                [(a - va, b - va, pa, lv) for a, b, pa, lv in self.removed[n_removed:]])

    def replay(self, summary, va, span):
        runs, removed = summary
        self.runs.extend((va + a, va + b, pa, page, fl) for a, b, pa, page, fl in runs)
        self.removed.extend((va + a, va + b, pa, lv) for a, b, pa, lv in removed)
        return True


def space_map(name: str, mem, root: int, mode: PagingMode) -> SpaceMap:
    """Walk the tree at ``root`` once: its runs (merged across tables), its
    removed leaves, its table frames and what could not be walked."""
    v = _Runs(mem, root, mode)
    v.walk()
    runs: list[Run] = []
    for a, b, pa, page, fl in v.runs:
        if runs:
            p = runs[-1]
            if p.end == a and p.page == page and p.flags == fl and p.pa + (p.end - p.va) == pa:
                runs[-1] = Run(p.va, b, p.pa, page, fl)
                continue
        runs.append(Run(a, b, pa, page, fl))
    return SpaceMap(name, root & ADDR_MASK, mode, runs, [Removed(*r) for r in v.removed], v.tables,
                    list(v.problems.values()))


# --- frames ----------------------------------------------------------------------------------
class FrameClass(NamedTuple):
    kind: str
    owner: str | None
    sensitivity: str          # sensitive | non-sensitive | n/a (free, reserved) | unknown (images)

    def text(self) -> str:
        words = [self.kind] + ([f"owner {self.owner}"] if self.owner else [])
        if self.sensitivity not in ("n/a", "unknown"):
            words.append(self.sensitivity)
        return ", ".join(words)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "owner": self.owner, "sensitivity": self.sensitivity}


#: sensitive whatever flag they were allocated with: user and secret memory (GFP_USER;
#: mm/secretmem.c), as ASI's non-sensitive direct map leaves them out (emu/linux/asi.py)
SENSITIVE_KINDS = {FrameKind.USER, FrameKind.SECRET, FrameKind.SECRET_POOL}
_NO_TAIL = bytes(i & 0x7F for i in range(256))
_KIND_RUNS = re.compile(rb"(.)\1*", re.DOTALL)


class MachineFrames:
    """The built-in machine's frames, from its frame allocator (emu/hw/phys.py)."""

    outside = "outside RAM"

    def __init__(self, frames):
        self.frames = frames
        self.size = frames.nframes << 12

    def check(self, pa: int) -> None:
        if not 0 <= pa < self.size:
            raise AddressError(f"physical address {pa:#x} is outside RAM (size {self.size:#x})")

    def classify(self, pfn: int) -> FrameClass:
        f = self.frames
        head = f.head_pfn(pfn)
        kind = FrameKind(f.kind[head] & 0x7F)
        owner = f.owner.get(head)
        if kind in (FrameKind.FREE, FrameKind.RESERVED):
            sens = "n/a"
        elif head in f.sensitive or kind in SENSITIVE_KINDS or (kind == FrameKind.PGTABLE and owner == "asi"):
            # asi.global's own tables are allocated sensitive (RFC v2, against recursion)
            sens = "sensitive"
        else:
            sens = "non-sensitive"
        return FrameClass(kind.name.lower(), owner, sens)

    def classes(self, lo: int, hi: int) -> list[tuple[int, int, FrameClass]]:
        """[lo, hi) split where the frames' class changes; outside RAM: 'outside RAM'."""
        out: list[tuple[int, int, FrameClass]] = []
        end_ram = min(hi, self.size)
        f = self.frames
        if lo < end_ram:
            p0, p1 = lo >> 12, (end_ram + PAGE_SIZE - 1) >> 12
            kinds = f.kind[p0:p1].translate(_NO_TAIL)
            for m in _KIND_RUNS.finditer(kinds):
                a, b = p0 + m.start(), p0 + m.end()
                if kinds[m.start()] == FrameKind.FREE:
                    _add(out, a << 12, b << 12, self.classify(a))
                    continue
                pfn = a
                while pfn < b:
                    head = f.head_pfn(pfn)
                    nxt = min(b, head + (1 << f.order.get(head, 0)))
                    _add(out, pfn << 12, nxt << 12, self.classify(pfn))
                    pfn = nxt
            if out:
                out[0] = (lo, *out[0][1:])
                out[-1] = (out[-1][0], min(out[-1][1], hi), out[-1][2])
        if hi > self.size:
            _add(out, max(lo, self.size), hi, FrameClass(self.outside, None, "n/a"))
        return out


class ImageFrames:
    """A memory image's frames: what its tables say of them, nothing more (a
    frame is a page table of one of the walked roots, or some other page)."""

    outside = "outside the image"

    def __init__(self, mem, tables: set[int]):
        self.mem = mem
        self.tables = sorted(tables)
        self.size = mem.size

    def check(self, pa: int) -> None:
        if not 0 <= pa < self.size:
            raise AddressError(f"physical address {pa:#x} is outside {self.mem.name} (size {self.size:#x})")

    def classify(self, pfn: int) -> FrameClass:
        pa = pfn << 12
        i = bisect.bisect_left(self.tables, pa)
        if i < len(self.tables) and self.tables[i] == pa:
            return FrameClass("pgtable", None, "unknown")
        return FrameClass("page", None, "unknown")

    def classes(self, lo: int, hi: int) -> list[tuple[int, int, FrameClass]]:
        cuts = {lo, hi}
        i = bisect.bisect_left(self.tables, lo & ~0xFFF)
        while i < len(self.tables) and self.tables[i] < hi:
            t = self.tables[i]
            cuts.update(x for x in (t, t + PAGE_SIZE) if lo < x < hi)
            i += 1
        edges = sorted(cuts)
        out: list[tuple[int, int, FrameClass]] = []
        for a, b in zip(edges, edges[1:]):
            _add(out, a, b, self.classify(a >> 12))
        return out


def _add(out: list, a: int, b: int, cls: FrameClass) -> None:
    if out and out[-1][1] == a and out[-1][2] == cls:
        out[-1] = (out[-1][0], b, cls)
    else:
        out.append((a, b, cls))


# --- diff ------------------------------------------------------------------------------------
class Side(NamedTuple):
    pa: int
    page: int
    flags: int
    frame: FrameClass | None = None

    def text(self) -> str:
        return f"{perm_text(self.flags)} {fmt_size(self.page)} pa {self.pa:#x}"

    def as_dict(self) -> dict:
        return {"pa": f"{self.pa:#x}", "page_size": self.page, "user": bool(self.flags & U),
                "writable": bool(self.flags & W), "executable": bool(self.flags & X),
                "global": bool(self.flags & GLOBAL), "frame": None if self.frame is None else self.frame.as_dict()}


#: what differs in a range
DIFF_KINDS = ("only-a", "only-b", "permissions", "frames", "permissions+frames")


@dataclass(frozen=True)
class DiffRange:
    va: int
    end: int
    what: str                 # one of DIFF_KINDS
    a: Side | None
    b: Side | None

    @property
    def size(self) -> int:
        return self.end - self.va


@dataclass
class Diff:
    a: SpaceMap
    b: SpaceMap
    ranges: list[DiffRange]

    def totals(self) -> dict[str, int]:
        out = {k: 0 for k in DIFF_KINDS}
        for r in self.ranges:
            out[r.what] += r.size
        return out

    def as_dict(self) -> dict:
        return {"a": {"name": self.a.name, "cr3": f"{self.a.root:#x}"},
                "b": {"name": self.b.name, "cr3": f"{self.b.root:#x}"},
                "ranges": [{"start": f"{r.va:#x}", "end": f"{r.end:#x}", "size": r.size, "diff": r.what,
                            "a": None if r.a is None else r.a.as_dict(),
                            "b": None if r.b is None else r.b.as_dict()} for r in self.ranges],
                "summary": {"ranges": len(self.ranges),
                            "bytes": {k.replace("-", "_").replace("+", "_"): v for k, v in self.totals().items()},
                            "problems": self.a.problems + self.b.problems}}


def _segments(ra: list[Run], rb: list[Run]):
    """(lo, hi, run of a or None, run of b or None) over everything either maps."""
    i = j = 0
    pos = 0
    na, nb = len(ra), len(rb)
    while i < na or j < nb:
        a = ra[i] if i < na else None
        b = rb[j] if j < nb else None
        lo = max(pos, min(r.va for r in (a, b) if r is not None))
        a_in = a is not None and a.va <= lo < a.end
        b_in = b is not None and b.va <= lo < b.end
        hi = min(x for r, inside in ((a, a_in), (b, b_in)) if r is not None
                 for x in ((r.end,) if inside else (r.va,)) if x > lo)
        if a_in or b_in:
            yield lo, hi, a if a_in else None, b if b_in else None
        pos = hi
        if a is not None and a.end <= hi:
            i += 1
        if b is not None and b.end <= hi:
            j += 1


def _side(r: Run | None, lo: int) -> Side | None:
    return None if r is None else Side(r.pa + (lo - r.va), r.page, r.flags)


def diff_spaces(a: SpaceMap, b: SpaceMap, frames) -> Diff:
    """Every range one space maps and the other does not, or maps with other
    effective permissions (U/S, R/W, XD) or to other frames; ranges
    coalesced, then split where a side's frames change class."""
    raw: list[list] = []
    for lo, hi, x, y in _segments(a.runs, b.runs):
        sa, sb = _side(x, lo), _side(y, lo)
        if sa is None:
            what = "only-b"
        elif sb is None:
            what = "only-a"
        else:
            perms = (sa.flags & PERMS) != (sb.flags & PERMS)
            other = sa.pa != sb.pa
            if not (perms or other):
                continue
            what = "permissions+frames" if perms and other else ("permissions" if perms else "frames")
        if raw:
            p = raw[-1]
            if p[1] == lo and p[2] == what and _continues(p[3], sa, p[1] - p[0]) \
                    and _continues(p[4], sb, p[1] - p[0]):
                p[1] = hi
                continue
        raw.append([lo, hi, what, sa, sb])
    out = []
    for lo, hi, what, sa, sb in raw:
        cuts = {lo: None}
        for s in (sa, sb):
            if s is not None:
                for c0, _, _ in frames.classes(s.pa, s.pa + hi - lo):
                    cuts[lo + c0 - s.pa] = None
        edges = sorted(c for c in cuts if lo <= c < hi) + [hi]
        for x0, x1 in zip(edges, edges[1:]):
            out.append(DiffRange(x0, x1, what, _framed(sa, x0 - lo, frames), _framed(sb, x0 - lo, frames)))
    return Diff(a, b, out)


def _continues(prev: Side | None, s: Side | None, size: int) -> bool:
    if prev is None or s is None:
        return prev is s
    return prev.page == s.page and prev.flags & PERMS == s.flags & PERMS and prev.pa + size == s.pa


def _framed(s: Side | None, off: int, frames) -> Side | None:
    if s is None:
        return None
    pa = s.pa + off
    frame = frames.classes(pa, pa + 1)[0][2] if pa < frames.size else FrameClass(frames.outside, None, "n/a")
    return Side(pa, s.page, s.flags, frame)


def render_diff(d: Diff) -> list[str]:
    """The table ``isoemu diff`` prints."""
    na, nb = d.a.name, d.b.name
    label = {"only-a": f"only {na}", "only-b": f"only {nb}", "permissions": "permissions",
             "frames": "frames", "permissions+frames": "perms+frames"}
    lines = [f"{na} (cr3 {d.a.root:#x}) vs {nb} (cr3 {d.b.root:#x}): {len(d.ranges)} "
             f"range{'s' if len(d.ranges) != 1 else ''} differ"]
    w = max(12, len(na) + 5, len(nb) + 5)
    lines.append(f"{'range':<37} {'size':>6}  {'differs':<{w}}  {na:<22}  {nb:<22}  frames")
    for r in d.ranges:
        fa = r.a.frame.text() if r.a is not None else None
        fb = r.b.frame.text() if r.b is not None else None
        frames = fa if fb is None or fb == fa else (fb if fa is None else f"{fa} | {fb}")
        lines.append(f"{r.va:#018x}-{r.end:#018x} {fmt_size(r.size):>6}  {label[r.what]:<{w}}  "
                     f"{_cell(r.a):<22}  {_cell(r.b):<22}  {frames}")
    t = d.totals()
    lines.append("total: " + ", ".join(f"{label[k]} {fmt_size(v)}" for k, v in t.items() if v) if any(t.values())
                 else "total: the spaces map the same")
    return lines


def _cell(s: Side | None) -> str:
    if s is None:
        return "-"
    return f"{perm_text(s.flags & PERMS)} {fmt_size(s.page)}"


# --- whereis ---------------------------------------------------------------------------------
class Hit(NamedTuple):
    space: str
    va: int                   # the address of the byte asked for
    page: int                 # the page size mapping it
    flags: int
    removed: bool             # a non-present leaf holding the PFN inverted (no mapping)
    level: str = ""


_BUCKET = 30


class ReverseMap:
    """Physical address -> every virtual address of every space that maps it,
    built once from the spaces' runs (an index of 1 GiB physical buckets)."""

    def __init__(self, maps: list[SpaceMap], frames):
        self.maps = maps
        self.frames = frames
        self.order = {m.name: i for i, m in enumerate(maps)}
        self.buckets: dict[int, list[tuple]] = {}
        for m in maps:
            for r in m.runs:
                self._index(r.pa, r.pa + r.end - r.va, (m.name, r.va, r.pa, r.end - r.va, r.page, r.flags, False, ""))
            for r in m.removed:
                self._index(r.pa, r.pa + r.end - r.va, (m.name, r.va, r.pa, r.end - r.va, r.end - r.va, 0, True,
                                                          r.level))

    def _index(self, lo: int, hi: int, item: tuple) -> None:
        for k in range(lo >> _BUCKET, ((hi - 1) >> _BUCKET) + 1):
            self.buckets.setdefault(k, []).append(item)

    def whereis(self, pa: int) -> list[Hit]:
        self.frames.check(pa)
        out = []
        for name, va, base, size, page, flags, removed, level in self.buckets.get(pa >> _BUCKET, ()):
            if base <= pa < base + size:
                out.append(Hit(name, va + (pa - base), page, flags, removed, level))
        out.sort(key=lambda h: (self.order[h.space], h.va, h.removed))
        return out

    def frame(self, pa: int) -> tuple[int, int, FrameClass]:
        """The frame holding ``pa``: (first address, size, class)."""
        self.frames.check(pa)
        f = getattr(self.frames, "frames", None)
        if f is not None:
            info = f.info(pa)
            return info.pa, info.size, self.frames.classify(pa >> 12)
        return pa & ~0xFFF, PAGE_SIZE, self.frames.classify(pa >> 12)


def whereis_dict(rmap: ReverseMap, pa: int, hits: list[Hit]) -> dict:
    start, size, cls = rmap.frame(pa)
    return {"pa": f"{pa:#x}", "frame": {"start": f"{start:#x}", "size": size, **cls.as_dict()},
            "mappings": [{"space": h.space, "va": f"{h.va:#x}", "page_size": h.page,
                          "present": not h.removed, "user": bool(h.flags & U), "writable": bool(h.flags & W),
                          "executable": bool(h.flags & X), "global": bool(h.flags & GLOBAL),
                          **({"level": h.level} if h.removed else {})} for h in hits],
            "summary": {"mappings": sum(not h.removed for h in hits), "removed": sum(h.removed for h in hits),
                        "spaces": len({h.space for h in hits if not h.removed})}}


def render_whereis(rmap: ReverseMap, pa: int, hits: list[Hit]) -> list[str]:
    start, size, cls = rmap.frame(pa)
    lines = [f"pa {pa:#x}: frame {start:#x} ({fmt_size(size)}), {cls.text()}"]
    w = max([5] + [len(h.space) for h in hits])
    lines.append(f"{'space':<{w}}  {'va':<18}  {'page':>4}  mapping")
    for h in hits:
        what = (f"removed: non-present {h.level} entry, PFN inverted (L1TF)" if h.removed
                else perm_text(h.flags))
        lines.append(f"{h.space:<{w}}  {h.va:#018x}  {fmt_size(h.page):>4}  {what}")
    n = sum(not h.removed for h in hits)
    spaces = len({h.space for h in hits if not h.removed})
    k = sum(h.removed for h in hits)
    lines.append(f"{n} mapping{'s' if n != 1 else ''} in {spaces} space{'s' if spaces != 1 else ''}"
                 + (f", {k} removed" if k else ""))
    return lines


# --- spaces ----------------------------------------------------------------------------------
def build_maps(spaces) -> tuple[dict[str, SpaceMap], object]:
    """Each :class:`~emu.tools.spaces.Space`'s map, and the frame source of
    their memory (the machine's allocator, or the image's tables)."""
    maps = {s.name: space_map(s.name, s.mem, s.cr3, s.ctl.mode) for s in spaces}
    mem = spaces[0].mem
    if getattr(mem, "frames", None) is not None:
        return maps, MachineFrames(mem.frames)
    tables: set[int] = set()
    for m in maps.values():
        tables |= m.tables
    return maps, ImageFrames(mem, tables)
