"""The reference walker: one translation exactly as the CPU makes it.

The independent oracle for the CPU's MMU: this package never imports the CPU
layer.  Intel SDM Vol. 3A 4.5 (4-level and 5-level paging), 4.6 (access
rights), 4.6.2 (protection keys), 4.7 (page-fault error codes); the
differential tests hold it to what Unicorn's MMU does (docs/architecture.md).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from emu.errors import TableError
from emu.hw.paging.bits import (ADDR_MASK, MAXPHYADDR, NX, PAT_LARGE, PF_I, PF_P, PF_PK, PF_RSVD, PF_U, PF_W,
                                PKEY_SHIFT, PS, READ, RW, US, VEC_GP, VEC_PF, WRITE, error_code_words,
                                fmt_size, parse_access, rsvd_hi_mask)
from emu.hw.paging.modes import FIVE_LEVEL, FOUR_LEVEL, PagingMode, mode_for
from emu.hw.phys import PhysMem, PhysView
from emu.hw.x86 import CR0_WP, CR4_LA57, CR4_PKE, CR4_SMAP, CR4_SMEP

_Q = struct.Struct("<Q")
MASK64 = 0xFFFFFFFFFFFFFFFF


# --- control state ----------------------------------------------------------
@dataclass(frozen=True)
class ControlState:
    """The control bits that decide a translation (CR0, CR4, EFER, RFLAGS, PKRU)
    and the CPU's physical-address width."""

    wp: bool = True
    smep: bool = True
    smap: bool = True
    pke: bool = False
    la57: bool = False
    nxe: bool = True
    ac: bool = False
    pkru: int = 0
    maxphyaddr: int = MAXPHYADDR
    rsvd: int = field(init=False, repr=False, compare=False)
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "rsvd", rsvd_hi_mask(self.maxphyaddr) | (0 if self.nxe else NX))
        object.__setattr__(self, "_hash", hash((self.wp, self.smep, self.smap, self.pke, self.la57, self.nxe,
                                                 self.ac, self.pkru, self.maxphyaddr)))

    def __hash__(self) -> int:
        # computed once: control states key caches on hot paths (the MMU oracle's sessions)
        return self._hash

    @property
    def levels(self) -> int:
        return 5 if self.la57 else 4

    @property
    def mode(self) -> PagingMode:
        return FIVE_LEVEL if self.la57 else FOUR_LEVEL

    def replace(self, **kw) -> "ControlState":
        d = {k: getattr(self, k) for k in ("wp", "smep", "smap", "pke", "la57", "nxe", "ac",
                                            "pkru", "maxphyaddr")}
        d.update(kw)
        return ControlState(**d)


DEFAULT_CTL = ControlState()
_CR4_PAGING = CR4_LA57 | CR4_SMEP | CR4_SMAP | CR4_PKE
_interned: dict[tuple, ControlState] = {}


def control_state_of(cr0: int, cr4: int, nxe: bool, ac: bool) -> ControlState:
    """The control state of these register values (PKRU 0), one object per
    distinct state: :class:`WalkCache` keys on the object's identity."""
    key = (cr0 & CR0_WP, cr4 & _CR4_PAGING, nxe, ac)
    c = _interned.get(key)
    if c is None:
        c = _interned[key] = ControlState(
            wp=bool(cr0 & CR0_WP), smep=bool(cr4 & CR4_SMEP), smap=bool(cr4 & CR4_SMAP),
            pke=bool(cr4 & CR4_PKE), la57=bool(cr4 & CR4_LA57), nxe=nxe, ac=ac)
    return c


# --- walker results -----------------------------------------------------------
class Step(NamedTuple):
    level: str      # pgd / p4d / pud / pmd / pte
    index: int
    entry_pa: int   # physical address of the entry
    entry: int
    shift: int      # the level's index bit (12 pte, 21 pmd, 30 pud, 39/48 top)


def _steps(va: int, levels: int, raw) -> tuple[Step, ...]:
    lvls = mode_for(levels).levels
    return tuple(Step(lvls[i].name, (va >> lvls[i].shift) & 511, epa, e, lvls[i].shift)
                 for i, (epa, e) in enumerate(raw))


class Translation:
    """A successful walk: physical address, page size, effective permissions."""

    __slots__ = ("va", "pa", "size", "user", "writable", "nx", "pkey", "levels", "_raw")
    fault = None

    def __init__(self, va, pa, size, user, writable, nx, pkey, levels, raw):
        self.va, self.pa, self.size = va, pa, size
        self.user, self.writable, self.nx, self.pkey = user, writable, nx, pkey
        self.levels, self._raw = levels, raw

    @property
    def steps(self) -> tuple[Step, ...]:
        """The entry visited at each level, top level first."""
        return _steps(self.va, self.levels, self._raw)

    @property
    def raw(self) -> tuple:
        """(entry address, entry) per level visited, top first."""
        return tuple(self._raw)

    @property
    def leaf(self) -> int:
        return self._raw[-1][1]

    def __repr__(self):
        return (f"Translation(va={self.va:#x}, pa={self.pa:#x}, size={fmt_size(self.size)}, "
                f"user={self.user}, writable={self.writable}, nx={self.nx})")


class Fault:
    """A walk that faults: #PF with its error code, or #GP(0) (non-canonical)."""

    __slots__ = ("va", "vector", "error_code", "levels", "_raw")

    def __init__(self, va, vector, error_code, levels=4, raw=()):
        self.va, self.vector, self.error_code = va, vector, error_code
        self.levels, self._raw = levels, raw

    @property
    def steps(self) -> tuple[Step, ...]:
        return _steps(self.va, self.levels, self._raw)

    @property
    def raw(self) -> tuple:
        return tuple(self._raw)

    @property
    def fault(self) -> "Fault":
        return self

    def __eq__(self, other):
        return (isinstance(other, Fault) and (self.va, self.vector, self.error_code)
                == (other.va, other.vector, other.error_code))

    def __hash__(self):
        return hash((self.va, self.vector, self.error_code))

    def __repr__(self):
        return f"Fault(va={self.va:#x}, vector={self.vector}, error_code={self.error_code:#x})"

    def describe(self) -> str:
        if self.vector == VEC_GP:
            return f"#GP(0): {self.va:#x} is not canonical"
        return f"#PF {self.error_code:#x} ({error_code_words(self.error_code)})"


# per mode: (shift, kind) per level, top first; kind 0 = PTE, 1 = may map a
# large page (PS), 2 = PS reserved
_PLANS = {m: tuple((lv.shift, 0 if lv.is_pte else (2 if lv.ps_reserved else 1)) for lv in m.levels)
          for m in (FOUR_LEVEL, FIVE_LEVEL)}


# --- the reference walker -------------------------------------------------------
def translate(mem: PhysView, cr3: int, va: int, access=READ, cpl: int = 0,
              ctl: ControlState = DEFAULT_CTL) -> Translation | Fault:
    """Translate ``va`` through the tables rooted at ``cr3`` as the CPU would.

    Returns a :class:`Translation`, or a :class:`Fault` carrying the exact #PF
    error code (or #GP(0) for a non-canonical address).  ``cpl`` 3 is a user
    access; 0-2 supervisor.  Implicit supervisor accesses (e.g. pushing an
    exception frame) are ``cpl=0`` with ``ac=False``.
    """
    acc = access if access.__class__ is int and 0 <= access <= 2 else parse_access(access)
    la57 = ctl.la57
    levels = 5 if la57 else 4
    va &= MASK64
    top = va >> (56 if la57 else 47)
    if top != 0 and top != (0xFF if la57 else 0x1FFFF):
        return Fault(va, VEC_GP, 0, levels)
    rsvd = ctl.rsvd
    buf = mem.buf
    limit = mem.size - 8
    unpack = _Q.unpack_from
    raw = []
    eff = US | RW   # AND of U/S and R/W
    nx = 0          # OR of XD
    table = cr3 & ADDR_MASK
    ec = 0
    for shift, kind in _PLANS[FIVE_LEVEL if la57 else FOUR_LEVEL]:
        epa = table + (((va >> shift) & 511) << 3)
        if epa > limit:
            raise TableError(f"{mode_for(levels).by_shift(shift).name} table at {table:#x} for {va:#x} is "
                             f"outside {mem.name} (size {mem.size:#x})")
        e = unpack(buf, epa)[0]
        raw.append((epa, e))
        if not e & 1:
            break  # not present: ec stays 0 (plus W/U/I below)
        if kind == 0:
            if e & rsvd:
                ec = PF_RSVD | PF_P
                break
        elif kind == 1 and e & PS:
            # large leaf: address bits below the page size, except PAT, are reserved
            if e & (rsvd | (((1 << shift) - 1) & ADDR_MASK & ~PAT_LARGE)):
                ec = PF_RSVD | PF_P
                break
        else:
            # non-leaf; PS is reserved in PML5E/PML4E
            if e & ((rsvd | PS) if kind == 2 else rsvd):
                ec = PF_RSVD | PF_P
                break
            eff &= e
            nx |= e
            table = e & ADDR_MASK
            continue
        eff &= e
        nx = (nx | e) & NX
        # permission checks (SDM 4.6), in the order QEMU's MMU applies them
        user_page = eff & US
        is_user = cpl == 3
        if is_user and not user_page:
            ec = PF_P
            break
        if acc == 0:
            ok = is_user or not user_page or not ctl.smap or ctl.ac
        elif acc == 1:
            ok = ((is_user or not user_page or not ctl.smap or ctl.ac)
                  and (eff & RW or (not is_user and not ctl.wp)))
        else:
            ok = not nx and (is_user or not (user_page and ctl.smep))
        pkey = (e >> PKEY_SHIFT) & 0xF
        if user_page and acc != 2 and ctl.pke and ctl.pkru:
            bits = ctl.pkru >> (2 * pkey)
            if bits & 1 or (acc == 1 and bits & 2 and (is_user or ctl.wp)):
                ec = PF_PK | PF_P
                break
        if not ok:
            ec = PF_P
            break
        size = 1 << shift
        return Translation(va, (e & ADDR_MASK & ~(size - 1)) | (va & (size - 1)), size,
                           bool(user_page), bool(eff & RW), bool(nx), pkey, levels, raw)
    if acc == 1:
        ec |= PF_W
    if cpl == 3:
        ec |= PF_U
    if acc == 2 and (ctl.nxe or ctl.smep):
        ec |= PF_I
    return Fault(va, VEC_PF, ec, levels, raw)


def permits(user: bool, writable: bool, nx: bool, pkey: int, access: int, cpl: int, ctl: ControlState) -> bool:
    """Would a translation granting these effective rights allow the access
    under ``ctl`` (SDM Vol. 3A 4.6)?  The leaf checks of :func:`translate`,
    for translations that come from somewhere else than the tables (a TLB)."""
    is_user = cpl == 3
    if is_user and not user:
        return False
    if access == 0:
        ok = is_user or not user or not ctl.smap or ctl.ac
    elif access == 1:
        ok = (is_user or not user or not ctl.smap or ctl.ac) and (writable or (not is_user and not ctl.wp))
    else:
        ok = not nx and (is_user or not (user and ctl.smep))
    if ok and user and access != 2 and ctl.pke and ctl.pkru:
        bits = ctl.pkru >> (2 * pkey)
        if bits & 1 or (access == 1 and bits & 2 and (is_user or ctl.wp)):
            return False
    return ok


class WalkCache:
    """Reuse a walk while the entries it read are unchanged.

    A translation is a pure function of the entries visited, the address bits
    and the control state, so re-reading those entries (a few unpacks) and
    finding them equal makes the cached answer exact: no staleness, unlike a
    TLB.  Keyed by root, page, access, CPL and an interned control state.
    """

    def __init__(self, mem: PhysView):
        self.mem = mem
        self._d: dict = {}

    def translate(self, cr3: int, va: int, access: int, cpl: int, ctl: ControlState):
        key = (cr3 & ADDR_MASK, va >> 12, access, cpl, id(ctl))
        hit = self._d.get(key)
        if hit is not None:
            raw, res = hit
            buf = self.mem.buf
            unpack = _Q.unpack_from
            for epa, e in raw:
                if unpack(buf, epa)[0] != e:
                    break
            else:
                if res.va == va:
                    return res
                if res.fault:
                    return Fault(va, res.vector, res.error_code, res.levels, res._raw)
                off = va & 0xFFF
                return Translation(va, (res.pa & ~0xFFF) | off, res.size, res.user, res.writable, res.nx,
                                   res.pkey, res.levels, res._raw)
        res = translate(self.mem, cr3, va, access, cpl, ctl)
        if len(self._d) > 4096:
            self._d.clear()
        self._d[key] = (res._raw, res)
        return res


def _walker(mem, walks):
    if walks is not None:
        return walks.translate
    return lambda r, v, a, c, k: translate(mem, r, v, a, c, k)


def read_virt(mem: PhysView, cr3: int, va: int, n: int, access=READ, cpl: int = 0,
              ctl: ControlState = DEFAULT_CTL, walks: WalkCache | None = None) -> bytes | Fault:
    """``n`` bytes at ``va`` through the tables at ``cr3``, each page walked
    as an ``access`` at ``cpl`` would be; the first page's :class:`Fault` if
    one faults.  ``walks`` (a :class:`WalkCache`) makes repeated reads cheap."""
    walk = _walker(mem, walks)
    va &= MASK64
    if (va & 0xFFF) + n <= 4096:                 # within one page: one walk
        t = walk(cr3, va, access, cpl, ctl)
        return t if t.fault else mem.read(t.pa, n)
    out = []
    while n:
        chunk = min(n, 4096 - (va & 0xFFF))
        t = walk(cr3, va, access, cpl, ctl)
        if t.fault:
            return t
        out.append(mem.read(t.pa, chunk))
        va, n = (va + chunk) & MASK64, n - chunk
    return b"".join(out)


def write_virt(mem: PhysMem, cr3: int, va: int, data: bytes, cpl: int = 0, ctl: ControlState = DEFAULT_CTL,
               walks: WalkCache | None = None) -> Fault | None:
    """Write ``data`` at ``va``, all or nothing: every page is walked (as a
    write at ``cpl``) before any byte is written.  The first fault, or None."""
    walk = _walker(mem, walks)
    pieces = []
    off = 0
    while off < len(data):
        v = (va + off) & MASK64
        chunk = min(len(data) - off, 4096 - (v & 0xFFF))
        t = walk(cr3, v, WRITE, cpl, ctl)
        if t.fault:
            return t
        pieces.append((t.pa, data[off:off + chunk]))
        off += chunk
    for pa, d in pieces:
        mem.write(pa, d)
    return None
