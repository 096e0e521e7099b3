# Address-space isolation: the designs of docs/asi.md, chosen at boot by the
# asi_design word (the asi= machine switch).
#
# ASI_DESIGN_ON and ASI_DESIGN_RFC2025 share the 2025 RFC v2's mechanics
# ("[PATCH RFC v2 00/29] Address Space Isolation (ASI)", arch/x86/mm/asi.c
# there).  Each process has a restricted PGD (mm->asi_pgd, an order-1
# allocation) that shares the global non-sensitive kernel tables (kernel
# image, per-CPU data, cpu_entry_area, espfix, vmalloc space, the
# non-sensitive part of the direct map) and mirrors the process's user half
# (the userspace class).  Its PCID is kern_pcid(asid) | (class + 1) << 9: two
# bits just below PTI's user bit.  asi_enter(mm) sets the task's target and
# loads the restricted CR3 (the "critical section" starts); asi_relax() ends
# the critical section but keeps the restricted tables; asi_exit() loads the
# full kernel CR3.  Neither CR3 write sets NOFLUSH (RFC v2 20/29: "we
# currently never set the noflush bit in CR3 for ASI transitions").  A kernel
# #PF while restricted exits and retries if the access now succeeds.
# Interrupts stay on whatever tables are loaded; in a critical section they
# count their nesting and the outermost exit re-enters the target.
#   ON (today's model): PTI keeps its user/kernel tables; every syscall enters
#   and relaxes, and leaves ASI before returning (the user PGD pairs with the
#   full kernel PGD).
#   RFC2025: PTI is off (RFC v2 28/29); user code runs on the restricted table:
#   the critical section begins on exit to user mode (asi_enter_userspace) and
#   ends at the next syscall (asi_relax), RFC v2 25/29.  Transitions apply the
#   taint policy (RFC v2 27/29): IBPB and the RSB fill when the control taints
#   say so, the L1D flush when the data taints do.
#
# ASI_DESIGN_RFC2019 is the 2019 RFC ("[RFC v2 00/27] Kernel Address Space
# Isolation", Alexandre Chartre): PTI as configured, and a restricted page
# table per process for the KVM class: the kernel image, the cpu_entry_area
# and the current stack, which asi_enter maps and asi_exit unmaps.  Entering
# saves the current CR3 and loads the restricted PGD with load_cr3() (PCID 0,
# flushing); any interrupt or exception aborts the session at its entry by
# restoring the saved CR3, and the session ends when the outermost handler
# returns (asi_start_abort / asi_finish_abort); a fault the session caused is
# reported handled, so the access is retried on the full tables.

.text

# --- the common entry points ------------------------------------------------------

# asi_enter(mm): the per-process domain (the userspace class; the 2019 RFC's
# KVM-class session)
asi_enter:
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    je asi2019_enter
    GET_CURRENT rax
    mov rcx, qword ptr [asi_class_id]
    jmp .Laec_set
# asi_enter_class(mm, class): the 2025 mechanics' asi_enter(asi) for mm's
# domain of a class (the RFC's mm->asi[class]); the task's target remembers
# both, so an interrupt's asi_intr_exit re-enters the same class.  Like
# asi_enter, clobbers rax, rcx and rdi only.
asi_enter_class:
    GET_CURRENT rax
    mov rcx, rsi
.Laec_set:
    mov qword ptr [rax + TASK_asi_target], rdi
    mov qword ptr [rax + TASK_asi_class], rcx
    jmp __asi_enter

# asi_relax(): leave the critical section, stay on the restricted tables
asi_relax:
    GET_CURRENT rax
    mov qword ptr [rax + TASK_asi_target], 0
    ret

# asi_exit(reason): back to the full kernel page table of the loaded mm;
# reason is an ASI_EXIT_* (counted in asi_exit_reasons when CR3 changes)
asi_exit:
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    je asi2019_exit
    cmp qword ptr gs:[asi_curr], 0
    je .Lax_done
    push rdi
    .alternative ASI_RFC2025, .Lax_cr3
    mov rdi, -1                         # maybe_flush_control(NULL): all control taints
    call asi_maybe_flush_control
    or qword ptr gs:[asi_taints], ASI_TAINT_KERNEL_DATA
.Lax_cr3:
    mov rax, qword ptr gs:[tlbstate_loaded_mm]
    mov rax, qword ptr [rax + MM_pgd]
    cmp qword ptr [feature_pcid], 0
    je .Lax_write
    mov rcx, qword ptr gs:[tlbstate_loaded_mm_asid]
    lea rax, [rax + rcx + 1]
    .alternative !INJECT_ASI_EXIT_NOFLUSH, .Lax_noflush
.Lax_write:
    .cr3_write
    mov cr3, rax
    jmp .Lax_written
.Lax_noflush:
    bts rax, X86_CR3_PCID_NOFLUSH_BIT
    .cr3_write noflush
    mov cr3, rax
    nop                         # not a jump target: the write is seen where the next block starts
.Lax_written:
    mov qword ptr gs:[asi_curr], 0
    pop rdi
    call asi_count_exit
.Lax_done:
    ret

# --- the KVM class ---------------------------------------------------------------
# kvm_asi_enter(): before each VM entry, as the 2025 RFC v2's vcpu_enter_guest
# (arch/x86/kvm/x86.c there) calls asi_enter() just before entering the
# guest: the KVM class's domain of the VMM's mm, its critical section running
# through the guest until kvm_asi_relax().  The 2019 RFC starts a session
# instead (its KVM patches enter the KVM address space on the way into the
# guest, so that the VM-exit handlers run isolated), which the exit handlers'
# first access outside its table aborts.  Counts the entries made restricted (asi_kvm_entries).
kvm_asi_enter:
    .alternative !INJECT_ASI_KVM_NO_ENTER, .Lkae_done
    mov rax, qword ptr [asi_design]
    cmp rax, ASI_DESIGN_OFF
    je .Lkae_done
    inc qword ptr [asi_kvm_entries]
    GET_CURRENT rdi
    mov rdi, qword ptr [rdi + TASK_mm]
    cmp rax, ASI_DESIGN_RFC2019
    je asi2019_enter
    mov esi, ASI_CLASS_KVM
    jmp asi_enter_class
.Lkae_done:
    ret

# kvm_asi_relax(): right after the VM exit (the RFC's asi_relax() after
# vmx_vcpu_run returns): the exit handlers run relaxed, still restricted, and
# leave through a #PF exit when they touch sensitive memory.  Nothing with
# the 2019 RFC (no critical section; an exception aborts the session).
kvm_asi_relax:
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    je .Lkar_done
    jmp asi_relax
.Lkar_done:
    ret

# kvm_asi_exit(): KVM_RUN returns to the VMM.  The 2019 RFC ends a session
# still active (ASI_EXIT_MISC); the 2025 mechanics leave it to the way back to
# user mode (today's model exits there, rfc2025 enters the userspace class).
kvm_asi_exit:
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    jne .Lkax_done
    mov edi, ASI_EXIT_MISC
    jmp asi2019_exit
.Lkax_done:
    ret

# asi_count_exit(reason)
asi_count_exit:
    inc qword ptr [asi_exits]
    mov rax, asi_exit_reasons
    inc qword ptr [rax + rdi * 8]
    ret

# asi_intr_enter() / asi_intr_exit(): at every exception and interrupt entry
# (idtentry_body, after the PTI switch; r12 holds the handler) and before its
# return
asi_intr_enter:
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    je asi2019_intr_enter
    GET_CURRENT rax
    cmp qword ptr [rax + TASK_asi_target], 0
    je .Laie_done
    inc qword ptr [rax + TASK_asi_nest]
.Laie_done:
    ret

asi_intr_exit:
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    je asi2019_finish_abort
    GET_CURRENT rax
    cmp qword ptr [rax + TASK_asi_target], 0
    je .Laix_done
    dec qword ptr [rax + TASK_asi_nest]
    jnz .Laix_done
    jmp __asi_enter
.Laix_done:
    ret

# asi_syscall_enter() at the start of do_syscall_64: today's model enters the
# process's restricted space and relaxes at once; the 2025 RFC ends the user
# critical section (syscall_enter_from_user_mode: asi_relax)
asi_syscall_enter:
    mov rax, qword ptr [asi_design]
    cmp rax, ASI_DESIGN_RFC2025
    je asi_relax
    cmp rax, ASI_DESIGN_ON
    jne .Lase_done
    GET_CURRENT rdi
    mov rdi, qword ptr [rdi + TASK_mm]
    call asi_enter
    jmp asi_relax
.Lase_done:
    ret

# asi_syscall_exit() at the end of do_syscall_64: today's model leaves ASI (the
# PTI user PGD pairs with the full kernel PGD); the 2025 RFC enters the
# userspace domain (syscall_exit_to_user_mode: asi_enter_userspace)
asi_syscall_exit:
    mov rax, qword ptr [asi_design]
    cmp rax, ASI_DESIGN_RFC2025
    je asi_enter_userspace
    cmp rax, ASI_DESIGN_ON
    jne .Lasx_done
    mov edi, ASI_EXIT_USER_RET
    jmp asi_exit
.Lasx_done:
    ret

# prepare_exit_to_usermode, on the IRET path (exceptions and interrupts from
# user mode, ret_from_fork, syscalls that cannot SYSRET)
prepare_exit_to_usermode:
    mov rax, qword ptr [asi_design]
    cmp rax, ASI_DESIGN_RFC2025
    je .Lpeu_2025
    cmp rax, ASI_DESIGN_ON
    jne .Lpeu_done
    mov edi, ASI_EXIT_USER_RET
    jmp asi_exit
.Lpeu_2025:
    # tense: an exception or interrupt interrupted the user critical section and
    # asi_intr_exit re-entered it; relaxed: a new task, or a syscall that already
    # entered (then target is set): enter the userspace domain
    GET_CURRENT rax
    cmp qword ptr [rax + TASK_asi_target], 0
    je asi_enter_userspace
.Lpeu_done:
    ret

# asi_enter_userspace(): the current mm's userspace-class domain
asi_enter_userspace:
    GET_CURRENT rdi
    mov rdi, qword ptr [rdi + TASK_mm]
    jmp asi_enter

# --- 2025 RFC v2 mechanics (today's model and rfc2025) ----------------------------

# __asi_enter(): load the target's restricted CR3 unless already loaded.  The
# CR3 write never sets NOFLUSH (build_cr3_pcid(..., false)).  rfc2025 brackets
# it with the taint policy: maybe_flush_control before, maybe_flush_data after,
# then the class's taints are set.
__asi_enter:
    GET_CURRENT rax
    mov rdi, qword ptr [rax + TASK_asi_target]
    test rdi, rdi
    jz .Lae_done
    mov rcx, qword ptr [rax + TASK_asi_class]
    cmp qword ptr gs:[asi_curr], rdi
    jne .Lae_load
    cmp qword ptr gs:[asi_curr_class], rcx
    je .Lae_done
.Lae_load:
    mov qword ptr gs:[asi_curr], rdi
    mov qword ptr gs:[asi_curr_class], rcx
    push rcx
    push rdi
    .alternative ASI_RFC2025, .Lae_cr3
    mov rdi, rcx
    call asi_maybe_flush_control
.Lae_cr3:
    mov rdi, qword ptr [rsp]
    mov rax, qword ptr [rdi + MM_asi_pgd]
    cmp qword ptr [feature_pcid], 0
    je .Lae_write
    mov rcx, qword ptr gs:[tlbstate_loaded_mm_asid]
    lea rax, [rax + rcx + 1]
    mov rcx, qword ptr [rsp + 8]
    inc rcx
    shl rcx, ASI_PCID_SHIFT
    or rax, rcx
.Lae_write:
    .cr3_write
    mov cr3, rax
    pop rdi                     # (not a jump target: the write is seen where the next block starts)
    pop rdi                     # the class
    .alternative ASI_RFC2025, .Lae_done
    push rdi
    call asi_maybe_flush_data
    pop rdi
    imul rdi, rdi, 24
    mov rax, asi_taint_policy
    mov rax, qword ptr [rax + rdi + 16]
    or qword ptr gs:[asi_taints], rax
.Lae_done:
    ret

# asi_maybe_flush_control(class, or -1 going to the unrestricted space):
# "backwards-looking": flush branch-predictor state the next domain must not
# inherit (IBPB, then the RSB fill) if the taints call for it
asi_maybe_flush_control:
    mov rax, qword ptr gs:[asi_taints]
    cmp rdi, -1
    je .Lmfc_all
    imul rdi, rdi, 24
    mov rcx, asi_taint_policy
    and rax, qword ptr [rcx + rdi]       # prevent_control
    jmp .Lmfc_test
.Lmfc_all:
    and rax, ASI_TAINTS_CONTROL_MASK
.Lmfc_test:
    test rax, rax
    jz .Lmfc_done
    mov edi, ASI_FLUSH_IBPB
    call asi_uarch_flush
    mov edi, ASI_FLUSH_RSB
    call asi_uarch_flush
    and qword ptr gs:[asi_taints], NOT_ASI_TAINTS_CONTROL_MASK
.Lmfc_done:
    ret

# asi_maybe_flush_data(class): "forwards-looking": flush data the previous
# domains may have left in the L1D if the next domain must not see it
asi_maybe_flush_data:
    imul rdi, rdi, 24
    mov rcx, asi_taint_policy
    mov rax, qword ptr gs:[asi_taints]
    and rax, qword ptr [rcx + rdi + 8]   # protect_data
    jz .Lmfd_done
    mov edi, ASI_FLUSH_L1D
    call asi_uarch_flush
    and qword ptr gs:[asi_taints], NOT_ASI_TAINTS_DATA_MASK
.Lmfd_done:
    ret

# asi_handle_switch_mm(): on a context switch to another mm, the per-domain
# taints become "other MM" taints
asi_handle_switch_mm:
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2025
    jne .Lhsm_done
    mov rax, qword ptr gs:[asi_taints]
    test rax, ASI_TAINTS_CONTROL_MASK
    jz .Lhsm_data
    or qword ptr gs:[asi_taints], ASI_TAINT_OTHER_MM_CONTROL
.Lhsm_data:
    test rax, ASI_TAINTS_DATA_MASK
    jz .Lhsm_clear
    or qword ptr gs:[asi_taints], ASI_TAINT_OTHER_MM_DATA
.Lhsm_clear:
    and qword ptr gs:[asi_taints], NOT_ASI_TAINTS_GUEST_USER_MASK
.Lhsm_done:
    ret

# asi_uarch_flush(kind): one flush of the taint policy.  Linux writes
# MSR_IA32_PRED_CMD (IBPB) and runs l1tf_flush() (L1D); the stub counts them
# (Python observes the hook); the RSB fill is the real loop.
    .hook asi_flush
asi_uarch_flush:
    mov rax, asi_flush_counts
    inc qword ptr [rax + rdi * 8]
    cmp edi, ASI_FLUSH_RSB
    je fill_return_buffer
    ret

# fill_return_buffer: __FILL_RETURN_BUFFER(reg, RSB_CLEAR_LOOPS)
# (arch/x86/include/asm/nospec-branch.h, arch/x86/lib/retpoline.S)
fill_return_buffer:
    mov eax, RSB_CLEAR_LOOPS / 2
.Lrsb_loop:
    call .Lrsb_slot1
    int3
.Lrsb_slot1:
    call .Lrsb_slot2
    int3
.Lrsb_slot2:
    add rsp, 16
    dec eax
    jnz .Lrsb_loop
    lfence
    ret

# asi_critical_fault() -> 1 if the fault being handled interrupted a critical
# section directly (nesting depth 1).  The RFC warns (VM_WARN_ONCE in fault.c:
# "ASI-sensitive data access from critical section") and would re-enter at the
# fault's return, faulting again; the stub ends the section so the retry runs
# unrestricted.
asi_critical_fault:
    xor eax, eax
    GET_CURRENT rcx
    cmp qword ptr [rcx + TASK_asi_target], 0
    je .Lacf_done
    cmp qword ptr [rcx + TASK_asi_nest], 1
    jne .Lacf_done
    .hook asi_abort
asi_critical_section_aborted:
    mov qword ptr [rcx + TASK_asi_target], 0
    mov qword ptr [rcx + TASK_asi_nest], 0
    mov eax, 1
.Lacf_done:
    ret

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

# --- the 2019 RFC ------------------------------------------------------------------

# asi2019_enter(mm): the session starts.  original_cr3 is __get_current_cr3_fast()
# (the loaded mm's PGD with its kernel PCID, no NOFLUSH: restoring it flushes);
# the current stack is mapped, the state set active, then load_cr3(asi->pgd):
# PCID 0, a flushing write.
asi2019_enter:
    cmp qword ptr gs:[asi2019_state], ASI_SESSION_STATE_INACTIVE
    jne .La19e_done
    push rbx
    mov rbx, rdi
    mov rax, qword ptr gs:[tlbstate_loaded_mm]
    mov rax, qword ptr [rax + MM_pgd]
    cmp qword ptr [feature_pcid], 0
    je .La19e_orig
    mov rcx, qword ptr gs:[tlbstate_loaded_mm_asid]
    lea rax, [rax + rcx + 1]
.La19e_orig:
    mov qword ptr gs:[asi2019_original_cr3], rax
    mov qword ptr gs:[asi2019_mm], rbx
    mov rdi, rbx
    mov esi, 1
    call asi2019_stack_mapping
    mov qword ptr gs:[asi2019_state], ASI_SESSION_STATE_ACTIVE
    mov qword ptr gs:[asi_curr], rbx
    mov rax, qword ptr [rbx + MM_asi_pgd]
    mov qword ptr gs:[asi2019_cr3], rax
    .alternative !INJECT_ASI_ENTER_NOFLUSH, .La19e_noflush
.La19e_write:
    .cr3_write
    mov cr3, rax
    jmp .La19e_entered
.La19e_noflush:
    cmp qword ptr [feature_pcid], 0
    je .La19e_write
    bts rax, X86_CR3_PCID_NOFLUSH_BIT
    .cr3_write noflush
    mov cr3, rax
    nop                         # not a jump target: the write is seen where the next block starts
.La19e_entered:
    pop rbx
.La19e_done:
    ret

# asi2019_restore_cr3(reason): asi_restore_cr3(): the CR3 saved at entry
asi2019_restore_cr3:
    mov rax, qword ptr gs:[asi2019_original_cr3]
    .cr3_write
    mov cr3, rax
    mov qword ptr gs:[asi_curr], 0
    jmp asi_count_exit

# asi2019_exit(reason): an active session restores CR3; an aborted one already
# did.  Then the session ends and the current stack is unmapped again.
asi2019_exit:
    mov rax, qword ptr gs:[asi2019_state]
    cmp rax, ASI_SESSION_STATE_INACTIVE
    je .La19x_done
    cmp rax, ASI_SESSION_STATE_ACTIVE
    jne .La19x_end
    call asi2019_restore_cr3
.La19x_end:
    mov qword ptr gs:[asi2019_state], ASI_SESSION_STATE_INACTIVE
    mov qword ptr gs:[asi2019_abort_depth], 0
    mov rdi, qword ptr gs:[asi2019_mm]
    xor esi, esi
    call asi2019_stack_mapping
    mov qword ptr gs:[asi2019_mm], 0
.La19x_done:
    ret

# asi2019_intr_enter(): asi_start_abort at an exception or interrupt entry (r12:
# the handler, from idtentry_body): an active session restores CR3 and is
# marked aborted; every nested entry while a session exists counts in
# abort_depth
asi2019_intr_enter:
    mov rax, qword ptr gs:[asi2019_state]
    cmp rax, ASI_SESSION_STATE_INACTIVE
    je .La19a_done
    cmp rax, ASI_SESSION_STATE_ACTIVE
    jne .La19a_depth
    mov rax, exc_page_fault
    cmp r12, rax
    jne .La19a_misc
    # a #PF aborting the session: observed here, before the CR3 write, as the
    # fault that forces it (the order of the 2025 mechanics' exits)
    .hook asi2019_fault_exit
asi2019_fault_abort:
    mov edi, ASI_EXIT_PAGE_FAULT
    jmp .La19a_restore
.La19a_misc:
    mov edi, ASI_EXIT_MISC
.La19a_restore:
    call asi2019_restore_cr3
    mov qword ptr gs:[asi2019_state], ASI_SESSION_STATE_ABORTED
.La19a_depth:
    inc qword ptr gs:[asi2019_abort_depth]
.La19a_done:
    ret

# asi2019_finish_abort(): before the handler returns; the outermost one ends
# the session (asi_exit of an aborted session: no CR3 write)
asi2019_finish_abort:
    cmp qword ptr gs:[asi2019_state], ASI_SESSION_STATE_INACTIVE
    je .La19f_done
    dec qword ptr gs:[asi2019_abort_depth]
    jnz .La19f_done
    mov edi, ASI_EXIT_MISC
    jmp asi2019_exit
.La19f_done:
    ret

# asi2019_fault() -> 1 if this #PF aborted an active session (asi_fault(): the
# fault is logged and reported handled; the access is retried unrestricted).
# A fault in a handler nested in an aborted session (depth > 1) is the RFC's
# WARN_ON(abort_depth != 1): handled as an ordinary fault here, where the RFC
# would retry it forever.
asi2019_fault:
    xor eax, eax
    cmp qword ptr gs:[asi2019_state], ASI_SESSION_STATE_ABORTED
    jne .La19pf_done
    cmp qword ptr gs:[asi2019_abort_depth], 1
    jne .La19pf_done
    mov eax, 1
.La19pf_done:
    ret

# asi2019_stack_mapping(mm, map): copy the kernel page table's PTEs of the
# current stack (THREAD_SIZE) into mm's restricted table, or clear them.  The
# restricted table is not loaded at either moment (entry maps before load_cr3,
# exit unmaps after the restore) and every entry into it flushes PCID 0, so no
# TLB flush is needed here.
asi2019_stack_mapping:
    push rbx
    push r12
    push r13
    push r14
    mov r12, rdi
    mov r13d, esi
    GET_CURRENT rax
    mov rbx, qword ptr [rax + TASK_stack_top]
    sub rbx, THREAD_SIZE
    lea r14, [rbx + THREAD_SIZE]
.La19s_page:
    cmp rbx, r14
    jae .La19s_done
    mov rdi, qword ptr [r12 + MM_asi_pgd_va]
    mov rsi, rbx
    mov edx, PAGE_SHIFT
    xor ecx, ecx
    xor r8, r8
    call walk_to
    test rax, rax
    jz .La19s_next
    xor ecx, ecx
    test r13d, r13d
    jz .La19s_set
    push rax
    mov rdi, qword ptr [r12 + MM_pgd_va]
    mov rsi, rbx
    call lookup_address
    mov rcx, qword ptr [rax]
    pop rax
.La19s_set:
    SET_ENTRY rax, rcx
.La19s_next:
    add rbx, PAGE_SIZE
    jmp .La19s_page
.La19s_done:
    pop r14
    pop r13
    pop r12
    pop rbx
    ret
