"""The ASI designs' page tables and boot data (docs/asi.md).

What each design has at boot, built by Python as the rest of the kernel's
early page tables are; from then on the stub (kernel_stub/asi.S) owns them.

* today's model (``asi=on``) and the 2025 RFC v2 (``asi=rfc2025``): the
  global non-sensitive table ``asi.global`` (asi_global_nonsensitive_pgd:
  kernel image, per-CPU data, fixmap, cpu_entry_area, espfix, vmalloc space,
  and a direct map holding only non-sensitive pages) and, per process, an
  order-1 restricted PGD whose kernel half is asi.global's and whose user
  half mirrors the process's (asi_clone_user_pgtbl: the userspace class maps
  user addresses);
* the 2019 RFC (``asi=rfc2019``): per process, a restricted table of the KVM
  class: the kernel image (the RFC maps "the entire kernel"), the
  cpu_entry_area, and tables ready for the current stack, which asi_enter
  maps and asi_exit unmaps.  No direct map, no user half.
"""

from __future__ import annotations

from emu.hw.paging import ADDR_MASK, G, PAGE_KERNEL, PAT_LARGE, PageTable, large_to_4k
from emu.hw.phys import PAGE_SIZE, SIZE_2M, FrameKind, byte_runs
from emu.linux import abi

#: frame kinds a design with asi.global maps into its direct map at boot: page tables,
#: kernel data and kernel stacks ("Map non-user buddy allocations as nonsensitive");
#: user and secret frames are sensitive (GFP_USER)
NONSENSITIVE_KINDS = {FrameKind.PGTABLE, FrameKind.KERNEL_DATA, FrameKind.KERNEL_STACK}
#: kind byte -> 1 for a non-sensitive kind (tail bytes of a large frame: 0)
_NONSENSITIVE_MARKS = bytes(int(b in NONSENSITIVE_KINDS) for b in range(256))


def top_level(levels: int) -> str:
    """The level whose entries cover 512 GiB (share()'s level for a whole slot)."""
    return "p4d" if levels == 5 else "pgd"


def build_global(kb, init: PageTable) -> PageTable:
    """asi_global_nonsensitive_pgd: kernel image and static data, per-CPU data,
    fixmap (the whole top slot), cpu_entry_area, espfix, vmalloc (kernel
    stacks), and a direct map holding only non-sensitive pages."""
    lay, k = kb.lay, kb.k
    g = PageTable.create(kb.mem, kb.cfg.levels, name="asi.global", owner="asi", **kb.stub_table())
    top = top_level(kb.cfg.levels)
    for va in (lay.kernel_map & ~((1 << 39) - 1), lay.cpu_entry_area, lay.espfix_base, lay.vmalloc_start):
        g.share(init, va, 1 << 39, top)
    # asi_global_init: pre-allocate the sub-PGD tables of the direct map, so
    # every domain's copy of the kernel half shares them
    span = 1 << g.top_shift
    for va in range(lay.page_offset, lay.page_offset + kb.mem.size, span):
        g._slot(va, g.top_shift - 9, create=True)
    k.write_data("asi_global_pgd_va", lay.page_offset + g.root)
    return g


def restricted_pgd(kb, name: str, pgd: PageTable, index: int) -> int:
    """The restricted page table of process ``name`` (its PGD ``pgd``, task
    ``index``), as its design builds it; returns its root."""
    cfg, mem = kb.cfg, kb.mem
    half = PAGE_SIZE // 2
    if cfg.asi_nonsensitive:
        apgd = kb.new_pgd(f"{name}.asi", True)      # order 1, as RFC v2 allocates it
        mem.write(apgd.root + half, mem.read(kb.k.asi_global.root + half, half))
        mem.write(apgd.root, mem.read(pgd.root, half))          # asi_clone_user_pgtbl
        return apgd.root
    # the 2019 RFC: asi_create() allocates one page; asi_init_mapping() copies
    # the core mappings from the kernel page table
    lay, init = kb.lay, kb.k.init_pgd
    apgd = kb.new_pgd(f"{name}.asi", False)
    top = top_level(cfg.levels)
    for va in (lay.kernel_map & ~((1 << 39) - 1), lay.cpu_entry_area):
        apgd.share(init, va, 1 << 39, top)
    # the current stack is mapped at asi_enter: its tables exist from the start
    # (mapped once to make them, then its PTEs cleared)
    base = lay.vmalloc_start + index * abi.VMAP_STACK_STRIDE
    apgd.map(base, kb.k.stack_pages[base >> 12], PAGE_SIZE, PAGE_KERNEL & ~G, page_size=PAGE_SIZE)
    apgd.unmap(base, PAGE_SIZE)
    return apgd.root


def boot_direct_map(kb) -> None:
    """Non-sensitive frames allocated so far get their direct-map alias in
    the global non-sensitive table: the kernel image (2 MiB pages, with the
    direct map's own rights) and every page-table, kernel-data and
    kernel-stack frame.  User frames are sensitive (GFP_USER)."""
    k, lay, g = kb.k, kb.lay, kb.k.asi_global
    init = k.init_pgd
    for off in range(0, abi.KERNEL_IMAGE_SIZE, SIZE_2M):
        pa = abi.KERNEL_PHYS + off
        _, _, e = init.lookup(lay.page_offset + pa)
        g.map(lay.page_offset + pa, pa, SIZE_2M, large_to_4k((e & ~ADDR_MASK) | (e & PAT_LARGE)),
              page_size=SIZE_2M)
    frames = kb.mem.frames
    image = range(abi.KERNEL_PHYS >> 12, (abi.KERNEL_PHYS + abi.KERNEL_IMAGE_SIZE) >> 12)
    # the tables of asi.global itself are sensitive (RFC v2 allocates them so,
    # against recursion); a process's restricted PGD is an ordinary
    # GFP_KERNEL_ACCOUNT allocation (asi_init): non-sensitive
    # found with a translation of the kind bytes to marks and memchr over the
    # marks, not a Python loop over every frame (65,536 of them with 256 MiB
    # of RAM; docs/performance.md)
    pfns = [pfn for lo, hi in byte_runs(frames.kind.translate(_NONSENSITIVE_MARKS)) for pfn in range(lo, hi)
            if pfn not in image and frames.owner.get(pfn, "") != "asi"]
    # consecutive frames in one map call each (map fills a table's slots at once)
    for first, count in _runs(pfns):
        pa = first << 12
        g.map(lay.page_offset + pa, pa, count * PAGE_SIZE, PAGE_KERNEL & ~G, page_size=PAGE_SIZE)


def _runs(pfns: list[int]) -> list[tuple[int, int]]:
    """(first, count) of each run of consecutive numbers in the sorted ``pfns``."""
    runs: list[list[int]] = []
    for pfn in pfns:
        if runs and runs[-1][0] + runs[-1][1] == pfn:
            runs[-1][1] += 1
        else:
            runs.append([pfn, 1])
    return [(a, n) for a, n in runs]


def init_data(k, cfg) -> None:
    """The stub's ASI words (kernel_stub/data.S) for the design of ``cfg``."""
    k.write_data("feature_asi", int(cfg.asi_on))
    k.write_data("asi_design", abi.ASI_DESIGN[cfg.asi])
    k.write_data("feature_asi_global", int(cfg.asi_nonsensitive))
    k.write_data("asi_maps_user", int(cfg.asi_nonsensitive))
    k.write_data("feature_kernel_nonglobal", int(not cfg.global_pages))
    # the userspace class for the per-process domains (the KVM class with the 2019 RFC:
    # its restricted table uses PCID 0 and no class bits)
    k.write_data("asi_class_id", abi.ASI_CLASS_USERSPACE if cfg.asi_nonsensitive else abi.ASI_CLASS_KVM)
    base = k.sym("asi_taint_policy")
    for cls, policy in abi.ASI_TAINT_POLICY.items():
        for i, v in enumerate(policy):
            k.write_q(base + 24 * cls + 8 * i, v)


def stats(k) -> dict[str, int]:
    """ASI's counters: exits (all, then by reason), the taint policy's flushes,
    and sensitive accesses from a critical section."""
    out = {"asi_exits": k.read_data("asi_exits")}
    base = k.sym("asi_exit_reasons")
    out.update({name: k.read_q(base + 8 * i) for i, name in enumerate(abi.ASI_EXIT_STATS)})
    base = k.sym("asi_flush_counts")
    out.update({f"asi_flush_{name}": k.read_q(base + 8 * i) for i, name in enumerate(abi.ASI_FLUSHES)})
    out["asi_critical_findings"] = k.read_data("asi_critical_findings")
    out["asi_kvm_entries"] = k.read_data("asi_kvm_entries")
    return out
