"""Lints for page-table construction code (``isoemu check``).

Each lint is a question a reviewer of page-table code asks:

``wx``             a mapping that is both writable and executable (effective
                   R/W and no XD), as Linux's ``ptdump_walk_pgd_level_checkwx``;
``user-kernel``    a kernel-half address reachable from CPL3 (effective U/S);
                   the legacy vsyscall page is exempt;
``alias-wx``       one physical frame writable through one address and
                   executable through another (gdb-pt-dump's alias finder,
                   narrowed to the combination that defeats W^X);
``reserved``       a present entry with reserved bits set (SDM 4.5: address
                   bits above MAXPHYADDR, PS in a PML4E/PML5E, low bits of a
                   large page's address other than PAT, XD without EFER.NXE);
``pgtable-owner``  a frame used as a page table that the allocator does not
                   own as a page table (live RAM only, not images);
``l1tf``           a non-present kernel leaf whose PFN still points into RAM:
                   Linux stores it inverted (pgtable-invert.h) so a
                   speculative L1TF load cannot reach the frame;
``broken``         a table outside memory (or in a hole of an image), or a
                   loop (a table that is its own ancestor): reported once,
                   and the rest of the tree is still checked.

A leaf with reserved bits set can never be used (every access through it
faults with PF_RSVD), so only ``reserved`` speaks of it: the permission
lints ignore it.  The walk is memoized (the tree visitor's ``memoize``): a
subtree referenced many times (ESPfix's 2,048 references to one page-table
page) is walked once, and its findings and leaves are repeated at each
address it is mapped at.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.errors import TableError
from emu.hw.paging import (ADDR_MASK, MAXPHYADDR, NX, PAT_LARGE, PS, RW, US, Level, PagingMode, TableVisitor,
                           fmt_size, mode_for, rsvd_hi_mask)
from emu.hw.phys import FrameKind, PhysView
from emu.linux.layout import Layout, layout_for

LINTS = ("wx", "user-kernel", "alias-wx", "reserved", "pgtable-owner", "l1tf", "broken")


@dataclass(frozen=True)
class Finding:
    lint: str
    va: int
    size: int
    message: str
    alias: tuple[int, int] | None = None   # alias-wx: (writable address, physical address)

    def line(self) -> str:
        return f"{self.lint:<14} {self.va:#018x} {fmt_size(self.size):>5}  {self.message}"

    def as_dict(self) -> dict:
        return {"lint": self.lint, "va": f"{self.va:#x}", "size": self.size, "message": self.message}


class _Lints(TableVisitor):
    """One walk of the tree, every lint asked at every entry."""

    memoize = True
    leaf_runs = True

    def __init__(self, mem: PhysView, root: int, mode: PagingMode, maxphyaddr: int, only: tuple[str, ...],
                 layout: Layout, nxe: bool):
        super().__init__(mem, root, mode)
        self.lay = layout
        self.only = only
        self.hi_rsvd = rsvd_hi_mask(maxphyaddr) | (0 if nxe else NX)
        self.pfn_mask = ADDR_MASK & ((1 << maxphyaddr) - 1)
        self.frames = getattr(mem, "frames", None)
        self.out: list[Finding] = []
        self.leaves: list[tuple[int, int, int, bool, bool]] = []   # va, size, pa, writable, exec
        self.broken_seen: dict = {}      # fault key -> [index in out, times reached]
        self.want = {name: name in only for name in LINTS}

    def _reserved(self, va: int, level: Level, e: int, epa: int) -> bool:
        bad = self.hi_rsvd
        if level.ps_reserved:
            bad |= PS
        elif self.mode.is_leaf(level, e) and not level.is_pte:
            bad |= (level.size - 1) & ADDR_MASK & ~PAT_LARGE
        if not e & bad:
            return False
        if self.want["reserved"]:
            self.out.append(Finding("reserved", va, level.size,
                                    f"{level.name} entry {e:#018x} at {epa:#x} sets reserved bits {e & bad:#x}"))
        return True

    def nonpresent(self, va, level, e, epa, eff, nx):
        if level.leaf_ok and not self.lay.is_user(va) and self.want["l1tf"]:
            pfn_pa = e & self.pfn_mask
            if self.mem.contains(pfn_pa):
                self.out.append(Finding("l1tf", va, level.size,
                                        f"non-present {level.name} {e:#018x} keeps PFN {pfn_pa >> 12:#x} "
                                        f"(in RAM); Linux stores it inverted"))

    def leaf(self, va, level, e, epa, eff, nx):
        if self._reserved(va, level, e, epa):
            return                      # unusable: no permission lint applies
        span = level.size
        user, writable = bool(eff & US), bool(eff & RW)
        kernel = not self.lay.is_user(va)
        if writable and not nx and self.want["wx"]:
            self.out.append(Finding("wx", va, span, f"writable and executable ({level.name} {e:#018x})"))
        if user and kernel and va != self.lay.vsyscall and self.want["user-kernel"]:
            self.out.append(Finding("user-kernel", va, span,
                                    f"kernel address reachable from CPL3 ({level.name} {e:#018x})"))
        if writable or not nx:
            self.leaves.append((va, span, e & ADDR_MASK & ~(span - 1), writable, not nx))

    def leaf_run(self, va, level, words, i, j, table_pa, eff, nx):
        """Leaves with equal flags: one finding per lint for the run (the
        findings of its leaves would merge into it), one alias record per
        physically contiguous stretch."""
        span = level.size
        bad = self.hi_rsvd
        if not level.is_pte:
            bad |= (span - 1) & ADDR_MASK & ~PAT_LARGE
        if level.ps_reserved or (self.lay.is_user(va) != self.lay.is_user(va + (j - i) * span - 1)) \
                or va <= self.lay.vsyscall < va + (j - i) * span \
                or any(words[k] & bad for k in range(i, j)):
            TableVisitor.leaf_run(self, va, level, words, i, j, table_pa, eff, nx)   # entry by entry
            return
        e = words[i]
        n = j - i
        user, writable = bool(eff & US), bool(eff & RW)
        if writable and not nx and self.want["wx"]:
            self.out.append(Finding("wx", va, n * span, f"writable and executable ({level.name} {e:#018x})"))
        if user and not self.lay.is_user(va) and self.want["user-kernel"]:
            self.out.append(Finding("user-kernel", va, n * span,
                                    f"kernel address reachable from CPL3 ({level.name} {e:#018x})"))
        if writable or not nx:
            mask = ADDR_MASK & ~(span - 1)
            start = i
            for k in range(i + 1, j + 1):
                if k == j or words[k] & mask != (words[k - 1] & mask) + span:
                    self.leaves.append((va + (start - i) * span, (k - start) * span, words[start] & mask,
                                        writable, not nx))
                    start = k

    def table(self, va, level, e, epa, eff, nx):
        if self._reserved(va, level, e, epa):
            return False                # the CPU faults here: nothing below is reachable
        child = e & ADDR_MASK
        frames = self.frames
        if frames is not None and self.want["pgtable-owner"] and child < self.mem.size \
                and frames.kind_of(child) != FrameKind.PGTABLE:
            self.out.append(Finding("pgtable-owner", va, level.size,
                                    f"{level.name} entry points at {child:#x}, a frame owned as "
                                    f"{frames.kind_of(child).name.lower()}, not as a page table"))
        return True

    def broken(self, error: TableError) -> None:
        if not self.want["broken"]:
            raise error
        key = getattr(error, "key", str(error))
        if key in self.broken_seen:     # the same fault of the tables, reached through another alias
            self.broken_seen[key][1] += 1
            return
        self.broken_seen[key] = [len(self.out), 1]
        self.out.append(Finding("broken", getattr(error, "va", 0), 0, f"{error}; not walked"))

    # -- memoization: findings and leaves relative to the subtree ----------------------
    def subtree_context(self, va, span):
        if va <= self.lay.vsyscall < va + span:
            return None                 # the vsyscall exemption depends on the address
        return self.lay.is_user(va)

    def begin_subtree(self, va):
        return va, len(self.out), len(self.leaves)

    def end_subtree(self, token):
        va, n_out, n_leaves = token
        finds = [(f.lint, f.va - va, f.size, f.message) for f in self.out[n_out:]]
        leaves = [(lva - va, size, pa, w, x) for lva, size, pa, w, x in self.leaves[n_leaves:]]
        return finds, leaves

    def replay(self, summary, va, span):
        finds, leaves = summary
        self.out.extend(Finding(lint, va + off, size, msg) for lint, off, size, msg in finds)
        self.leaves.extend((va + off, size, pa, w, x) for off, size, pa, w, x in leaves)
        return True


def check(mem: PhysView, root: int, levels: int | PagingMode = 4, maxphyaddr: int = MAXPHYADDR,
          only: tuple[str, ...] = LINTS, layout: Layout | None = None, nxe: bool = True,
          memoize: bool = True) -> list[Finding]:
    """Run the lints over the tables rooted at ``root``; findings in VA order.
    Without ``broken`` in ``only``, a broken table raises TableError.
    ``memoize=False`` walks every reference to a repeated subtree (the same
    findings, slower: a benchmark's baseline)."""
    mode = levels if isinstance(levels, PagingMode) else mode_for(levels)
    v = _Lints(mem, root, mode, maxphyaddr, only, layout or layout_for(mode.depth), nxe)
    v.memoize = memoize
    v.walk()
    out = v.out
    for i, times in v.broken_seen.values():
        if times > 1:
            f = out[i]
            out[i] = Finding(f.lint, f.va, f.size, f"{f.message} (reached through {times} paths)")
    if "alias-wx" in only:
        out.extend(_alias_wx(v.leaves, v.lay.is_user))
    out.sort(key=lambda f: (f.va, f.lint))
    return _merge(out)


def _alias_wx(leaves, is_user) -> list[Finding]:
    """Frames executable at one address and writable at another (sweep over PA).

    Reported when the executable alias is a kernel address (kernel code that
    can be rewritten), or when both aliases are user addresses (a user W^X
    bypass).  A user-executable frame writable through the kernel's direct
    map is normal Linux and not reported.

    Leaves mapping the same physical range are one event of the sweep, so
    that a frame mapped 65,536 times costs one comparison, not 65,536
    squared: each executable alias is reported once, with the lowest
    writable alias that qualifies.
    """
    writable: dict[tuple[int, int], list[int]] = {}
    executable: dict[tuple[int, int], list[int]] = {}
    for va, size, pa, w, x in leaves:
        if w:
            writable.setdefault((pa, pa + size), []).append(va)
        if x:
            executable.setdefault((pa, pa + size), []).append(va)
    events = []
    for (lo, hi), vas in writable.items():
        vas.sort()
        # enough candidates for any executable alias: two (one may be the
        # executable address itself) of all, and two of the user ones
        reps = sorted(set(vas[:2] + [v for v in vas if is_user(v)][:2]))
        events.append((lo, hi, "w", reps))
    for (lo, hi), vas in executable.items():
        events.append((lo, hi, "x", sorted(vas)))
    events.sort()
    out = []
    active: list = []
    for ev in events:
        active = [a for a in active if a[1] > ev[0]]
        for a in active:
            if a[2] == ev[2]:
                continue
            w, x = (a, ev) if a[2] == "w" else (ev, a)
            lo, hi = max(w[0], x[0]), min(w[1], x[1])
            for xbase in x[3]:
                xva = xbase + (lo - x[0])
                for wbase in w[3]:
                    wva = wbase + (lo - w[0])
                    if xva == wva or (is_user(xva) and not is_user(wva)):
                        continue
                    out.append(Finding("alias-wx", xva, hi - lo,
                                       f"executable here, writable at {wva:#x} (physical {lo:#x})", (wva, lo)))
                    break
        active.append(ev)
    return out


def _merge(findings: list[Finding]) -> list[Finding]:
    """Merge a finding into the previous one when it continues it exactly
    (same lint, adjacent addresses, and for aliases an adjacent alias)."""
    out: list[Finding] = []
    for f in findings:
        prev = out[-1] if out else None
        if prev and f.lint == prev.lint and prev.va + prev.size == f.va \
                and f.lint not in ("reserved", "pgtable-owner", "broken") and _continues(prev, f):
            out[-1] = Finding(f.lint, prev.va, prev.size + f.size, prev.message, prev.alias)
        else:
            out.append(f)
    return out


def _continues(prev: Finding, f: Finding) -> bool:
    if prev.alias is None:
        return True
    return f.alias == (prev.alias[0] + prev.size, prev.alias[1] + prev.size)
