# guest_memfd: memory a VM owns, reachable from user space only where it is
# shared.  After virt/kvm/guest_memfd.c (Linux 6.8-6.18), the direct-map-removal
# series (GUEST_MEMFD_FLAG_NO_DIRECT_MAP, v12, 2026) and the in-place conversion
# RFC (KVM_SET_MEMORY_ATTRIBUTES2 on the guest_memfd, 2025/26).  docs/guest_memfd.md.
#
# A guest_memfd is a FILE of type FILE_GUEST_MEMFD: FILE_size is i_size,
# FILE_flags the creation flags, FILE_pages[0] the kernel address of its index
# (GMEM_MAX_PAGES entries: the page's physical address, or 0, | GMEM_PRIVATE),
# FILE_pages[1] the VM file it was created on (a reference, as kvm_get_kvm).

.text

# gmem_entry(file, index) -> address of the index entry
.macro GMEM_ENTRY dst, file, index
    mov \dst, qword ptr [\file + FILE_pages]
    lea \dst, [\dst + \index * 8]
.endm

# kvm_gmem_create(vm file, user args) -> fd or -errno (kvm_gmem_create: unknown
# flags, then a size that is 0 or not page-aligned, are -EINVAL)
kvm_gmem_create:
    SAVE_CALLEE
    sub rsp, KVM_CREATE_GUEST_MEMFD_SIZE
    mov rbx, rdi
    mov rdi, rsp
    mov edx, KVM_CREATE_GUEST_MEMFD_SIZE
    call copy_from_user
    test rax, rax
    jnz .Lgc_fault
    mov r12, qword ptr [rsp]            # size
    mov r13, qword ptr [rsp + 8]        # flags
    mov rax, NOT_GUEST_MEMFD_VALID_FLAGS
    test r13, rax
    jnz .Lgc_inval
    test r12, r12
    jle .Lgc_inval
    test r12, PAGE_SIZE - 1
    jnz .Lgc_inval
    cmp r12, GMEM_MAX_PAGES * PAGE_SIZE
    ja .Lgc_nomem                       # the stub's limit (docs/guest_memfd.md)
    xor edi, edi
    mov esi, FRAME_KERNEL_DATA
    xor edx, edx
    call alloc_page
    test rax, rax
    jz .Lgc_nomem
    mov r14, rax
    mov edi, FILE_GUEST_MEMFD
    call file_alloc
    test rax, rax
    jz .Lgc_nfile
    mov r15, rax
    mov qword ptr [r15 + FILE_size], r12
    mov qword ptr [r15 + FILE_flags], r13
    mov rdi, r14
    PA_TO_VA rdi
    mov qword ptr [r15 + FILE_pages], rdi
    mov qword ptr [r15 + FILE_pages + 8], rbx
    inc qword ptr [rbx + FILE_refs]
    # every page starts private, or shared with INIT_SHARED
    xor eax, eax
    test r13, GUEST_MEMFD_FLAG_INIT_SHARED
    jnz .Lgc_fill
    mov eax, GMEM_PRIVATE
.Lgc_fill:
    mov ecx, GMEM_MAX_PAGES
    rep stosq
    mov rdi, r15
    call fd_install
    test rax, rax
    jns .Lgc_out
    push rax
    mov rdi, r15
    call file_put
    pop rax
    jmp .Lgc_out
.Lgc_nfile:
    mov rdi, r14
    xor esi, esi
    call free_page
    mov rax, -ENFILE
    jmp .Lgc_out
.Lgc_fault:
    mov rax, -EFAULT
    jmp .Lgc_out
.Lgc_nomem:
    mov rax, -ENOMEM
    jmp .Lgc_out
.Lgc_inval:
    mov rax, -EINVAL
.Lgc_out:
    add rsp, KVM_CREATE_GUEST_MEMFD_SIZE
    RESTORE_CALLEE
    ret

# gmem_get_page(file, index) -> pa of the page at index, allocated and zeroed
# on first use (kvm_gmem_get_folio, clear_highpage), or 0 when memory is out.
# With NO_DIRECT_MAP the page comes from the unmapped allocator (unmapped.S):
# zeroed, out of the direct map and flushed, as the series'
# kvm_gmem_folio_zap_direct_map leaves it.
gmem_get_page:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    GMEM_ENTRY r13, rbx, r12
    mov rax, qword ptr [r13]
    and rax, -PAGE_SIZE
    jnz .Lggp_out
    test qword ptr [rbx + FILE_flags], GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    jz .Lggp_mapped
    mov rdi, rbx
    mov esi, FRAME_GUEST_MEMFD
    call unmapped_page_alloc
    test rax, rax
    jz .Lggp_out
    inc qword ptr [nr_gmem_unmapped_pages]
    jmp .Lggp_store
.Lggp_mapped:
    xor edi, edi
    mov esi, FRAME_GUEST_MEMFD
    mov edx, HC_SENSITIVE
    call alloc_page
    test rax, rax
    jz .Lggp_out
    mov r14, rax
    mov rdi, rax
    PA_TO_VA rdi
    call clear_page
    mov rax, r14
.Lggp_store:
    or qword ptr [r13], rax
    inc qword ptr [nr_gmem_pages]
.Lggp_out:
    RESTORE_CALLEE
    ret

# gmem_free_page(file, pa): truncation's end of a page (free_folio): with
# NO_DIRECT_MAP it is first cleared through a temporary mapping (its contents
# never reappear in the direct map), then goes back to the unmapped allocator
# (the series' kvm_gmem_free_folio restores the direct map); else it goes
# back to the page allocator
gmem_free_page:
    push rbx
    push r12
    mov r12, rdi
    mov rbx, rsi
    test qword ptr [r12 + FILE_flags], GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    jz .Lgfp_free
    mov rdi, rbx
    call gmem_scrub_unmapped
    mov rdi, r12
    mov rsi, rbx
    call unmapped_page_free
    dec qword ptr [nr_gmem_unmapped_pages]
    jmp .Lgfp_done
.Lgfp_free:
    mov rdi, rbx
    mov esi, HC_SENSITIVE
    call free_page
.Lgfp_done:
    dec qword ptr [nr_gmem_pages]
    pop r12
    pop rbx
    ret

# gmem_zap_page(file, index): every user PTE of the current process that maps
# the file's page at index is cleared and flushed (unmap_mapping_range, as
# truncation and conversion to private do).  Only the creator can reach a
# guest_memfd here (no fd passing, no fork), so its mm holds every mapping.
gmem_zap_page:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    GET_CURRENT r13
    mov r13, qword ptr [r13 + TASK_mm]
    xor r14, r14
.Lgz_vma:
    cmp r14, qword ptr [r13 + MM_nr_vmas]
    jae .Lgz_done
    imul rax, r14, VMA_SIZE
    lea r15, [r13 + rax + MM_vmas]
    inc r14
    cmp qword ptr [r15 + VMA_file], rbx
    jne .Lgz_vma
    mov rsi, r12
    sub rsi, qword ptr [r15 + VMA_pgoff]
    jb .Lgz_vma
    shl rsi, PAGE_SHIFT
    add rsi, qword ptr [r15 + VMA_start]
    cmp rsi, qword ptr [r15 + VMA_end]
    jae .Lgz_vma
    mov rbp, rsi
    mov rdi, qword ptr [r13 + MM_pgd_va]
    mov edx, PAGE_SHIFT
    xor ecx, ecx
    mov r8, r13
    call walk_to
    test rax, rax
    jz .Lgz_vma
    test qword ptr [rax], _PAGE_PRESENT + _PAGE_PROTNONE
    jz .Lgz_vma
    SET_ENTRY rax, 0
    mov rdi, rbp
    call flush_tlb_one_user
    jmp .Lgz_vma
.Lgz_done:
    RESTORE_CALLEE
    ret

# gmem_truncate(file, first index, end index): kvm_gmem_punch_hole ->
# truncate_inode_pages_range: each page in the range leaves every user
# mapping, then is freed; its shared/private state stays
gmem_truncate:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    cmp r13, GMEM_MAX_PAGES
    jbe .Lgt_loop
    mov r13d, GMEM_MAX_PAGES
.Lgt_loop:
    cmp r12, r13
    jae .Lgt_done
    GMEM_ENTRY r14, rbx, r12
    mov r15, qword ptr [r14]
    and r15, -PAGE_SIZE
    jz .Lgt_next
    mov rdi, rbx
    mov rsi, r12
    call gmem_zap_page
    and qword ptr [r14], GMEM_PRIVATE
    mov rdi, rbx
    mov rsi, r15
    call gmem_free_page
.Lgt_next:
    inc r12
    jmp .Lgt_loop
.Lgt_done:
    RESTORE_CALLEE
    ret

# gmem_release(file): the last reference is gone: every page is freed, then
# the index, the memslots' bindings, then the VM's reference (kvm_gmem_release, evict)
gmem_release:
    push rbx
    mov rbx, rdi
    xor esi, esi
    mov edx, GMEM_MAX_PAGES
    call gmem_truncate
    mov rdi, rbx
    call unmapped_release               # the file's cache goes (unmapped=pmd-cache)
    mov rdi, qword ptr [rbx + FILE_pages]
    VA_TO_PA rdi
    xor esi, esi
    call free_page
    mov rdi, rbx
    call kvm_gmem_unbind                # kvm_vm.S
    mov rdi, qword ptr [rbx + FILE_pages + 8]
    call file_put
    pop rbx
    ret

# gmem_fault(vma, addr) -> pa to map, or 0 for SIGBUS: beyond i_size, or a
# private page (kvm_gmem_fault_user_mapping; the conversion RFC gates the
# fault on the page's current state), or out of memory
gmem_fault:
    push rbx
    mov rbx, qword ptr [rdi + VMA_file]
    mov rax, rsi
    sub rax, qword ptr [rdi + VMA_start]
    shr rax, PAGE_SHIFT
    add rax, qword ptr [rdi + VMA_pgoff]
    mov rsi, rax
    shl rax, PAGE_SHIFT
    cmp rax, qword ptr [rbx + FILE_size]
    jae .Lgf_bus
    GMEM_ENTRY rax, rbx, rsi
    test qword ptr [rax], GMEM_PRIVATE
    jnz .Lgf_bus
    mov rdi, rbx
    call gmem_get_page
    pop rbx
    ret
.Lgf_bus:
    xor eax, eax
    pop rbx
    ret

# gmem_mmap(file, prot, flags) -> VMA flags or -errno.  do_mmap first: the
# guest_memfd mount is noexec (kvm_gmem_init_mount), so PROT_EXEC is -EPERM;
# then kvm_gmem_mmap: no GUEST_MEMFD_FLAG_MMAP is -ENODEV, a mapping that is
# not shared (MAP_PRIVATE: no VM_SHARED | VM_MAYSHARE) -EINVAL
gmem_mmap:
    test rsi, PROT_EXEC
    jnz .Lgm_perm
    test qword ptr [rdi + FILE_flags], GUEST_MEMFD_FLAG_MMAP
    jz .Lgm_nodev
    test rdx, MAP_SHARED
    jz .Lgm_inval
    mov eax, VM_SHARED + VM_GMEM
    ret
.Lgm_perm:
    mov rax, -EPERM
    ret
.Lgm_nodev:
    mov rax, -ENODEV
    ret
.Lgm_inval:
    mov rax, -EINVAL
    ret

# sys_fallocate(fd, mode, offset, len): vfs_fallocate's checks in its order
# (fs/open.c), then kvm_gmem_fallocate's: KEEP_SIZE required, page-aligned
# offset and length, PUNCH_HOLE anywhere (beyond i_size it frees nothing),
# an allocation only inside i_size (kvm_gmem_allocate)
sys_fallocate:
    SAVE_CALLEE
    mov r12d, esi                       # mode is an int
    mov r13, rdx
    mov r14, rcx
    call fget
    test rax, rax
    jz .Lfa_badf
    mov rbx, rax
    test r13, r13
    js .Lfa_inval
    test r14, r14
    jle .Lfa_inval
    cmp r12d, FALLOC_FL_KEEP_SIZE + FALLOC_FL_PUNCH_HOLE
    ja .Lfa_opnotsupp                   # any other mode bit
    cmp r12, FALLOC_FL_PUNCH_HOLE
    je .Lfa_opnotsupp                   # a hole without KEEP_SIZE
    mov rax, qword ptr [rbx + FILE_type]
    cmp rax, FILE_GUEST_MEMFD
    je .Lfa_reg
    cmp rax, FILE_XPFO
    je .Lfa_reg
    cmp rax, FILE_SECRETMEM
    jne .Lfa_nodev                      # not a regular file (S_ISREG)
.Lfa_reg:
    mov rax, r13
    add rax, r14
    jo .Lfa_fbig
    cmp qword ptr [rbx + FILE_type], FILE_XPFO
    jne .Lfa_not_xpfo
    mov rdi, rbx
    mov esi, r12d
    mov rdx, r13
    mov rcx, r14
    call xpfo_fallocate                 # xpfo.S
    jmp .Lfa_out
.Lfa_not_xpfo:
    cmp qword ptr [rbx + FILE_type], FILE_GUEST_MEMFD
    jne .Lfa_opnotsupp                  # secretmem has no ->fallocate
    test r12, FALLOC_FL_KEEP_SIZE
    jz .Lfa_opnotsupp
    mov rax, r13
    or rax, r14
    test rax, PAGE_SIZE - 1
    jnz .Lfa_inval
    mov rdx, r13
    add rdx, r14
    shr rdx, PAGE_SHIFT
    mov rsi, r13
    shr rsi, PAGE_SHIFT
    test r12, FALLOC_FL_PUNCH_HOLE
    jz .Lfa_allocate
    mov rdi, rbx
    call gmem_truncate
    xor eax, eax
    jmp .Lfa_out
.Lfa_allocate:
    mov rax, r13
    add rax, r14
    cmp rax, qword ptr [rbx + FILE_size]
    ja .Lfa_inval
    mov r12, rsi
    mov r13, rdx
.Lfa_page:
    cmp r12, r13
    jae .Lfa_ok
    mov rdi, rbx
    mov rsi, r12
    call gmem_get_page
    test rax, rax
    jz .Lfa_nomem
    inc r12
    jmp .Lfa_page
.Lfa_ok:
    xor eax, eax
    jmp .Lfa_out
.Lfa_nomem:
    mov rax, -ENOMEM
    jmp .Lfa_out
.Lfa_fbig:
    mov rax, -EFBIG
    jmp .Lfa_out
.Lfa_nodev:
    mov rax, -ENODEV
    jmp .Lfa_out
.Lfa_opnotsupp:
    mov rax, -EOPNOTSUPP
    jmp .Lfa_out
.Lfa_inval:
    mov rax, -EINVAL
    jmp .Lfa_out
.Lfa_badf:
    mov rax, -EBADF
.Lfa_out:
    RESTORE_CALLEE
    ret

# gmem_set_attributes(file, user args) -> 0 or -errno: KVM_SET_MEMORY_ATTRIBUTES2
# on a guest_memfd (the in-place conversion RFC): a page-aligned, non-empty
# range inside i_size, attributes 0 (shared) or KVM_MEMORY_ATTRIBUTE_PRIVATE,
# flags and reserved words 0.  The pages stay where they are, contents and
# all; a range made private first leaves every user mapping, so the next user
# access faults and is refused (SIGBUS).
gmem_set_attributes:
    SAVE_CALLEE
    sub rsp, KVM_MEMORY_ATTRIBUTES2_SIZE
    mov rbx, rdi
    mov rdi, rsp
    mov edx, KVM_MEMORY_ATTRIBUTES2_SIZE
    call copy_from_user
    test rax, rax
    jnz .Lgsa_fault
    mov r12, qword ptr [rsp]            # offset
    mov r13, qword ptr [rsp + 8]        # size
    mov r14, qword ptr [rsp + 16]       # attributes
    mov rax, r14
    btr rax, 3                          # KVM_MEMORY_ATTRIBUTE_PRIVATE
    or rax, qword ptr [rsp + 24]        # flags
    mov ecx, 4
.Lgsa_reserved:
    or rax, qword ptr [rsp + rcx * 8]
    inc ecx
    cmp ecx, KVM_MEMORY_ATTRIBUTES2_SIZE / 8
    jb .Lgsa_reserved
    test rax, rax
    jnz .Lgsa_inval
    test r13, r13
    jz .Lgsa_inval
    mov rax, r12
    or rax, r13
    test rax, PAGE_SIZE - 1
    jnz .Lgsa_inval
    mov rax, r12
    add rax, r13
    jc .Lgsa_inval
    cmp rax, qword ptr [rbx + FILE_size]
    ja .Lgsa_inval
    shr r12, PAGE_SHIFT
    shr rax, PAGE_SHIFT
    mov r13, rax
.Lgsa_page:
    cmp r12, r13
    jae .Lgsa_ok
    GMEM_ENTRY r15, rbx, r12
    test r14, r14
    jz .Lgsa_shared
    test qword ptr [r15], GMEM_PRIVATE
    jnz .Lgsa_next
    mov rdi, rbx
    mov rsi, r12
    call gmem_zap_page
    or qword ptr [r15], GMEM_PRIVATE
    inc qword ptr [nr_gmem_conversions]
    jmp .Lgsa_next
.Lgsa_shared:
    test qword ptr [r15], GMEM_PRIVATE
    jz .Lgsa_next
    btr qword ptr [r15], 0              # GMEM_PRIVATE
    inc qword ptr [nr_gmem_conversions]
.Lgsa_next:
    inc r12
    jmp .Lgsa_page
.Lgsa_ok:
    xor eax, eax
    jmp .Lgsa_out
.Lgsa_fault:
    mov rax, -EFAULT
    jmp .Lgsa_out
.Lgsa_inval:
    mov rax, -EINVAL
.Lgsa_out:
    add rsp, KVM_MEMORY_ATTRIBUTES2_SIZE
    RESTORE_CALLEE
    ret

# gmem_scrub_unmapped(pa): the kernel touches a page that is out of the direct
# map only through a temporary mapping (kmap_local-style, the series' rule):
# map -> access -> unmap with its flush.  Here: the page is zeroed before it
# returns to the direct map, so a private page's contents never reappear there.
gmem_scrub_unmapped:
    push rbx
    mov rbx, rdi
    call gmem_kmap
    test rax, rax
    jz .Lgsu_done
    mov rdi, rax
    call clear_page
    call gmem_kunmap
.Lgsu_done:
    pop rbx
    ret

# gmem_kmap(pa) -> the kernel address of the temporary mapping (the fixed
# slot GMEM_KMAP_VA in vmalloc space), or 0 when its table cannot be made
gmem_kmap:
    push rbx
    mov rbx, rdi
    mov rdi, init_pgd_va
    mov rdi, qword ptr [rdi]
    movabs rsi, GMEM_KMAP_VA
    mov edx, PAGE_SHIFT
    mov ecx, 1
    xor r8d, r8d
    call walk_to
    test rax, rax
    jz .Lgk_done
    mov rcx, rbx
    or rcx, __PAGE_KERNEL_NOGLOBAL
    cmp qword ptr [feature_nx], 0
    je .Lgk_set
    bts rcx, _PAGE_BIT_NX
.Lgk_set:
    SET_ENTRY rax, rcx
    movabs rax, GMEM_KMAP_VA
.Lgk_done:
    pop rbx
    ret

# gmem_kunmap(): the temporary mapping's PTE cleared, then flushed
# (kunmap_local -> flush_tlb_one_kernel)
gmem_kunmap:
    mov rdi, init_pgd_va
    mov rdi, qword ptr [rdi]
    movabs rsi, GMEM_KMAP_VA
    mov edx, PAGE_SHIFT
    xor ecx, ecx
    xor r8d, r8d
    call walk_to
    test rax, rax
    jz .Lgku_done
    SET_ENTRY rax, 0
    movabs rdi, GMEM_KMAP_VA
    .alternative !INJECT_GMEM_KUNMAP_NOFLUSH, .Lgku_done
    call flush_tlb_one_kernel
.Lgku_done:
    ret

.data
nr_gmem_pages:          .quad 0     # guest_memfd pages allocated
nr_gmem_unmapped_pages: .quad 0     # of them, out of the direct map (NO_DIRECT_MAP)
nr_gmem_conversions:    .quad 0     # pages whose shared/private state changed
