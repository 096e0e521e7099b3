# Processes: the scheduler, context switch, switch_mm with PCIDs, and exit.
# After kernel/sched/core.c, arch/x86/entry/entry_64.S (__switch_to_asm) and
# arch/x86/mm/tlb.c (switch_mm_irqs_off, choose_new_asid, load_new_mm_cr3).

.text

# schedule(): round robin over the runnable tasks; with none left, the machine
# halts.
schedule:
    push rbx
    push r12
    GET_CURRENT rbx
    mov rax, rbx
    sub rax, tasks
    xor edx, edx
    mov ecx, TASK_SIZE
    div rcx
    mov r12, rax
    mov r8, nr_tasks
    mov r8, qword ptr [r8]
    mov r9d, 1
.Lsch_loop:
    cmp r9, r8
    ja .Lsch_none
    lea rax, [r12 + r9]
    xor edx, edx
    div r8
    imul rax, rdx, TASK_SIZE
    add rax, tasks
    cmp qword ptr [rax + TASK_state], TASK_RUNNABLE
    je .Lsch_found
    inc r9
    jmp .Lsch_loop
.Lsch_found:
    cmp rax, rbx
    je .Lsch_done
    mov rdi, rbx
    mov rsi, rax
    call context_switch
.Lsch_done:
    pop r12
    pop rbx
    ret
.Lsch_none:
    cmp qword ptr [rbx + TASK_state], TASK_RUNNABLE
    je .Lsch_done
    jmp machine_halt

# context_switch(prev, next): leave ASI (RFC v2: "we can't handle context
# switching in the restricted address space yet"; the 2019 RFC aborts its
# session), switch the mm (the 2025 RFC's taints of the old domain become
# "other MM" taints), then the kernel stack.  A new task's stack returns into
# ret_from_fork.
context_switch:
    push rbx
    push r12
    mov rbx, rdi
    mov r12, rsi
    mov edi, ASI_EXIT_CONTEXT_SWITCH
    call asi_exit
    mov rax, qword ptr [rbx + TASK_mm]
    cmp rax, qword ptr [r12 + TASK_mm]
    je .Lcs_same_mm
    call asi_handle_switch_mm
.Lcs_same_mm:
    mov rdi, qword ptr [rbx + TASK_mm]
    mov rsi, qword ptr [r12 + TASK_mm]
    call switch_mm_irqs_off
    mov rdi, rbx
    mov rsi, r12
    pop r12
    pop rbx
__switch_to_asm:
    SAVE_CALLEE
    mov qword ptr [rdi + TASK_sp], rsp
    mov rsp, qword ptr [rsi + TASK_sp]
    mov qword ptr gs:[pcpu_current_task], rsi
    mov rax, qword ptr [rsi + TASK_stack_top]
    mov qword ptr gs:[pcpu_top_of_stack], rax
    RESTORE_CALLEE
    ret

# switch_mm_irqs_off(prev_mm, next_mm).  With PCID: reuse the ASID slot that
# last held next (flush only if its tlb_gen is stale), else take the next slot
# (TLB_NR_DYN_ASIDS = 6) and flush; kernel PCID = asid + 1; a flushing switch
# also invalidates the user PCID (at the next SWITCH_TO_USER_CR3).
switch_mm_irqs_off:
    cmp rdi, rsi
    je .Lsw_done
    push rbx
    push r12
    push r13
    mov rbx, rsi
    cmp qword ptr [feature_pcid], 0
    jne .Lsw_pcid
    mov rax, qword ptr [rbx + MM_pgd]
    .cr3_write
    mov cr3, rax
    xor r12, r12
    jmp .Lsw_loaded
.Lsw_pcid:
    # clear_asid_other: kernel PTEs changed while PTI made them non-global
    cmp qword ptr gs:[tlbstate_invalidate_other], 0
    je .Lsw_search
    mov qword ptr gs:[tlbstate_invalidate_other], 0
    xor ecx, ecx
.Lsw_clear:
    cmp rcx, qword ptr gs:[tlbstate_loaded_mm_asid]
    je .Lsw_clear_next
    mov rax, rcx
    shl rax, 4
    mov qword ptr gs:[tlbstate_ctxs + rax], 0
.Lsw_clear_next:
    inc ecx
    cmp ecx, 6
    jb .Lsw_clear
.Lsw_search:
    mov rdx, qword ptr [rbx + MM_ctx_id]
    xor ecx, ecx
.Lsw_find:
    mov rax, rcx
    shl rax, 4
    cmp qword ptr gs:[tlbstate_ctxs + rax], rdx
    je .Lsw_hit
    inc ecx
    cmp ecx, 6
    jb .Lsw_find
    mov r12, qword ptr gs:[tlbstate_next_asid]
    lea rax, [r12 + 1]
    cmp r12, 6
    jb .Lsw_newasid
    xor r12, r12
    mov eax, 1
.Lsw_newasid:
    mov qword ptr gs:[tlbstate_next_asid], rax
    jmp .Lsw_flush
.Lsw_hit:
    mov r12, rcx
    mov rax, qword ptr gs:[tlbstate_ctxs + rax + 8]
    cmp rax, qword ptr [rbx + MM_tlb_gen]
    jb .Lsw_flush
    # load_new_mm_cr3(..., need_flush = false): NOFLUSH
    mov rax, qword ptr [rbx + MM_pgd]
    lea rax, [rax + r12 + 1]
    bts rax, X86_CR3_PCID_NOFLUSH_BIT
    .cr3_write noflush
    mov cr3, rax
    jmp .Lsw_loaded
.Lsw_flush:
    mov rax, r12
    shl rax, 4
    mov rdx, qword ptr [rbx + MM_ctx_id]
    mov qword ptr gs:[tlbstate_ctxs + rax], rdx
    mov rdx, qword ptr [rbx + MM_tlb_gen]
    mov qword ptr gs:[tlbstate_ctxs + rax + 8], rdx
    mov rdi, r12
    call invalidate_user_asid
    mov rax, qword ptr [rbx + MM_pgd]
    lea rax, [rax + r12 + 1]
    .cr3_write
    mov cr3, rax
    nop                         # not a jump target: the write is seen where the next block starts
.Lsw_loaded:
    mov qword ptr gs:[tlbstate_loaded_mm], rbx
    mov qword ptr gs:[tlbstate_loaded_mm_asid], r12
    pop r13
    pop r12
    pop rbx
.Lsw_done:
    ret

# do_exit(code): the exit status is recorded, files and mappings released
# (a secretmem file's pages go back to the direct map), then another task runs.
    .hook exit
do_exit:
    GET_CURRENT rbx
    mov qword ptr [rbx + TASK_exit_code], rdi
    push rdi
    mov rdi, rbx
    call exit_ptrace
    pop rdi
    xor r12, r12
.Lex_files:
    cmp r12, MAX_FDS
    jae .Lex_mm
    mov rdi, qword ptr [rbx + TASK_files + r12 * 8]
    test rdi, rdi
    jz .Lex_next_fd
    mov qword ptr [rbx + TASK_files + r12 * 8], 0
    call file_put
.Lex_next_fd:
    inc r12
    jmp .Lex_files
.Lex_mm:
    mov r13, qword ptr [rbx + TASK_mm]
.Lex_vma:
    cmp qword ptr [r13 + MM_nr_vmas], 0
    je .Lex_dead
    mov rdi, r13
    xor esi, esi
    mov edx, 1                  # exiting
    call remove_vma
    jmp .Lex_vma
.Lex_dead:
    # the user half of this mm goes away: switch to the kernel PGD of a
    # still-running mm first is not needed, the kernel half is shared
    mov rdi, r13
    call free_pgtables
    mov qword ptr [rbx + TASK_state], TASK_DEAD
    call schedule
    jmp machine_halt
