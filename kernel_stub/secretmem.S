# Secret memory (memfd_secret): first-touch faults that take a page out of the
# direct map, and release.  After mm/secretmem.c; the pages come from the
# unmapped allocator (unmapped.S), whose strategy is the unmapped= switch.

.text

# secretmem_fault(vma, addr) -> pa of the page (allocated on first touch), or
# 0 beyond the file size (SIGBUS) or when out of memory.  As secretmem_fault:
# a zeroed page out of the direct map, flushed (unmapped_page_alloc: with
# unmapped=page, set_direct_map_invalid_noflush then flush_tlb_kernel_range),
# then added to the page cache.
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
    mov rdi, r12
    mov esi, FRAME_SECRET
    call unmapped_page_alloc
    test rax, rax
    jz .Lsf_none
    mov qword ptr [r12 + FILE_pages + r13 * 8], rax
    inc qword ptr [nr_secret_pages]
    jmp .Lsf_done
.Lsf_none:
    xor eax, eax
.Lsf_done:
    RESTORE_CALLEE
    ret

# secret_release_page(file, pa): secretmem_free_folio: the page goes back to
# the unmapped allocator (unmapped=page: into the direct map, zeroed through
# it, then freed: the order 6f86d0534fdd restored)
secret_release_page:
    call unmapped_page_free
    dec qword ptr [nr_secret_pages]
    ret
