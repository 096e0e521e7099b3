# Address-space isolation, after the 2025 RFCv2 ("[PATCH RFC v2 00/29]
# Address Space Isolation (ASI)", arch/x86/mm/asi.c there).
#
# Each process has a restricted PGD (mm->asi_pgd, an order-1 allocation) that
# shares the global non-sensitive kernel tables (kernel image, per-CPU data,
# cpu_entry_area, espfix, kernel stacks, the non-sensitive part of the direct
# map) and mirrors the process's user half (the userspace class).  Its PCID is
# kern_pcid(asid) | (class + 1) << 9: two bits just below PTI's user bit.
#
# asi_enter(mm) sets the task's target and loads the restricted CR3 (the
# "critical section" starts); asi_relax() ends the critical section but keeps
# the restricted tables; asi_exit() loads the full kernel CR3.  A kernel #PF
# while restricted exits and retries if the access now succeeds.  Interrupts
# stay on whatever tables are loaded; in a critical section they count their
# nesting and the outermost exit re-enters the target (asi_intr_exit).

.text

# asi_enter(mm)
asi_enter:
    GET_CURRENT rax
    mov qword ptr [rax + TASK_asi_target], rdi
    jmp __asi_enter

# __asi_enter(): load the target's restricted CR3 unless already loaded.  The
# CR3 write never sets NOFLUSH (RFCv2 [20/29]).
__asi_enter:
    GET_CURRENT rax
    mov rdi, qword ptr [rax + TASK_asi_target]
    test rdi, rdi
    jz .Lae_done
    cmp qword ptr gs:[asi_curr], rdi
    je .Lae_done
    mov qword ptr gs:[asi_curr], rdi
    mov rax, qword ptr [rdi + MM_asi_pgd]
    cmp qword ptr [feature_pcid], 0
    je .Lae_write
    mov rcx, qword ptr gs:[tlbstate_loaded_mm_asid]
    lea rax, [rax + rcx + 1]
    mov rcx, asi_class_id
    mov rcx, qword ptr [rcx]
    inc rcx
    shl rcx, ASI_PCID_SHIFT
    or rax, rcx
.Lae_write:
    .cr3_write
    mov cr3, rax
    nop                         # not a jump target: the write is seen where the next block starts
.Lae_done:
    ret

# asi_relax(): leave the critical section, stay on the restricted tables
asi_relax:
    GET_CURRENT rax
    mov qword ptr [rax + TASK_asi_target], 0
    ret

# asi_exit(): back to the full kernel page table of the loaded mm
asi_exit:
    cmp qword ptr gs:[asi_curr], 0
    je .Lax_done
    mov rax, qword ptr gs:[tlbstate_loaded_mm]
    mov rax, qword ptr [rax + MM_pgd]
    cmp qword ptr [feature_pcid], 0
    je .Lax_write
    mov rcx, qword ptr gs:[tlbstate_loaded_mm_asid]
    lea rax, [rax + rcx + 1]
.Lax_write:
    .cr3_write
    mov cr3, rax
    mov qword ptr gs:[asi_curr], 0
    inc qword ptr [asi_exits]
.Lax_done:
    ret

# A fault that exits ASI from inside a critical section (nesting depth 1) is
# a sensitive access the section must not make: abort the section, as the
# 2019 design's fault_abort did, so the retry runs unrestricted.
asi_abort_critical_section:
    GET_CURRENT rax
    cmp qword ptr [rax + TASK_asi_target], 0
    je .Laa_done
    cmp qword ptr [rax + TASK_asi_nest], 1
    jne .Laa_done
    .hook asi_abort
asi_critical_section_aborted:
    mov qword ptr [rax + TASK_asi_target], 0
    mov qword ptr [rax + TASK_asi_nest], 0
.Laa_done:
    ret

# asi_intr_enter / asi_intr_exit: interrupt nesting inside a critical section
asi_intr_enter:
    GET_CURRENT rax
    cmp qword ptr [rax + TASK_asi_target], 0
    je .Laie_done
    inc qword ptr [rax + TASK_asi_nest]
.Laie_done:
    ret

asi_intr_exit:
    GET_CURRENT rax
    cmp qword ptr [rax + TASK_asi_target], 0
    je .Laix_done
    dec qword ptr [rax + TASK_asi_nest]
    jnz .Laix_done
    jmp __asi_enter
.Laix_done:
    ret

# prepare_exit_to_usermode: with PTI the user PGD pairs with the full kernel
# PGD, so the kernel leaves ASI before returning to user mode.
prepare_exit_to_usermode:
    jmp asi_exit

# asi_map_page(pa): map the page's direct-map address into the global
# non-sensitive page table (its tables are allocated sensitive: RFCv2 does so
# to avoid recursion).  Only adds a mapping: no TLB flush.
asi_map_page:
    push rbx
    mov rbx, rdi
    mov rdi, asi_global_pgd_va
    mov rdi, qword ptr [rdi]
    mov rsi, rbx
    PA_TO_VA rsi
    mov edx, PAGE_SHIFT
    mov ecx, 2
    xor r8, r8
    call walk_to
    test rax, rax
    jz .Lam_done
    mov rcx, rbx
    or rcx, __PAGE_KERNEL_NOGLOBAL     # PAGE_KERNEL without Global (ASI), and NX:
    bts rcx, _PAGE_BIT_NX
    SET_ENTRY rax, rcx
.Lam_done:
    pop rbx
    ret

# asi_unmap_page(pa): remove it and flush (flush_tlb_kernel_range)
asi_unmap_page:
    push rbx
    mov rbx, rdi
    PA_TO_VA rbx
    mov rdi, asi_global_pgd_va
    mov rdi, qword ptr [rdi]
    mov rsi, rbx
    mov edx, PAGE_SHIFT
    xor ecx, ecx
    xor r8, r8
    call walk_to
    test rax, rax
    jz .Lau_done
    SET_ENTRY rax, 0
    mov rdi, rbx
    mov esi, PAGE_SIZE
    .alternative !INJECT_ASI_UNMAP_NOFLUSH, .Lau_done
    call flush_tlb_kernel_range
.Lau_done:
    pop rbx
    ret
