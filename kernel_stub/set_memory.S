# The direct map: splitting large pages and removing or restoring one page.
# After arch/x86/mm/pat/set_memory.c and arch/x86/include/asm/pgtable-invert.h.

.text

# split_large_page(entry address, shift): __split_large_page.  2M->4K:
# pgprot_large_2_4k (PAT 12->7, PSE dropped); 1G->2M keeps PSE.  Global only on
# present entries.  The new table is installed as _KERNPG_TABLE; the DirectMap
# counts and the vm events follow split_page_count().  Then flush_tlb_all.
split_large_page:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12d, esi
    xor edi, edi
    mov esi, FRAME_PGTABLE
    xor edx, edx
    call alloc_page
    test rax, rax
    jz .Lslp_nomem
    mov r13, rax
    mov r14, rax
    PA_TO_VA r14
    mov rax, qword ptr [rbx]
    movabs rcx, PTE_FLAGS_MASK
    mov rdx, rax
    and rdx, rcx
    mov rcx, rax
    and ecx, _PAGE_PAT_LARGE
    or rdx, rcx
    mov ecx, r12d
    mov r15, 1
    shl r15, cl
    mov rcx, r15
    neg rcx
    movabs rbp, PTE_PFN_MASK
    and rbp, rcx
    and rbp, rax
    cmp r12d, PMD_SHIFT
    jne .Lslp_1g
    mov rax, rdx
    and rax, _PAGE_PAT_LARGE
    shr rax, _PAGE_BIT_PAT_LARGE - _PAGE_BIT_PAT
    and rdx, NOT_PAGE_PSE_PAT_LARGE
    or rdx, rax
    mov r15, PAGE_SIZE
    jmp .Lslp_prot
.Lslp_1g:
    mov r15, PMD_SIZE
    test dl, _PAGE_PRESENT
    jnz .Lslp_prot
    and rdx, NOT_PAGE_PSE
.Lslp_prot:
    test dl, _PAGE_PRESENT
    jnz .Lslp_fill
    and rdx, NOT_PAGE_GLOBAL
.Lslp_fill:
    mov rcx, rbp
    or rcx, rdx
    mov rdi, r14
    mov esi, PTRS_PER_PTE
.Lslp_loop:
    mov qword ptr [rdi], rcx
    add rdi, 8
    add rcx, r15
    dec esi
    jnz .Lslp_loop
    mov rax, r13
    or rax, _KERNPG_TABLE
    SET_ENTRY rbx, rax
    cmp r12d, PMD_SHIFT
    jne .Lslp_count_1g
    dec qword ptr [direct_pages_count_2m]
    add qword ptr [direct_pages_count_4k], 512
    inc qword ptr [direct_map_level2_splits]
    jmp .Lslp_flush
.Lslp_count_1g:
    dec qword ptr [direct_pages_count_1g]
    add qword ptr [direct_pages_count_2m], 512
    inc qword ptr [direct_map_level3_splits]
.Lslp_flush:
    call flush_tlb_all
    xor eax, eax
    RESTORE_CALLEE
    ret
.Lslp_nomem:
    mov rax, -ENOMEM
    RESTORE_CALLEE
    ret

# direct_map_pte(pa) -> address of the 4 KiB direct-map pte for pa, splitting
# 1G and 2M pages on the way; 0 if the page is not in the direct map
direct_map_pte:
    push rbx
    mov rbx, rdi
.Ldmp_again:
    mov rdi, init_pgd_va
    mov rdi, qword ptr [rdi]
    mov rsi, rbx
    PA_TO_VA rsi
    call lookup_address
    test rax, rax
    jz .Ldmp_done
    cmp edx, PAGE_SHIFT
    je .Ldmp_done
    mov rdi, rax
    mov esi, edx
    call split_large_page
    test rax, rax
    jz .Ldmp_again
    xor eax, eax
.Ldmp_done:
    pop rbx
    ret

# set_direct_map_invalid_noflush(pa): clear P and RW (and Global, which would
# read as PROTNONE); the PFN is stored inverted (pfn_pte + protnone_mask, the
# L1TF mitigation of pgtable-invert.h).  No TLB flush: the caller does it.
set_direct_map_invalid_noflush:
    push rbx
    mov rbx, rdi
    call direct_map_pte
    test rax, rax
    jz .Lsdmi_fail
    mov rcx, qword ptr [rax]
    movabs rdx, PTE_FLAGS_MASK
    and rcx, rdx
    and rcx, NOT_PAGE_INVALID_CLEARS
    mov rdx, rbx
    not rdx
    movabs rsi, PTE_PFN_MASK
    and rdx, rsi
    or rcx, rdx
    SET_ENTRY rax, rcx
    xor eax, eax
    pop rbx
    ret
.Lsdmi_fail:
    mov rax, -EINVAL
    pop rbx
    ret

# set_direct_map_default_noflush(pa): P and RW back, PFN un-inverted.  Global
# is not restored (neither helper sets it); Linux never re-merges the split.
set_direct_map_default_noflush:
    push rbx
    mov rbx, rdi
    call direct_map_pte
    test rax, rax
    jz .Lsdmd_fail
    mov rcx, qword ptr [rax]
    movabs rdx, PTE_FLAGS_MASK
    and rcx, rdx
    or rcx, _PAGE_PRESENT + _PAGE_RW
    mov rdx, rbx
    movabs rsi, PTE_PFN_MASK
    and rdx, rsi
    or rcx, rdx
    SET_ENTRY rax, rcx
    xor eax, eax
    pop rbx
    ret
.Lsdmd_fail:
    mov rax, -EINVAL
    pop rbx
    ret
