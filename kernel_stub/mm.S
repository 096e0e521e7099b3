# Memory management: page-table walks and edits, the direct map, TLB flushes,
# demand paging, and secretmem.
# After arch/x86/mm/pat/set_memory.c, arch/x86/mm/tlb.c, mm/memory.c and
# mm/secretmem.c.

.text

# --- frames ------------------------------------------------------------------------
# alloc_page(order, kind, flags) -> pa (zeroed) or 0.  A non-sensitive 4 KiB
# page is also mapped into ASI's global non-sensitive direct map (RFCv2:
# "Map non-user buddy allocations as nonsensitive").
alloc_page:
    push rbx
    push r12
    mov r12, rdx
    call hc_alloc
    mov rbx, rax
    test rax, rax
    jz .Lap_done
    test r12, HC_SENSITIVE
    jnz .Lap_done
    cmp qword ptr [feature_asi], 0
    je .Lap_done
    mov rdi, rax
    call asi_map_page
.Lap_done:
    mov rax, rbx
    pop r12
    pop rbx
    ret

# free_page(pa, flags)
free_page:
    push rbx
    mov rbx, rdi
    test rsi, HC_SENSITIVE
    jnz .Lfp_free
    cmp qword ptr [feature_asi], 0
    je .Lfp_free
    call asi_unmap_page
.Lfp_free:
    mov rdi, rbx
    call hc_free
    pop rbx
    ret

# --- page-table walks ------------------------------------------------------------------
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
    mov ebp, 39
    cmp qword ptr [pgtable_levels], 5
    jne .Lwt_loop
    mov ebp, 48
.Lwt_loop:
    mov rax, r12
    mov ecx, ebp
    shr rax, cl
    and eax, 511
    lea rdi, [rbx + rax * 8]
    cmp ebp, r13d
    je .Lwt_found
    mov rax, qword ptr [rdi]
    test al, 1
    jz .Lwt_absent
    test al, 0x80
    jnz .Lwt_fail
.Lwt_descend:
    movabs rcx, 0x000ffffffffff000
    and rax, rcx
    PA_TO_VA rax
    mov rbx, rax
    sub ebp, 9
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
    or rax, 0x67
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
    mov qword ptr [rdi], rax
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
# ASI (asi_clone_user_pgtbl): the mm's restricted PGD gets the kernel copy.
set_pgd_user:
    cmp qword ptr [feature_pti], 0
    je .Lspu_kernel
    mov qword ptr [rdi + 4096], rsi
    cmp qword ptr [feature_nx], 0
    je .Lspu_kernel
    mov rax, rsi
    and eax, 5
    cmp eax, 5
    jne .Lspu_kernel
    bts rsi, 63
.Lspu_kernel:
    mov qword ptr [rdi], rsi
    test rdx, rdx
    jz .Lspu_done
    mov rax, qword ptr [rdx + MM_asi_pgd_va]
    test rax, rax
    jz .Lspu_done
    mov rcx, rdi
    and ecx, 0xfff
    mov qword ptr [rax + rcx], rsi
.Lspu_done:
    ret

# lookup_address(pgd_va, va) -> rax = address of the leaf entry (or of the
# non-present pte), rdx = its shift; rax = 0 if a non-leaf level is absent.
lookup_address:
    mov ecx, 39
    cmp qword ptr [pgtable_levels], 5
    jne .Lla_loop
    mov ecx, 48
.Lla_loop:
    mov rax, rsi
    shr rax, cl
    and eax, 511
    lea r8, [rdi + rax * 8]
    cmp ecx, 12
    je .Lla_leaf
    mov rax, qword ptr [r8]
    test al, 1
    jz .Lla_none
    cmp ecx, 39
    jae .Lla_down
    test al, 0x80
    jnz .Lla_leaf
.Lla_down:
    movabs rdx, 0x000ffffffffff000
    and rax, rdx
    PA_TO_VA rax
    mov rdi, rax
    sub ecx, 9
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
    movabs rcx, 0x000ffffffffff000
    and rax, rcx
    PA_TO_VA rax
    mov rsi, rdi
    mov rdi, rax
    call lookup_address
    test rax, rax
    jz .Lkao_no
    mov rax, qword ptr [rax]
    test al, 1
    jz .Lkao_no
    test rbx, 2
    jz .Lkao_nw
    test al, 2
    jz .Lkao_no
.Lkao_nw:
    test rbx, 16
    jz .Lkao_yes
    bt rax, 63
    jc .Lkao_no
.Lkao_yes:
    mov eax, 1
    pop rbx
    ret
.Lkao_no:
    xor eax, eax
    pop rbx
    ret

# --- TLB (arch/x86/mm/tlb.c) -----------------------------------------------------------
# native_flush_tlb_global: INVPCID type 2 (all PCIDs, globals included)
flush_tlb_all:
    cmp qword ptr [feature_invpcid], 0
    je .Lfta_pge
    sub rsp, 16
    mov qword ptr [rsp], 0
    mov qword ptr [rsp + 8], 0
    mov eax, 2
    invpcid rax, [rsp]
    add rsp, 16
    ret
.Lfta_pge:
    mov rax, cr4
    btc rax, 7
    .cr4_write
    mov cr4, rax
    btc rax, 7
    .cr4_write
    mov cr4, rax
    ret

# invalidate_user_asid(asid): flush the user PCID lazily, at the next
# SWITCH_TO_USER_CR3 (bit kern_pcid(asid) of user_pcid_flush_mask)
invalidate_user_asid:
    cmp qword ptr [feature_pti], 0
    je .Liua_done
    cmp qword ptr [feature_pcid], 0
    je .Liua_done
    lea rax, [rdi + 1]
    bts qword ptr gs:[tlbstate_user_pcid_flush_mask], rax
.Liua_done:
    ret

# flush_tlb_one_user(va): invlpg for the current PCID; with PTI also the user
# PCID: INVPCID type 0 when available, else a deferred full user flush
flush_tlb_one_user:
    .invlpg
    invlpg [rdi]
    cmp qword ptr [feature_pti], 0
    je .Lftu_done
    cmp qword ptr [feature_pcid], 0
    je .Lftu_done
    cmp qword ptr [feature_invpcid], 0
    je .Lftu_lazy
    sub rsp, 16
    mov rax, qword ptr gs:[tlbstate_loaded_mm_asid]
    add rax, 0x801
    mov qword ptr [rsp], rax
    mov qword ptr [rsp + 8], rdi
    xor eax, eax
    invpcid rax, [rsp]
    add rsp, 16
    ret
.Lftu_lazy:
    mov rdi, qword ptr gs:[tlbstate_loaded_mm_asid]
    jmp invalidate_user_asid
.Lftu_done:
    ret

# flush_tlb_one_kernel(va): with PTI kernel mappings are not global, so every
# other ASID must be flushed too (invalidate_other)
flush_tlb_one_kernel:
    call flush_tlb_one_user
    cmp qword ptr [feature_pti], 0
    je .Lftk_done
    mov qword ptr gs:[tlbstate_invalidate_other], 1
.Lftk_done:
    ret

# flush_tlb_kernel_range(va, size): page by page up to 33 pages
# (tlb_single_page_flush_ceiling), else everything
flush_tlb_kernel_range:
    cmp rsi, 33 * 4096
    ja flush_tlb_all
    push rbx
    push r12
    mov rbx, rdi
    lea r12, [rdi + rsi]
.Lftkr_loop:
    cmp rbx, r12
    jae .Lftkr_done
    mov rdi, rbx
    call flush_tlb_one_kernel
    add rbx, 4096
    jmp .Lftkr_loop
.Lftkr_done:
    pop r12
    pop rbx
    ret

# --- the direct map (arch/x86/mm/pat/set_memory.c) --------------------------------------
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
    movabs rcx, 0xfff0000000000fff
    mov rdx, rax
    and rdx, rcx
    mov rcx, rax
    and ecx, 0x1000
    or rdx, rcx
    mov ecx, r12d
    mov r15, 1
    shl r15, cl
    mov rcx, r15
    neg rcx
    movabs rbp, 0x000ffffffffff000
    and rbp, rcx
    and rbp, rax
    cmp r12d, 21
    jne .Lslp_1g
    mov rax, rdx
    and rax, 0x1000
    shr rax, 5
    and rdx, -0x1081
    or rdx, rax
    mov r15, 4096
    jmp .Lslp_prot
.Lslp_1g:
    mov r15, 0x200000
    test dl, 1
    jnz .Lslp_prot
    and rdx, -0x81
.Lslp_prot:
    test dl, 1
    jnz .Lslp_fill
    and rdx, -0x101
.Lslp_fill:
    mov rcx, rbp
    or rcx, rdx
    mov rdi, r14
    mov esi, 512
.Lslp_loop:
    mov qword ptr [rdi], rcx
    add rdi, 8
    add rcx, r15
    dec esi
    jnz .Lslp_loop
    mov rax, r13
    or rax, 0x63
    mov qword ptr [rbx], rax
    cmp r12d, 21
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
    cmp edx, 12
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
    movabs rdx, 0xfff0000000000fff
    and rcx, rdx
    and rcx, -0x104
    mov rdx, rbx
    not rdx
    movabs rsi, 0x000ffffffffff000
    and rdx, rsi
    or rcx, rdx
    mov qword ptr [rax], rcx
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
    movabs rdx, 0xfff0000000000fff
    and rcx, rdx
    or rcx, 3
    mov rdx, rbx
    movabs rsi, 0x000ffffffffff000
    and rdx, rsi
    or rcx, rdx
    mov qword ptr [rax], rcx
    xor eax, eax
    pop rbx
    ret
.Lsdmd_fail:
    mov rax, -EINVAL
    pop rbx
    ret

# --- VMAs and user pages -------------------------------------------------------------------
# find_vma(mm, addr) -> vma with start <= addr < end, or 0
find_vma:
    mov rcx, qword ptr [rdi + MM_nr_vmas]
    lea rax, [rdi + MM_vmas]
.Lfv_loop:
    test rcx, rcx
    jz .Lfv_none
    cmp rsi, qword ptr [rax + VMA_start]
    jb .Lfv_next
    cmp rsi, qword ptr [rax + VMA_end]
    jb .Lfv_done
.Lfv_next:
    add rax, VMA_SIZE
    dec rcx
    jmp .Lfv_loop
.Lfv_none:
    xor eax, eax
.Lfv_done:
    ret

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
    mov edx, 12
    mov ecx, 1
    call walk_to
    test rax, rax
    jz .Lmup_nomem
    mov rcx, r12
    or rcx, 0x25
    test r13, PROT_WRITE
    jz .Lmup_ro
    or rcx, 0x42
.Lmup_ro:
    test r13, PROT_EXEC
    jnz .Lmup_set
    cmp qword ptr [feature_nx], 0
    je .Lmup_set
    bts rcx, 63
.Lmup_set:
    mov qword ptr [rax], rcx
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
    test r13, 2
    jz .Lhuf_notw
    test rcx, PROT_WRITE
    jz .Lhuf_accerr
.Lhuf_notw:
    test r13, 16
    jz .Lhuf_notx
    test rcx, PROT_EXEC
    jz .Lhuf_accerr
.Lhuf_notx:
    test rcx, 7
    jz .Lhuf_accerr
    test r13, 1
    jnz .Lhuf_accerr
    test qword ptr [r15 + VMA_flags], VM_SECRET
    jnz .Lhuf_secret
    xor edi, edi
    mov esi, FRAME_USER
    mov edx, HC_SENSITIVE
    call alloc_page
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
    and rcx, -5
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

# unmap_vma(mm, vma): clear its ptes (flushing each page), free anonymous
# frames, drop the file
unmap_vma:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, qword ptr [r12 + VMA_start]
.Luv_loop:
    cmp r13, qword ptr [r12 + VMA_end]
    jae .Luv_file
    mov rdi, qword ptr [rbx + MM_pgd_va]
    mov rsi, r13
    mov edx, 12
    xor ecx, ecx
    mov r8, rbx
    call walk_to
    test rax, rax
    jz .Luv_next
    mov r14, qword ptr [rax]
    test r14, 1
    jz .Luv_next
    mov qword ptr [rax], 0
    mov rdi, r13
    call flush_tlb_one_user
    test qword ptr [r12 + VMA_flags], VM_SECRET
    jnz .Luv_next
    movabs rax, 0x000ffffffffff000
    and r14, rax
    mov rdi, r14
    mov esi, HC_SENSITIVE
    call free_page
.Luv_next:
    add r13, 4096
    jmp .Luv_loop
.Luv_file:
    mov rdi, qword ptr [r12 + VMA_file]
    test rdi, rdi
    jz .Luv_done
    call file_put
.Luv_done:
    RESTORE_CALLEE
    ret

# free_pgtables(mm): at exit, free the page-table pages of the user half
# (exit_mmap -> free_pgtables) and clear the top-level entries in the kernel
# PGD, the PTI user PGD and the ASI PGD.  Table pages are non-sensitive, so
# with ASI each one leaves the restricted direct map (asi_unmap + flush).
free_pgtables:
    push rbx
    push r12
    push r13
    mov rbx, rdi
    mov r12, qword ptr [rbx + MM_pgd_va]
    xor r13, r13
.Lfpt_slot:
    cmp r13, 256
    jae .Lfpt_done
    mov rax, qword ptr [r12 + r13 * 8]
    test al, 1
    jz .Lfpt_next
    movabs rcx, 0x000ffffffffff000
    and rax, rcx
    mov rdi, rax
    mov esi, 39
    cmp qword ptr [pgtable_levels], 5
    jne .Lfpt_free
    mov esi, 48
.Lfpt_free:
    sub esi, 9
    call free_table
    mov qword ptr [r12 + r13 * 8], 0
    cmp qword ptr [feature_pti], 0
    je .Lfpt_asi
    mov qword ptr [r12 + r13 * 8 + 4096], 0
.Lfpt_asi:
    mov rax, qword ptr [rbx + MM_asi_pgd_va]
    test rax, rax
    jz .Lfpt_next
    mov qword ptr [rax + r13 * 8], 0
.Lfpt_next:
    inc r13
    jmp .Lfpt_slot
.Lfpt_done:
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
    cmp r12d, 12
    je .Lft_self
    mov r13, rdi
    PA_TO_VA r13
    xor ecx, ecx
.Lft_entry:
    cmp ecx, 512
    jae .Lft_self
    mov rax, qword ptr [r13 + rcx * 8]
    test al, 1
    jz .Lft_next
    test al, 0x80
    jnz .Lft_next
    push rcx
    movabs rdx, 0x000ffffffffff000
    and rax, rdx
    mov rdi, rax
    lea esi, [r12 - 9]
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

# remove_vma(mm, index): unmap it and close the gap in the array
remove_vma:
    push rbx
    push r12
    mov rbx, rdi
    mov r12, rsi
    imul rsi, rsi, VMA_SIZE
    lea rsi, [rbx + rsi + MM_vmas]
    call unmap_vma
    mov rcx, qword ptr [rbx + MM_nr_vmas]
    dec rcx
    mov qword ptr [rbx + MM_nr_vmas], rcx
    sub rcx, r12
    imul rcx, rcx, VMA_SIZE
    imul rdi, r12, VMA_SIZE
    lea rdi, [rbx + rdi + MM_vmas]
    lea rsi, [rdi + VMA_SIZE]
    rep movsb
    pop r12
    pop rbx
    ret

# sys_mmap(addr, len, prot, flags, fd, off)
sys_mmap:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    mov r15, r8
    mov rbp, r9
    test r12, r12
    jz .Lmm_inval
    add r12, 4095
    and r12, -4096
    test rbp, 4095
    jnz .Lmm_inval
    xor r8, r8
    xor r9, r9
    test r14, MAP_ANONYMOUS
    jnz .Lmm_anon
    mov rdi, r15
    call fget
    test rax, rax
    jz .Lmm_badf
    mov r8, rax
    cmp qword ptr [r8 + FILE_type], FILE_SECRETMEM
    jne .Lmm_nodev
    # do_mmap (mm/mmap.c): the secretmem mount is noexec, so PROT_EXEC is
    # EPERM for shared and private mappings alike, before secretmem_mmap
    # (mm/secretmem.c) refuses a private mapping with EINVAL
    test r13, PROT_EXEC
    jnz .Lmm_perm
    test r14, MAP_SHARED
    jz .Lmm_inval
    mov r9, VM_SHARED + VM_SECRET + VM_LOCKED
    jmp .Lmm_place
.Lmm_anon:
    test r14, MAP_SHARED
    jz .Lmm_place
    mov r9, VM_SHARED
.Lmm_place:
    GET_CURRENT rax
    mov rdi, qword ptr [rax + TASK_mm]
    mov rax, qword ptr [rdi + MM_nr_vmas]
    cmp rax, MAX_VMAS
    jae .Lmm_nomem
    test r14, MAP_FIXED
    jz .Lmm_base
    test rbx, 4095
    jnz .Lmm_inval
    mov rcx, rbx
    add rcx, r12
    mov rdx, USER_HALF_END
    cmp rcx, rdx
    ja .Lmm_nomem
    jmp .Lmm_add
.Lmm_base:
    mov rbx, qword ptr [rdi + MM_mmap_base]
    lea rcx, [rbx + r12 + 4096]
    mov qword ptr [rdi + MM_mmap_base], rcx
.Lmm_add:
    imul rax, rax, VMA_SIZE
    lea rax, [rdi + rax + MM_vmas]
    mov qword ptr [rax + VMA_start], rbx
    lea rcx, [rbx + r12]
    mov qword ptr [rax + VMA_end], rcx
    mov qword ptr [rax + VMA_prot], r13
    mov qword ptr [rax + VMA_flags], r9
    mov qword ptr [rax + VMA_file], r8
    shr rbp, 12
    mov qword ptr [rax + VMA_pgoff], rbp
    inc qword ptr [rdi + MM_nr_vmas]
    test r8, r8
    jz .Lmm_ok
    inc qword ptr [r8 + FILE_refs]
.Lmm_ok:
    mov rax, rbx
    jmp .Lmm_out
.Lmm_inval:
    mov rax, -EINVAL
    jmp .Lmm_out
.Lmm_badf:
    mov rax, -EBADF
    jmp .Lmm_out
.Lmm_nodev:
    mov rax, -ENODEV
    jmp .Lmm_out
.Lmm_perm:
    mov rax, -EPERM
    jmp .Lmm_out
.Lmm_nomem:
    mov rax, -ENOMEM
.Lmm_out:
    RESTORE_CALLEE
    ret

# sys_munmap(addr, len): removes the VMAs lying entirely inside the range; a
# range that cuts a VMA is refused with EINVAL (Linux would split it)
sys_munmap:
    SAVE_CALLEE
    test rdi, 4095
    jnz .Lmu_inval
    test rsi, rsi
    jz .Lmu_inval
    mov r12, rdi
    lea r13, [rdi + rsi + 4095]
    and r13, -4096
    GET_CURRENT rbx
    mov rbx, qword ptr [rbx + TASK_mm]
    xor r14, r14
.Lmu_check:
    cmp r14, qword ptr [rbx + MM_nr_vmas]
    jae .Lmu_remove
    imul rax, r14, VMA_SIZE
    lea rax, [rbx + rax + MM_vmas]
    mov rcx, qword ptr [rax + VMA_start]
    mov rdx, qword ptr [rax + VMA_end]
    cmp rdx, r12
    jbe .Lmu_next
    cmp rcx, r13
    jae .Lmu_next
    cmp rcx, r12
    jb .Lmu_inval
    cmp rdx, r13
    ja .Lmu_inval
.Lmu_next:
    inc r14
    jmp .Lmu_check
.Lmu_remove:
    xor r14, r14
.Lmu_loop:
    cmp r14, qword ptr [rbx + MM_nr_vmas]
    jae .Lmu_ok
    imul rax, r14, VMA_SIZE
    lea rax, [rbx + rax + MM_vmas]
    mov rcx, qword ptr [rax + VMA_start]
    cmp rcx, r12
    jb .Lmu_skip
    cmp rcx, r13
    jae .Lmu_skip
    mov rdi, rbx
    mov rsi, r14
    call remove_vma
    jmp .Lmu_loop
.Lmu_skip:
    inc r14
    jmp .Lmu_loop
.Lmu_ok:
    xor eax, eax
    jmp .Lmu_out
.Lmu_inval:
    mov rax, -EINVAL
.Lmu_out:
    RESTORE_CALLEE
    ret

# sys_direct_map_alias(uva) -> the direct-map address of the frame backing
# uva in the caller's page tables, or -EFAULT
sys_direct_map_alias:
    push rbx
    mov rbx, rdi
    mov rax, USER_HALF_END
    cmp rdi, rax
    jae .Ldma_fault
    GET_CURRENT rax
    mov rax, qword ptr [rax + TASK_mm]
    mov rdi, qword ptr [rax + MM_pgd_va]
    mov rsi, rbx
    call lookup_address
    test rax, rax
    jz .Ldma_fault
    mov rax, qword ptr [rax]
    test al, 1
    jz .Ldma_fault
    mov ecx, edx
    mov rdx, 1
    shl rdx, cl
    dec rdx
    movabs rcx, 0x000ffffffffff000
    and rax, rcx
    mov rcx, rdx
    not rcx
    and rax, rcx
    and rbx, rdx
    add rax, rbx
    PA_TO_VA rax
    pop rbx
    ret
.Ldma_fault:
    mov rax, -EFAULT
    pop rbx
    ret

# --- secretmem (mm/secretmem.c) ----------------------------------------------------------------
# secret_pool_alloc() -> pa of a free 4 KiB page from the 2 MiB block pool
secret_pool_alloc:
    push rbx
    xor ebx, ebx
.Lspa_block:
    cmp rbx, SECRET_POOL_BLOCKS
    jae .Lspa_refill
    mov rax, qword ptr [secret_pool_block + rbx * 8]
    test rax, rax
    jz .Lspa_next
    imul rdx, rbx, 64
    mov rdi, secret_pool_used
    add rdi, rdx
    xor ecx, ecx
.Lspa_word:
    mov rsi, qword ptr [rdi + rcx * 8]
    not rsi
    bsf rsi, rsi
    jnz .Lspa_take
    inc ecx
    cmp ecx, 8
    jb .Lspa_word
.Lspa_next:
    inc rbx
    jmp .Lspa_block
.Lspa_take:
    bts qword ptr [rdi + rcx * 8], rsi
    shl rcx, 6
    add rcx, rsi
    shl rcx, 12
    add rax, rcx
    pop rbx
    ret
.Lspa_refill:
    xor ebx, ebx
.Lspa_free_slot:
    cmp rbx, SECRET_POOL_BLOCKS
    jae .Lspa_none
    cmp qword ptr [secret_pool_block + rbx * 8], 0
    je .Lspa_grow
    inc rbx
    jmp .Lspa_free_slot
.Lspa_grow:
    mov edi, 9
    mov esi, FRAME_SECRET_POOL
    mov edx, HC_SENSITIVE
    call hc_alloc
    test rax, rax
    jz .Lspa_none
    mov qword ptr [secret_pool_block + rbx * 8], rax
    xor ebx, ebx
    jmp .Lspa_block
.Lspa_none:
    xor eax, eax
    pop rbx
    ret

# secret_pool_free(pa): the page goes back to its block
secret_pool_free:
    mov rax, rdi
    and rax, -0x200000
    xor ecx, ecx
.Lspf_loop:
    cmp rcx, SECRET_POOL_BLOCKS
    jae .Lspf_done
    cmp qword ptr [secret_pool_block + rcx * 8], rax
    je .Lspf_found
    inc rcx
    jmp .Lspf_loop
.Lspf_found:
    imul rcx, rcx, 64
    mov rdx, rdi
    sub rdx, rax
    shr rdx, 12
    mov rax, secret_pool_used
    add rax, rcx
    btr qword ptr [rax], rdx
.Lspf_done:
    ret

# secretmem_fault(vma, addr) -> pa of the page (allocated on first touch), or
# 0 beyond the file size (SIGBUS) or when out of memory.  Order as
# secretmem_fault: zeroed page, set_direct_map_invalid_noflush, add to the
# page cache, flush_tlb_kernel_range.
secretmem_fault:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, qword ptr [rbx + VMA_file]
    mov rax, rsi
    sub rax, qword ptr [rbx + VMA_start]
    shr rax, 12
    add rax, qword ptr [rbx + VMA_pgoff]
    mov r13, rax
    shl rax, 12
    cmp rax, qword ptr [r12 + FILE_size]
    jae .Lsf_none
    cmp r13, FILE_MAX_PAGES
    jae .Lsf_none
    mov rax, qword ptr [r12 + FILE_pages + r13 * 8]
    test rax, rax
    jnz .Lsf_done
    call secret_pool_alloc
    test rax, rax
    jz .Lsf_none
    mov r14, rax
    mov rdi, rax
    PA_TO_VA rdi
    call clear_page
    mov rdi, r14
    call set_direct_map_invalid_noflush
    test rax, rax
    jnz .Lsf_undo
    mov qword ptr [r12 + FILE_pages + r13 * 8], r14
    inc qword ptr [nr_secret_pages]
    mov rdi, r14
    PA_TO_VA rdi
    mov esi, 4096
    call flush_tlb_kernel_range
    mov rax, r14
    jmp .Lsf_done
.Lsf_undo:
    mov rdi, r14
    call secret_pool_free
.Lsf_none:
    xor eax, eax
.Lsf_done:
    RESTORE_CALLEE
    ret

# secret_release_page(pa): secretmem_free_folio: back into the direct map,
# then zeroed through it
secret_release_page:
    push rbx
    mov rbx, rdi
    call set_direct_map_default_noflush
    mov rdi, rbx
    PA_TO_VA rdi
    call clear_page
    mov rdi, rbx
    call secret_pool_free
    dec qword ptr [nr_secret_pages]
    pop rbx
    ret
