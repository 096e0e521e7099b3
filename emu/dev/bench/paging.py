"""Page tables: the page-table object, the walker, ptdump."""

from __future__ import annotations


from emu.dev.bench.core import bench, best, figure


# --- page tables: the page-table object, walker, ptdump ----------------------
@bench("page tables")
def bench_paging(quick: bool) -> list[dict]:
    from unicorn import UC_ARCH_X86, UC_MODE_64, UC_PROT_ALL, Uc

    from emu.hw.cpu import Cpu
    from emu.dev.demo import build_demo
    from emu.linux.layout import LAYOUT_4LEVEL
    from emu.hw.paging import PAGE_KERNEL, ControlState, PageTable, translate
    from emu.hw.phys import GiB, MiB, PhysMem
    from emu.tools.ptdump import ptdump_lines

    figs = []
    # 1. PTEs written per second: a direct map of all RAM with 4 KiB pages.
    ram = 512 * MiB if quick else 4 * GiB

    def build() -> int:
        mem = PhysMem(ram)
        pt = PageTable.create(mem, policies=())
        pt.map(LAYOUT_4LEVEL.page_offset, 0, ram, PAGE_KERNEL, page_size=4096)
        mem.close()
        return ram >> 12

    dt, n = best(build, 1 if not quick else 2)
    # baseline: the same PTE values through the binding's uc.mem_write, one entry per call
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 64 * MiB, UC_PROT_ALL)
    m = 20000

    def raw() -> int:
        v = PAGE_KERNEL
        for i in range(m):
            uc.mem_write(0x100000 + 8 * (i & 0x7FFFF), (v | (i << 12)).to_bytes(8, "little"))
        return m

    bdt, bn = best(raw)
    figs.append(figure(f"pte_writes_per_s ({ram >> 30 or ram / GiB:g} GiB direct map, 4K pages)",
                       n / dt, "PTE/s", baseline=bn / bdt, baseline_name="uc.mem_write per PTE",
                       target=">= 5e6"))

    # 2. ptdump of the default kernel tables, and walker translations.
    demo = build_demo()
    sp_mem, root = demo.mem, demo.kernel.root
    dt, _ = best(lambda: len(ptdump_lines(sp_mem, root)), 5)
    figs.append(figure("ptdump_seconds (default kernel tables)", dt, "s", target="< 0.05",
                       note="pwndbg's native scanner: ~0.09 s on a real kernel"))

    ctl = ControlState()
    vas = [demo.kernel_text + 4096 * (i % 16) for i in range(64)] + \
          [LAYOUT_4LEVEL.page_offset + (i << 21) + 0x123 for i in range(64)]
    reps = 20000 if quick else 100000

    def walks() -> int:
        for i in range(reps):
            translate(sp_mem, root, vas[i & 127], 0, 0, ctl)
        return reps

    dt, n = best(walks)
    cpu = Cpu(sp_mem)
    cpu.enable_paging(root, ctl)
    hw = cpu.hw_translate
    flush = cpu.flush_tlb

    def hw_walks() -> int:
        for i in range(reps):
            flush()
            hw(vas[i & 127], 0)
        return reps

    bdt, bn = best(hw_walks)
    figs.append(figure("walker_translations_per_s", n / dt, "walks/s", baseline=bn / bdt,
                       baseline_name="uc_vmem_translate after a TLB flush", target=">= 3e5"))
    return figs
