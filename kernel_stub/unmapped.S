# The unmapped allocator: pages taken out of the direct map, for every user of
# such memory (memfd_secret and MAP_SECRET, guest_memfd NO_DIRECT_MAP,
# /dev/xpfo).  One machine switch picks the strategy
# (unmapped=, the boot word unmapped_strategy; docs/frag.md):
#
#   page            mm/secretmem.c (5.14+): one page from the page allocator,
#                   set_direct_map_invalid_noflush (splitting 1G->2M->4K on
#                   demand), flush_tlb_kernel_range of the page; freed with
#                   set_direct_map_default_noflush, cleared, given back
#   pmd-cache       the memfd_secret v6 series (2020): a per-owner (per-file)
#                   cache refilled with PMD-size pages, cleared and taken out
#                   of the direct map whole (the PMD loses P, no split) with
#                   one flush; freed pages stay in their file's cache; the
#                   cache's blocks are restored, cleared and freed when the
#                   file is released
#   reserved        a pool set aside at boot (Python removed its PMDs from the
#                   direct map and filled the block table): never refilled,
#                   never given back
#   unmapped-alloc  Rapoport's unmapped_alloc / __GFP_UNMAPPED RFC (2023): one
#                   cache for every user, refilled with whole PMD blocks; a
#                   block whose pages are all free goes back beyond one kept
#
# A page handed out again from a cache other owners draw from (reserved,
# unmapped-alloc) is cleared on the way out through the temporary kernel
# mapping (gmem_scrub_unmapped, guest_memfd.S); a fresh block was cleared
# through the direct map before it left.  collapse=on folds a direct-map table
# whose entries are whole again back into a large page (x86's 41d88484c71c
# collapse_large_pages), flushing before the table is freed.
#
# The API: unmapped_page_alloc(owner, kind) -> pa (zeroed, out of the direct
# map and flushed) or 0; unmapped_page_free(owner, pa); unmapped_release(owner)
# when the owner (a file) is gone.  'owner' is any address that names the user
# (a FILE; /dev/xpfo's is the device, xpfo_cache, since its cache outlives its
# files); 'kind' the FRAME_* kind of the page (FRAME_SECRET, FRAME_GUEST_MEMFD,
# FRAME_XPFO), which also selects the user's flush injection.
# unmapped_page_alloc_noflush(owner, kind) is unmapped_page_alloc for a caller
# that flushes a batch itself (xpfo_fallocate, as cpa_flush does once for a
# set_memory range): under `page` the page leaves the direct map unflushed and
# the caller owes the flush; the block strategies' pages come flushed anyway
# (their block's one flush at refill, or none for the boot pool), so it
# differs only under `page`.  All four pass through unmapped_call, whose two hooks let Python count the TLB model's
# flushes issued inside the allocator (Machine.stats: unmapped_tlb_*).

.text

unmapped_page_alloc:
    xor eax, eax
    jmp unmapped_call

unmapped_page_free:
    mov eax, 1
    jmp unmapped_call

unmapped_release:
    mov eax, 2
    jmp unmapped_call

unmapped_page_alloc_noflush:
    mov eax, 3
    jmp unmapped_call

unmapped_call:
    .hook unmapped_enter
    xor edx, edx
    test eax, eax
    jz .Luc_alloc
    mov edx, 1
    cmp eax, 3
    je .Luc_alloc
    cmp eax, 1
    je .Luc_free
    call unmapped_release_owner
    jmp .Luc_leave
.Luc_free:
    call unmapped_free_page
    jmp .Luc_leave
.Luc_alloc:
    call unmapped_alloc_page
.Luc_leave:
    .hook unmapped_leave
    ret

# unmapped_flush(va, size, kind): flush_tlb_kernel_range, unless the injection
# of the page's user leaves it out
unmapped_flush:
    .alternative INJECT_SECRETMEM_NOFLUSH, .Lufl_gmem
    cmp edx, FRAME_SECRET
    je .Lufl_skip
.Lufl_gmem:
    .alternative INJECT_GMEM_NOFLUSH, .Lufl_xpfo
    cmp edx, FRAME_GUEST_MEMFD
    je .Lufl_skip
.Lufl_xpfo:
    .alternative INJECT_XPFO_NOFLUSH, .Lufl_flush
    cmp edx, FRAME_XPFO
    je .Lufl_skip
.Lufl_flush:
    jmp flush_tlb_kernel_range
.Lufl_skip:
    ret

# unmapped_alloc_page(owner, kind, noflush) -> pa or 0
unmapped_alloc_page:
    SAVE_CALLEE
    mov r12, rdi
    mov r13, rsi
    mov r15, rdx
    mov rax, qword ptr [unmapped_strategy]
    cmp rax, UNMAPPED_PAGE
    je .Luap_page
    cmp rax, UNMAPPED_PMD_CACHE
    je .Luap_cache
    mov r12d, UNMAPPED_SHARED           # reserved, unmapped-alloc: one cache for all
.Luap_cache:
    mov rdi, r12
    call ublk_find_free
    test rax, rax
    jnz .Luap_take
    cmp qword ptr [unmapped_strategy], UNMAPPED_RESERVED
    je .Luap_none                       # the pool is all there is
    mov rdi, r12
    mov rsi, r13
    call ublk_refill
    test rax, rax
    jz .Luap_none
.Luap_take:
    mov rdi, rax
    call ublk_take
    jmp .Luap_out
.Luap_page:
    xor edi, edi
    mov rsi, r13
    mov edx, HC_SENSITIVE
    call alloc_page
    test rax, rax
    jz .Luap_none
    mov r14, rax
    mov rdi, rax
    PA_TO_VA rdi
    call clear_page
    mov rdi, r14
    call set_direct_map_invalid_noflush
    test rax, rax
    jnz .Luap_undo
    mov rax, r14
    test r15, r15
    jnz .Luap_out                       # the caller flushes its batch
    mov rdi, r14
    PA_TO_VA rdi
    mov esi, PAGE_SIZE
    mov rdx, r13
    call unmapped_flush
    mov rax, r14
    jmp .Luap_out
.Luap_undo:
    mov rdi, r14
    mov esi, HC_SENSITIVE
    call free_page
.Luap_none:
    xor eax, eax
.Luap_out:
    RESTORE_CALLEE
    ret

# unmapped_free_page(owner, pa)
unmapped_free_page:
    push rbx
    push r12
    mov rbx, rsi
    mov r12, rdi
    cmp qword ptr [unmapped_strategy], UNMAPPED_PAGE
    jne .Lufp_cache
    # secretmem_free_folio: back into the direct map, cleared through it, freed
    # (never freed while out of the direct map: 6f86d0534fdd)
    .alternative !INJECT_SECRETMEM_FREE_BEFORE_RESTORE, .Lufp_free_first
    mov rdi, rbx
    call set_direct_map_default_noflush
    mov rdi, rbx
    PA_TO_VA rdi
    call clear_page
    mov rdi, rbx
    mov esi, HC_SENSITIVE
    call free_page
    jmp .Lufp_collapse
.Lufp_free_first:
    mov rdi, rbx
    mov esi, HC_SENSITIVE
    call free_page
    mov rdi, rbx
    call set_direct_map_default_noflush
.Lufp_collapse:
    mov rdi, rbx
    call unmapped_collapse
    jmp .Lufp_out
.Lufp_cache:
    mov rdi, rbx
    call ublk_of
    test rax, rax
    jz .Lufp_out
    mov rcx, rbx
    sub rcx, qword ptr [rax + UBLK_pa]
    shr rcx, PAGE_SHIFT
    mov rdx, rcx
    shr rdx, 6                          # the qword of the map
    and ecx, 63                         # the bit in it
    btr qword ptr [rax + UBLK_map + rdx * 8], rcx
    cmp qword ptr [unmapped_strategy], UNMAPPED_PMD_CACHE
    je .Lufp_used                       # v6: the page stays with its file
    bts qword ptr [rax + UBLK_dirty + rdx * 8], rcx   # cleared before another user gets it
.Lufp_used:
    dec qword ptr [rax + UBLK_used]
    jnz .Lufp_out
    cmp qword ptr [unmapped_strategy], UNMAPPED_ALLOC
    jne .Lufp_out
    mov rdi, rax
    call ublk_trim
.Lufp_out:
    pop r12
    pop rbx
    ret

# unmapped_release_owner(owner): the file is gone; with pmd-cache its blocks
# go back (v6's secretmem_cleanup_chunk: restored, cleared, freed)
unmapped_release_owner:
    cmp qword ptr [unmapped_strategy], UNMAPPED_PMD_CACHE
    jne .Luro_done
    push rbx
    push r12
    push r13
    mov r12, rdi
    mov rbx, unmapped_blocks
    mov r13d, UNMAPPED_MAX_BLOCKS
.Luro_loop:
    cmp qword ptr [rbx + UBLK_pa], 0
    je .Luro_next
    cmp qword ptr [rbx + UBLK_owner], r12
    jne .Luro_next
    mov rdi, rbx
    call ublk_drop
.Luro_next:
    add rbx, UBLK_SIZE
    dec r13d
    jnz .Luro_loop
    pop r13
    pop r12
    pop rbx
.Luro_done:
    ret

# --- the block table ---------------------------------------------------------------

# ublk_find_free(owner) -> a block of owner with a free page, or 0
ublk_find_free:
    mov rax, unmapped_blocks
    mov ecx, UNMAPPED_MAX_BLOCKS
.Lubf_loop:
    cmp qword ptr [rax + UBLK_pa], 0
    je .Lubf_next
    cmp qword ptr [rax + UBLK_owner], rdi
    jne .Lubf_next
    cmp qword ptr [rax + UBLK_used], PTRS_PER_PTE
    jb .Lubf_done
.Lubf_next:
    add rax, UBLK_SIZE
    dec ecx
    jnz .Lubf_loop
    xor eax, eax
.Lubf_done:
    ret

# ublk_of(pa) -> the block holding pa, or 0
ublk_of:
    and rdi, -PMD_SIZE
    mov rax, unmapped_blocks
    mov ecx, UNMAPPED_MAX_BLOCKS
.Lubo_loop:
    cmp qword ptr [rax + UBLK_pa], rdi
    je .Lubo_done
    add rax, UBLK_SIZE
    dec ecx
    jnz .Lubo_loop
    xor eax, eax
.Lubo_done:
    ret

# ublk_take(block) -> pa of its lowest free page, marked in use; a page
# another user of a shared cache freed is cleared on the way out, through the
# temporary kernel mapping (as __GFP_ZERO would)
ublk_take:
    push rbx
    lea rsi, [rdi + UBLK_map]
    xor ecx, ecx
.Lubt_word:
    mov rdx, qword ptr [rsi + rcx * 8]
    not rdx
    bsf rdx, rdx
    jnz .Lubt_found
    inc ecx
    cmp ecx, 8
    jb .Lubt_word
    xor eax, eax
    pop rbx
    ret
.Lubt_found:
    bts qword ptr [rsi + rcx * 8], rdx  # (bit offsets below 64: one qword, as the tracer models it)
    inc qword ptr [rdi + UBLK_used]
    mov rbx, rcx
    shl rbx, 6
    add rbx, rdx                        # the page's index in the block
    shl rbx, PAGE_SHIFT
    add rbx, qword ptr [rdi + UBLK_pa]
    btr qword ptr [rdi + UBLK_dirty + rcx * 8], rdx
    jnc .Lubt_clean
    mov rdi, rbx
    call gmem_scrub_unmapped
.Lubt_clean:
    mov rax, rbx
    pop rbx
    ret

# ublk_refill(owner, kind) -> a new block of owner, or 0: a PMD-size page from
# the page allocator, cleared, out of the direct map whole, one flush
ublk_refill:
    SAVE_CALLEE
    mov r12, rdi
    mov r13, rsi
    mov rbx, unmapped_blocks
    mov ecx, UNMAPPED_MAX_BLOCKS
.Lubr_slot:
    cmp qword ptr [rbx + UBLK_pa], 0
    je .Lubr_alloc
    add rbx, UBLK_SIZE
    dec ecx
    jnz .Lubr_slot
    jmp .Lubr_none
.Lubr_alloc:
    mov edi, PMD_SHIFT - PAGE_SHIFT
    mov esi, FRAME_SECRET_POOL
    mov edx, HC_SENSITIVE
    call alloc_page
    test rax, rax
    jz .Lubr_none
    mov r14, rax
    mov rdi, rax
    call clear_block
    mov rdi, r14
    call set_direct_map_block_invalid_noflush
    test rax, rax
    jnz .Lubr_undo
    mov rdi, r14
    PA_TO_VA rdi
    mov esi, PMD_SIZE
    mov rdx, r13
    call unmapped_flush
    mov qword ptr [rbx + UBLK_pa], r14
    mov qword ptr [rbx + UBLK_owner], r12
    inc qword ptr [nr_unmapped_blocks]
    mov rax, rbx
    jmp .Lubr_out
.Lubr_undo:
    mov rdi, r14
    mov esi, HC_SENSITIVE
    call free_page
.Lubr_none:
    xor eax, eax
.Lubr_out:
    RESTORE_CALLEE
    ret

# ublk_drop(block): back into the direct map as one 2M page, cleared, freed
ublk_drop:
    push rbx
    push r12
    mov rbx, rdi
    mov r12, qword ptr [rbx + UBLK_pa]
    mov rdi, r12
    call set_direct_map_block_default_noflush
    mov rdi, r12
    call clear_block
    mov rdi, r12
    mov esi, HC_SENSITIVE
    call free_page
    mov rdi, rbx
    xor eax, eax
    mov ecx, UBLK_SIZE / 8
    rep stosq
    dec qword ptr [nr_unmapped_blocks]
    mov rdi, r12
    call unmapped_collapse
    pop r12
    pop rbx
    ret

# ublk_trim(block): unmapped-alloc, 'block' has just become all free: keep one
# free block in reserve, so another all-free block goes back
ublk_trim:
    mov rax, unmapped_blocks
    mov ecx, UNMAPPED_MAX_BLOCKS
.Lubm_loop:
    cmp rax, rdi
    je .Lubm_next
    cmp qword ptr [rax + UBLK_pa], 0
    je .Lubm_next
    cmp qword ptr [rax + UBLK_used], 0
    jne .Lubm_next
    mov rdi, rax
    jmp ublk_drop
.Lubm_next:
    add rax, UBLK_SIZE
    dec ecx
    jnz .Lubm_loop
    ret

# clear_block(pa): the 512 pages of a 2 MiB block, through the direct map
clear_block:
    push rbx
    push r12
    mov rbx, rdi
    PA_TO_VA rbx
    mov r12d, PTRS_PER_PTE
.Lcb_loop:
    mov rdi, rbx
    call clear_page
    add rbx, PAGE_SIZE
    dec r12d
    jnz .Lcb_loop
    pop r12
    pop rbx
    ret

# --- the direct map at PMD level (arch/x86/mm/pat/set_memory.c) ----------------------

# direct_map_entry(pa, shift, split) -> address of the direct-map entry for pa
# at the level of 'shift' (present or not), or 0.  A large page above that
# level is split first when 'split' is 1; else the answer is 0.
direct_map_entry:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12d, esi
    mov r13d, edx
.Ldme_again:
    mov rdi, init_pgd_va
    mov rdi, qword ptr [rdi]
    mov rsi, rbx
    PA_TO_VA rsi
    mov ecx, PGDIR_SHIFT
.Ldme_loop:
    mov rax, rsi
    shr rax, cl
    and eax, 511
    lea r8, [rdi + rax * 8]
    cmp ecx, r12d
    je .Ldme_found
    mov rax, qword ptr [r8]
    test al, _PAGE_PRESENT
    jz .Ldme_none
    cmp ecx, PS_RESERVED_SHIFT
    jae .Ldme_down
    test al, _PAGE_PSE
    jnz .Ldme_large
.Ldme_down:
    movabs rdx, PTE_PFN_MASK
    and rax, rdx
    PA_TO_VA rax
    mov rdi, rax
    sub ecx, PMD_SHIFT - PAGE_SHIFT
    jmp .Ldme_loop
.Ldme_large:
    test r13d, r13d
    jz .Ldme_none
    mov rdi, r8
    mov esi, ecx
    call split_large_page
    test rax, rax
    jz .Ldme_again
.Ldme_none:
    xor eax, eax
    jmp .Ldme_out
.Ldme_found:
    mov rax, r8
.Ldme_out:
    RESTORE_CALLEE
    ret

# set_direct_map_block_invalid_noflush(pa): a whole 2 MiB block leaves the
# direct map at once (set_direct_map_invalid_noflush over the PMD's range: CPA
# keeps a large page whose whole range changes): the PMD loses P, RW and
# Global, its PFN stored inverted (pgtable-invert.h).  A 1G page above it is
# split first.  -EINVAL when the block is already split or out.
set_direct_map_block_invalid_noflush:
    push rbx
    mov rbx, rdi
    mov esi, PMD_SHIFT
    mov edx, 1
    call direct_map_entry
    test rax, rax
    jz .Lsbi_fail
    mov rcx, qword ptr [rax]
    test cl, _PAGE_PRESENT
    jz .Lsbi_fail
    test cl, _PAGE_PSE
    jz .Lsbi_fail
    mov rdx, rcx
    and edx, _PAGE_PAT_LARGE
    movabs rsi, PTE_FLAGS_MASK
    and rcx, rsi
    and rcx, NOT_PAGE_INVALID_CLEARS
    or rcx, rdx
    mov rdx, rbx
    not rdx
    movabs rsi, PTE_PFN_MASK
    and rsi, -PMD_SIZE
    and rdx, rsi
    or rcx, rdx
    SET_ENTRY rax, rcx
    xor eax, eax
    pop rbx
    ret
.Lsbi_fail:
    mov rax, -EINVAL
    pop rbx
    ret

# set_direct_map_block_default_noflush(pa): the block's PMD present and
# writable again, PFN un-inverted (more rights: no flush)
set_direct_map_block_default_noflush:
    push rbx
    mov rbx, rdi
    mov esi, PMD_SHIFT
    xor edx, edx
    call direct_map_entry
    test rax, rax
    jz .Lsbd_fail
    mov rcx, qword ptr [rax]
    test cl, _PAGE_PSE
    jz .Lsbd_fail
    mov rdx, rcx
    and edx, _PAGE_PAT_LARGE
    movabs rsi, PTE_FLAGS_MASK
    and rcx, rsi
    or rcx, _PAGE_PRESENT + _PAGE_RW
    or rcx, rdx
    mov rdx, rbx
    and rdx, -PMD_SIZE
    or rcx, rdx
    SET_ENTRY rax, rcx
    xor eax, eax
    pop rbx
    ret
.Lsbd_fail:
    mov rax, -EINVAL
    pop rbx
    ret

# --- collapse (41d88484c71c: x86/mm/pat: restore large ROX pages after fragmentation) --

# unmapped_collapse(pa): with collapse=on, the PTE table holding pa becomes a
# 2M page again, then the PMD table a 1G page, each when its 512 entries map
# contiguous frames with the same flags
unmapped_collapse:
    cmp qword ptr [unmapped_collapse_on], 0
    je .Lucl_done
    push rbx
    mov rbx, rdi
    mov esi, PMD_SHIFT
    call collapse_at
    mov rdi, rbx
    mov esi, PUD_SHIFT
    call collapse_at
    pop rbx
.Lucl_done:
    ret

# collapse_at(pa, shift) -> 1 if the entry at 'shift' for pa pointed at a
# whole table and is now one large page (collapse_pmd_page, collapse_pud_page):
# the entry written, direct_pages_count moved, the TLB flushed, and only then
# the table freed
collapse_at:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12d, esi
    xor edx, edx
    call direct_map_entry
    test rax, rax
    jz .Lca_no
    mov r13, rax                        # the entry
    mov rax, qword ptr [r13]
    test al, _PAGE_PRESENT
    jz .Lca_no
    test al, _PAGE_PSE
    jnz .Lca_no                         # already large
    movabs rdx, PTE_PFN_MASK
    and rax, rdx
    mov r14, rax                        # the table's pa
    mov r15, rax
    PA_TO_VA r15
    mov rax, qword ptr [r15]            # the first entry decides
    test al, _PAGE_PRESENT
    jz .Lca_no
    cmp r12d, PMD_SHIFT
    je .Lca_flags
    test al, _PAGE_PSE                  # a PMD table collapses only over 2M pages
    jz .Lca_no
.Lca_flags:
    movabs rdx, PTE_FLAGS_MASK
    mov rbp, rax
    and rbp, rdx                        # flags
    movabs rdx, PTE_PFN_MASK
    and rax, rdx                        # the first frame
    mov ecx, r12d
    mov rdx, 1
    shl rdx, cl
    dec rdx
    test rax, rdx
    jnz .Lca_no                         # not aligned to the large page
    push rax
    mov ecx, r12d
    sub ecx, PMD_SHIFT - PAGE_SHIFT
    mov r8, 1
    shl r8, cl                          # the step between frames
    xor ecx, ecx
    mov rsi, rax
.Lca_scan:
    mov rax, qword ptr [r15 + rcx * 8]
    movabs rdx, PTE_FLAGS_MASK
    and rdx, rax
    cmp rdx, rbp
    jne .Lca_differ
    movabs rdx, PTE_PFN_MASK
    and rax, rdx
    cmp rax, rsi
    jne .Lca_differ
    add rsi, r8
    inc ecx
    cmp ecx, PTRS_PER_PTE
    jb .Lca_scan
    pop rax
    cmp r12d, PMD_SHIFT
    jne .Lca_write
    btr rbp, _PAGE_BIT_PAT              # pgprot_4k_2_large: PAT 7 -> 12, PSE
    jnc .Lca_pse
    bts rbp, _PAGE_BIT_PAT_LARGE
.Lca_pse:
    bts rbp, _PAGE_BIT_PSE
.Lca_write:
    or rax, rbp
    SET_ENTRY r13, rax
    cmp r12d, PMD_SHIFT
    jne .Lca_count_1g
    sub qword ptr [direct_pages_count_4k], PTRS_PER_PTE
    inc qword ptr [direct_pages_count_2m]
    inc qword ptr [direct_map_level2_collapses]
    jmp .Lca_flush
.Lca_count_1g:
    sub qword ptr [direct_pages_count_2m], PTRS_PER_PTE
    inc qword ptr [direct_pages_count_1g]
    inc qword ptr [direct_map_level3_collapses]
.Lca_flush:
    .alternative !INJECT_COLLAPSE_NOFLUSH, .Lca_free
    call flush_tlb_all
.Lca_free:
    mov rdi, r14
    xor esi, esi
    call free_page
    mov eax, 1
    jmp .Lca_out
.Lca_differ:
    pop rax
.Lca_no:
    xor eax, eax
.Lca_out:
    RESTORE_CALLEE
    ret
