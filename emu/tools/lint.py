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
                   large page's address other than PAT);
``pgtable-owner``  a frame used as a page table that the allocator does not
                   own as a page table (live RAM only, not images);
``l1tf``           a non-present kernel leaf whose PFN still points into RAM:
                   Linux stores it inverted (pgtable-invert.h) so a
                   speculative L1TF load cannot reach the frame.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from emu.errors import TableError
from emu.linux.layout import layout_for
from emu.hw.paging import ADDR_MASK, MAXPHYADDR, NX, P, PAT_LARGE, PS, RW, US, fmt_size, rsvd_hi_mask, sign_extend
from emu.hw.phys import PAGE_SIZE, FrameKind, PhysView

LINTS = ("wx", "user-kernel", "alias-wx", "reserved", "pgtable-owner", "l1tf")


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


def check(mem: PhysView, root: int, levels: int = 4, maxphyaddr: int = MAXPHYADDR,
          only: tuple[str, ...] = LINTS) -> list[Finding]:
    """Run the lints over the tables rooted at ``root``; findings in VA order."""
    lay = layout_for(levels)
    buf = mem.buf
    frames = getattr(mem, "frames", None)
    hi_rsvd = rsvd_hi_mask(maxphyaddr)
    ram = mem.size
    out: list[Finding] = []
    leaves: list[tuple[int, int, int, bool, bool]] = []   # va, size, pa, writable, exec
    names = ["pgd", "p4d", "pud", "pmd", "pte"] if levels == 5 else ["pgd", "pud", "pmd", "pte"]
    top = 12 + 9 * (levels - 1)

    def rec(t: int, shift: int, base: int, eff: int, nx: int, path: tuple):
        if not mem.contains(t, PAGE_SIZE):
            raise TableError(f"table at {t:#x} (for {sign_extend(base, levels):#x}) is outside "
                             f"{mem.name} (size {mem.size:#x})")
        ents = array("Q", buf[t:t + PAGE_SIZE])
        span = 1 << shift
        lname = names[(top - shift) // 9]
        for i, e in enumerate(ents):
            if not e:
                continue
            v = base + i * span
            va = sign_extend(v, levels)
            kernel = not lay.is_user(va)
            leaf_level = shift == 12 or (e & PS and shift in (21, 30))
            if not e & P:
                if kernel and (shift in (12, 21, 30)) and "l1tf" in only:
                    pfn_pa = e & ADDR_MASK & ((1 << maxphyaddr) - 1)
                    if pfn_pa < ram:
                        out.append(Finding("l1tf", va, span,
                                           f"non-present {lname} {e:#018x} keeps PFN {pfn_pa >> 12:#x} "
                                           f"(in RAM); Linux stores it inverted"))
                continue
            bad = hi_rsvd
            if shift >= 39:
                bad |= PS
            elif leaf_level and shift != 12:
                bad |= ((1 << shift) - 1) & ADDR_MASK & ~PAT_LARGE
            if e & bad and "reserved" in only:
                out.append(Finding("reserved", va, span,
                                   f"{lname} entry {e:#018x} at {t + 8 * i:#x} sets reserved bits {e & bad:#x}"))
            e_eff = eff & e
            e_nx = (nx | e) & NX
            if leaf_level:
                user, writable = bool(e_eff & US), bool(e_eff & RW)
                pa = e & ADDR_MASK & ~(span - 1)
                if writable and not e_nx and "wx" in only:
                    out.append(Finding("wx", va, span, f"writable and executable ({lname} {e:#018x})"))
                if user and kernel and va != lay.vsyscall and "user-kernel" in only:
                    out.append(Finding("user-kernel", va, span,
                                       f"kernel address reachable from CPL3 ({lname} {e:#018x})"))
                leaves.append((va, span, pa, writable, not e_nx))
                continue
            child = e & ADDR_MASK
            if child in path:
                raise TableError(f"loop in page tables: the {lname} entry for {va:#x} points back "
                                 f"to the table at {child:#x}")
            if frames is not None and "pgtable-owner" in only and child < ram \
                    and frames.kind_of(child) != FrameKind.PGTABLE:
                out.append(Finding("pgtable-owner", va, span,
                                   f"{lname} entry points at {child:#x}, a frame owned as "
                                   f"{frames.kind_of(child).name.lower()}, not as a page table"))
            rec(child, shift - 9, v, e_eff, e_nx, path + (child,))

    rec(root & ADDR_MASK, top, 0, US | RW, 0, (root & ADDR_MASK,))
    if "alias-wx" in only:
        out.extend(_alias_wx(leaves, lay.is_user))
    out.sort(key=lambda f: (f.va, f.lint))
    return _merge(out)


def _alias_wx(leaves, is_user) -> list[Finding]:
    """Frames executable at one address and writable at another (sweep over PA).

    Reported when the executable alias is a kernel address (kernel code that
    can be rewritten), or when both aliases are user addresses (a user W^X
    bypass).  A user-executable frame writable through the kernel's direct
    map is normal Linux and not reported.
    """
    events = []
    for va, size, pa, w, x in leaves:
        if w:
            events.append((pa, pa + size, va, "w"))
        if x:
            events.append((pa, pa + size, va, "x"))
    events.sort()
    out = []
    active: list[tuple[int, int, int, str]] = []
    for ev in events:
        active = [a for a in active if a[1] > ev[0]]
        for a in active:
            if a[3] == ev[3]:
                continue
            w, x = (a, ev) if a[3] == "w" else (ev, a)
            lo, hi = max(w[0], x[0]), min(w[1], x[1])
            xva, wva = x[2] + (lo - x[0]), w[2] + (lo - w[0])
            if xva == wva or (is_user(xva) and not is_user(wva)):
                continue
            out.append(Finding("alias-wx", xva, hi - lo,
                               f"executable here, writable at {wva:#x} (physical {lo:#x})", (wva, lo)))
        active.append(ev)
    return out


def _merge(findings: list[Finding]) -> list[Finding]:
    """Merge a finding into the previous one when it continues it exactly
    (same lint, adjacent addresses, and for aliases an adjacent alias)."""
    out: list[Finding] = []
    for f in findings:
        prev = out[-1] if out else None
        if prev and f.lint == prev.lint and prev.va + prev.size == f.va and f.lint != "reserved" \
                and f.lint != "pgtable-owner" and _continues(prev, f):
            out[-1] = Finding(f.lint, prev.va, prev.size + f.size, prev.message, prev.alias)
        else:
            out.append(f)
    return out


def _continues(prev: Finding, f: Finding) -> bool:
    if prev.alias is None:
        return True
    return f.alias == (prev.alias[0] + prev.size, prev.alias[1] + prev.size)
