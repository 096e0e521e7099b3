# Kernel data.  Python (the boot loader) fills the values marked "boot".

.data
page_offset_base:       .quad 0     # boot: PAGE_OFFSET (__va = pa + page_offset_base)
pgtable_levels:         .quad 4     # boot: 4 or 5 (the image is linked for one: PGDIR_SHIFT)
feature_pti:            .quad 0     # boot: X86_FEATURE_PTI
feature_pcid:           .quad 0     # boot: X86_FEATURE_PCID (CR4.PCIDE on)
feature_asi:            .quad 0     # boot: address-space isolation on (any design)
asi_design:             .quad 0     # boot: ASI_DESIGN_OFF, _ON, _RFC2019 or _RFC2025 (docs/asi.md)
feature_asi_global:     .quad 0     # boot: non-sensitive pages live in asi.global (on, rfc2025)
asi_maps_user:          .quad 0     # boot: the restricted PGD mirrors the user half (asi_maps_user_addr)
feature_kernel_nonglobal: .quad 0   # boot: kernel PTEs lack _PAGE_GLOBAL (PTI, or the 2025 ASI)
feature_invpcid:        .quad 0     # boot: INVPCID usable
feature_nx:             .quad 0     # boot: EFER.NXE
feature_smap:           .quad 0     # boot: CR4.SMAP
panic_flag:             .quad 0
nr_tasks:               .quad 0     # boot
next_ctx_id:            .quad 0     # boot: ctx_id of the next new mm
init_pgd_va:            .quad 0     # boot: swapper_pg_dir (direct-map address)
asi_global_pgd_va:      .quad 0     # boot: the global non-sensitive PGD
asi_class_id:           .quad 1     # boot: ASI class of the per-process domains

# /proc/meminfo DirectMap* and the vm events (arch/x86/mm/pat/set_memory.c)
direct_pages_count_4k:  .quad 0     # boot
direct_pages_count_2m:  .quad 0     # boot
direct_pages_count_1g:  .quad 0     # boot
direct_map_level2_splits: .quad 0
direct_map_level3_splits: .quad 0
direct_map_level2_collapses: .quad 0 # collapse=on: PTE tables folded into 2M pages (41d88484c71c)
direct_map_level3_collapses: .quad 0 # and PMD tables into 1G pages
nr_secret_pages:        .quad 0
asi_exits:              .quad 0     # every asi_exit() that switched CR3
# the same exits by reason (enum asi_exit_reason order: ASI_EXIT_*)
asi_exit_reasons:
asi_fault_exits:        .quad 0     # a kernel #PF in the restricted table
asi_user_return_exits:  .quad 0     # on the way back to user mode (today's model)
asi_context_switch_exits: .quad 0   # in context_switch()
asi_tlb_flush_exits:    .quad 0     # before a full flush of the loaded mm (flush_tlb_mm_local)
asi_other_exits:        .quad 0     # any other: SYS_probe's full-table probes, the 2019 RFC's
                                    # interrupts and the end of its sessions
asi_flush_counts:       .zero 8 * 3 # ASI_FLUSH_IBPB, _RSB, _L1D issued by the taint policy
asi_critical_findings:  .quad 0     # sensitive accesses from a critical section (the RFC's VM_WARN)
asi_kvm_entries:        .quad 0     # VM entries made from the KVM class's restricted space
asi_taint_policy:       .zero 24 * 2 # boot: {prevent_control, protect_data, set} per class

# the unmapped allocator (unmapped.S, docs/frag.md)
unmapped_strategy:      .quad 0     # boot: UNMAPPED_PAGE, _PMD_CACHE, _RESERVED or _ALLOC (unmapped=)
unmapped_collapse_on:   .quad 0     # boot: collapse=on
nr_unmapped_blocks:     .quad 0     # 2 MiB blocks out of the direct map in its caches (boot: the pool's)
# its blocks: {pa (0: a free slot), owner, pages in use, 512-bit map}; boot: the reserved pool's
unmapped_blocks:        .zero UBLK_SIZE * UNMAPPED_MAX_BLOCKS

# The fault matrix's execute probe of kernel data and of its direct-map alias
# (emu/tools/matrix.py): a 'ret', so that a fetch the page tables allow
# (nx=off) is seen to run and return, whatever the rest of .data holds.
probe_data_ret:         .byte 0xc3

# the IDT (idt_table); the CPU reads it through its read-only alias in the
# cpu_entry_area (idt_map_in_cea)
.align 4096
idt_table:              .zero 4096

.bss
tasks:                  .zero TASK_SIZE * MAX_TASKS
mms:                    .zero MM_SIZE * MAX_TASKS
files:                  .zero FILE_SIZE * MAX_FILES
# syscall scratch: pt_regs of the syscall being handled (project calls return
# extra values through it)
cur_syscall_regs:       .zero 8

.rodata
# exception table (Linux _ASM_EXTABLE), filled by the loader from .extable:
# sorted entries of {insn, fixup, type}; type 1 = a call whose target faulted on
# fetch (matched by the return address on the stack)
__ex_table:             .zero 24 * EX_TABLE_MAX
__ex_table_count:       .quad 0

# ---------------------------------------------------------------------------------
# The per-CPU area, zero-based like Linux's .data..percpu: symbols are offsets
# from the GS base.
.section .data..percpu
cpu_tss_rw:             .zero 4096           # page 0: x86_hw_tss; mapped for PTI
pcpu_current_task:      .quad 0              # page 1
pcpu_top_of_stack:      .quad 0              # cpu_current_top_of_stack
tlbstate_loaded_mm:     .quad 0
tlbstate_loaded_mm_asid: .quad 0
tlbstate_user_pcid_flush_mask: .quad 0       # bit n: flush user PCID of kernel PCID n
tlbstate_next_asid:     .quad 1
tlbstate_invalidate_other: .quad 0
tlbstate_ctxs:          .zero 16 * 6         # TLB_NR_DYN_ASIDS x {ctx_id, tlb_gen}
asi_curr:               .quad 0              # the mm whose restricted PGD is loaded
asi_curr_class:         .quad 0              # the class it is loaded for (ASI_CLASS_*: its PCID bits)
asi_taints:             .quad 0              # the 2025 RFC's asi_taints (ASI_TAINT_*)
asi2019_state:          .quad 0              # the 2019 RFC's cpu_asi_session: state,
asi2019_mm:             .quad 0              #   the mm whose restricted table the session uses,
asi2019_original_cr3:   .quad 0              #   the CR3 to restore,
asi2019_abort_depth:    .quad 0              #   nested handlers that aborted it,
asi2019_cr3:            .quad 0              #   and the restricted CR3 it loaded
irq_count:              .quad 0
last_irq_cr3:           .quad 0
irq_touch_addr:         .quad 0              # tests: an address the timer handler reads
pcpu_scratch:           .zero 8
tlb_watch_return:       .quad 0              # isoemu: nonzero while the TLB model holds stale
                                             # records (emu/linux/tlbcheck.py): the SYSRET path's
                                             # return_to_user_sysret hook is reached only then
.align 4096
gdt_page:               .zero 4095           # page 2: the GDT (read-only alias in the CEA)
# past the GDT's limit (GDT_ENTRIES * 8 - 1), a byte the CPU never reads: a
# 'ret', the fault matrix's execute probe of the cpu_entry_area's GDT page
probe_cea_ret:          .byte 0xc3
entry_stack_page:       .zero 4096           # page 3: entry (trampoline) stack
