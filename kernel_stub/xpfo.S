# /dev/xpfo: memory taken out of the direct map in batches.  After Andy
# Lutomirski's proposal in the thread of the 2019 ASI RFC v2 (Chartre,
# "[RFC v2 00/26] Kernel Address Space Isolation"): open the device,
# fallocate it to a size, and the memory is allocated and removed from the
# direct map at once, paying one TLB flush (one IPI round on SMP) for the
# whole batch, or none when pages already out of the direct map are cached;
# then mmap it.  Not in Linux: docs/xpfo.md has the design decisions.
#
# An xpfo file is a FILE of type FILE_XPFO: FILE_size is i_size, FILE_pages[i]
# the physical address of page i (0: none).  xpfo_cache holds pages that are
# out of the direct map, flushed and zeroed: freed xpfo pages go there first.
# Pages come from the unmapped allocator (unmapped.S, docs/frag.md), owner
# xpfo_cache (the device), so every unmapped= strategy applies: under `page`
# through unmapped_page_alloc_noflush, the batch paying its one flush; the
# block strategies hand out pages already flushed with their block.

.text

# xpfo_open(kernel copy of the path's first 9 bytes, user path) -> fd or
# -errno: sys_open's other device.  "/dev/xpfo" gives a new file (each open a
# new inode, S_IFREG, so that vfs_fallocate reaches it); anything else -ENOENT.
xpfo_open:
    push rbx
    sub rsp, 16
    mov rbx, rsi
    movabs rax, 0x6670782f7665642f      # "/dev/xpf"
    cmp qword ptr [rdi], rax
    jne .Lxo_noent
    cmp byte ptr [rdi + 8], 0x6f        # 'o'
    jne .Lxo_noent
    mov rdi, rsp
    lea rsi, [rbx + 9]
    mov edx, 1
    call copy_from_user
    test rax, rax
    jnz .Lxo_fault
    cmp byte ptr [rsp], 0
    jne .Lxo_noent
    mov edi, FILE_XPFO
    call file_alloc
    test rax, rax
    jz .Lxo_nfile
    push rax
    mov rdi, rax
    call fd_install
    pop rdi
    test rax, rax
    jns .Lxo_out
    push rax
    call file_put
    pop rax
    jmp .Lxo_out
.Lxo_nfile:
    mov rax, -ENFILE
    jmp .Lxo_out
.Lxo_fault:
    mov rax, -EFAULT
    jmp .Lxo_out
.Lxo_noent:
    mov rax, -ENOENT
.Lxo_out:
    add rsp, 16
    pop rbx
    ret

# xpfo_fallocate(file, mode, offset, len) -> 0 or -errno, after
# vfs_fallocate's generic checks (guest_memfd.S sys_fallocate).  The mount's
# s_maxbytes is XPFO_MAX_BYTES (-EFBIG past it); no hole punching
# (-EOPNOTSUPP: memory comes back only at release); page-aligned offset and
# length (-EINVAL).  Every missing page in the range is taken from the cache,
# or from the unmapped allocator (unmapped_page_alloc_noflush: zeroed, out of
# the direct map); under unmapped=page one flush then covers every page
# removed (xpfo_flush_batch), the block strategies' pages came flushed.  Without
# FALLOC_FL_KEEP_SIZE the size grows to the range's end.
xpfo_fallocate:
    SAVE_CALLEE
    sub rsp, 8 * FILE_MAX_PAGES
    mov rbx, rdi
    mov r12d, esi
    mov rax, rdx
    add rax, rcx
    cmp rax, XPFO_MAX_BYTES
    ja .Lxf_fbig
    test r12, FALLOC_FL_PUNCH_HOLE
    jnz .Lxf_opnotsupp
    mov rax, rdx
    or rax, rcx
    test rax, PAGE_SIZE - 1
    jnz .Lxf_inval
    lea r14, [rdx + rcx]
    shr r14, PAGE_SHIFT
    mov r13, rdx
    shr r13, PAGE_SHIFT
    xor r15d, r15d                      # pages removed in this batch, their pas at [rsp]
    xor ebp, ebp                        # the result
.Lxf_page:
    cmp r13, r14
    jae .Lxf_flush
    cmp qword ptr [rbx + FILE_pages + r13 * 8], 0
    jne .Lxf_next
    mov rax, qword ptr [xpfo_cache_count]
    test rax, rax
    jz .Lxf_new
    dec rax
    mov qword ptr [xpfo_cache_count], rax
    mov rax, qword ptr [xpfo_cache + rax * 8]
    inc qword ptr [nr_xpfo_cache_hits]
    jmp .Lxf_store
.Lxf_new:
    mov rdi, xpfo_cache                 # the owner: the device, whose cache outlives files
    mov esi, FRAME_XPFO
    call unmapped_page_alloc_noflush
    test rax, rax
    jz .Lxf_nomem
    inc qword ptr [nr_xpfo_removed]
    cmp qword ptr [unmapped_strategy], UNMAPPED_PAGE
    jne .Lxf_store                      # a block strategy's page came flushed
    mov qword ptr [rsp + r15 * 8], rax  # page: the batch owes its flush
    inc r15
.Lxf_store:
    mov qword ptr [rbx + FILE_pages + r13 * 8], rax
    inc qword ptr [nr_xpfo_pages]
.Lxf_next:
    inc r13
    jmp .Lxf_page
.Lxf_nomem:
    mov rbp, -ENOMEM
.Lxf_flush:
    test r15, r15
    jz .Lxf_size
    mov rdi, rsp
    mov rsi, r15
    .alternative !INJECT_XPFO_NOFLUSH, .Lxf_size
    call xpfo_flush_batch
.Lxf_size:
    test rbp, rbp
    jnz .Lxf_done
    test r12, FALLOC_FL_KEEP_SIZE
    jnz .Lxf_done
    shl r14, PAGE_SHIFT
    cmp r14, qword ptr [rbx + FILE_size]
    jbe .Lxf_done
    mov qword ptr [rbx + FILE_size], r14
    jmp .Lxf_done
.Lxf_fbig:
    mov rbp, -EFBIG
    jmp .Lxf_done
.Lxf_opnotsupp:
    mov rbp, -EOPNOTSUPP
    jmp .Lxf_done
.Lxf_inval:
    mov rbp, -EINVAL
.Lxf_done:
    mov rax, rbp
    add rsp, 8 * FILE_MAX_PAGES
    RESTORE_CALLEE
    ret

# xpfo_flush_batch(array of pas, n): one flush for every page the batch took
# out of the direct map, as cpa_flush (arch/x86/mm/pat/set_memory.c) does for
# a set_memory call: one on_each_cpu round that invalidates each page up to
# tlb_single_page_flush_ceiling pages, else everything
xpfo_flush_batch:
    push rbx
    push r12
    mov rbx, rdi
    lea r12, [rdi + rsi * 8]
    inc qword ptr [nr_xpfo_flushes]
    cmp rsi, TLB_SINGLE_PAGE_FLUSH_CEILING
    ja .Lxfb_all
    inc qword ptr [nr_kernel_tlb_flushes]
.Lxfb_page:
    cmp rbx, r12
    jae .Lxfb_done
    mov rdi, qword ptr [rbx]
    PA_TO_VA rdi
    call flush_tlb_one_kernel
    add rbx, 8
    jmp .Lxfb_page
.Lxfb_all:
    call flush_tlb_all
.Lxfb_done:
    pop r12
    pop rbx
    ret

# xpfo_mmap(file, prot, flags) -> VMA flags or -errno: the xpfo mount is
# noexec, as secretmem's and guest_memfd's (PROT_EXEC: -EPERM, from do_mmap);
# shared mappings only (-EINVAL), as secretmem_mmap
xpfo_mmap:
    test rsi, PROT_EXEC
    jnz .Lxm_perm
    test rdx, MAP_SHARED
    jz .Lxm_inval
    mov eax, VM_SHARED + VM_XPFO
    ret
.Lxm_perm:
    mov rax, -EPERM
    ret
.Lxm_inval:
    mov rax, -EINVAL
    ret

# xpfo_fault(vma, addr) -> pa to map, or 0 for SIGBUS: beyond i_size, or a
# page fallocate never allocated (a fault allocates nothing: the memory comes
# in batches, from fallocate only)
xpfo_fault:
    mov rcx, qword ptr [rdi + VMA_file]
    mov rax, rsi
    sub rax, qword ptr [rdi + VMA_start]
    shr rax, PAGE_SHIFT
    add rax, qword ptr [rdi + VMA_pgoff]
    mov rdx, rax
    shl rdx, PAGE_SHIFT
    cmp rdx, qword ptr [rcx + FILE_size]
    jae .Lxfl_bus
    cmp rax, FILE_MAX_PAGES
    jae .Lxfl_bus
    mov rax, qword ptr [rcx + FILE_pages + rax * 8]
    ret
.Lxfl_bus:
    xor eax, eax
    ret

# xpfo_release(file): the last reference is gone.  Each page is zeroed
# through the temporary mapping (guest_memfd.S gmem_scrub_unmapped: map,
# clear, unmap with its local flush), then goes to the cache while it has
# room (still out of the direct map: no flush now, none at its next use), or
# else back to the unmapped allocator (unmapped_page_free: under `page` back
# into the direct map, which needs no flush, and freed; the block strategies
# keep it out, in their cache).
xpfo_release:
    push rbx
    push r12
    push r13
    mov rbx, rdi
    xor r12d, r12d
.Lxr_page:
    cmp r12, FILE_MAX_PAGES
    jae .Lxr_done
    mov r13, qword ptr [rbx + FILE_pages + r12 * 8]
    test r13, r13
    jz .Lxr_next
    mov qword ptr [rbx + FILE_pages + r12 * 8], 0
    dec qword ptr [nr_xpfo_pages]
    mov rdi, r13
    call gmem_scrub_unmapped
    mov rax, qword ptr [xpfo_cache_count]
    cmp rax, XPFO_CACHE_PAGES
    jae .Lxr_restore
    mov qword ptr [xpfo_cache + rax * 8], r13
    inc qword ptr [xpfo_cache_count]
    jmp .Lxr_next
.Lxr_restore:
    mov rdi, xpfo_cache
    mov rsi, r13
    call unmapped_page_free
    inc qword ptr [nr_xpfo_restored]
.Lxr_next:
    inc r12
    jmp .Lxr_page
.Lxr_done:
    pop r13
    pop r12
    pop rbx
    ret

.data
nr_xpfo_pages:          .quad 0     # pages xpfo files hold now
nr_xpfo_removed:        .quad 0     # pages taken from the unmapped allocator (since boot)
nr_xpfo_flushes:        .quad 0     # flushes the batches paid (since boot)
nr_xpfo_cache_hits:     .quad 0     # pages served from the cache (since boot)
nr_xpfo_restored:       .quad 0     # pages given back to the unmapped allocator (since boot)
xpfo_cache_count:       .quad 0     # pages in the cache now
xpfo_cache:             .zero 8 * XPFO_CACHE_PAGES   # out of the direct map, flushed, zeroed
