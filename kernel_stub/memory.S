# User pages: demand faults, mapping, unmapping, and freeing page tables at
# exit.  After mm/memory.c.

.text

# map_user_page(mm, va, pa, prot) -> 0 or -ENOMEM: P|US|A, RW|D if writable,
# NX unless executable
map_user_page:
    push rbx
    push r12
    push r13
    mov r12, rdx
    mov r13, rcx
    mov r8, rdi
    mov rdi, qword ptr [rdi + MM_pgd_va]
    mov edx, PAGE_SHIFT
    mov ecx, 1
    call walk_to
    test rax, rax
    jz .Lmup_nomem
    mov rcx, r12
    or rcx, _PAGE_USER_BASE
    test r13, PROT_WRITE
    jz .Lmup_ro
    or rcx, _PAGE_USER_WRITE
.Lmup_ro:
    test r13, PROT_EXEC
    jnz .Lmup_set
    cmp qword ptr [feature_nx], 0
    je .Lmup_set
    bts rcx, _PAGE_BIT_NX
.Lmup_set:
    SET_ENTRY rax, rcx
    xor eax, eax
    jmp .Lmup_done
.Lmup_nomem:
    mov rax, -ENOMEM
.Lmup_done:
    pop r13
    pop r12
    pop rbx
    ret
# handle_user_fault(regs, addr, error_code) -> 0 handled, SEGV_MAPERR or
# SEGV_ACCERR (SIGSEGV), -1 (SIGBUS)
handle_user_fault:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    GET_CURRENT r14
    mov r14, qword ptr [r14 + TASK_mm]
    mov rdi, r14
    mov rsi, r12
    call find_vma
    test rax, rax
    jz .Lhuf_maperr
    mov r15, rax
    mov rcx, qword ptr [r15 + VMA_prot]
    test r13, X86_PF_WRITE
    jz .Lhuf_notw
    test rcx, PROT_WRITE
    jz .Lhuf_accerr
.Lhuf_notw:
    test r13, X86_PF_INSTR
    jz .Lhuf_notx
    test rcx, PROT_EXEC
    jz .Lhuf_accerr
.Lhuf_notx:
    test rcx, 7
    jz .Lhuf_accerr
    test r13, X86_PF_PROT
    jnz .Lhuf_accerr
    test qword ptr [r15 + VMA_flags], VM_SECRET
    jnz .Lhuf_secret
    test qword ptr [r15 + VMA_flags], VM_GMEM
    jnz .Lhuf_gmem
    test qword ptr [r15 + VMA_flags], VM_XPFO
    jnz .Lhuf_xpfo
    test qword ptr [r15 + VMA_flags], VM_KVM_RUN
    jnz .Lhuf_vcpu
    xor edi, edi
    mov esi, FRAME_USER
    mov edx, HC_SENSITIVE
    call alloc_page
    test rax, rax
    jz .Lhuf_bus
    mov rdx, rax
    mov rcx, qword ptr [r15 + VMA_prot]
    jmp .Lhuf_map
.Lhuf_vcpu:
    mov rdi, r15
    mov rsi, r12
    call kvm_vcpu_fault                 # kvm_vm.S
    jmp .Lhuf_file
.Lhuf_gmem:
    mov rdi, r15
    mov rsi, r12
    call gmem_fault                     # guest_memfd.S
.Lhuf_file:
    test rax, rax
    jz .Lhuf_bus
    mov rdx, rax
    mov rcx, qword ptr [r15 + VMA_prot]
    jmp .Lhuf_map
.Lhuf_xpfo:
    mov rdi, r15
    mov rsi, r12
    call xpfo_fault                     # xpfo.S
    test rax, rax
    jz .Lhuf_bus
    mov rdx, rax
    mov rcx, qword ptr [r15 + VMA_prot]
    jmp .Lhuf_map
.Lhuf_secret:
    mov rdi, r15
    mov rsi, r12
    call secretmem_fault
    test rax, rax
    jz .Lhuf_bus
    mov rdx, rax
    mov rcx, qword ptr [r15 + VMA_prot]
    and rcx, ~PROT_EXEC
.Lhuf_map:
    mov rdi, r14
    mov rsi, r12
    and rsi, -4096
    call map_user_page
    test rax, rax
    jnz .Lhuf_bus
    xor eax, eax
    jmp .Lhuf_done
.Lhuf_maperr:
    mov eax, SEGV_MAPERR
    jmp .Lhuf_done
.Lhuf_accerr:
    mov eax, SEGV_ACCERR
    jmp .Lhuf_done
.Lhuf_bus:
    mov rax, -1
.Lhuf_done:
    RESTORE_CALLEE
    ret
# unmap_vma(mm, vma, exiting): clear its ptes (flushing each page), free
# anonymous frames, drop the file.  exiting = 1 from exit (exit_mmap), 0
# from munmap: the munmap_noflush injection leaves out munmap's flushes only.
unmap_vma:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r15, rdx
    mov r13, qword ptr [r12 + VMA_start]
.Luv_loop:
    cmp r13, qword ptr [r12 + VMA_end]
    jae .Luv_file
    mov rdi, qword ptr [rbx + MM_pgd_va]
    mov rsi, r13
    mov edx, PAGE_SHIFT
    xor ecx, ecx
    mov r8, rbx
    call walk_to
    test rax, rax
    jz .Luv_next
    mov r14, qword ptr [rax]
    test r14, _PAGE_PRESENT + _PAGE_PROTNONE      # a PROT_NONE page still holds its frame
    jz .Luv_next
    SET_ENTRY rax, 0
    mov rdi, r13
    test r15, r15
    jnz .Luv_flush
    .alternative !INJECT_MUNMAP_NOFLUSH, .Luv_flushed
.Luv_flush:
    call flush_tlb_one_user
.Luv_flushed:
    test qword ptr [r12 + VMA_flags], VM_SECRET + VM_GMEM + VM_XPFO + VM_KVM_RUN   # the file owns these pages
    jnz .Luv_next
    movabs rax, PTE_PFN_MASK
    and r14, rax
    mov rdi, r14
    mov esi, HC_SENSITIVE
    call free_page
.Luv_next:
    add r13, PAGE_SIZE
    jmp .Luv_loop
.Luv_file:
    mov rdi, qword ptr [r12 + VMA_file]
    test rdi, rdi
    jz .Luv_done
    call file_put
.Luv_done:
    RESTORE_CALLEE
    ret
# free_pgtables(mm): at exit, unlink the user half's page tables from the
# kernel PGD, the PTI user PGD and the ASI PGD, flush, then free the tables
# (exit_mmap -> free_pgtables, then tlb_finish_mmu: a table goes back to the
# allocator only after no TLB or paging-structure cache can lead to it).
# Table pages are non-sensitive, so with ASI each one leaves the restricted
# direct map as it is freed (asi_unmap + flush).  The unlinked entries wait on
# the stack (USER_PTRS_PER_PGD slots).
free_pgtables:
    push rbx
    push r12
    push r13
    push rbp
    mov rbp, rsp
    sub rsp, 8 * USER_PTRS_PER_PGD
    mov rbx, rdi
    mov r12, qword ptr [rbx + MM_pgd_va]
    xor r13, r13
.Lfpt_slot:
    cmp r13, USER_PTRS_PER_PGD
    jae .Lfpt_flush
    mov rax, qword ptr [r12 + r13 * 8]
    mov qword ptr [rsp + r13 * 8], rax
    test al, _PAGE_PRESENT
    jz .Lfpt_next
    lea rax, [r12 + r13 * 8]
    SET_ENTRY rax, 0
    cmp qword ptr [feature_pti], 0
    je .Lfpt_asi
    add rax, PAGE_SIZE
    SET_ENTRY rax, 0
.Lfpt_asi:
    cmp qword ptr [asi_maps_user], 0
    je .Lfpt_next
    mov rax, qword ptr [rbx + MM_asi_pgd_va]
    test rax, rax
    jz .Lfpt_next
    lea rax, [rax + r13 * 8]
    SET_ENTRY rax, 0
.Lfpt_next:
    inc r13
    jmp .Lfpt_slot
.Lfpt_flush:
    call flush_tlb_mm_local
    xor r13, r13
.Lfpt_free:
    cmp r13, USER_PTRS_PER_PGD
    jae .Lfpt_done
    mov rax, qword ptr [rsp + r13 * 8]
    test al, _PAGE_PRESENT
    jz .Lfpt_free_next
    movabs rcx, PTE_PFN_MASK
    and rax, rcx
    mov rdi, rax
    mov esi, PGDIR_SHIFT - (PMD_SHIFT - PAGE_SHIFT)
    call free_table
.Lfpt_free_next:
    inc r13
    jmp .Lfpt_free
.Lfpt_done:
    mov rsp, rbp
    pop rbp
    pop r13
    pop r12
    pop rbx
    ret

# free_table(table pa, shift of its entries): the tables below first
free_table:
    push rbx
    push r12
    push r13
    mov rbx, rdi
    mov r12d, esi
    cmp r12d, PAGE_SHIFT
    je .Lft_self
    mov r13, rdi
    PA_TO_VA r13
    xor ecx, ecx
.Lft_entry:
    cmp ecx, PTRS_PER_PTE
    jae .Lft_self
    mov rax, qword ptr [r13 + rcx * 8]
    test al, _PAGE_PRESENT
    jz .Lft_next
    test al, _PAGE_PSE
    jnz .Lft_next
    push rcx
    movabs rdx, PTE_PFN_MASK
    and rax, rdx
    mov rdi, rax
    lea esi, [r12 - (PMD_SHIFT - PAGE_SHIFT)]
    call free_table
    pop rcx
.Lft_next:
    inc ecx
    jmp .Lft_entry
.Lft_self:
    mov rdi, rbx
    xor esi, esi
    call free_page
    pop r13
    pop r12
    pop rbx
    ret
