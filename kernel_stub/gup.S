# get_user_pages_remote: the kernel reaching another process's page through
# its direct-map address (mm/gup.c).  Secret memory is never reached this
# way: check_vma_flags refuses a secretmem VMA (vma_is_secretmem) with
# -EFAULT, so process_vm_readv/writev and ptrace's PEEK/POKE fail on it (the
# memfd_secret selftest's "process_vm_read" and "ptrace" cases).

.text

# gup_remote(mm, addr, write, force) -> pa of the page at addr in mm, or
# -EFAULT (get_user_pages_remote -> __get_user_pages): no VMA, a VMA GUP
# refuses (check_vma_flags: secret memory; a write without PROT_WRITE; a
# read without PROT_READ unless FOLL_FORCE), or a page not present
# (the stub does not fault pages in for another mm; docs/secretmem.md)
gup_remote:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    call find_vma
    test rax, rax
    jz .Lgr_fault
    test qword ptr [rax + VMA_flags], VM_SECRET + VM_XPFO     # xpfo pages: not in the direct map either
    jnz .Lgr_fault
    mov rcx, qword ptr [rax + VMA_prot]
    test r13, r13
    jz .Lgr_read
    test rcx, PROT_WRITE
    jz .Lgr_fault
    jmp .Lgr_walk
.Lgr_read:
    test r14, r14
    jnz .Lgr_walk
    test rcx, PROT_READ
    jz .Lgr_fault
.Lgr_walk:
    mov rdi, qword ptr [rbx + MM_pgd_va]
    mov rsi, r12
    call lookup_address
    test rax, rax
    jz .Lgr_fault
    cmp edx, PAGE_SHIFT
    jne .Lgr_fault
    mov rax, qword ptr [rax]
    test al, _PAGE_PRESENT
    jz .Lgr_fault
    movabs rcx, PTE_PFN_MASK
    and rax, rcx
    jmp .Lgr_out
.Lgr_fault:
    mov rax, -EFAULT
.Lgr_out:
    RESTORE_CALLEE
    ret
