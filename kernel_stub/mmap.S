# VMAs and the mmap/munmap calls.  After mm/mmap.c and mm/vma.c.

.text

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
# remove_vma(mm, index, exiting): unmap it (unmap_vma) and close the gap in the array
remove_vma:
    push rbx
    push r12
    mov rbx, rdi
    mov r12, rsi
    imul rsi, rsi, VMA_SIZE
    lea rsi, [rbx + rsi + MM_vmas]
    # mm->locked_vm gives back a locked VMA's pages (vms_gather_munmap_vmas)
    test qword ptr [rsi + VMA_flags], VM_LOCKED
    jz .Lrv_unlocked
    mov rax, qword ptr [rsi + VMA_end]
    sub rax, qword ptr [rsi + VMA_start]
    shr rax, PAGE_SHIFT
    sub qword ptr [rbx + MM_locked_vm], rax
.Lrv_unlocked:
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
    xor r8d, r8d                        # the file, once there is one
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
    # MAP_SECRET is for anonymous memory only, checked after the descriptor
    # as ksys_mmap_pgoff checks MAP_HUGETLB on a file (mm/mmap.c)
    test r14, MAP_SECRET
    jnz .Lmm_inval
    cmp qword ptr [r8 + FILE_type], FILE_GUEST_MEMFD
    je .Lmm_gmem
    cmp qword ptr [r8 + FILE_type], FILE_XPFO
    je .Lmm_xpfo
    cmp qword ptr [r8 + FILE_type], FILE_KVM_VCPU
    je .Lmm_vcpu
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
.Lmm_locked:
    # secretmem_mmap: the mapping is locked, within RLIMIT_MEMLOCK
    # (mlock_future_ok, rlimit.S), else -EAGAIN
    push r8
    push r9
    GET_CURRENT rdi
    mov rdi, qword ptr [rdi + TASK_mm]
    mov rsi, r12
    call mlock_future_ok
    pop r9
    pop r8
    test eax, eax
    jz .Lmm_again
    jmp .Lmm_place
.Lmm_secret:
    # MAP_SECRET: an internal secretmem file (secretmem.S), then the same
    # locked mapping as memfd_secret's, at offset 0 of that file
    mov rdi, r12
    mov rsi, r13
    mov rdx, r14
    call secretmem_anon_file
    cmp rax, -4096                      # IS_ERR: -errno, not a file
    ja .Lmm_out
    mov r8, rax
    xor ebp, ebp
    mov r9, VM_SECRET + VM_LOCKED
    jmp .Lmm_locked
.Lmm_gmem:
    mov rdi, r8
    mov rsi, r13
    mov rdx, r14
    push r8
    call gmem_mmap                      # guest_memfd.S: VMA flags or -errno
    pop r8
    test rax, rax
    js .Lmm_out
    mov r9, rax
    jmp .Lmm_place
.Lmm_xpfo:
    mov rdi, r8
    mov rsi, r13
    mov rdx, r14
    push r8
    call xpfo_mmap                      # xpfo.S: VMA flags or -errno
    pop r8
    test rax, rax
    js .Lmm_out
    mov r9, rax
    jmp .Lmm_place
.Lmm_vcpu:
    # kvm_vcpu_mmap: any mapping; its page 0 is the kvm_run page (kvm_vcpu_fault)
    mov r9, VM_KVM_RUN
    test r14, MAP_SHARED
    jz .Lmm_place
    or r9, VM_SHARED
    jmp .Lmm_place
.Lmm_anon:
    test r14, MAP_SECRET
    jnz .Lmm_secret
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
    shr rbp, PAGE_SHIFT
    mov qword ptr [rax + VMA_pgoff], rbp
    inc qword ptr [rdi + MM_nr_vmas]
    test r9, VM_LOCKED
    jz .Lmm_unlocked
    mov rcx, r12
    shr rcx, PAGE_SHIFT
    add qword ptr [rdi + MM_locked_vm], rcx
.Lmm_unlocked:
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
.Lmm_again:
    mov rax, -EAGAIN
    jmp .Lmm_out
.Lmm_nomem:
    mov rax, -ENOMEM
.Lmm_out:
    # a MAP_SECRET file that no mapping took goes with the failure
    test r8, r8
    jz .Lmm_ret
    cmp qword ptr [r8 + FILE_refs], 0
    jne .Lmm_ret
    mov qword ptr [r8 + FILE_type], 0
.Lmm_ret:
    RESTORE_CALLEE
    ret
# sys_mprotect(addr, len, prot): the VMAs lying entirely inside the range take
# the new protection, their present PTEs the matching rights, and each page
# changed is flushed (mprotect_fixup -> change_protection -> the mmu_gather's
# flush, mm/mprotect.c).  A range that cuts a VMA is EINVAL (Linux would split
# it); PROT_EXEC on secret memory is EACCES (its mount is noexec).
sys_mprotect:
    SAVE_CALLEE
    test rdi, PAGE_SIZE - 1
    jnz .Lmp_inval
    test rsi, rsi
    jz .Lmp_inval
    test rdx, PROT_UNKNOWN_BITS
    jnz .Lmp_inval
    mov r12, rdi
    lea r13, [rdi + rsi + PAGE_SIZE - 1]
    and r13, -PAGE_SIZE
    mov r14, rdx
    GET_CURRENT rbx
    mov rbx, qword ptr [rbx + TASK_mm]
    xor r15, r15
.Lmp_check:
    cmp r15, qword ptr [rbx + MM_nr_vmas]
    jae .Lmp_apply
    imul rax, r15, VMA_SIZE
    lea rax, [rbx + rax + MM_vmas]
    mov rcx, qword ptr [rax + VMA_start]
    mov rdx, qword ptr [rax + VMA_end]
    cmp rdx, r12
    jbe .Lmp_next_check
    cmp rcx, r13
    jae .Lmp_next_check
    cmp rcx, r12
    jb .Lmp_inval
    cmp rdx, r13
    ja .Lmp_inval
    test qword ptr [rax + VMA_flags], VM_SECRET + VM_GMEM + VM_XPFO   # noexec mounts
    jz .Lmp_next_check
    test r14, PROT_EXEC
    jnz .Lmp_acces
.Lmp_next_check:
    inc r15
    jmp .Lmp_check
.Lmp_apply:
    xor r15, r15
.Lmp_vma:
    cmp r15, qword ptr [rbx + MM_nr_vmas]
    jae .Lmp_ok
    imul rax, r15, VMA_SIZE
    lea rbp, [rbx + rax + MM_vmas]
    mov rcx, qword ptr [rbp + VMA_start]
    cmp rcx, r12
    jb .Lmp_next_vma
    cmp rcx, r13
    jae .Lmp_next_vma
    mov qword ptr [rbp + VMA_prot], r14
    mov rdi, rbx
    mov rsi, rbp
    call change_protection
.Lmp_next_vma:
    inc r15
    jmp .Lmp_vma
.Lmp_ok:
    xor eax, eax
    jmp .Lmp_out
.Lmp_acces:
    mov rax, -EACCES
    jmp .Lmp_out
.Lmp_inval:
    mov rax, -EINVAL
.Lmp_out:
    RESTORE_CALLEE
    ret

# change_protection(mm, vma): every PTE of the VMA that maps a page (present,
# or PROT_NONE: _PAGE_PROTNONE with P clear) gets the VMA's protection; each
# page changed is flushed
change_protection:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, qword ptr [r12 + VMA_start]
.Lcp_loop:
    cmp r13, qword ptr [r12 + VMA_end]
    jae .Lcp_done
    mov rdi, qword ptr [rbx + MM_pgd_va]
    mov rsi, r13
    mov edx, PAGE_SHIFT
    xor ecx, ecx
    mov r8, rbx
    call walk_to
    test rax, rax
    jz .Lcp_next
    mov r14, rax
    mov rcx, qword ptr [r14]
    test rcx, _PAGE_PRESENT + _PAGE_PROTNONE
    jz .Lcp_next
    mov rdx, qword ptr [r12 + VMA_prot]
    # the rights bits are recomputed; the frame, A, D and the rest are kept
    and rcx, NOT_PAGE_RIGHTS
    btr rcx, _PAGE_BIT_NX
    test rdx, PROT_READ + PROT_WRITE + PROT_EXEC
    jnz .Lcp_access
    or rcx, _PAGE_PROTNONE
    jmp .Lcp_set
.Lcp_access:
    or rcx, _PAGE_PRESENT
    test rdx, PROT_WRITE
    jz .Lcp_nowrite
    or rcx, _PAGE_RW
.Lcp_nowrite:
    test rdx, PROT_EXEC
    jnz .Lcp_set
    cmp qword ptr [feature_nx], 0
    je .Lcp_set
    bts rcx, _PAGE_BIT_NX
.Lcp_set:
    cmp rcx, qword ptr [r14]
    je .Lcp_next
    SET_ENTRY r14, rcx
    mov rdi, r13
    .alternative !INJECT_MUNMAP_NOFLUSH, .Lcp_next
    call flush_tlb_one_user
.Lcp_next:
    add r13, PAGE_SIZE
    jmp .Lcp_loop
.Lcp_done:
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
    xor edx, edx                # not exiting
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
    test al, _PAGE_PRESENT
    jz .Ldma_fault
    mov ecx, edx
    mov rdx, 1
    shl rdx, cl
    dec rdx
    movabs rcx, PTE_PFN_MASK
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
