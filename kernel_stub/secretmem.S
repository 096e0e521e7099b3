# Secret memory (memfd_secret): the page pool, first-touch faults that take a
# page out of the direct map, and release.  After mm/secretmem.c.

.text

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
    shl rcx, PAGE_SHIFT
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
    mov edi, PMD_SHIFT - PAGE_SHIFT
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
    and rax, -PMD_SIZE
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
    shr rdx, PAGE_SHIFT
    mov rax, secret_pool_used
    add rax, rcx
    btr qword ptr [rax], rdx
.Lspf_done:
    ret

# secret_page_alloc() -> pa of a zeroed 4 KiB page, or 0: one page from the
# allocator (mainline, secretmem=page), or from the pool of 2 MiB blocks
# (secretmem=pmd-cache, the v6 series' cache)
secret_page_alloc:
    .alternative SECRETMEM_PMD_CACHE, .Lspa_page
    jmp secret_pool_alloc
.Lspa_page:
    xor edi, edi
    mov esi, FRAME_SECRET
    mov edx, HC_SENSITIVE
    jmp alloc_page

# secret_page_free(pa): back to where secret_page_alloc took it from
secret_page_free:
    .alternative SECRETMEM_PMD_CACHE, .Lspf_page
    jmp secret_pool_free
.Lspf_page:
    mov esi, HC_SENSITIVE
    jmp free_page

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
    shr rax, PAGE_SHIFT
    add rax, qword ptr [rbx + VMA_pgoff]
    mov r13, rax
    shl rax, PAGE_SHIFT
    cmp rax, qword ptr [r12 + FILE_size]
    jae .Lsf_none
    cmp r13, FILE_MAX_PAGES
    jae .Lsf_none
    mov rax, qword ptr [r12 + FILE_pages + r13 * 8]
    test rax, rax
    jnz .Lsf_done
    call secret_page_alloc
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
    mov esi, PAGE_SIZE
    .alternative !INJECT_SECRETMEM_NOFLUSH, .Lsf_flushed
    call flush_tlb_kernel_range
.Lsf_flushed:
    mov rax, r14
    jmp .Lsf_done
.Lsf_undo:
    mov rdi, r14
    call secret_page_free
.Lsf_none:
    xor eax, eax
.Lsf_done:
    RESTORE_CALLEE
    ret

# secret_release_page(pa): secretmem_free_folio: back into the direct map,
# then zeroed through it, then freed (the order 6f86d0534fdd restored:
# a page never goes back to the allocator while out of the direct map)
secret_release_page:
    push rbx
    mov rbx, rdi
    .alternative !INJECT_SECRETMEM_FREE_BEFORE_RESTORE, .Lsrp_free_first
    call set_direct_map_default_noflush
    mov rdi, rbx
    PA_TO_VA rdi
    call clear_page
    mov rdi, rbx
    call secret_page_free
    jmp .Lsrp_done
.Lsrp_free_first:
    mov rdi, rbx
    call secret_page_free
    mov rdi, rbx
    call set_direct_map_default_noflush
.Lsrp_done:
    dec qword ptr [nr_secret_pages]
    pop rbx
    ret

# --- MAP_SECRET: secret memory without a descriptor ------------------------------------
# secretmem_anon_file(len, prot, flags) -> an internal secretmem file for an
# mmap(MAP_ANONYMOUS | MAP_SECRET), or -errno.  The cover letter of
# memfd_secret anticipated a mapping flag backed by an internal file "like
# hugetlb files": as mmap(MAP_ANONYMOUS | MAP_HUGETLB) creates one with
# hugetlb_file_setup (ksys_mmap_pgoff, mm/mmap.c), which no descriptor
# refers to.  Private only, as the 2019 MAP_EXCLUSIVE RFC required (there is
# no descriptor to share through); PROT_EXEC is -EPERM, as on the noexec
# secretmem mount.  The file holds no reference of its own (refs 0): the
# mapping takes the only one, so the last unmap releases its pages through
# secretmem_free_folio's order (secret_release_page); sys_mmap drops a file
# no mapping took.
secretmem_anon_file:
    test rdx, MAP_SHARED
    jnz .Lsaf_inval
    test rsi, PROT_EXEC
    jnz .Lsaf_perm
    cmp rdi, FILE_MAX_PAGES * PAGE_SIZE
    ja .Lsaf_nomem
    push rdi
    mov edi, FILE_SECRETMEM
    call file_alloc
    pop rdi
    test rax, rax
    jz .Lsaf_nfile
    mov qword ptr [rax + FILE_size], rdi
    mov qword ptr [rax + FILE_refs], 0
    ret
.Lsaf_inval:
    mov rax, -EINVAL
    ret
.Lsaf_perm:
    mov rax, -EPERM
    ret
.Lsaf_nomem:
    mov rax, -ENOMEM
    ret
.Lsaf_nfile:
    mov rax, -ENFILE
    ret

# folio_is_secretmem(pa) -> 1 if a secretmem file holds the page (its
# folio->mapping is secretmem's), else 0.  GUP-fast asks it (gup.S).
folio_is_secretmem:
    mov rax, files
    mov ecx, MAX_FILES
.Lfis_file:
    cmp qword ptr [rax + FILE_type], FILE_SECRETMEM
    jne .Lfis_next
    xor edx, edx
.Lfis_page:
    cmp qword ptr [rax + FILE_pages + rdx * 8], rdi
    je .Lfis_yes
    inc edx
    cmp edx, FILE_MAX_PAGES
    jb .Lfis_page
.Lfis_next:
    add rax, FILE_SIZE
    dec ecx
    jnz .Lfis_file
    xor eax, eax
    ret
.Lfis_yes:
    mov eax, 1
    ret

# secretmem_resize(file, size): the resize that secretmem_setattr refuses
# (84ac013046cc), reached only with inject=secretmem_resize: the new size
# is set and, as truncate_setsize -> truncate_inode_pages_range ->
# truncate_inode_partial_folio does for any page-cache file, the page at
# the new size is zeroed from there to its end through page_address(): the
# direct map, where a secret page has no entry.  The kernel oopses.
secretmem_resize:
    mov qword ptr [rdi + FILE_size], rsi
    mov rax, rsi
    shr rax, PAGE_SHIFT
    cmp rax, FILE_MAX_PAGES
    jae .Lsr_done
    mov rax, qword ptr [rdi + FILE_pages + rax * 8]
    test rax, rax
    jz .Lsr_done
    mov rcx, rsi
    and ecx, PAGE_SIZE - 1
    jz .Lsr_done
    PA_TO_VA rax
    lea rdi, [rax + rcx]
    neg rcx
    add rcx, PAGE_SIZE
    xor eax, eax
secretmem_resize_zero:
    rep stosb
.Lsr_done:
    xor eax, eax
    ret
