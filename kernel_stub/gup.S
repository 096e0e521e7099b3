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

# --- GUP-fast ----------------------------------------------------------------
# gup_fast(mm, addr, write) -> pa of the page, or 0 for the slow path
# (gup_fast_pte_range, mm/gup.c): a lockless walk of the page tables, no
# VMA; the PTE must be present, user and, for a write, writable; and the
# folio must not be secretmem's (gup_fast_folio_allowed: folio_is_secretmem,
# the check CVE-2024-35872's fix made reliable; inject=gup_fast_secretmem
# leaves it out)
gup_fast:
    push rbx
    mov rbx, rdx
    mov rdi, qword ptr [rdi + MM_pgd_va]
    call lookup_address
    test rax, rax
    jz .Lgf_slow
    cmp edx, PAGE_SHIFT
    jne .Lgf_slow
    mov rax, qword ptr [rax]
    test al, _PAGE_PRESENT
    jz .Lgf_slow
    test al, _PAGE_USER
    jz .Lgf_slow
    test rbx, rbx
    jz .Lgf_perm
    test al, _PAGE_RW
    jz .Lgf_slow
.Lgf_perm:
    movabs rcx, PTE_PFN_MASK
    and rax, rcx
    mov rbx, rax
    .alternative INJECT_GUP_FAST_SECRETMEM, .Lgf_check
    jmp .Lgf_got
.Lgf_check:
    mov rdi, rbx
    call folio_is_secretmem             # secretmem.S
    test eax, eax
    jnz .Lgf_slow
.Lgf_got:
    mov rax, rbx
    pop rbx
    ret
.Lgf_slow:
    xor eax, eax
    pop rbx
    ret

# sys_gup_fast_read(uaddr) -> 0 and the user's quadword at uaddr in rdx, or
# -EFAULT: a project call standing for the kernel's GUP-fast users (direct
# I/O, vmsplice, io_uring's fixed buffers): get_user_pages_fast
# (access_ok, then gup_fast, then the slow path, which refuses a secretmem
# VMA in check_vma_flags), then a read of the page through
# kmap_local_page, which on x86-64 is its direct-map address.  The read has
# no exception-table entry: a page out of the direct map is an oops, as the
# CVE's crash was.
sys_gup_fast_read:
    push rbx
    push r12
    mov r12, cur_syscall_regs
    mov r12, qword ptr [r12]
    mov qword ptr [r12 + PT_RDX], 0
    mov rbx, rdi
    mov rax, USER_HALF_END - 8
    cmp rdi, rax
    ja .Lgfr_fault
    GET_CURRENT rdi
    mov rdi, qword ptr [rdi + TASK_mm]
    mov rsi, rbx
    xor edx, edx
    call gup_fast
    test rax, rax
    jnz .Lgfr_read
    GET_CURRENT rdi
    mov rdi, qword ptr [rdi + TASK_mm]
    mov rsi, rbx
    xor edx, edx
    xor ecx, ecx
    call gup_remote                     # the slow path: check_vma_flags
    test rax, rax
    js .Lgfr_out
.Lgfr_read:
    mov rcx, rbx
    and ecx, PAGE_SIZE - 8
    add rax, rcx
    PA_TO_VA rax
gup_fast_read_kmap:
    mov rax, qword ptr [rax]
    mov qword ptr [r12 + PT_RDX], rax
    xor eax, eax
    jmp .Lgfr_out
.Lgfr_fault:
    mov rax, -EFAULT
.Lgfr_out:
    pop r12
    pop rbx
    ret
