"""x86-64 paging: entry bits, the page-table object and the reference walker.

This module is the independent oracle for the CPU's MMU: it never imports the
CPU layer.  The walker follows the Intel SDM, Vol. 3A, chapter 4 (4.5 4-level
and 5-level paging, 4.6 access rights, 4.6.2 protection keys, 4.7 page-fault
error codes); the differential tests hold it to what Unicorn's MMU does.

The page-table object (:class:`PageTable`) is the first-class ``pg_table``
of Rapoport's "restricted kernel address spaces" proposal: a root frame that
is independent of any process, with map/unmap/protect/split and sub-tree
sharing at a chosen level (what ``pti_clone_pgtable`` and ``asi_clone_p4d``
do in Linux).
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from emu.errors import AddressError, MappingError, TableError
from emu.linux.layout import layout_for
from emu.hw.phys import PAGE_SIZE, SIZE_1G, SIZE_2M, FrameKind, PhysMem, PhysView

# --- entry bits (arch/x86/include/asm/pgtable_types.h) ----------------------
P = 1 << 0
RW = 1 << 1
US = 1 << 2
PWT = 1 << 3
PCD = 1 << 4
A = 1 << 5
D = 1 << 6
PS = 1 << 7          # page size in PDPTE/PDE; PAT in a 4 KiB PTE
PAT = 1 << 7         # PAT bit of a 4 KiB PTE
G = 1 << 8
PAT_LARGE = 1 << 12  # PAT bit of a 2 MiB / 1 GiB leaf
NX = 1 << 63
PKEY_SHIFT = 59
PKEY_MASK = 0xF << PKEY_SHIFT
ADDR_MASK = 0x000FFFFFFFFFF000  # bits 51:12

# Linux protections (pgtable_types.h), leaf flags in 4 KiB convention.
PAGE_KERNEL = P | RW | A | D | G | NX
PAGE_KERNEL_RO = P | A | D | G | NX
PAGE_KERNEL_RX = P | A | D | G          # PAGE_KERNEL_ROX
PAGE_KERNEL_EXEC = P | RW | A | D | G
PAGE_SHARED = P | RW | US | A | NX
PAGE_READONLY = P | US | A | NX
PAGE_READONLY_EXEC = P | US | A
PAGE_SHARED_EXEC = P | RW | US | A
KERNPG_TABLE = P | RW | A | D             # _KERNPG_TABLE
PAGE_TABLE = P | RW | US | A | D          # _PAGE_TABLE

# access kinds, numbered as QEMU's is_write1 (and the #PF W / I/D bits)
READ, WRITE, FETCH = 0, 1, 2
ACCESS_NAMES = {READ: "r", WRITE: "w", FETCH: "x"}
_ACCESS_BY_NAME = {"r": READ, "read": READ, "w": WRITE, "write": WRITE,
                   "x": FETCH, "exec": FETCH, "fetch": FETCH}

# #PF error code bits (SDM 4.7)
PF_P, PF_W, PF_U, PF_RSVD, PF_I, PF_PK, PF_SS = 1, 2, 4, 8, 16, 32, 64
VEC_GP, VEC_PF = 13, 14

MAXPHYADDR = 40  # physical-address width of the Unicorn CPU models in use

PAGE_SIZES = {"4k": PAGE_SIZE, "2m": SIZE_2M, "1g": SIZE_1G}
_SIZE_TO_SHIFT = {PAGE_SIZE: 12, SIZE_2M: 21, SIZE_1G: 30}
_Q = struct.Struct("<Q")


def parse_access(a) -> int:
    if isinstance(a, int) and a in ACCESS_NAMES:
        return a
    try:
        return _ACCESS_BY_NAME[str(a).lower()]
    except KeyError:
        raise AddressError(f"bad access {a!r}: use r, w or x") from None


def level_names(levels: int) -> list[str]:
    """Names from the top: Linux's pgd/p4d/pud/pmd/pte (p4d folded at 4 levels)."""
    return ["pgd", "p4d", "pud", "pmd", "pte"] if levels == 5 else ["pgd", "pud", "pmd", "pte"]


def level_shift(levels: int, name: str) -> int:
    names = level_names(levels)
    if name not in names:
        raise MappingError(f"unknown level {name!r}: use one of {', '.join(names)}")
    return 12 + 9 * (len(names) - 1 - names.index(name))


def shift_name(levels: int, shift: int) -> str:
    names = level_names(levels)
    return names[len(names) - 1 - (shift - 12) // 9]


def rsvd_hi_mask(maxphyaddr: int = MAXPHYADDR) -> int:
    """Address bits above MAXPHYADDR up to bit 51 are reserved."""
    return ADDR_MASK & ~((1 << maxphyaddr) - 1)


def fmt_size(size: int) -> str:
    for unit, sh in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << sh and size % (1 << sh) == 0:
            return f"{size >> sh}{unit}"
    return f"{size}B"


def error_code_words(ec: int) -> str:
    """Decode a #PF error code, e.g. ``present, write, user``."""
    words = ["protection" if ec & PF_P else "not-present",
             "write" if ec & PF_W else ("fetch" if ec & PF_I else "read"),
             "user" if ec & PF_U else "supervisor"]
    if ec & PF_RSVD:
        words.append("reserved-bit")
    if ec & PF_PK:
        words.append("protection-key")
    if ec & PF_SS:
        words.append("shadow-stack")
    return ", ".join(words)


# --- control state ----------------------------------------------------------
@dataclass(frozen=True)
class ControlState:
    """The control bits that decide a translation (CR0, CR4, EFER, RFLAGS, PKRU)."""

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

    def __post_init__(self):
        object.__setattr__(self, "rsvd", rsvd_hi_mask(self.maxphyaddr) | (0 if self.nxe else NX))

    @property
    def levels(self) -> int:
        return 5 if self.la57 else 4

    def replace(self, **kw) -> "ControlState":
        d = {k: getattr(self, k) for k in ("wp", "smep", "smap", "pke", "la57", "nxe", "ac",
                                            "pkru", "maxphyaddr")}
        d.update(kw)
        return ControlState(**d)


DEFAULT_CTL = ControlState()


# --- walker results -----------------------------------------------------------
class Step(NamedTuple):
    level: str      # pgd / p4d / pud / pmd / pte
    index: int
    entry_pa: int   # physical address of the entry
    entry: int


def _steps(va: int, levels: int, raw) -> tuple[Step, ...]:
    names = level_names(levels)
    shift = 12 + 9 * (levels - 1)
    out = []
    for i, (epa, e) in enumerate(raw):
        out.append(Step(names[i], (va >> (shift - 9 * i)) & 511, epa, e))
    return tuple(out)


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
    def fault(self) -> "Fault":
        return self

    def __eq__(self, other):
        return (isinstance(other, Fault) and (self.va, self.vector, self.error_code)
                == (other.va, other.vector, other.error_code))

    def __repr__(self):
        return f"Fault(va={self.va:#x}, vector={self.vector}, error_code={self.error_code:#x})"

    def describe(self) -> str:
        if self.vector == VEC_GP:
            return f"#GP(0): {self.va:#x} is not canonical"
        return f"#PF {self.error_code:#x} ({error_code_words(self.error_code)})"


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
    va &= 0xFFFFFFFFFFFFFFFF
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
    shift = 48 if la57 else 39
    ec = 0
    while True:
        epa = table + (((va >> shift) & 511) << 3)
        if epa > limit:
            raise TableError(f"{shift_name(levels, shift)} table at {table:#x} for {va:#x} is outside "
                             f"{mem.name} (size {mem.size:#x})")
        e = unpack(buf, epa)[0]
        raw.append((epa, e))
        if not e & 1:
            break  # not present: ec stays 0 (plus W/U/I below)
        if shift == 12:
            if e & rsvd:
                ec = PF_RSVD | PF_P
                break
        elif e & PS and shift < 39:
            # large leaf: address bits below the page size, except PAT, are reserved
            if e & (rsvd | (((1 << shift) - 1) & ADDR_MASK & ~PAT_LARGE)):
                ec = PF_RSVD | PF_P
                break
        else:
            # non-leaf; PS is reserved in PML5E/PML4E
            if e & ((rsvd | PS) if shift >= 39 else rsvd):
                ec = PF_RSVD | PF_P
                break
            eff &= e
            nx |= e
            table = e & ADDR_MASK
            shift -= 9
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


def read_virt(mem: PhysView, cr3: int, va: int, n: int, access=READ, cpl: int = 0,
              ctl: ControlState = DEFAULT_CTL, walks: "WalkCache | None" = None) -> bytes | Fault:
    """``n`` bytes at ``va`` through the tables at ``cr3``, each page walked
    as an ``access`` at ``cpl`` would be; the first page's :class:`Fault` if
    one faults.  ``walks`` (a :class:`WalkCache`) makes repeated reads cheap."""
    walk = walks.translate if walks is not None else \
        (lambda r, v, a, c, k: translate(mem, r, v, a, c, k))
    va &= 0xFFFFFFFFFFFFFFFF
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
        va, n = (va + chunk) & 0xFFFFFFFFFFFFFFFF, n - chunk
    return b"".join(out)


def write_virt(mem: PhysMem, cr3: int, va: int, data: bytes, cpl: int = 0, ctl: ControlState = DEFAULT_CTL,
               walks: "WalkCache | None" = None) -> Fault | None:
    """Write ``data`` at ``va``, all or nothing: every page is walked (as a
    write at ``cpl``) before any byte is written.  The first fault, or None."""
    walk = walks.translate if walks is not None else \
        (lambda r, v, a, c, k: translate(mem, r, v, a, c, k))
    pieces = []
    off = 0
    while off < len(data):
        v = (va + off) & 0xFFFFFFFFFFFFFFFF
        chunk = min(len(data) - off, 4096 - (v & 0xFFF))
        t = walk(cr3, v, WRITE, cpl, ctl)
        if t.fault:
            return t
        pieces.append((t.pa, data[off:off + chunk]))
        off += chunk
    for pa, d in pieces:
        mem.write(pa, d)
    return None


# the CR0 and CR4 bits a translation depends on (SDM Vol. 3A, 2.5)
CR0_WP = 1 << 16
CR4_LA57, CR4_SMEP, CR4_SMAP, CR4_PKE = 1 << 12, 1 << 20, 1 << 21, 1 << 22
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


_NAMES4 = level_names(4)
_NAMES5 = level_names(5)


# --- the page-table object ---------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    """A leaf mapping as seen from the root: effective permissions included."""

    va: int
    size: int
    pa: int
    level: str
    entry: int
    entry_pa: int
    user: bool
    writable: bool
    nx: bool

    @property
    def present(self) -> bool:
        return bool(self.entry & P)

    @property
    def global_(self) -> bool:
        return bool(self.entry & G)


def large_to_4k(flags: int) -> int:
    """pgprot_large_2_4k: PAT moves from bit 12 to bit 7, PS is dropped."""
    out = flags & ~(PS | PAT_LARGE)
    if flags & PAT_LARGE:
        out |= PAT
    return out


def fourk_to_large(flags: int) -> int:
    """pgprot_4k_2_large: PAT moves from bit 7 to bit 12, PS is set."""
    out = (flags & ~PAT) | PS
    if flags & PAT:
        out |= PAT_LARGE
    return out


class PageTable:
    """A page-table tree rooted at a physical frame (a ``pg_table``).

    ``levels`` is 4 or 5.  With ``pti=True`` the root is the kernel half of
    an 8 KiB PGD pair and creating a user-half top-level entry mirrors it into
    the user PGD (root + 4 KiB) while the kernel copy gets NX, as Linux's
    ``pti_set_user_pgtbl`` (arch/x86/mm/pti.c) does.
    """

    def __init__(self, mem: PhysMem, root: int, levels: int = 4, name: str = "",
                 owner: str | None = None, pti: bool = False):
        if levels not in (4, 5):
            raise MappingError(f"paging levels must be 4 or 5, not {levels}")
        self.mem = mem
        self.root = root
        self.levels = levels
        self.layout = layout_for(levels)
        self.name = name or f"pgd@{root:#x}"
        self.owner = owner or self.name
        self.pti = pti
        self.top_shift = 48 if levels == 5 else 39
        # x86 Linux populates kernel tables with _PAGE_TABLE too (pgalloc.h:
        # pmd_populate_kernel and friends): U/S is set in every intermediate
        # entry and the leaf alone decides.  PTI's user-table walk uses
        # _KERNPG_TABLE; callers set this attribute for such tables.
        self.table_flags = PAGE_TABLE
        self.accounting = True
        # __supported_pte_mask: without NX (EFER.NXE off) bit 63 is reserved,
        # so Linux drops _PAGE_NX from every protection it writes
        self.pte_mask = ~0

    @classmethod
    def create(cls, mem: PhysMem, levels: int = 4, name: str = "", owner: str | None = None,
               pti: bool = False) -> "PageTable":
        """Allocate a zeroed root (an order-1 pair when ``pti``)."""
        if pti:
            # 8 KiB aligned pair: allocate two frames until the first is 8K aligned.
            root = _alloc_pgd_pair(mem, owner or name)
        else:
            root = mem.frames.alloc(FrameKind.PGTABLE, 0, owner or name)
        return cls(mem, root, levels, name, owner, pti)

    @property
    def user_root(self) -> int:
        """The user PGD of a PTI pair (CR3 bit 12 set)."""
        return self.root | PAGE_SIZE

    # -- helpers -----------------------------------------------------------
    def _check_va(self, va: int, size: int) -> None:
        lay = self.layout
        if size <= 0:
            raise MappingError(f"size must be positive, got {size:#x}")
        if not lay.canonical(va) or not lay.canonical(va + size - 1):
            raise AddressError(f"{va:#x}..{va + size - 1:#x} is not canonical "
                               f"for {self.levels}-level paging")
        if lay.is_user(va) != lay.is_user(va + size - 1):
            raise AddressError(f"{va:#x}+{size:#x} crosses the user/kernel boundary")

    def _read(self, pa: int) -> int:
        return _Q.unpack_from(self.mem.buf, pa)[0]

    def _write(self, pa: int, v: int) -> None:
        _Q.pack_into(self.mem.buf, pa, v)

    def _new_table(self) -> int:
        return self.mem.frames.alloc(FrameKind.PGTABLE, 0, self.owner)

    def _set_top(self, epa: int, value: int, va: int) -> None:
        """Write a top-level entry, applying the PTI user-PGD mirroring."""
        if self.pti and self.layout.is_user(va):
            self._write(epa + PAGE_SIZE, value)     # user PGD gets the entry as is
            if value & P and value & US and self.pte_mask & NX:
                value |= NX                          # kernel copy: NX (pti.c)
        self._write(epa, value)

    def _slot(self, va: int, shift: int, create: bool) -> int | None:
        """Physical address of the entry for ``va`` at ``shift``, walking down.

        Creates missing intermediate tables when ``create``.  Refuses to walk
        through a large leaf.
        """
        table = self.root
        s = self.top_shift
        while s > shift:
            epa = table + 8 * ((va >> s) & 511)
            e = self._read(epa)
            if not e & P:
                if e:
                    raise MappingError(f"{va:#x}: non-present {self._lname(s)} entry {e:#x} "
                                       f"is in the way")
                if not create:
                    return None
                t = self._new_table()
                value = t | self.table_flags
                if s == self.top_shift:
                    self._set_top(epa, value, va)
                else:
                    self._write(epa, value)
                if self.accounting:
                    self.mem.frames.get_ref(t)
                e = value
            elif e & PS and s in (21, 30):
                raise MappingError(f"{va:#x} is inside a {fmt_size(1 << s)} page at "
                                   f"{va & ~((1 << s) - 1):#x} ({self._lname(s)} entry {e:#x}); "
                                   f"split it first")
            table = e & ADDR_MASK
            s -= 9
        return table + 8 * ((va >> shift) & 511)

    def _accounted(self, va: int) -> bool:
        """Leaves outside the direct map hold a reference on their frames.

        The direct map is the linear map of all RAM: like Linux, its entries
        pin nothing, so freeing a frame it maps is fine.  Tables that a guest
        kernel manages (``accounting = False``) pin nothing either: the guest
        unmaps and frees its own frames (and table pages).
        """
        lay = self.layout
        return self.accounting and not lay.page_offset <= va < lay.page_offset + lay.direct_map_size

    def _lname(self, shift: int) -> str:
        return shift_name(self.levels, shift)

    # -- map / unmap / protect ------------------------------------------------
    def map(self, va: int, pa: int, size: int, flags: int, page_size: int | None = None) -> None:
        """Map ``[va, va+size)`` to ``[pa, pa+size)`` with leaf ``flags``.

        ``flags`` are 4 KiB-convention leaf bits (PAT in bit 7); large leaves
        get PS and the PAT bit moved to bit 12.  ``page_size`` None picks the
        largest size the alignment of va, pa and size allows.
        """
        self._check_va(va, size)
        if not flags & P:
            raise MappingError(f"map {va:#x}: flags {flags:#x} lack the present bit")
        if page_size is None:
            page_size = PAGE_SIZE
            for ps in (SIZE_1G, SIZE_2M):
                if va % ps == 0 and pa % ps == 0 and size % ps == 0:
                    page_size = ps
                    break
        if page_size not in _SIZE_TO_SHIFT:
            raise MappingError(f"page size {page_size:#x} is not 4K, 2M or 1G")
        for what, x in (("virtual address", va), ("physical address", pa), ("size", size)):
            if x % page_size:
                raise MappingError(f"{what} {x:#x} is not aligned to the {fmt_size(page_size)} page size")
        if pa < 0 or pa + size > self.mem.size:
            raise MappingError(f"physical range {pa:#x}..{pa + size - 1:#x} is outside RAM "
                               f"(size {self.mem.size:#x})")
        shift = _SIZE_TO_SHIFT[page_size]
        flags &= self.pte_mask
        leaf = flags if shift == 12 else fourk_to_large(flags)
        buf = self.mem.buf
        end = va + size
        v, p = va, pa
        while v < end:
            # fill as many slots of one table as possible at once
            first = self._slot(v, shift, create=True)
            n = min((end - v) >> shift, 512 - ((v >> shift) & 511))
            span = n * 8
            old = buf[first:first + span]
            if old.count(0) != span:
                busy = next(i for i in range(n) if old[8 * i:8 * i + 8] != bytes(8))
                bva = v + (busy << shift)
                e = self._read(first + 8 * busy)
                what = "a page table" if e & P and shift > 12 and not e & PS else f"entry {e:#x}"
                raise MappingError(f"{bva:#x} is already mapped ({self._lname(shift)} holds {what})")
            entries = array("Q", range(p | leaf, (p | leaf) + (n << shift), 1 << shift))
            if shift == self.top_shift:
                for i in range(n):
                    self._set_top(first + 8 * i, entries[i], v + (i << shift))
            else:
                buf[first:first + span] = entries.tobytes()
            if self._accounted(v):
                self.mem.frames.ref_range(p, n << shift, +1)
            v += n << shift
            p += n << shift

    def lookup(self, va: int) -> tuple[int, int, int] | None:
        """The leaf slot for ``va``: (shift, entry address, entry), or None.

        Returns the slot at the level where the walk stops: a present leaf,
        or a non-present non-zero entry (e.g. an inverted-PFN PTE).
        """
        table = self.root
        s = self.top_shift
        while True:
            epa = table + 8 * ((va >> s) & 511)
            e = self._read(epa)
            if not e & P:
                return (s, epa, e) if e else None
            if s == 12 or (e & PS and s in (21, 30)):
                return s, epa, e
            table = e & ADDR_MASK
            s -= 9

    def unmap(self, va: int, size: int) -> list[tuple[int, int]]:
        """Clear the leaves covering ``[va, va+size)``; returns (va, pa) of each.

        A large page only partly inside the range is refused: split it first.
        """
        self._check_va(va, size)
        if va % PAGE_SIZE or size % PAGE_SIZE:
            raise MappingError(f"unmap {va:#x}+{size:#x}: not page aligned")
        out = []
        v, end = va, va + size
        while v < end:
            hit = self.lookup(v)
            if hit is None:
                v = (v | 0xFFF) + 1
                continue
            s, epa, e = hit
            lsize = 1 << s
            base = v & ~(lsize - 1)
            if base < va or base + lsize > end:
                raise MappingError(f"unmap {va:#x}+{size:#x} would cut the {fmt_size(lsize)} page at "
                                   f"{base:#x}; split it first")
            self._write(epa, 0)
            if e & P:
                pa = e & ADDR_MASK & ~(lsize - 1)
                out.append((base, pa))
                if self._accounted(base):
                    self.mem.frames.ref_range(pa, lsize, -1)
            v = base + lsize
        return out

    def protect(self, va: int, size: int, set: int = 0, clear: int = 0) -> int:
        """Set/clear bits on every leaf in ``[va, va+size)``; returns the count."""
        self._check_va(va, size)
        n = 0
        v, end = va, va + size
        while v < end:
            hit = self.lookup(v)
            if hit is None:
                raise MappingError(f"protect: {v:#x} is not mapped")
            s, epa, e = hit
            lsize = 1 << s
            base = v & ~(lsize - 1)
            if base < va or base + lsize > end:
                raise MappingError(f"protect {va:#x}+{size:#x} covers part of the {fmt_size(lsize)} page "
                                   f"at {base:#x}; split it first")
            self._write(epa, (e | (set & self.pte_mask)) & ~clear)
            n += 1
            v = base + lsize
        return n

    def split(self, va: int) -> int:
        """Split the large leaf covering ``va`` one level down (1G→2M or 2M→4K).

        Follows ``__split_large_page`` (arch/x86/mm/pat/set_memory.c): flags are
        copied; on 2M→4K the PAT bit moves from 12 to 7 and PS is dropped; 1G→2M
        keeps PSE; Global is kept only if the entry is present.  Returns the
        new table's physical address.
        """
        hit = self.lookup(va)
        if hit is None or hit[0] not in (21, 30) or not hit[2] & PS:
            raise MappingError(f"split: {va:#x} is not mapped by a 2M or 1G page")
        s, epa, e = hit
        size = 1 << s
        base_pa = e & ADDR_MASK & ~(size - 1)
        flags = (e & ~ADDR_MASK) | (e & PAT_LARGE)   # every non-address bit, PAT included
        child = s - 9
        # 2M -> 4K: pgprot_large_2_4k; 1G -> 2M keeps PSE (and PAT at bit 12)
        cflags = large_to_4k(flags) if child == 12 else flags
        if not cflags & P:
            cflags &= ~G                      # pgprot_clear_protnone_bits
        t = self._new_table()
        entries = array("Q", range(base_pa | cflags, (base_pa | cflags) + (512 << child), 1 << child))
        self.mem.write(t, entries.tobytes())
        if self.accounting:
            self.mem.frames.get_ref(t)
        base_va = va & ~(size - 1)
        if self._accounted(base_va):
            # one reference per new leaf instead of one for the large leaf
            frames = self.mem.frames
            frames.ref_range(base_pa, size, -1)
            for i in range(512):
                frames.ref_range(base_pa + (i << child), 1 << child, +1)
        # CPA's __split_large_page installs a kernel table as _KERNPG_TABLE;
        # a user huge page is split by __split_huge_pmd under _PAGE_TABLE.
        self._write(epa, t | (PAGE_TABLE if self.layout.is_user(va) else KERNPG_TABLE))
        return t

    def share(self, src: "PageTable", va: int, size: int, level: str) -> int:
        """Make this table use ``src``'s entries at ``level`` for ``[va, va+size)``.

        The entries are copied, so everything below them (tables or pages) is
        shared, as ``pti_clone_pgtable`` / ``asi_clone_p4d`` do.  Returns the
        number of entries copied; an occupied slot holding something else is
        refused.
        """
        self._check_va(va, size)
        if src.levels != self.levels:
            raise MappingError("cannot share between 4-level and 5-level tables")
        shift = level_shift(self.levels, level)
        gran = 1 << shift
        if va % gran or size % gran:
            raise MappingError(f"share at {level} needs {fmt_size(gran)} alignment: "
                               f"{va:#x}+{size:#x}")
        n = 0
        for v in range(va, va + size, gran):
            sslot = src._slot(v, shift, create=False)
            if sslot is None:
                continue
            e = src._read(sslot)
            if not e:
                continue
            dslot = self._slot(v, shift, create=True)
            old = self._read(dslot)
            if old and old != e:
                raise MappingError(f"share {v:#x}: {level} slot already holds {old:#x}")
            if not old:
                if shift == self.top_shift:
                    self._set_top(dslot, e, v)
                else:
                    self._write(dslot, e)
                if e & P and self.accounting:
                    self.mem.frames.get_ref(e & ADDR_MASK)
            n += 1
        return n

    # -- iteration ---------------------------------------------------------------
    def leaves(self, lo: int = 0, hi: int = 1 << 64, nonpresent: bool = False) -> Iterator[Leaf]:
        return iter_leaves(self.mem, self.root, self.levels, lo, hi, nonpresent)

    def translate(self, va: int, access=READ, cpl: int = 0, ctl: ControlState | None = None):
        ctl = ctl or ControlState(la57=self.levels == 5)
        return translate(self.mem, self.root, va, access, cpl, ctl)


def _alloc_pgd_pair(mem: PhysMem, owner: str) -> int:
    """An order-1 (8 KiB aligned, two frames) PGD, as PGD_ALLOCATION_ORDER=1."""
    frames = mem.frames
    held = []
    try:
        while True:
            a = frames.alloc(FrameKind.PGTABLE, 0, owner)
            if a % (2 * PAGE_SIZE) == 0 and frames.kind_of(a + PAGE_SIZE) == FrameKind.FREE:
                frames.reserve(a + PAGE_SIZE, PAGE_SIZE, FrameKind.PGTABLE, owner)
                return a
            held.append(a)
    finally:
        for h in held:
            frames.free(h)


def sign_extend(va: int, levels: int) -> int:
    bits = 57 if levels == 5 else 48
    if va & (1 << (bits - 1)):
        va |= (-1 << bits) & 0xFFFFFFFFFFFFFFFF
    return va


def iter_leaves(mem: PhysView, root: int, levels: int = 4, lo: int = 0, hi: int = 1 << 64,
                nonpresent: bool = False) -> Iterator[Leaf]:
    """Every leaf (and with ``nonpresent``, every non-zero non-present entry)
    reachable from ``root`` in VA order, with effective U/S, R/W and XD.

    Raises :class:`TableError` for a table outside memory or a loop (a table
    that is its own ancestor).
    """
    names = level_names(levels)
    top = 12 + 9 * (levels - 1)
    buf = mem.buf

    def table_entries(t: int, shift: int, base: int):
        if not mem.contains(t, PAGE_SIZE):
            raise TableError(f"{shift_name(levels, shift)} table at {t:#x} (for {sign_extend(base, levels):#x}) "
                             f"is outside {mem.name} (size {mem.size:#x})")
        return array("Q", buf[t:t + PAGE_SIZE])

    def rec(t: int, shift: int, base: int, eff: int, nx: int, path: tuple):
        ents = table_entries(t, shift, base)
        span = 1 << shift
        for i, e in enumerate(ents):
            if not e:
                continue
            v = base + i * span
            sv = sign_extend(v, levels)
            if sv + span <= lo or sv >= hi:
                continue
            leaf = shift == 12 or (e & PS and shift in (21, 30))
            if not e & P:
                if nonpresent:
                    yield Leaf(sv, span, e & ADDR_MASK, shift_name(levels, shift), e, t + 8 * i,
                               False, False, False)
                continue
            if leaf:
                pa = e & ADDR_MASK & ~(span - 1)
                e2 = eff & e
                yield Leaf(sv, span, pa, shift_name(levels, shift), e, t + 8 * i,
                           bool(e2 & US), bool(e2 & RW), bool((nx | e) & NX))
                continue
            child = e & ADDR_MASK
            if child in path:
                raise TableError(f"loop in page tables: the {shift_name(levels, shift)} entry at "
                                 f"{t + 8 * i:#x} (for {sv:#x}) points back to the table at {child:#x}")
            yield from rec(child, shift - 9, v, eff & e, nx | (e & NX), path + (child,))

    del names
    yield from rec(root & ADDR_MASK, top, 0, US | RW, 0, (root & ADDR_MASK,))
