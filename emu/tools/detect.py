"""What a memory image says about the kernel that built its tables.

Detection works from the page tables alone, and only where the answer can
be checked (docs/images.md, "Detection"):

* **the paging mode**: Linux maps all RAM at ``page_offset_base``, which
  KASLR moves in 1 GiB steps (arch/x86/mm/kaslr.c).  Read with the right
  number of levels, the first mapping above the LDT remap maps physical
  address 0 at a 1 GiB-aligned address, and the page-table root is mapped
  there too (``page_offset_base + cr3``); read with the wrong number, the
  levels are shifted and neither holds.  Each mode is tried; one that
  passes both checks is the mode.
* **page_offset_base**: that address.
* **vmalloc_base**: the first mapping above the direct map that is not
  direct-map-shaped (``va - pa != page_offset_base``), rounded down to
  1 GiB: vmalloc hands out addresses from VMALLOC_START up
  (mm/vmalloc.c), and checked against the top-level entries Linux
  preallocates for the whole vmalloc area (preallocate_vmalloc_pages,
  arch/x86/mm/init_64.c).
* **vmemmap_base**: the first mapping above the vmalloc area, which is the
  ``struct page`` of PFN 0 (mm/sparse-vmemmap.c), when 1 GiB-aligned.

Symbols (``--kallsyms``/``--system-map``) give the exact bases instead: the
values of ``page_offset_base``, ``vmalloc_base`` and ``vmemmap_base`` read
through the image's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from emu.errors import ConfigError, ImageError, TableError
from emu.hw.paging import ADDR_MASK, P, PS, ControlState, PagingMode, mode_for, translate
from emu.hw.phys import PhysView
from emu.linux.layout import VMALLOC_SIZE, Layout, linux_layout

GiB = 1 << 30


# --- reading through the tables of an image --------------------------------------------------
def fault_in(mem: PhysView, cr3: int, va: int, mode: PagingMode, rsvd: int = 0) -> None:
    """Bring in the tables a walk of ``va`` reads, so that the walker (which
    reads ``mem.buf`` directly) sees them; a table in a hole of the image is
    an error, never a page of zeros read as not-present entries."""
    if not getattr(mem, "lazy", False):
        return
    table = cr3 & ADDR_MASK
    for lv in mode.levels:
        epa = table + 8 * mode.index(va, lv)
        if not mem.ensure(epa & ~0xFFF, 0x1000):
            if 0 <= table < mem.size:
                raise TableError(f"{lv.name} table at {table:#x} (for {va:#x}) is in a hole of {mem.name} "
                                 f"(no memory there in the image)")
            return                      # outside the image: the walker says so
        e = mem.read_u64(epa)
        if not e & P or mode.is_leaf(lv, e) or e & rsvd or (lv.ps_reserved and e & PS):
            return
        table = e & ADDR_MASK


def image_translate(mem: PhysView, cr3: int, va: int, ctl: ControlState, access=0, cpl: int = 0):
    """:func:`~emu.hw.paging.translate` on an image: the tables brought in first."""
    fault_in(mem, cr3, va, ctl.mode, ctl.rsvd)
    return translate(mem, cr3, va, access, cpl, ctl)


def read_virt_u64(mem: PhysView, cr3: int, va: int, ctl: ControlState) -> int | None:
    """The 8 bytes at ``va`` (a kernel variable), or None when unmapped or not in the image."""
    try:
        t = image_translate(mem, cr3, va, ctl.replace(smap=False))
    except TableError:
        return None
    if t.fault or not mem.contains(t.pa, 8):
        return None
    return mem.read_u64(t.pa)


# --- the first mapping in a range ------------------------------------------------------------
def _first_leaf(mem: PhysView, root: int, mode: PagingMode, lo: int, hi: int, skip_gib=None):
    """The lowest present leaf (va, pa, size) with lo <= va < hi (index-space
    addresses, no sign extension), in address order; ``skip_gib(va, first)``
    may pass over a whole 1 GiB unit given its first leaf.  Tables absent
    from the image are passed over."""

    def first_in(table: int, depth: int, base: int):
        words = mem.page_words(table)
        if words is None:
            return None
        level = mode.levels[depth]
        span = level.size
        start = max(0, (lo - base) // span)
        for i in range(start, 512):
            v = base + i * span
            if v >= hi:
                return None
            e = words[i]
            if not e & P:
                continue
            if mode.is_leaf(level, e):
                if v + span > lo:
                    return (v, e & ADDR_MASK & ~(span - 1), span)
                continue
            if level.ps_reserved and e & PS:
                continue
            got = first_in(e & ADDR_MASK, depth + 1, v)
            if got is None:
                continue
            if skip_gib is not None and span == GiB and skip_gib(v, got):
                continue
            return got
        return None

    return first_in(root & ADDR_MASK, 0, 0)


# --- the paging mode and the direct map ----------------------------------------------------------
@dataclass(frozen=True)
class DirectMap:
    mode: PagingMode
    page_offset: int            # canonical
    evidence: str


def _direct_map(mem: PhysView, root: int, mode: PagingMode) -> DirectMap | None:
    lay = linux_layout(mode.depth)
    start = mode.strip(lay.ldt_base) + mode.top.size          # the LDT remap's slot ends here
    got = _first_leaf(mem, root, mode, start, mode.strip(lay.cpu_entry_area))
    if got is None:
        return None
    va, pa, _ = got
    base = va - pa
    if pa != 0 or base % GiB or base < start:
        return None
    page_offset = mode.sign_extend(base)
    ctl = ControlState(la57=mode.depth == 5, smap=False, maxphyaddr=52)
    frames = [root & ADDR_MASK]
    words = mem.page_words(root & ADDR_MASK)
    for e in (words or ()):
        if e & P and mem.contains(e & ADDR_MASK, 0x1000):
            frames.append(e & ADDR_MASK)
        if len(frames) >= 8:
            break
    for f in frames:
        try:
            t = image_translate(mem, root, page_offset + f, ctl)
        except TableError:
            return None
        if t.fault or t.pa != f:
            return None
    return DirectMap(mode, page_offset, f"physical 0 is mapped at {page_offset:#x}, and the "
                                        f"page-table root and {len(frames) - 1} tables below it "
                                        f"through that direct map")


def detect_mode(mem: PhysView, root: int) -> tuple[DirectMap | None, int, str]:
    """The paging mode whose reading of the tables has a consistent Linux
    direct map, the root that has it and the evidence; (None, root, why)
    when neither or both modes do.  A PTI user page table maps no direct
    map: its kernel twin, 4 KiB below it (the 8 KiB pgd pair of
    arch/x86/mm/pti.c), is asked instead."""
    roots = [root & ADDR_MASK]
    if root & 0x1000:
        roots.append((root & ADDR_MASK) - 0x1000)
    why = "no Linux direct map found under either 4- or 5-level paging"
    for r in roots:
        found = [d for d in (_direct_map(mem, r, mode_for(n)) for n in (4, 5)) if d is not None]
        if len(found) == 1:
            d = found[0]
            twin = "" if r == roots[0] else f" (in the kernel page table at {r:#x}, this one's PTI twin)"
            return d, r, d.evidence + twin
        if found:
            return None, r, "the tables read as a Linux direct map under both 4- and 5-level paging"
    return None, roots[0], why


# --- the randomized bases ----------------------------------------------------------------------
def detect_bases(mem: PhysView, root: int, mode: PagingMode, page_offset: int) -> dict[str, tuple[int, str]]:
    """vmalloc_base and vmemmap_base (page_offset_base known): {key: (value, evidence)}."""
    out: dict[str, tuple[int, str]] = {}
    lay = linux_layout(mode.depth)
    po = mode.strip(page_offset)
    ceiling = mode.strip(lay.cpu_entry_area)

    def direct(v, first):               # a 1 GiB unit of the direct map: skipped whole
        return first[0] - first[1] == po
    got = _first_leaf(mem, root, mode, po, ceiling, skip_gib=direct)
    while got is not None and got[0] - got[1] == po:         # direct-map leaves above the last whole unit
        got = _first_leaf(mem, root, mode, got[0] + got[2], ceiling, skip_gib=direct)
    if got is None:
        return out
    vmalloc = got[0] & ~(GiB - 1)
    size = VMALLOC_SIZE[mode.depth]
    top = mode.top.size
    words = mem.page_words(root & ADDR_MASK) or ()
    slots = range(vmalloc // top, (vmalloc + size - 1) // top + 1)
    if not words or not all(words[s & 511] & P for s in slots):
        return out
    out["vmalloc_base"] = (mode.sign_extend(vmalloc),
                           f"the first vmalloc mapping is at {mode.sign_extend(got[0]):#x} and the "
                           f"{len(slots)} top-level entries of the vmalloc area are all present")
    got = _first_leaf(mem, root, mode, vmalloc + size, ceiling)
    if got is not None and got[0] % GiB == 0:
        out["vmemmap_base"] = (mode.sign_extend(got[0]), "the first mapping above the vmalloc area "
                                                         "(the struct page of PFN 0) is 1 GiB-aligned")
    return out


# --- kernel symbols ------------------------------------------------------------------------------
#: the kernel variables holding the randomized bases (arch/x86/mm/kaslr.c)
BASE_VARIABLES = ("page_offset_base", "vmalloc_base", "vmemmap_base")


@dataclass
class Symbols:
    """A kernel symbol table: /proc/kallsyms (run-time addresses) or a
    System.map (link-time addresses, moved by ``slide`` under KASLR)."""

    path: str
    kind: str                   # "kallsyms" or "System.map"
    table: dict[str, int]
    slide: int = 0
    slide_source: str = ""

    def __call__(self, name: str) -> int | None:
        v = self.table.get(name)
        return None if v is None else (v + self.slide) & 0xFFFFFFFFFFFFFFFF


def read_symbols(path: str, kind: str) -> Symbols:
    """``ADDRESS TYPE NAME [module]`` lines (both formats); the first
    definition of a name wins (local symbols repeat)."""
    what = "--kallsyms" if kind == "kallsyms" else "--system-map"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {what} file {path}: {e.strerror}") from None
    table: dict[str, int] = {}
    for n, raw in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        parts = raw.split()
        if not parts:
            continue
        if len(parts) < 3 or len(parts[1]) != 1:
            raise ConfigError(f"{what} {path}:{n}: expected 'ADDRESS TYPE NAME', not {raw.strip()[:60]!r}")
        try:
            addr = int(parts[0], 16)
        except ValueError:
            raise ConfigError(f"{what} {path}:{n}: bad address {parts[0]!r}") from None
        table.setdefault(parts[2], addr)
    if "_text" not in table:
        raise ConfigError(f"{what} {path}: no _text symbol: not a kernel symbol table")
    if table["_text"] == 0:
        raise ConfigError(f"{what} {path}: every address is zero (kallsyms read without root: "
                          f"kptr_restrict); read /proc/kallsyms as root")
    return Symbols(path, kind, table)


def kernel_text_start(mem: PhysView, root: int, mode: PagingMode, lay: Layout) -> int | None:
    """Where the kernel image is mapped: the first mapping of the High Kernel
    Mapping (cleanup_highmap removes everything below _text)."""
    got = _first_leaf(mem, root, mode, mode.strip(lay.kernel_map), mode.strip(lay.modules_vaddr))
    return None if got is None else mode.sign_extend(got[0])


def place_symbols(syms: Symbols, mem: PhysView, root: int, mode: PagingMode, lay: Layout,
                  kaslr_offset: tuple[int, str] | None) -> None:
    """Set a System.map's KASLR slide, and refuse a table that does not
    match the image (its _text not where the image maps the kernel)."""
    text = kernel_text_start(mem, root, mode, lay)
    if syms.kind == "System.map":
        if kaslr_offset is not None:
            syms.slide, syms.slide_source = kaslr_offset
        elif text is not None:
            syms.slide = text - syms.table["_text"]
            syms.slide_source = f"the kernel image is mapped from {text:#x}"
        if syms.slide % (2 << 20) or not 0 <= syms.slide < GiB:
            raise ImageError(f"--system-map {syms.path}: _text {syms.table['_text']:#x} cannot be moved to "
                             f"where the image maps the kernel ({text:#x}): another kernel's System.map?")
        return
    if text is not None and syms("_text") != text:
        raise ImageError(f"--kallsyms {syms.path}: _text is {syms('_text'):#x} but the image maps the kernel "
                         f"from {text:#x}: kallsyms of another boot (KASLR moves it every boot)?")


def bases_from_symbols(syms: Symbols, mem: PhysView, root: int, ctl: ControlState) -> dict[str, tuple[int, str]]:
    """The values of the base variables, read through the image's tables."""
    out = {}
    for name in BASE_VARIABLES:
        va = syms(name)
        if va is None:
            continue
        v = read_virt_u64(mem, root, va, ctl)
        if v is None:
            continue
        out[name] = (v, f"the kernel's {name} variable at {va:#x} ({syms.kind} {syms.path})")
    return out
