"""The kernel's memory-management side, built by Python at boot.

What Linux's early boot builds, this module builds into guest RAM before the
stub runs: the kernel image at __START_KERNEL_map, the direct map, the
cpu_entry_area, GDT/IDT/TSS, per-CPU data, kernel stacks, the PTI user page
tables (arch/x86/mm/pti.c), the page tables of the ASI design
(emu/linux/asi.py, docs/asi.md) and the processes.  From then on the stub's
machine code owns every page table: demand paging, direct-map edits, CR3
switches and TLB flushes happen in the stub.  Linux policy lives here and in the stub; the CPU layer
knows none of it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

from emu.linux import abi
from emu.linux import bootcache
from emu.linux import asi as asi_tables
from emu.linux import unmapped
from emu.asm import Image, link
from emu.errors import ConfigError
from emu.linux.config import MachineConfig
from emu.linux.directmap import map_direct
from emu.linux.layout import Layout, layout_for
from emu.hw.paging import (ADDR_MASK, ControlState, KERNPG_TABLE, NX, P, PAGE_KERNEL, PAGE_KERNEL_RO, PAGE_KERNEL_RX,
                     PAGE_TABLE, RW, US, A, D, G, PageTable, PtiMirror)
from emu.hw.descriptors import gate_descriptor, tss_descriptor
from emu.hw.phys import PAGE_SIZE, SIZE_1G, SIZE_2M, FrameKind, PhysMem

STUB_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kernel_stub")
STUB_FILES = ["macros.S", "entry_64.S", "lib.S", "traps.S", "page_alloc.S", "pgtable.S", "tlb.S",
              "set_memory.S", "memory.S", "mmap.S", "unmapped.S", "secretmem.S", "guest_memfd.S", "kvm.S", "syscalls.S", "sched.S",
              "asi.S", "data.S"]
# the memfd_secret selftest's calls (docs/secretmem.md): resource limits, GUP, ptrace, process_vm_*
STUB_FILES += ["rlimit.S", "gup.S", "ptrace.S"]
# the VM's memslots, vCPU and KVM_RUN (docs/guest_memfd.md, "The VM"), and /dev/xpfo (docs/xpfo.md)
STUB_FILES += ["kvm_vm.S", "xpfo.S"]
NOP5 = bytes.fromhex("0f1f440000")


def stub_sources() -> list[tuple[str, str]]:
    out = []
    for name in STUB_FILES:
        path = os.path.join(STUB_DIR, name)
        try:
            with open(path) as f:
                out.append((f"kernel_stub/{name}", f.read()))
        except OSError as e:
            raise ConfigError(f"cannot read kernel stub source {path}: {e.strerror}") from None
    byn = {v: k for k, v in abi.SYSCALLS.items()}
    table = [".rodata", ".align 8", "sys_call_table:"]
    table += [f"    .quad sys_{byn[i]}" if i in byn else "    .quad 0" for i in range(abi.NR_SYSCALLS_TABLE)]
    out.append(("<generated:sys_call_table>", "\n".join(table)))
    return out


def kernel_layout(lay: Layout) -> dict[str, int]:
    return {name: (0 if name == ".data..percpu" else lay.kernel_text + off)
            for name, off in abi.KSECTIONS.items()}


_LINKED: dict[tuple, Image] = {}
#: a layout's section addresses and the stub's constants (emu/linux/abi.py, fixed for the
#: process), with their part of _LINKED's key: made once per layout, not at every boot
_LAYOUT_KEYS: dict[Layout, tuple] = {}


def link_kernel(lay: Layout) -> Image:
    """The stub linked for ``lay``.  Booting again in this process with the
    stub's files unchanged (same sizes and modification times) takes the image
    linked before, without reading and hashing the sources again; the linker
    has its own caches, in memory and on disk, keyed by the sources
    (docs/assembler.md)."""
    stats = []
    with os.scandir(STUB_DIR) as entries:          # one listing, one stat per file (as os.stat: links followed)
        for e in entries:
            try:
                st = e.stat()
            except OSError:
                continue
            stats.append((e.name, st.st_mtime_ns, st.st_size))
    stats.sort()                                   # by name (names are unique)
    got = _LAYOUT_KEYS.get(lay)
    if got is None:
        sections, symbols = kernel_layout(lay), abi.asm_symbols(lay)
        got = _LAYOUT_KEYS[lay] = (sections, symbols, tuple(sorted(sections.items())), tuple(sorted(symbols.items())))
    key = (tuple(stats), got[2], got[3])
    img = _LINKED.get(key)
    if img is None:
        img = _LINKED[key] = link(stub_sources(), dict(got[0]), dict(got[1]), include_dirs=[STUB_DIR],
                                  required_sites=("cr0_write", "cr3_write", "cr4_write", "invlpg"))
    return img


@dataclass
class Process:
    """A user process created at boot."""

    index: int
    pid: int
    name: str
    image: Image
    task: int               # task_struct address
    mm: int                 # mm_struct address
    pgd: int                # kernel PGD (physical); the user PGD is pgd + 4 KiB with PTI
    asi_pgd: int | None
    stack_top: int
    entry: int

    @property
    def user_pgd(self) -> int:
        return self.pgd | PAGE_SIZE


@dataclass
class Kernel:
    config: MachineConfig
    mem: PhysMem
    layout: Layout
    image: Image
    init_pgd: PageTable
    asi_global: PageTable | None
    percpu_base: int
    processes: list[Process] = field(default_factory=list)
    cea: dict[str, int] = field(default_factory=dict)
    stack_pages: dict[int, int] = field(default_factory=dict)   # kernel stack page -> frame
    _current_task_pa: int | None = field(default=None, repr=False)   # current_task(): where it reads

    # -- guest memory helpers ------------------------------------------------------
    def sym(self, name: str) -> int:
        return self.image.symbols[name]

    def kva_to_pa(self, va: int) -> int:
        """Physical address of a kernel address (image and direct map directly,
        anything else through the kernel page table)."""
        lay = self.layout
        if lay.kernel_map <= va < lay.kernel_map + abi.KERNEL_PHYS + abi.KERNEL_IMAGE_SIZE:
            return va - lay.kernel_map
        if lay.page_offset <= va < lay.page_offset + self.mem.size:
            return va - lay.page_offset
        pa = self.stack_pages.get(va >> 12)
        if pa is not None:
            return pa | (va & 0xFFF)
        t = self.init_pgd.translate(va, 0, 0, ControlState(la57=self.config.la57, smap=False))
        if t.fault:
            raise ConfigError(f"kernel address {va:#x} is not mapped: {t.describe()}")
        return t.pa

    def percpu_va(self, sym: str) -> int:
        return self.percpu_base + self.sym(sym)

    def read_q(self, va: int) -> int:
        return self.mem.read_u64(self.kva_to_pa(va))

    def write_q(self, va: int, value: int) -> None:
        self.mem.write_u64(self.kva_to_pa(va), value & 0xFFFFFFFFFFFFFFFF)

    def write_data(self, sym: str, value: int) -> None:
        self.write_q(self.sym(sym), value)

    def read_data(self, sym: str) -> int:
        return self.read_q(self.sym(sym))

    def read_percpu(self, sym: str) -> int:
        return self.read_q(self.percpu_va(sym))

    def write_percpu(self, sym: str, value: int) -> None:
        self.write_q(self.percpu_va(sym), value)

    def current_task(self) -> int:
        """The running task (every event asks): its per-CPU slot's physical
        address is fixed from the build on (the image's .data), so found once."""
        pa = self._current_task_pa
        if pa is None:
            pa = self._current_task_pa = self.kva_to_pa(self.percpu_va("pcpu_current_task"))
        return self.mem.read_u64(pa)

    def process_by_task(self, task: int) -> Process | None:
        for p in self.processes:
            if p.task == task:
                return p
        return None

    def stats(self) -> dict[str, int]:
        """Linux's names: /proc/meminfo DirectMap* (kB) and the vm events."""
        return {
            "DirectMap4k": self.read_data("direct_pages_count_4k") * 4,
            "DirectMap2M": self.read_data("direct_pages_count_2m") * 2048,
            "DirectMap1G": self.read_data("direct_pages_count_1g") * 1048576,
            "direct_map_level2_splits": self.read_data("direct_map_level2_splits"),
            "direct_map_level3_splits": self.read_data("direct_map_level3_splits"),
            **unmapped.stats(self),
            "secret_pages": self.read_data("nr_secret_pages"),
            "guest_memfd_pages": self.read_data("nr_gmem_pages"),
            "guest_memfd_unmapped_pages": self.read_data("nr_gmem_unmapped_pages"),
            "guest_memfd_conversions": self.read_data("nr_gmem_conversions"),
            "xpfo_pages": self.read_data("nr_xpfo_pages"),
            "xpfo_pages_removed": self.read_data("nr_xpfo_removed"),
            "xpfo_flushes": self.read_data("nr_xpfo_flushes"),
            "xpfo_cache_hits": self.read_data("nr_xpfo_cache_hits"),
            "xpfo_cached_pages": self.read_data("xpfo_cache_count"),
            "xpfo_pages_restored": self.read_data("nr_xpfo_restored"),
            "kernel_tlb_flushes": self.read_data("nr_kernel_tlb_flushes"),
            **asi_tables.stats(self),
        }


class KernelBuilder:
    """Builds a :class:`Kernel` into fresh guest RAM."""

    def __init__(self, config: MachineConfig):
        self.cfg = config
        self.lay = layout_for(config.levels)
        self.mem = PhysMem(config.ram)
        self.image = link_kernel(self.lay)
        self.k: Kernel | None = None

    # -- helpers ----------------------------------------------------------------
    def _kprot(self, flags: int) -> int:
        """__default_kernel_pte_mask: no Global with PTI or the 2025 ASI."""
        return flags if self.cfg.global_pages else flags & ~G

    def _alloc(self, kind: FrameKind, owner: str = "kernel", order: int = 0) -> int:
        return self.mem.frames.alloc(kind, order, owner)

    def stub_table(self, pti: bool = False, table_flags: int = PAGE_TABLE) -> dict:
        """What a table the stub maintains is made with: no frame references
        (the stub frees its own frames and tables), PTI's user-PGD mirror for
        a PGD pair, and __supported_pte_mask (no NX without EFER.NXE)."""
        return {"policies": (PtiMirror(),) if pti else (), "table_flags": table_flags,
                "pte_mask": ~0 if self.cfg.nx else ~NX}

    def new_pgd(self, name: str, pair: bool) -> PageTable:
        return PageTable.create(self.mem, self.cfg.levels, name=name, owner=name, **self.stub_table(pair))

    # -- the build ----------------------------------------------------------------
    def build(self) -> Kernel:
        """The kernel in this builder's fresh RAM; a configuration built twice
        in this process is copied from what it built (emu/linux/bootcache.py)."""
        k = bootcache.restore(self)
        if k is None:
            k = self._build()
            bootcache.built(self)
        return k

    def _build(self) -> Kernel:
        cfg, lay, mem, img = self.cfg, self.lay, self.mem, self.image
        mem.frames.reserve(abi.KERNEL_PHYS, abi.KERNEL_IMAGE_SIZE, FrameKind.KERNEL_TEXT, "kernel")
        for name, sec in img.sections.items():
            if sec.data:
                mem.write(abi.KERNEL_PHYS + abi.KSECTIONS[name], sec.data)
        init = self.new_pgd("kernel", cfg.pti)
        self.k = k = Kernel(cfg, mem, lay, img, init, None, lay.kernel_text + abi.KSECTIONS[".data..percpu"])
        self._patch_alternatives()
        self._map_direct(init)
        unmapped.boot(k, cfg)
        self._map_kernel_image(init)
        self._cpu_entry_area(init)
        self._espfix(init)
        self._stacks(init)
        self._init_data()
        if cfg.pti:
            self._pti_user_tables(init)
        if cfg.asi_nonsensitive:
            k.asi_global = asi_tables.build_global(self, init)
        return k

    def _patch_alternatives(self) -> None:
        feats = self.cfg.features()
        for addr, feature in self.image.alternatives:
            # '.alternative FEATURE, T': the jmp is a NOP when FEATURE is on;
            # '.alternative !FEATURE, T': when it is off (the jmp runs only with it)
            name, negated = feature.lstrip("!"), feature.startswith("!")
            if name not in feats:
                raise ConfigError(f"stub alternative names unknown feature {name!r}")
            if feats[name] != negated:
                self.mem.write(addr - self.lay.kernel_map, NOP5)

    def _map_direct(self, pt: PageTable) -> None:
        """init_64.c: 1 GiB pages where aligned, 2 MiB elsewhere."""
        base = self.lay.page_offset
        map_direct(pt, self.mem.size, base, self._kprot(PAGE_KERNEL))
        # set_memory_ro() on the image reaches its direct-map alias too
        # (cpa_process_alias); text, entry text and rodata are 2 MiB aligned.
        for sec in (".text", ".entry.text", ".rodata"):
            va = base + abi.KERNEL_PHYS + abi.KSECTIONS[sec]
            if pt.lookup(va)[0] == 30:
                pt.split(va)
            pt.protect(va, SIZE_2M, clear=RW)

    def _map_kernel_image(self, pt: PageTable) -> None:
        """The image at __START_KERNEL_map in 2 MiB pages, per-section rights."""
        k = self.lay.kernel_text
        phys = abi.KERNEL_PHYS
        prots = {".text": PAGE_KERNEL_RX, ".entry.text": PAGE_KERNEL_RX, ".rodata": PAGE_KERNEL_RO,
                 ".data": PAGE_KERNEL, ".data..percpu": PAGE_KERNEL}
        for sec, prot in prots.items():
            off = abi.KSECTIONS[sec]
            pt.map(k + off, phys + off, SIZE_2M, self._kprot(prot), page_size=SIZE_2M)

    def _cpu_entry_area(self, pt: PageTable) -> None:
        """arch/x86/mm/cpu_entry_area.c for CPU 0 (Linux 6.1 layout).

        Every present cea PTE is Global (cea_set_pte) and non-executable.
        """
        cea = self.lay.cpu_entry_area
        img, k = self.image, self.k
        pcpu_pa = abi.KERNEL_PHYS + abi.KSECTIONS[".data..percpu"]
        ro, rw = PAGE_KERNEL_RO | G, PAGE_KERNEL | G
        idt_pa = img.symbols["idt_table"] - self.lay.kernel_map
        pt.map(cea, idt_pa, PAGE_SIZE, ro)                                          # RO IDT
        per_cpu = cea + PAGE_SIZE
        pt.map(per_cpu, pcpu_pa + img.symbols["gdt_page"], PAGE_SIZE, ro)           # gdt
        pt.map(per_cpu + 0x1000, pcpu_pa + img.symbols["entry_stack_page"], PAGE_SIZE, rw)  # entry stack
        pt.map(per_cpu + 0x2000, pcpu_pa + img.symbols["cpu_tss_rw"], PAGE_SIZE, ro)  # tss (RO on 64-bit)
        k.cea = {"idt": cea, "gdt": per_cpu, "entry_stack_top": per_cpu + 0x2000, "tss": per_cpu + 0x2000}
        # exception stacks: guard page, 8 KiB stack (DF, NMI, DB, MCE)
        estacks = per_cpu + 0x7000
        for i, name in enumerate(("df", "nmi", "db", "mce")):
            lo = estacks + 0x3000 * i + 0x1000
            for j in range(2):
                pt.map(lo + j * PAGE_SIZE, self._alloc(FrameKind.KERNEL_STACK, f"cea.{name}_stack"),
                       PAGE_SIZE, rw)
            k.cea[f"{name}_stack_top"] = lo + 0x2000

    def _espfix(self, pt: PageTable) -> None:
        """One espfix page; its PTEs keep Global (espfix_64.c)."""
        pt.map(self.lay.espfix_base, self._alloc(FrameKind.KERNEL_DATA, "espfix"), PAGE_SIZE,
               PAGE_KERNEL_RO | G)

    def _stacks(self, pt: PageTable) -> None:
        """THREAD_SIZE kernel stacks in vmalloc space with guard gaps (VMAP_STACK)."""
        self.stack_tops = []
        for i in range(abi.MAX_TASKS):
            base = self.lay.vmalloc_start + i * abi.VMAP_STACK_STRIDE
            for j in range(abi.THREAD_SIZE // PAGE_SIZE):
                frame = self._alloc(FrameKind.KERNEL_STACK, f"stack{i}")
                pt.map(base + j * PAGE_SIZE, frame, PAGE_SIZE, self._kprot(PAGE_KERNEL))
                self.k.stack_pages[(base >> 12) + j] = frame
            self.stack_tops.append(base + abi.THREAD_SIZE)

    def _init_data(self) -> None:
        cfg, k, lay = self.cfg, self.k, self.lay
        k.write_data("page_offset_base", lay.page_offset)
        k.write_data("pgtable_levels", cfg.levels)
        k.write_data("feature_pti", int(bool(cfg.pti)))
        k.write_data("feature_pcid", int(cfg.pcid))
        k.write_data("feature_invpcid", int(cfg.invpcid))
        k.write_data("feature_nx", int(cfg.nx))
        k.write_data("feature_smap", int(cfg.smap))
        k.write_data("init_pgd_va", lay.page_offset + k.init_pgd.root)
        k.write_data("next_ctx_id", 1)
        asi_tables.init_data(k, cfg)
        counts = {12: 0, 21: 0, 30: 0}
        for leaf in k.init_pgd.leaves(lay.page_offset, lay.page_offset + self.mem.size, nonpresent=True):
            counts[{4096: 12, SIZE_2M: 21, SIZE_1G: 30}[leaf.size]] += 1
        k.write_data("direct_pages_count_4k", counts[12])
        k.write_data("direct_pages_count_2m", counts[21])
        k.write_data("direct_pages_count_1g", counts[30])
        # the exception table, sorted (the linker sorted it)
        ex = self.image.extable
        if len(ex) > abi.EX_TABLE_MAX:
            raise ConfigError(f"exception table has {len(ex)} entries; EX_TABLE_MAX is {abi.EX_TABLE_MAX}")
        base = k.sym("__ex_table")
        for i, (frm, to, typ) in enumerate(ex):
            for j, v in enumerate((frm, to, typ)):
                k.write_q(base + 24 * i + 8 * j, v)
        k.write_data("__ex_table_count", len(ex))
        self._gdt_idt_tss()

    def _gdt_idt_tss(self) -> None:
        k, img = self.k, self.image
        # GDT (arch/x86/include/asm/segment.h layout)
        gdt = k.percpu_va("gdt_page")
        for i, v in abi.GDT.items():
            k.write_q(gdt + 8 * i, v)
        lo, hi = tss_descriptor(k.cea["tss"], abi.TSS_SIZE - 1)
        k.write_q(gdt + 8 * abi.GDT_ENTRY_TSS, lo)
        k.write_q(gdt + 8 * abi.GDT_ENTRY_TSS + 8, hi)
        # TSS: sp0 = the entry stack (regardless of task), IST stacks in the cea
        t = k.percpu_va("cpu_tss_rw")
        tss_pa = k.kva_to_pa(t)
        self.mem.write(tss_pa + abi.TSS_sp0, struct.pack("<Q", k.cea["entry_stack_top"]))
        for n, name in ((abi.IST_DF, "df"), (abi.IST_NMI, "nmi"), (abi.IST_DB, "db"), (abi.IST_MCE, "mce")):
            self.mem.write(tss_pa + abi.TSS_ist + 8 * (n - 1), struct.pack("<Q", k.cea[f"{name}_stack_top"]))
        self.mem.write(tss_pa + abi.TSS_iomap_base, struct.pack("<H", abi.TSS_SIZE))
        # IDT gates: interrupt gates, DPL 0, except #BP (DPL 3 so int3 works from user mode)
        idt = k.sym("idt_table")
        gates = {0: ("asm_exc_divide_error", 0, 0), 3: ("asm_exc_int3", 3, 0),
                 6: ("asm_exc_invalid_op", 0, 0), 8: ("asm_exc_double_fault", 0, abi.IST_DF),
                 13: ("asm_exc_general_protection", 0, 0), 14: ("asm_exc_page_fault", 0, 0),
                 abi.TIMER_VECTOR: ("asm_sysvec_apic_timer_interrupt", 0, 0)}
        for vec, (name, dpl, ist) in gates.items():
            lo, hi = gate_descriptor(img.symbols[name], abi.KERNEL_CS, dpl=dpl, ist=ist)
            k.write_q(idt + 16 * vec, lo)
            k.write_q(idt + 16 * vec + 8, hi)

    def _pti_user_tables(self, init: PageTable) -> None:
        """pti_init() and pti_finalize(): what the user PGD of init_mm maps
        (arch/x86/mm/pti.c).

        Every mm's user PGD gets a copy of its kernel half (pgd_ctor /
        clone_pgd_range).  The image was mapped without Global already
        (pti_set_kernel_image_nonglobal: _kprot); each PMD cloned below gets
        Global back, in the one entry both tables then share.
        """
        lay, k = self.lay, self.k
        # pti_user_pagetable_walk_*: new tables as _KERNPG_TABLE
        user = PageTable(self.mem, init.user_root, self.cfg.levels, name="kernel.user", owner="kernel",
                         **self.stub_table(table_flags=KERNPG_TABLE))
        top = "p4d" if self.cfg.levels == 5 else "pgd"
        # pti_clone_user_shared: the whole cpu_entry_area (pti_clone_p4d)
        user.share(init, lay.cpu_entry_area, 1 << 39, top)
        # ... and the per-CPU TSS page: SYSCALL entry stores the user RSP in tss.sp2
        tss_va = k.percpu_va("cpu_tss_rw")
        user.map(tss_va, k.kva_to_pa(tss_va), PAGE_SIZE, PAGE_KERNEL & ~G, page_size=PAGE_SIZE)
        # pti_clone_entry_text
        entry = lay.kernel_text + abi.KSECTIONS[".entry.text"]
        self._pti_clone_pmds(init, user, entry, entry + SIZE_2M)
        # pti_setup_espfix64: pti_clone_p4d(ESPFIX_BASE_ADDR)
        user.share(init, lay.espfix_base, 1 << 39, top)
        # vsyscall=xonly (the default): nothing to clone
        # pti_finalize -> pti_clone_kernel_text: [_text, __end_rodata_aligned)
        # when pti_kernel_image_global_ok() (pti=auto without PCID).  Its
        # set_memory_global(_text.._etext) changes nothing here: those PMDs
        # are Global already.
        if self.cfg.pti_global_text:
            text = lay.kernel_text + abi.KSECTIONS[".text"]
            self._pti_clone_pmds(init, user, text, lay.kernel_text + abi.KSECTIONS[".rodata"] + SIZE_2M)

    def _pti_clone_pmds(self, init: PageTable, user: PageTable, start: int, end: int) -> None:
        """pti_clone_pgtable(start, end, PTI_CLONE_PMD): each PMD of the kernel
        table gets Global (X86_FEATURE_PGE: "it is effectively global, so set
        it as global in both copies") and is copied into the user table, so
        both share what is below it."""
        for va in range(start, end, SIZE_2M):
            shift, epa, e = init.lookup(va)
            if shift != 21 or not e & P:
                raise ConfigError(f"PTI clone: {va:#x} is not a present PMD in the kernel image")
            self.mem.write_u64(epa, e | G)
            user.share(init, va, SIZE_2M, "pmd")

    # -- processes -------------------------------------------------------------------
    def add_process(self, name: str, image: Image) -> Process:
        k, cfg, lay, mem = self.k, self.cfg, self.lay, self.mem
        i = len(k.processes)
        if i >= abi.MAX_TASKS:
            raise ConfigError(f"at most {abi.MAX_TASKS} processes")
        if "_start" not in image.symbols:
            raise ConfigError(f"program {name!r} has no _start label")
        owner = f"{name}"
        pgd = self.new_pgd(f"{name}.pgd", cfg.pti)
        init = k.init_pgd
        # pgd_ctor: the kernel half (and, with PTI, the user PGD's kernel half)
        half = PAGE_SIZE // 2
        mem.write(pgd.root + half, mem.read(init.root + half, half))
        if cfg.pti:
            mem.write(pgd.user_root + half, mem.read(init.user_root + half, half))
        mm = k.sym("mms") + i * abi.MM_SIZE
        task = k.sym("tasks") + i * abi.TASK_SIZE
        vmas = []
        # the program's sections: loaded now (like execve), bss and stack on demand
        prots = {".text": (abi.PROT["PROT_READ"] | abi.PROT["PROT_EXEC"], P | US | A),
                 ".rodata": (abi.PROT["PROT_READ"], P | US | A | NX),
                 ".data": (abi.PROT["PROT_READ"] | abi.PROT["PROT_WRITE"], P | RW | US | A | D | NX)}
        for sname, sec in sorted(image.sections.items(), key=lambda kv: kv[1].base):
            size = (max(sec.size, 1) + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
            if sname == ".bss":
                vmas.append((sec.base, sec.base + size, 3, 0))
                continue
            uprot, flags = prots[sname]
            if not cfg.nx:
                flags &= ~NX
            for off in range(0, size, PAGE_SIZE):
                f = self._alloc(FrameKind.USER, owner)
                chunk = sec.data[off:off + PAGE_SIZE]
                if chunk:
                    mem.write(f, chunk)
                pgd.map(sec.base + off, f, PAGE_SIZE, flags, page_size=PAGE_SIZE)
            vmas.append((sec.base, sec.base + size, uprot, 0))
        if ".data" not in image.sections:
            # USER_DATA: a writable page every program has
            f = self._alloc(FrameKind.USER, owner)
            pgd.map(abi.USER_DATA, f, PAGE_SIZE, P | RW | US | A | D | (NX if cfg.nx else 0))
            vmas.append((abi.USER_DATA, abi.USER_DATA + PAGE_SIZE, 3, 0))
        vmas.append((abi.USER_STACK_TOP - abi.USER_STACK_SIZE, abi.USER_STACK_TOP, 3, 0))
        asi_pgd = asi_tables.restricted_pgd(self, name, pgd, i) if cfg.asi_on else None
        # mm_struct
        w = k.write_q
        w(mm + abi.MM["pgd"], pgd.root)
        w(mm + abi.MM["pgd_va"], lay.page_offset + pgd.root)
        ctx = k.read_data("next_ctx_id")
        k.write_data("next_ctx_id", ctx + 1)
        w(mm + abi.MM["ctx_id"], ctx)
        w(mm + abi.MM["tlb_gen"], 1)
        w(mm + abi.MM["asi_pgd"], asi_pgd or 0)
        w(mm + abi.MM["asi_pgd_va"], lay.page_offset + asi_pgd if asi_pgd else 0)
        w(mm + abi.MM["mmap_base"], abi.MMAP_BASE)
        w(mm + abi.MM["nr_vmas"], len(vmas))
        for j, (start, end, prot, flags) in enumerate(vmas):
            v = mm + abi.MM["vmas"] + j * abi.VMA_SIZE
            for fld, val in (("start", start), ("end", end), ("prot", prot), ("flags", flags),
                             ("file", 0), ("pgoff", 0)):
                w(v + abi.VMA[fld], val)
        # the console file, shared by fds 0-2 of every process
        console = k.sym("files")
        if k.read_q(console + abi.FILE["type"]) == 0:
            w(console + abi.FILE["type"], abi.FILE_CONSOLE)
        w(console + abi.FILE["refs"], k.read_q(console + abi.FILE["refs"]) + 3)
        # task_struct, with a kernel stack that returns to user mode through ret_from_fork
        top = self.stack_tops[i]
        pid = i + 1
        w(task + abi.TASK["state"], abi.TASK_RUNNABLE)
        w(task + abi.TASK["pid"], pid)
        w(task + abi.TASK["mm"], mm)
        w(task + abi.TASK["stack_top"], top)
        comm = name.encode()[:15]
        mem.write(k.kva_to_pa(task + abi.TASK["comm"]), comm + bytes(16 - len(comm)))
        for fd in range(3):
            w(task + abi.TASK["files"] + 8 * fd, console)
        for r, (cur, mx) in enumerate(abi.init_rlimits(cfg.ram)):
            w(task + abi.TASK["rlim"] + 16 * r, cur)
            w(task + abi.TASK["rlim"] + 16 * r + 8, mx)
        regs = top - abi.PT_SIZE
        entry = image.symbols["_start"]
        frame = {"rip": entry, "cs": abi.USER_CS, "eflags": 0x202, "rsp": abi.USER_STACK_TOP - 8,
                 "ss": abi.USER_DS, "orig_rax": 0xFFFFFFFFFFFFFFFF}
        stack_pa = self._vmalloc_pa(init, regs)
        for reg, off in abi.PT.items():
            mem.write_u64(stack_pa + off, frame.get(reg, 0))
        sp = regs - 7 * 8                    # six callee-saved registers, then the return address
        mem.write(self._vmalloc_pa(init, sp), bytes(48) + struct.pack("<Q", k.sym("ret_from_fork")))
        w(task + abi.TASK["sp"], sp)
        k.write_data("nr_tasks", i + 1)
        proc = Process(i, pid, name, image, task, mm, pgd.root, asi_pgd, top, entry)
        k.processes.append(proc)
        return proc

    def _vmalloc_pa(self, init: PageTable, va: int) -> int:
        hit = init.lookup(va)
        if hit is None or not hit[2] & P:
            raise AssertionError(f"{va:#x} not mapped")
        s, _, e = hit
        return (e & ADDR_MASK & ~((1 << s) - 1)) | (va & ((1 << s) - 1))

    def finish(self) -> None:
        """Per-CPU state for the first process, and ASI's boot-time direct map."""
        k = self.k
        if not k.processes:
            raise ConfigError("the machine has no process to run")
        first = k.processes[0]
        k.write_percpu("pcpu_current_task", first.task)
        k.write_percpu("pcpu_top_of_stack", first.stack_top)
        k.write_percpu("tlbstate_loaded_mm", first.mm)
        k.write_percpu("tlbstate_loaded_mm_asid", 0)
        k.write_percpu("tlbstate_next_asid", 1)
        k.write_percpu("tlbstate_ctxs", k.read_q(first.mm + abi.MM["ctx_id"]))
        k.write_q(k.percpu_va("tlbstate_ctxs") + 8, k.read_q(first.mm + abi.MM["tlb_gen"]))
        if self.cfg.asi_nonsensitive:
            asi_tables.boot_direct_map(self)
