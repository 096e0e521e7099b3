# TLB flushes.  After arch/x86/mm/tlb.c and arch/x86/include/asm/tlbflush.h.

.text

# native_flush_tlb_global: INVPCID type 2 (all PCIDs, globals included)
flush_tlb_all:
    inc qword ptr [nr_kernel_tlb_flushes]
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
    btc rax, X86_CR4_PGE_BIT
    .cr4_write
    mov cr4, rax
    btc rax, X86_CR4_PGE_BIT
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
    inc rax                                     # user_pcid(asid) = kern_pcid(asid) | the user bit
    bts rax, X86_CR3_PTI_PCID_USER_BIT
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

# flush_tlb_one_kernel(va): with PTI, or the 2025 RFC's ASI, kernel mappings
# are not global, so every other ASID must be flushed too (invalidate_other;
# RFC v2 20/29 adds the ASI case)
flush_tlb_one_kernel:
    call flush_tlb_one_user
    cmp qword ptr [feature_kernel_nonglobal], 0
    je .Lftk_done
    mov qword ptr gs:[tlbstate_invalidate_other], 1
.Lftk_done:
    ret

# flush_tlb_mm_local(): the current mm's TLB entries and paging-structure
# caches, on this CPU (flush_tlb_local): the user PCID lazily, the kernel PCID
# by reloading CR3 without NOFLUSH, and, with ASI, every ASI PCID of this ASID
# lazily (they are entered only with a flushing CR3 write)
flush_tlb_mm_local:
    mov edi, ASI_EXIT_TLB_FLUSH         # the restricted CR3 is unstable: leave ASI first (RFC v2 20/29)
    call asi_exit
    mov rdi, qword ptr gs:[tlbstate_loaded_mm_asid]
    call invalidate_user_asid
    mov rax, cr3
    btr rax, X86_CR3_PCID_NOFLUSH_BIT
    .cr3_write
    mov cr3, rax
    ret

# flush_tlb_kernel_range(va, size): page by page up to 33 pages
# (tlb_single_page_flush_ceiling), else everything
flush_tlb_kernel_range:
    cmp rsi, TLB_SINGLE_PAGE_FLUSH_CEILING * PAGE_SIZE
    ja flush_tlb_all
    inc qword ptr [nr_kernel_tlb_flushes]
    push rbx
    push r12
    mov rbx, rdi
    lea r12, [rdi + rsi]
.Lftkr_loop:
    cmp rbx, r12
    jae .Lftkr_done
    mov rdi, rbx
    call flush_tlb_one_kernel
    add rbx, PAGE_SIZE
    jmp .Lftkr_loop
.Lftkr_done:
    pop r12
    pop rbx
    ret

.data
# kernel TLB shootdowns (flush_tlb_all, flush_tlb_kernel_range, and the batch
# flush of xpfo.S): on SMP each is one on_each_cpu round of IPIs
nr_kernel_tlb_flushes:  .quad 0
