"""Guest physical memory: one Python-owned buffer and a frame allocator.

Guest RAM is a private anonymous ``mmap``; the CPU layer maps the very same
buffer into Unicorn with ``mem_map_ptr``, so page tables written here are what
the CPU walks.  Untouched pages cost no host memory, so a 4 GiB guest starts
with a small RSS.  Freed frames are handed back with ``MADV_DONTNEED``, which
also zeroes them: a free frame always reads as zeros, so allocation never has
to clear memory.

:class:`PhysView` is the read interface the walker, the tree visitor, ptdump
and the lints use; :class:`emu.hw.image.ImageMem` gives it over memory images
and core dumps of other machines (with holes), so they can inspect page
tables that other code built.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import re
import struct
from array import array
from dataclasses import dataclass

from emu.errors import AllocError, ConfigError, ImageError

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
SIZE_2M = 1 << 21
SIZE_1G = 1 << 30
MiB = 1 << 20
GiB = 1 << 30

DEFAULT_RAM = 256 * MiB
MIN_RAM = 32 * MiB
#: The CPU models in use have a 40-bit physical address width (1 TiB).
MAX_RAM = 1 << 40

_Q = struct.Struct("<Q")


def byte_runs(marks: bytes, offset: int = 0) -> list[tuple[int, int]]:
    """[lo, hi) (plus ``offset``) of each run of 1 bytes in ``marks`` (0 and 1
    bytes only, e.g. a frame table through ``bytes.translate``): found with
    ``find`` (memchr), not Python per byte."""
    out = []
    lo = marks.find(1)
    while lo >= 0:
        hi = marks.find(0, lo)
        if hi < 0:
            hi = len(marks)
        out.append((offset + lo, offset + hi))
        lo = marks.find(1, hi)
    return out


class FrameKind(enum.IntEnum):
    """What a physical frame is used for (recorded per 4 KiB frame)."""

    FREE = 0
    RESERVED = 1
    PGTABLE = 2
    KERNEL_TEXT = 3
    KERNEL_DATA = 4
    KERNEL_STACK = 5
    USER = 6
    SECRET = 7
    SECRET_POOL = 8
    GUEST_MEMFD = 9
    XPFO = 10


_TAIL = 0x80  # kind byte flag: frame is a tail page of a 2M/1G allocation
_ALLOCATED = re.compile(rb"[^\x00]")


@dataclass(frozen=True)
class FrameInfo:
    pa: int
    kind: FrameKind
    order: int
    owner: str | None
    refs: int

    @property
    def size(self) -> int:
        return PAGE_SIZE << self.order


class PhysView:
    """Read access to a flat physical address space held in ``self.buf``."""

    buf: mmap.mmap
    size: int
    name: str = "RAM"

    def read(self, pa: int, n: int) -> bytes:
        if pa < 0 or pa + n > self.size:
            raise self._outside(pa, n)
        return self.buf[pa:pa + n]

    def read_u64(self, pa: int) -> int:
        if pa < 0 or pa + 8 > self.size:
            raise self._outside(pa, 8)
        return _Q.unpack_from(self.buf, pa)[0]

    def contains(self, pa: int, n: int = 1) -> bool:
        return 0 <= pa and pa + n <= self.size

    def ensure(self, pa: int, n: int) -> bool:
        """Make [pa, pa+n) readable through ``buf``; False if it is not memory.
        (RAM always is; an image brings the pages in on first use.)"""
        return 0 <= pa and pa + n <= self.size

    def page_words(self, pa: int):
        """The 512 entries of the page-table page at ``pa``, or None when the
        page is not memory (outside RAM, or a hole of an image)."""
        if not 0 <= pa <= self.size - PAGE_SIZE:
            return None
        return array("Q", self.buf[pa:pa + PAGE_SIZE])

    def _outside(self, pa: int, n: int) -> Exception:
        return ImageError(f"physical address {pa:#x}+{n:#x} is outside {self.name} "
                          f"(size {self.size:#x})")


class PhysMem(PhysView):
    """Guest RAM plus its frame allocator."""

    def __init__(self, size: int = DEFAULT_RAM):
        if size % SIZE_2M:
            raise ConfigError(f"RAM size {size:#x} is not a multiple of 2 MiB")
        if not MIN_RAM <= size <= MAX_RAM:
            raise ConfigError(f"RAM size {size >> 20} MiB out of range "
                              f"({MIN_RAM >> 20} MiB .. {MAX_RAM >> 30} GiB)")
        self.size = size
        # Private anonymous memory: lazily backed, and MADV_DONTNEED zeroes it.
        try:
            self.buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as e:
            raise ConfigError(f"cannot reserve {size >> 20} MiB of host memory for guest RAM: "
                              f"{e.strerror}") from None
        self._cbuf = (ctypes.c_char * size).from_buffer(self.buf)
        self.frames = FrameAllocator(self, size >> PAGE_SHIFT)

    @property
    def host_address(self) -> int:
        """Host virtual address of guest physical 0 (for ``mem_map_ptr``)."""
        return ctypes.addressof(self._cbuf)

    def write(self, pa: int, data) -> None:
        n = len(data)
        if pa < 0 or pa + n > self.size:
            raise AllocError(f"write of {n:#x} bytes at {pa:#x} is outside RAM (size {self.size:#x})")
        self.buf[pa:pa + n] = data

    def write_u64(self, pa: int, value: int) -> None:
        _Q.pack_into(self.buf, pa, value)

    def zero(self, pa: int, n: int) -> None:
        """Zero ``[pa, pa+n)``; whole pages go back to the host."""
        start = (pa + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        end = (pa + n) & ~(PAGE_SIZE - 1)
        if end > start:
            self.buf.madvise(mmap.MADV_DONTNEED, start, end - start)
            self.buf[pa:start] = bytes(start - pa)
            self.buf[end:pa + n] = bytes(pa + n - end)
        else:
            self.buf[pa:pa + n] = bytes(n)

    def close(self) -> None:
        del self._cbuf
        self.buf.close()


class FrameAllocator:
    """4 KiB / 2 MiB / 1 GiB frames with kind, owner and reference counts.

    ``refs`` counts page-table entries that point at an allocation (leaf
    mappings and links to page-table pages).  The direct map is a linear map
    of all RAM and does not count, as in Linux.
    """

    ORDERS = {0: PAGE_SIZE, 9: SIZE_2M, 18: SIZE_1G}

    def __init__(self, mem: PhysMem, nframes: int):
        self.mem = mem
        self.nframes = nframes
        self.kind = bytearray(nframes)
        # frames freed since they were last zeroed: a freed frame keeps its
        # contents until it is allocated again, as in Linux's buddy allocator
        # without init_on_free (a stale translation still reads them:
        # docs/tlb.md); every allocation is zeroed, as __GFP_ZERO and
        # clear_user_highpage give Linux's page tables and user pages
        self.dirty = bytearray(nframes)
        self.kind[0] = FrameKind.RESERVED  # never hand out physical page 0
        self.order: dict[int, int] = {}  # head pfn -> order (2M/1G only)
        self.owner: dict[int, str] = {}
        self.refs: dict[int, int] = {}
        #: head frames allocated sensitive (the stub's HC_SENSITIVE flag: ASI
        #: keeps them out of its non-sensitive direct map)
        self.sensitive: set[int] = set()
        self._hint = 1

    # -- allocation ------------------------------------------------------
    def alloc(self, kind: FrameKind, order: int = 0, owner: str | None = None, sensitive: bool = False) -> int:
        """Allocate a zeroed, naturally aligned frame of ``PAGE_SIZE << order``
        (``sensitive``: allocated with the stub's HC_SENSITIVE flag)."""
        if order not in self.ORDERS:
            raise AllocError(f"unsupported frame order {order} (use 0, 9 or 18)")
        if kind in (FrameKind.FREE,):
            raise AllocError("cannot allocate a frame of kind FREE")
        n = 1 << order
        pfn = self._find_free(n)
        if pfn is None:
            free = self.kind.count(0)
            raise AllocError(f"out of guest memory: no free {self.ORDERS[order] >> 10} KiB frame "
                             f"({free} free 4 KiB frames of {self.nframes})")
        self._claim(pfn, n, kind, owner)
        if sensitive:
            self.sensitive.add(pfn)
        if n == 1:
            self._hint = pfn + 1
            if self.dirty[pfn]:
                self.dirty[pfn] = 0
                self.mem.zero(pfn << PAGE_SHIFT, PAGE_SIZE)
        elif self.dirty.find(1, pfn, pfn + n) >= 0:
            self.dirty[pfn:pfn + n] = bytes(n)
            self.mem.zero(pfn << PAGE_SHIFT, n << PAGE_SHIFT)
        return pfn << PAGE_SHIFT

    def alloc_at(self, pa: int, kind: FrameKind, order: int = 0, owner: str | None = None) -> int:
        """Allocate the frame of ``PAGE_SIZE << order`` at ``pa``: another
        allocator's choice replayed (the stub-versus-model cross-check)."""
        n, pfn = 1 << order, pa >> PAGE_SHIFT
        if order not in self.ORDERS or pa % (PAGE_SIZE << order) or pfn + n > self.nframes \
                or self.kind[pfn:pfn + n].count(0) != n:
            raise AllocError(f"cannot allocate the {(PAGE_SIZE << order) >> 10} KiB frame at {pa:#x}: "
                             f"not aligned, beyond RAM or not free")
        self._claim(pfn, n, kind, owner)
        return pa

    def reserve(self, pa: int, size: int, kind: FrameKind, owner: str | None = None) -> None:
        """Claim a fixed physical range (e.g. where the kernel image lives)."""
        if pa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise AllocError(f"reserve {pa:#x}+{size:#x}: not page aligned")
        pfn, n = pa >> PAGE_SHIFT, size >> PAGE_SHIFT
        if pfn + n > self.nframes:
            raise AllocError(f"reserve {pa:#x}+{size:#x}: beyond RAM ({self.nframes << PAGE_SHIFT:#x})")
        if self.kind[pfn:pfn + n].count(0) != n:
            raise AllocError(f"reserve {pa:#x}+{size:#x}: range is not free")
        # one slice and one dict update: the kernel image alone is 2,560 frames
        self.kind[pfn:pfn + n] = bytes([kind]) * n
        if owner:
            self.owner.update(dict.fromkeys(range(pfn, pfn + n), owner))

    def _find_free(self, n: int) -> int | None:
        kinds = self.kind
        if n == 1:
            pfn = kinds.find(0, self._hint)
            if pfn < 0:
                pfn = kinds.find(0, 1)
            return pfn if pfn >= 0 else None
        zeros = bytes(n)
        pos = 0
        while True:
            pos = kinds.find(zeros, pos)
            if pos < 0:
                return None
            if pos % n == 0:
                return pos
            pos = (pos + n - 1) & ~(n - 1)

    def _claim(self, pfn: int, n: int, kind: FrameKind, owner: str | None) -> None:
        self.kind[pfn] = kind
        if n > 1:
            self.kind[pfn + 1:pfn + n] = bytes([kind | _TAIL]) * (n - 1)
            self.order[pfn] = n.bit_length() - 1
        if owner:
            self.owner[pfn] = owner

    def free(self, pa: int) -> None:
        pfn = self._head_for_free(pa)
        refs = self.refs.get(pfn, 0)
        if refs:
            raise AllocError(f"cannot free frame {pa:#x}: still referenced by {refs} "
                             f"page-table entr{'y' if refs == 1 else 'ies'}")
        order = self.order.pop(pfn, 0)
        n = 1 << order
        self.kind[pfn:pfn + n] = bytes(n)
        self.owner.pop(pfn, None)
        self.sensitive.discard(pfn)
        self.dirty[pfn:pfn + n] = b"\x01" * n
        if n == 1 and pfn < self._hint:
            self._hint = pfn

    def _head_for_free(self, pa: int) -> int:
        if pa % PAGE_SIZE or not 0 <= pa < self.nframes << PAGE_SHIFT:
            raise AllocError(f"cannot free {pa:#x}: not a page-aligned address in RAM")
        pfn = pa >> PAGE_SHIFT
        k = self.kind[pfn]
        if k == FrameKind.FREE:
            raise AllocError(f"double free of frame {pa:#x}")
        if k & _TAIL:
            head = self.head_pfn(pfn)
            raise AllocError(f"cannot free {pa:#x}: it is inside the {self.ORDERS[self.order[head]] >> 20} MiB "
                             f"frame at {head << PAGE_SHIFT:#x}; free that frame")
        if k == FrameKind.RESERVED:
            raise AllocError(f"cannot free frame {pa:#x}: it is reserved")
        return pfn

    # -- queries ---------------------------------------------------------
    def head_pfn(self, pfn: int) -> int:
        """The first frame of the allocation containing ``pfn``."""
        if not self.kind[pfn] & _TAIL:
            return pfn
        for order in (9, 18):
            head = pfn & ~((1 << order) - 1)
            if self.order.get(head) == order:
                return head
        raise AssertionError(f"tail frame {pfn:#x} without a head")

    def info(self, pa: int) -> FrameInfo:
        if not 0 <= pa < self.nframes << PAGE_SHIFT:
            raise AllocError(f"{pa:#x} is outside RAM")
        head = self.head_pfn(pa >> PAGE_SHIFT)
        return FrameInfo(head << PAGE_SHIFT, FrameKind(self.kind[head] & ~_TAIL),
                         self.order.get(head, 0), self.owner.get(head), self.refs.get(head, 0))

    def kind_of(self, pa: int) -> FrameKind:
        return FrameKind(self.kind[pa >> PAGE_SHIFT] & ~_TAIL)

    # -- reference counts (maintained by page-table objects) --------------
    def get_ref(self, pa: int) -> None:
        self.ref_range(pa, PAGE_SIZE, +1)

    def put_ref(self, pa: int) -> None:
        self.ref_range(pa, PAGE_SIZE, -1)

    def ref_range(self, pa: int, size: int, delta: int) -> None:
        """Add ``delta`` to the count of every allocation overlapping the range."""
        pfn, end = pa >> PAGE_SHIFT, min((pa + size + PAGE_SIZE - 1) >> PAGE_SHIFT, self.nframes)
        while pfn < end:
            m = _ALLOCATED.search(self.kind, pfn, end)   # skip free frames
            if m is None:
                return
            head = self.head_pfn(m.start())
            left = self.refs.get(head, 0) + delta
            if left > 0:
                self.refs[head] = left
            else:
                self.refs.pop(head, None)
            pfn = head + (1 << self.order.get(head, 0))

    def counts(self) -> dict[str, int]:
        """Number of 4 KiB frames of each kind."""
        out = {}
        for k in FrameKind:
            c = self.kind.count(k) + (self.kind.count(k | _TAIL) if k else 0)
            if c:
                out[k.name.lower()] = c
        return out
