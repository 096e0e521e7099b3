"""Where unmapped pages come from: the four strategies of the direct-map
fragmentation debate (docs/frag.md), each over :class:`DirectMap`.

A strategy hands out 4 KiB pages that are out of the direct map and takes
them back.  Its interface is what every user of unmapped memory needs:
allocate a page (``alloc``), free it (``free``), an owner gone
(``release``: a file closed), and memory pressure (``shrink``).

* ``page``: mainline mm/secretmem.c (``secretmem_fault``): one page from the
  page allocator, ``set_direct_map_invalid_noflush`` (splitting 1G->2M->4K on
  demand), ``flush_tlb_kernel_range`` of the page; freed with
  ``set_direct_map_default_noflush`` and no flush.  Nothing is ever
  collapsed (unless ``collapse``).
* ``pmd-cache``: the memfd_secret v6 series (2020): a per-file pool refilled
  with PMD-size pages; a whole 2 MiB page leaves the direct map at once
  (its PMD cleared: no 2M->4K split) with one flush; freed pages go back to
  the file's pool; the pool goes back to the page allocator when the file
  is released.
* ``reserved``: a pool set aside at boot and taken out of the direct map
  once (whole PMDs; the 1G pages above them split once), as Lutomirski and
  Shutemov preferred (a CMA-like carve-out); allocations never touch the
  direct map again, and fail when the pool is empty.
* ``unmapped-alloc``: Rapoport's ``unmapped_alloc`` / ``__GFP_UNMAPPED`` RFC
  (2023): one cache for every user, refilled with whole PMD blocks taken
  out of the direct map as blocks; a block whose pages are all free goes
  back (restored as one 2M page) beyond one kept in reserve, and all of
  them under memory pressure (its shrinker).

A page handed out again from a cache other owners draw from (``reserved``,
``unmapped-alloc``) was freed by someone else: it is cleared on the way out
through a temporary kernel mapping, one INVLPG (:meth:`DirectMap.scrub`),
as kernel_stub/unmapped.S does (a fresh block was cleared through the
direct map before it left); ``pmd-cache`` keeps a freed page with its file
(v6 cleared the blocks when the file was released, through the direct map
once they were back in it).
"""

from __future__ import annotations

from emu.errors import AllocError, ConfigError
from emu.hw.phys import PAGE_SIZE, SIZE_2M, FrameKind
from emu.tools.frag.directmap import DirectMap, block_of

PAGES_PER_BLOCK = SIZE_2M // PAGE_SIZE


class Strategy:
    """The base: pages straight from the page allocator (no cache)."""

    name = ""
    doc = ""

    def __init__(self, dm: DirectMap, collapse: bool = False, pool: int = 0):
        self.dm = dm
        self.collapse = collapse
        self.frames = dm.mem.frames

    # -- the page allocator -------------------------------------------------------------
    def buddy(self, order: int, kind: FrameKind, owner: str) -> int | None:
        """A frame from the page allocator; under pressure the caches are shrunk once."""
        for attempt in (0, 1):
            try:
                return self.frames.alloc(kind, order, owner)
            except AllocError:
                if attempt or not self.shrink():
                    return None
        return None

    # -- the interface ---------------------------------------------------------------------
    def boot(self) -> None:
        """What the strategy sets up at boot."""

    def alloc(self, owner: str) -> int | None:
        raise NotImplementedError

    def free(self, pa: int, owner: str) -> None:
        raise NotImplementedError

    def release(self, owner: str) -> None:
        """The owner's file is closed."""

    def shrink(self) -> bool:
        """Give memory back under pressure; True if some went back."""
        return False

    def stranded(self) -> int:
        """Pages held out of the direct map in caches or pools, not handed out."""
        return 0

    def reserved_range(self) -> tuple[int, int] | None:
        return None

    def held_out(self) -> set[int]:
        """Pages out of the direct map that are not handed out (cached)."""
        return set()

    def _restored(self, pa: int) -> None:
        if self.collapse:
            self.dm.collapse(pa)


class PageStrategy(Strategy):
    name = "page"
    doc = "mainline mm/secretmem.c: one page from the allocator, split on demand, never collapsed"

    def alloc(self, owner):
        pa = self.buddy(0, FrameKind.SECRET, owner)
        if pa is None:
            return None
        self.dm.unmap_page(pa)
        self.dm.flush_range(pa, PAGE_SIZE)
        return pa

    def free(self, pa, owner):
        self.dm.restore_page(pa)
        self.frames.free(pa)
        self._restored(pa)


class Block:
    """A 2 MiB block of a cache: which of its pages are handed out."""

    __slots__ = ("pa", "used", "free", "listed", "dirty")

    def __init__(self, pa: int):
        self.pa = pa
        self.used = 0
        self.listed = True                    # on the cache's list of blocks with a free page
        self.dirty: set[int] = set()          # freed pages not cleared since (a shared cache's)
        self.free = list(range(pa + SIZE_2M - PAGE_SIZE, pa - 1, -PAGE_SIZE))   # lowest first out


class BlockCache:
    """Blocks taken out of the direct map whole; pages handed out from them."""

    def __init__(self, strategy: Strategy, shared: bool = False):
        self.s = strategy
        self.shared = shared
        self.blocks: dict[int, Block] = {}
        self.partial: list[Block] = []         # blocks with a free page (a stack)

    def take(self, owner: str) -> int | None:
        while self.partial and not self.partial[-1].free:
            self.partial.pop().listed = False
        if not self.partial:
            pa = self.s.buddy(9, FrameKind.SECRET_POOL, owner)
            if pa is None:
                return None
            dm = self.s.dm
            dm.unmap_block(pa)
            dm.flush_range(pa, SIZE_2M)
            b = self.blocks[pa] = Block(pa)
            self.partial.append(b)
        b = self.partial[-1]
        b.used += 1
        pa = b.free.pop()
        if pa in b.dirty:
            b.dirty.discard(pa)
            self.s.dm.scrub()
        return pa

    def give(self, pa: int) -> Block:
        b = self.blocks[block_of(pa)]
        b.used -= 1
        if not b.listed:
            b.listed = True
            self.partial.append(b)
        b.free.append(pa)
        if self.shared:
            b.dirty.add(pa)
        return b

    def drop(self, b: Block) -> None:
        """The block back to the page allocator, restored as one 2M page."""
        del self.blocks[b.pa]
        if b.listed:
            self.partial.remove(b)
        dm = self.s.dm
        dm.restore_block(b.pa)
        self.s.frames.free(b.pa)
        self.s._restored(b.pa)

    def stranded(self) -> int:
        return sum(PAGES_PER_BLOCK - b.used for b in self.blocks.values())

    def held_out(self) -> set[int]:
        return {pa for b in self.blocks.values() for pa in b.free}


class PmdCacheStrategy(Strategy):
    name = "pmd-cache"
    doc = "memfd_secret v6: a per-file cache of 2 MiB pages, each out of the direct map whole"

    def __init__(self, dm, collapse=False, pool=0):
        super().__init__(dm, collapse, pool)
        self.caches: dict[str, BlockCache] = {}

    def alloc(self, owner):
        c = self.caches.get(owner)
        if c is None:
            c = self.caches[owner] = BlockCache(self)
        return c.take(owner)

    def free(self, pa, owner):
        self.caches[owner].give(pa)

    def release(self, owner):
        c = self.caches.pop(owner, None)
        if c is not None:
            for b in list(c.blocks.values()):
                c.drop(b)

    def stranded(self):
        return sum(c.stranded() for c in self.caches.values())

    def held_out(self):
        return set().union(*(c.held_out() for c in self.caches.values())) if self.caches else set()


class UnmappedAllocStrategy(Strategy):
    name = "unmapped-alloc"
    doc = "Rapoport's unmapped_alloc/__GFP_UNMAPPED: one cache for all, refilled with whole PMD blocks"
    KEEP_FREE_BLOCKS = 1

    def __init__(self, dm, collapse=False, pool=0):
        super().__init__(dm, collapse, pool)
        self.cache = BlockCache(self, shared=True)
        self.free_blocks: list[Block] = []

    def alloc(self, owner):
        pa = self.cache.take("unmapped_alloc")
        if pa is not None:
            b = self.cache.blocks[block_of(pa)]
            if b in self.free_blocks:
                self.free_blocks.remove(b)
        return pa

    def free(self, pa, owner):
        b = self.cache.give(pa)
        if b.used == 0:
            self.free_blocks.append(b)
            while len(self.free_blocks) > self.KEEP_FREE_BLOCKS:
                self.cache.drop(self.free_blocks.pop(0))

    def shrink(self):
        gone = bool(self.free_blocks)
        for b in self.free_blocks:
            self.cache.drop(b)
        self.free_blocks = []
        return gone

    def stranded(self):
        return self.cache.stranded()

    def held_out(self):
        return self.cache.held_out()


class ReservedStrategy(Strategy):
    name = "reserved"
    doc = "a pool set aside at boot, out of the direct map once (CMA-like carve-out)"
    DEFAULT_POOL = 512 << 20

    def __init__(self, dm, collapse=False, pool=0):
        super().__init__(dm, collapse, pool)
        self.size = pool or self.DEFAULT_POOL
        ram = dm.mem.size
        if self.size % SIZE_2M or not SIZE_2M <= self.size <= ram // 2:
            raise ConfigError(f"reserved pool of {self.size >> 20} MiB: use whole 2 MiB blocks, at most "
                              f"half of RAM ({ram >> 21} MiB)")
        self.lo = ram - self.size
        self.free_pages: list[int] = []
        self.used: set[int] = set()
        self.dirty: set[int] = set()          # freed pages not cleared since

    def boot(self):
        dm = self.dm
        self.frames.reserve(self.lo, self.size, FrameKind.SECRET_POOL, "reserved pool")
        for pa in range(self.lo, self.lo + self.size, SIZE_2M):
            dm.unmap_block(pa)
        dm.flush_range(self.lo, self.size)
        self.free_pages = list(range(self.lo + self.size - PAGE_SIZE, self.lo - 1, -PAGE_SIZE))

    def alloc(self, owner):
        if not self.free_pages:
            return None
        pa = self.free_pages.pop()
        self.used.add(pa)
        if pa in self.dirty:
            self.dirty.discard(pa)
            self.dm.scrub()
        return pa

    def free(self, pa, owner):
        self.used.remove(pa)
        self.free_pages.append(pa)
        self.dirty.add(pa)

    def stranded(self):
        return len(self.free_pages)

    def reserved_range(self):
        return self.lo, self.lo + self.size

    def held_out(self):
        return set(self.free_pages)


STRATEGIES: dict[str, type[Strategy]] = {c.name: c for c in (
    PageStrategy, PmdCacheStrategy, ReservedStrategy, UnmappedAllocStrategy)}
