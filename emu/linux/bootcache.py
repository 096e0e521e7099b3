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
import re

from emu.hw.paging import PageTable, PagingMode, Policy
from emu.hw.phys import PAGE_SIZE, PhysMem
from emu.linux.config import MachineConfig
from emu.linux.layout import Layout

#: configurations kept at once (the asm suite uses a few dozen; each is ~0.2 MB)
MAX_KEPT = 32

_seen: set = set()             # keys built once in this process
_kept: dict = {}               # key -> _Built
_NONZERO_RUN = re.compile(rb"[^\x00]+")
_ZERO_PAGE = bytes(PAGE_SIZE)
#: values kept as they are: immutable (frozen dataclasses, enums, ints, strings)
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
    if key not in _seen:
        _seen.add(key)
        return
    if len(_kept) >= MAX_KEPT:
        _kept.pop(next(iter(_kept)))
    _kept[key] = _Built(kb)


# -- values ---------------------------------------------------------------------------------------
def _immutable(v) -> bool:
    return isinstance(v, _IMMUTABLE) or (isinstance(v, tuple) and all(_immutable(x) for x in v))


def _freeze(v, where: str):
    """A recorded value: ('v', immutable) or ('c', container type, a private copy)."""
    if _immutable(v):
        return ("v", v)
    if isinstance(v, (bytearray, list, set, dict)):
        items = v.items() if isinstance(v, dict) else ((None, x) for x in v)
        for a, b in items:
            if not _immutable(a) or not _immutable(b):
                raise AssertionError(f"boot cache: {where} holds a {type(b).__name__}: teach emu/linux/bootcache.py")
        return ("c", type(v), bytes(v) if isinstance(v, bytearray) else type(v)(v))
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
        for m in _NONZERO_RUN.finditer(frames.kind):
            for pfn in range(m.start(), m.end()):
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
