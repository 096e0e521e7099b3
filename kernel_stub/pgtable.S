# Page-table walks and top-level entries.  After arch/x86/mm/pgtable.c,
# arch/x86/mm/pti.c (__pti_set_user_pgtbl) and arch/x86/mm/fault.c
# (kernel_access_ok's walk).

.text

# set_entry(entryp, value): write one entry of a live paging structure, as
# Linux's set_pte/set_pmd/set_pud/set_p4d/set_pgd do: every change of a
# table the CPU can walk goes through here (SET_ENTRY in macros.S), so the
# TLB model sees it with its old value (docs/tlb.md).  Filling a new table
# before it is linked needs no set_entry.
    .hook pgtable_write
set_entry:
    mov qword ptr [rdi], rsi
    ret

# walk_to(pgd_va, va, shift, create, mm) -> address of the entry for va at the
# level of 'shift' (12 pte, 21 pmd, 30 pud), or 0.  create: 0 = never,
# 1 = allocate missing tables (non-sensitive), 2 = allocate them sensitive
# (ASI's own tables, to avoid recursion).  A large page in the way gives 0.
# New user-half top-level entries go through set_pgd_user (PTI, ASI).
walk_to:
    SAVE_CALLEE
    push rdi
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    mov r15, r8
    mov ebp, PGDIR_SHIFT
.Lwt_loop:
    mov rax, r12
    mov ecx, ebp
    shr rax, cl
    and eax, 511
    lea rdi, [rbx + rax * 8]
    cmp ebp, r13d
    je .Lwt_found
    mov rax, qword ptr [rdi]
    test al, _PAGE_PRESENT
    jz .Lwt_absent
    test al, _PAGE_PSE
    jnz .Lwt_fail
.Lwt_descend:
    movabs rcx, PTE_PFN_MASK
    and rax, rcx
    PA_TO_VA rax
    mov rbx, rax
    sub ebp, PMD_SHIFT - PAGE_SHIFT
    jmp .Lwt_loop
.Lwt_absent:
    test r14, r14
    jz .Lwt_fail
    push rdi
    xor edi, edi
    mov esi, FRAME_PGTABLE
    xor edx, edx
    cmp r14, 2
    jne .Lwt_alloc
    mov edx, HC_SENSITIVE
.Lwt_alloc:
    call alloc_page
    pop rdi
    test rax, rax
    jz .Lwt_fail
    or rax, _PAGE_TABLE
    mov rcx, qword ptr [rsp]
    cmp rcx, rbx
    jne .Lwt_set
    mov rcx, USER_HALF_END
    cmp r12, rcx
    jae .Lwt_set
    push rax
    mov rsi, rax
    mov rdx, r15
    call set_pgd_user
    pop rax
    jmp .Lwt_descend
.Lwt_set:
    SET_ENTRY rdi, rax
    jmp .Lwt_descend
.Lwt_found:
    mov rax, rdi
    add rsp, 8
    RESTORE_CALLEE
    ret
.Lwt_fail:
    xor eax, eax
    add rsp, 8
    RESTORE_CALLEE
    ret

# set_pgd_user(pgdp, value, mm): a new user-half top-level entry.
# PTI (__pti_set_user_pgtbl): the user PGD (pgdp + 4 KiB) gets the value as
# is; the kernel copy gets NX when the entry is present and user.
# ASI (asi_clone_user_pgtbl): the mm's restricted PGD gets the kernel copy when
# the class maps user addresses (asi_maps_user_addr: the userspace class).
set_pgd_user:
    cmp qword ptr [feature_pti], 0
    je .Lspu_kernel
    lea rax, [rdi + PAGE_SIZE]
    SET_ENTRY rax, rsi
    cmp qword ptr [feature_nx], 0
    je .Lspu_kernel
    mov rax, rsi
    and eax, _PAGE_PRESENT + _PAGE_USER
    cmp eax, _PAGE_PRESENT + _PAGE_USER
    jne .Lspu_kernel
    bts rsi, _PAGE_BIT_NX
.Lspu_kernel:
    SET_ENTRY rdi, rsi
    test rdx, rdx
    jz .Lspu_done
    cmp qword ptr [asi_maps_user], 0
    je .Lspu_done
    mov rax, qword ptr [rdx + MM_asi_pgd_va]
    test rax, rax
    jz .Lspu_done
    mov rcx, rdi
    and ecx, PAGE_SIZE - 1
    add rax, rcx
    SET_ENTRY rax, rsi
.Lspu_done:
    ret

# lookup_address(pgd_va, va) -> rax = address of the leaf entry (or of the
# non-present pte), rdx = its shift; rax = 0 if a non-leaf level is absent.
lookup_address:
    mov ecx, PGDIR_SHIFT
.Lla_loop:
    mov rax, rsi
    shr rax, cl
    and eax, 511
    lea r8, [rdi + rax * 8]
    cmp ecx, PAGE_SHIFT
    je .Lla_leaf
    mov rax, qword ptr [r8]
    test al, _PAGE_PRESENT
    jz .Lla_none
    cmp ecx, PS_RESERVED_SHIFT
    jae .Lla_down
    test al, _PAGE_PSE
    jnz .Lla_leaf
.Lla_down:
    movabs rdx, PTE_PFN_MASK
    and rax, rdx
    PA_TO_VA rax
    mov rdi, rax
    sub ecx, PMD_SHIFT - PAGE_SHIFT
    jmp .Lla_loop
.Lla_leaf:
    mov rax, r8
    mov edx, ecx
    ret
.Lla_none:
    xor eax, eax
    ret

# kernel_access_ok(addr, error_code) -> 1 if the access would succeed on the
# page tables now loaded (fault.c kernel_access_ok: real present bits, write
# needs RW, a fetch needs no NX)
kernel_access_ok:
    push rbx
    mov rbx, rsi
    mov rax, cr3
    movabs rcx, PTE_PFN_MASK
    and rax, rcx
    PA_TO_VA rax
    mov rsi, rdi
    mov rdi, rax
    call lookup_address
    test rax, rax
    jz .Lkao_no
    mov rax, qword ptr [rax]
    test al, _PAGE_PRESENT
    jz .Lkao_no
    test rbx, X86_PF_WRITE
    jz .Lkao_nw
    test al, _PAGE_RW
    jz .Lkao_no
.Lkao_nw:
    test rbx, X86_PF_INSTR
    jz .Lkao_yes
    bt rax, _PAGE_BIT_NX
    jc .Lkao_no
.Lkao_yes:
    mov eax, 1
    pop rbx
    ret
.Lkao_no:
    xor eax, eax
    pop rbx
    ret
