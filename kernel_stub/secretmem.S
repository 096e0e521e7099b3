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
