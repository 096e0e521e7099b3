"""The kernel's boot-time build, kept per configuration (docs/performance.md, "Boot").

:meth:`emu.linux.kernel.KernelBuilder.build` writes the same bytes into a
fresh RAM and leaves the same allocator and kernel state for every machine
of one configuration and one linked stub image: the image, the direct map,
the cpu_entry_area, the stacks, the PTI and ASI tables (34 non-zero pages
of RAM with the default machine).  The second machine of a configuration in
a process records that state; the later ones copy it into their own fresh
RAM instead of building it again.  A process that boots one machine never
pays for the recording.

What is kept is private to this module and copied at each use: RAM pages as
``bytes``, the allocator's tables and the kernel's dicts as copies made at
every restore, page-table objects rebuilt around the new RAM.  Values of a
type this module does not know are refused when recorded (an
``AssertionError``: a new attribute of the builder's objects must be taught
here, not silently shared between machines).  tests/test_boot_cache.py
boots machines with the cache cleared and from it, and compares RAM, the
allocator, the kernel's state and the CPU's registers.
"""

from __future__ import annotations

import dataclasses

from emu.hw.paging import PageTable, PagingMode, Policy
from emu.hw.phys import PAGE_SIZE, PhysMem, byte_runs
from emu.linux.config import MachineConfig
from emu.linux.layout import Layout

#: configurations kept at once (the asm suite uses a few dozen; each is ~0.2 MB)
MAX_KEPT = 32

#: larger guests are not kept: their allocator's tables (a byte per frame, twice)
#: would be copied at every boot, and kept (256 MiB each for 1 TiB)
MAX_RAM_KEPT = 64 << 30

_seen: set = set()             # keys built once in this process
_kept: dict = {}               # key -> _Built
_NONZERO = bytes([0] + [1] * 255)
_ZERO_PAGE = bytes(PAGE_SIZE)
#: a /proc/self/pagemap entry's top byte: page present (bit 63) or swapped (bit 62)
_IN_USE = bytes(int(b & 0xC0 != 0) for b in range(256))
#: values kept as they are: immutable (frozen dataclasses, enums, ints, strings)
_SCALARS = frozenset({int, str, bool, type(None)})
_IMMUTABLE = (int, str, bytes, bool, float, type(None), frozenset, PagingMode, Policy, Layout, MachineConfig)


def clear() -> None:
    """Forget every kept build (the next machines build from scratch)."""
    _seen.clear()
    _kept.clear()


def _key(kb) -> tuple:
    return (kb.cfg, id(kb.image))


def restore(kb):
    """The kept build of ``kb``'s configuration and image, copied into
    ``kb``'s fresh RAM: returns the Kernel (and sets ``kb.k``), or None."""
    got = _kept.get(_key(kb))
    if got is None or got.image is not kb.image:
        return None
    return got.restore(kb)


def built(kb) -> None:
    """``kb`` has just built its kernel: record it if this is the second
    build of its configuration in this process."""
    key = _key(kb)
    if key not in _seen or kb.cfg.ram > MAX_RAM_KEPT:
        _seen.add(key)
        return
    if len(_kept) >= MAX_KEPT:
        _kept.pop(next(iter(_kept)))
    _kept[key] = _Built(kb)


def _touched(mem, lo: int, hi: int):
    """The frames of [lo, hi) the host ever backed: present or swapped out in
    /proc/self/pagemap (Documentation/admin-guide/mm/pagemap.rst).  A page of
    the private anonymous RAM that was never touched is neither and reads as
    zeros; reading it here would fault it in (most of the reserved kernel
    image is such pages).  Without pagemap: every frame."""
    first = mem.host_address // PAGE_SIZE + lo
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            f.seek(first * 8)
            entries = f.read((hi - lo) * 8)
    except OSError:
        return range(lo, hi)
    if len(entries) != (hi - lo) * 8:
        return range(lo, hi)
    return [pfn for a, b in byte_runs(entries[7::8].translate(_IN_USE), lo) for pfn in range(a, b)]


# -- values ---------------------------------------------------------------------------------------
def _immutable(v) -> bool:
    return isinstance(v, _IMMUTABLE) or (isinstance(v, tuple) and all(_immutable(x) for x in v))


def _freeze(v, where: str):
    """A recorded value: ('v', immutable) or ('c', container type, a private copy)."""
    if _immutable(v):
        return ("v", v)
    if isinstance(v, bytearray):
        return ("c", bytearray, bytes(v))
    if isinstance(v, (list, set, dict)):
        for x in (*v.keys(), *v.values()) if isinstance(v, dict) else v:
            if type(x) not in _SCALARS and not _immutable(x):
                raise AssertionError(f"boot cache: {where} holds a {type(x).__name__}: teach emu/linux/bootcache.py")
        return ("c", type(v), type(v)(v))
    raise AssertionError(f"boot cache: {where} is a {type(v).__name__}: teach emu/linux/bootcache.py")


def _thaw(rec):
    return rec[1] if rec[0] == "v" else rec[1](rec[2])


class _Built:
    """What one build left: RAM, the frame allocator, the Kernel and the builder's own state."""

    def __init__(self, kb):
        mem, k = kb.mem, kb.k
        self.image = kb.image
        if k.processes:
            raise AssertionError("boot cache: the kernel is recorded before any process is added")
        # RAM: only frames the build allocated or reserved can hold what it wrote
        # (tests/test_boot_cache.py compares all of RAM)
        frames, buf, pages = mem.frames, mem.buf, []
        for lo, hi in byte_runs(frames.kind.translate(_NONZERO)):      # frames of any kind but FREE
            for pfn in _touched(mem, lo, hi):
                pa = pfn * PAGE_SIZE
                data = buf[pa:pa + PAGE_SIZE]
                if data == _ZERO_PAGE:
                    continue
                if pages and pages[-1][0] + len(pages[-1][1]) == pa:
                    pages[-1] = (pages[-1][0], pages[-1][1] + data)
                else:
                    pages.append((pa, data))
        self.pages = tuple(pages)
        self.frames = {name: _freeze(v, f"FrameAllocator.{name}") for name, v in vars(frames).items()
                       if name != "mem"}
        own = {id(kb.cfg): "cfg", id(kb.lay): "lay", id(mem): "mem", id(kb.image): "image"}
        self.tables: dict[int, dict] = {}          # id of a PageTable -> its attributes but RAM

        def record(v, where):
            if id(v) in own:
                return ("own", own[id(v)])
            if isinstance(v, PageTable):
                if id(v) not in self.tables:
                    self.tables[id(v)] = {n: _freeze(x, f"{where}.{n}") for n, x in vars(v).items() if n != "mem"}
                return ("pt", id(v))
            return _freeze(v, where)

        self.kernel_type = type(k)
        self.kernel = {f.name: record(getattr(k, f.name), f"Kernel.{f.name}") for f in dataclasses.fields(k)}
        self.builder = {name: record(v, f"KernelBuilder.{name}") for name, v in vars(kb).items()
                        if name not in ("cfg", "lay", "mem", "image", "k")}

    def restore(self, kb):
        mem: PhysMem = kb.mem
        buf = mem.buf
        for pa, data in self.pages:
            buf[pa:pa + len(data)] = data
        frames = mem.frames
        for name, rec in self.frames.items():
            setattr(frames, name, _thaw(rec))
        own = {"cfg": kb.cfg, "lay": kb.lay, "mem": mem, "image": kb.image}
        tables = {}
        for key, attrs in self.tables.items():
            pt = tables[key] = PageTable.__new__(PageTable)
            pt.__dict__.update({n: _thaw(r) for n, r in attrs.items()})
            pt.mem = mem

        def value(rec):
            if rec[0] == "own":
                return own[rec[1]]
            if rec[0] == "pt":
                return tables[rec[1]]
            return _thaw(rec)

        kb.k = k = self.kernel_type(**{name: value(rec) for name, rec in self.kernel.items()})
        for name, rec in self.builder.items():
            setattr(kb, name, value(rec))
        return k
