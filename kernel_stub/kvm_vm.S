# The VM's memslots and its vCPU: KVM_SET_USER_MEMORY_REGION2, KVM_CREATE_VCPU,
# the kvm_run page, KVM_GET/SET_REGS and KVM_RUN.  After virt/kvm/kvm_main.c
# (__kvm_set_memory_region, kvm_vm_ioctl_create_vcpu, kvm_vcpu_ioctl),
# virt/kvm/guest_memfd.c (kvm_gmem_bind, kvm_gmem_get_pfn), arch/x86/kvm/x86.c
# (vcpu_run, __set_regs) and arch/x86/kvm/mmu/mmu.c (kvm_mmu_faultin_pfn).
# The guest itself runs on the vCPU device (out PORT_VCPU; emu/hw/vmx.py).
# docs/guest_memfd.md, "The VM".

.text

# --- memslots ------------------------------------------------------------------------------
# kvm_set_memory_region(vm, user region2) -> 0 or -errno, __kvm_set_memory_region's
# checks in its order: flags (only KVM_MEM_GUEST_MEMFD), page-aligned size, gpa
# and userspace_addr, a user range, an aligned guest_memfd_offset that does not
# wrap, the slot number, a gpa range that does not wrap; size 0 deletes an
# existing slot; a used slot can only move (a guest_memfd slot not even that);
# the range must lie below the shared bit (kvm_arch_prepare_memory_region's
# kvm_mmu_max_gfn) and overlap no other slot (-EEXIST); then kvm_gmem_bind.
kvm_set_memory_region:
    SAVE_CALLEE
    sub rsp, KVM_USERSPACE_MEMORY_REGION2_SIZE
    mov rbx, rdi
    mov rdi, rsp
    mov edx, KVM_USERSPACE_MEMORY_REGION2_SIZE
    call copy_from_user
    test rax, rax
    jnz .Lsmr_fault
    mov eax, dword ptr [rsp + REGION2_flags]
    test eax, ~KVM_MEM_GUEST_MEMFD
    jnz .Lsmr_inval
    mov r12d, dword ptr [rsp + REGION2_slot]
    mov r13, qword ptr [rsp + REGION2_memory_size]
    mov r14, qword ptr [rsp + REGION2_guest_phys_addr]
    test r13, PAGE_SIZE - 1
    jnz .Lsmr_inval
    test r14, PAGE_SIZE - 1
    jnz .Lsmr_inval
    mov rax, qword ptr [rsp + REGION2_userspace_addr]
    test rax, PAGE_SIZE - 1
    jnz .Lsmr_inval
    add rax, r13                        # access_ok(userspace_addr, memory_size)
    jc .Lsmr_inval
    mov rcx, USER_HALF_END
    cmp rax, rcx
    ja .Lsmr_inval
    test dword ptr [rsp + REGION2_flags], KVM_MEM_GUEST_MEMFD
    jz .Lsmr_slot
    mov rax, qword ptr [rsp + REGION2_guest_memfd_offset]
    test rax, PAGE_SIZE - 1
    jnz .Lsmr_inval
    add rax, r13
    jc .Lsmr_inval
.Lsmr_slot:
    cmp r12, KVM_MAX_MEMSLOTS           # as_id 0, id below the stub's slot count
    jae .Lsmr_inval
    mov rax, r14
    add rax, r13
    jc .Lsmr_inval
    imul rax, r12, MEMSLOT_SIZE
    lea r15, [rbx + FILE_pages + rax]
    test r13, r13
    jnz .Lsmr_set
    cmp qword ptr [r15 + MEMSLOT_used], 0     # deleting a slot that does not exist
    je .Lsmr_inval
    mov rdi, r15
    xor eax, eax
    mov ecx, MEMSLOT_SIZE / 8
    rep stosq
    jmp .Lsmr_ok
.Lsmr_set:
    cmp qword ptr [r15 + MEMSLOT_used], 0
    je .Lsmr_new
    # a change to a slot: guest_memfd slots are immutable; the same
    # userspace_addr and size; then a move, or nothing (no other flags exist here)
    test dword ptr [rsp + REGION2_flags], KVM_MEM_GUEST_MEMFD
    jnz .Lsmr_inval
    mov rax, qword ptr [rsp + REGION2_userspace_addr]
    cmp rax, qword ptr [r15 + MEMSLOT_uaddr]
    jne .Lsmr_inval
    cmp r13, qword ptr [r15 + MEMSLOT_size]
    jne .Lsmr_inval
    mov eax, dword ptr [rsp + REGION2_flags]
    cmp rax, qword ptr [r15 + MEMSLOT_flags]
    jne .Lsmr_inval
    cmp r14, qword ptr [r15 + MEMSLOT_gpa]
    je .Lsmr_ok
    call .Lsmr_place
    test rax, rax
    jnz .Lsmr_out
    mov qword ptr [r15 + MEMSLOT_gpa], r14
    jmp .Lsmr_ok
.Lsmr_new:
    call .Lsmr_place
    test rax, rax
    jnz .Lsmr_out
    xor ebp, ebp
    test dword ptr [rsp + REGION2_flags], KVM_MEM_GUEST_MEMFD
    jz .Lsmr_fill
    mov rdi, rbx
    lea rsi, [rsp]
    mov rdx, r12
    call kvm_gmem_bind
    cmp rax, -4095                      # IS_ERR: a file is a kernel address
    jae .Lsmr_out
    mov rbp, rax
.Lsmr_fill:
    mov eax, dword ptr [rsp + REGION2_flags]
    mov qword ptr [r15 + MEMSLOT_flags], rax
    mov qword ptr [r15 + MEMSLOT_gpa], r14
    mov qword ptr [r15 + MEMSLOT_size], r13
    mov rax, qword ptr [rsp + REGION2_userspace_addr]
    mov qword ptr [r15 + MEMSLOT_uaddr], rax
    mov qword ptr [r15 + MEMSLOT_gmem], rbp
    mov rax, qword ptr [rsp + REGION2_guest_memfd_offset]
    mov qword ptr [r15 + MEMSLOT_gmem_offset], rax
    mov qword ptr [r15 + MEMSLOT_used], 1
.Lsmr_ok:
    xor eax, eax
    jmp .Lsmr_out
.Lsmr_fault:
    mov rax, -EFAULT
    jmp .Lsmr_out
.Lsmr_inval:
    mov rax, -EINVAL
.Lsmr_out:
    add rsp, KVM_USERSPACE_MEMORY_REGION2_SIZE
    RESTORE_CALLEE
    ret
# (local) where a new or moved slot goes: below the shared bit (-EINVAL),
# overlapping no other slot (kvm_check_memslot_overlap: -EEXIST); rax 0 if fine
.Lsmr_place:
    mov rax, r14
    add rax, r13
    movabs rcx, KVM_GPA_SHARED
    cmp rax, rcx
    ja .Lsmrp_inval
    xor ecx, ecx
.Lsmrp_loop:
    cmp rcx, KVM_MAX_MEMSLOTS
    jae .Lsmrp_ok
    imul rdx, rcx, MEMSLOT_SIZE
    lea rdx, [rbx + FILE_pages + rdx]
    inc rcx
    cmp rdx, r15
    je .Lsmrp_loop
    cmp qword ptr [rdx + MEMSLOT_used], 0
    je .Lsmrp_loop
    cmp r14, qword ptr [rdx + MEMSLOT_gpa]
    jb .Lsmrp_below
    mov rax, qword ptr [rdx + MEMSLOT_gpa]
    add rax, qword ptr [rdx + MEMSLOT_size]
    cmp r14, rax
    jae .Lsmrp_loop
    jmp .Lsmrp_exist
.Lsmrp_below:
    lea rax, [r14 + r13]
    cmp rax, qword ptr [rdx + MEMSLOT_gpa]
    jbe .Lsmrp_loop
.Lsmrp_exist:
    mov rax, -EEXIST
    ret
.Lsmrp_inval:
    mov rax, -EINVAL
    ret
.Lsmrp_ok:
    xor eax, eax
    ret

# kvm_gmem_bind(vm, region2 (kernel copy), slot id) -> the guest_memfd file or
# -errno: the fd must be open (-EBADF), a guest_memfd (-EINVAL) of this VM
# (-EINVAL), with [offset, offset + size) inside i_size (-EINVAL), and that
# range bound to no other slot (-EEXIST).  The slot takes no reference: closing
# the guest_memfd unbinds it (kvm_gmem_unbind), as kvm_gmem_release does.
kvm_gmem_bind:
    push rbx
    push r12
    push r13
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov edi, dword ptr [r12 + REGION2_guest_memfd]
    call fget
    test rax, rax
    jz .Lgb_badf
    cmp qword ptr [rax + FILE_type], FILE_GUEST_MEMFD
    jne .Lgb_inval
    cmp qword ptr [rax + FILE_pages + 8], rbx
    jne .Lgb_inval
    mov rcx, qword ptr [r12 + REGION2_guest_memfd_offset]
    mov rdx, rcx
    add rdx, qword ptr [r12 + REGION2_memory_size]
    cmp rdx, qword ptr [rax + FILE_size]
    ja .Lgb_inval
    # rcx..rdx against the other slots bound to this file
    xor r8d, r8d
.Lgb_loop:
    cmp r8, KVM_MAX_MEMSLOTS
    jae .Lgb_done
    imul r9, r8, MEMSLOT_SIZE
    lea r9, [rbx + FILE_pages + r9]
    inc r8
    cmp qword ptr [r9 + MEMSLOT_used], 0
    je .Lgb_loop
    cmp qword ptr [r9 + MEMSLOT_gmem], rax
    jne .Lgb_loop
    mov r10, qword ptr [r9 + MEMSLOT_gmem_offset]
    cmp r10, rdx
    jae .Lgb_loop
    add r10, qword ptr [r9 + MEMSLOT_size]
    cmp rcx, r10
    jae .Lgb_loop
    mov rax, -EEXIST
    jmp .Lgb_out
.Lgb_badf:
    mov rax, -EBADF
    jmp .Lgb_out
.Lgb_inval:
    mov rax, -EINVAL
.Lgb_done:
.Lgb_out:
    pop r13
    pop r12
    pop rbx
    ret

# kvm_gmem_unbind(gmem file): every slot of its VM bound to it forgets it
# (kvm_gmem_release -> kvm_gmem_unbind_all); a later fault there finds no file
kvm_gmem_unbind:
    mov rax, qword ptr [rdi + FILE_pages + 8]
    xor ecx, ecx
.Lgu_loop:
    cmp rcx, KVM_MAX_MEMSLOTS
    jae .Lgu_done
    imul rdx, rcx, MEMSLOT_SIZE
    inc rcx
    cmp qword ptr [rax + FILE_pages + rdx + MEMSLOT_gmem], rdi
    jne .Lgu_loop
    mov qword ptr [rax + FILE_pages + rdx + MEMSLOT_gmem], 0
    jmp .Lgu_loop
.Lgu_done:
    ret

kvm_vm_release:
    ret

# kvm_find_memslot(vm, gpa) -> the slot holding gpa, or 0 (__gfn_to_memslot)
kvm_find_memslot:
    xor ecx, ecx
.Lfm_loop:
    cmp rcx, KVM_MAX_MEMSLOTS
    jae .Lfm_none
    imul rax, rcx, MEMSLOT_SIZE
    lea rax, [rdi + FILE_pages + rax]
    inc rcx
    cmp qword ptr [rax + MEMSLOT_used], 0
    je .Lfm_loop
    mov rdx, rsi
    sub rdx, qword ptr [rax + MEMSLOT_gpa]
    jb .Lfm_loop
    cmp rdx, qword ptr [rax + MEMSLOT_size]
    jae .Lfm_loop
    ret
.Lfm_none:
    xor eax, eax
    ret

# --- vCPUs ---------------------------------------------------------------------------------
# kvm_create_vcpu(vm, id) -> fd or -errno (kvm_vm_ioctl_create_vcpu: an id
# beyond KVM_MAX_VCPU_IDS, then a VM at its vCPU limit, are -EINVAL).  The
# kvm_run page is a zeroed page; the registers start as kvm_vcpu_reset
# leaves them: RIP 0xfff0, RFLAGS 0x2, the others 0.
kvm_create_vcpu:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    cmp r12, KVM_MAX_VCPU_IDS
    jae .Lcv_inval
    cmp qword ptr [rbx + FILE_pages + VM_NR_VCPUS], KVM_MAX_VCPUS
    jae .Lcv_inval
    xor edi, edi
    mov esi, FRAME_KERNEL_DATA
    xor edx, edx
    call alloc_page
    test rax, rax
    jz .Lcv_nomem
    mov r13, rax
    mov rdi, rax
    PA_TO_VA rdi
    call clear_page
    mov edi, FILE_KVM_VCPU
    call file_alloc
    test rax, rax
    jz .Lcv_nfile
    mov r14, rax
    mov qword ptr [r14 + FILE_pages + VCPU_VM], rbx
    inc qword ptr [rbx + FILE_refs]
    mov qword ptr [r14 + FILE_pages + VCPU_RUN], r13
    mov qword ptr [r14 + FILE_pages + VCPU_REGS + KVM_REGS_rip], 0xfff0
    mov qword ptr [r14 + FILE_pages + VCPU_REGS + KVM_REGS_rflags], X86_EFLAGS_FIXED
    mov qword ptr [r14 + FILE_pages + VCPU_ID], r12
    inc qword ptr [rbx + FILE_pages + VM_NR_VCPUS]
    mov rdi, r14
    call fd_install
    test rax, rax
    jns .Lcv_out
    push rax
    mov rdi, r14
    call file_put
    pop rax
    jmp .Lcv_out
.Lcv_nfile:
    mov rdi, r13
    xor esi, esi
    call free_page
    mov rax, -ENFILE
    jmp .Lcv_out
.Lcv_nomem:
    mov rax, -ENOMEM
    jmp .Lcv_out
.Lcv_inval:
    mov rax, -EINVAL
.Lcv_out:
    RESTORE_CALLEE
    ret

# kvm_vcpu_release(vcpu): the vCPU device forgets it, then its kvm_run page
# is freed and its reference to the VM dropped
kvm_vcpu_release:
    push rbx
    mov rbx, rdi
    mov eax, VCPU_OP_FREE
    out PORT_VCPU, eax
    mov rdi, qword ptr [rbx + FILE_pages + VCPU_RUN]
    xor esi, esi
    call free_page
    mov rdi, qword ptr [rbx + FILE_pages + VCPU_VM]
    call file_put
    pop rbx
    ret

# kvm_vcpu_fault(vma, addr) -> pa of the page to map, or 0 for SIGBUS:
# page 0 of the vCPU file is its kvm_run (kvm_vcpu_fault); any other is
# SIGBUS (kvm_arch_vcpu_fault)
kvm_vcpu_fault:
    mov rax, rsi
    sub rax, qword ptr [rdi + VMA_start]
    shr rax, PAGE_SHIFT
    add rax, qword ptr [rdi + VMA_pgoff]
    jnz .Lvf_bus
    mov rax, qword ptr [rdi + VMA_file]
    mov rax, qword ptr [rax + FILE_pages + VCPU_RUN]
    ret
.Lvf_bus:
    xor eax, eax
    ret

# kvm_vcpu_ioctl(vcpu, cmd, arg) -> KVM_RUN (its argument must be 0),
# KVM_GET_REGS, KVM_SET_REGS (RFLAGS bit 1 forced on, as __set_regs);
# anything else is -EINVAL (kvm_arch_vcpu_ioctl)
kvm_vcpu_ioctl:
    push rbx
    push r12
    sub rsp, KVM_REGS_SIZE
    mov rbx, rdi
    mov r12, rdx
    cmp rsi, KVM_RUN
    je .Lvi_run
    mov eax, KVM_GET_REGS
    cmp rsi, rax
    je .Lvi_get
    mov eax, KVM_SET_REGS
    cmp rsi, rax
    jne .Lvi_inval
    mov rdi, rsp
    mov rsi, r12
    mov edx, KVM_REGS_SIZE
    call copy_from_user
    test rax, rax
    jnz .Lvi_fault
    or qword ptr [rsp + KVM_REGS_rflags], X86_EFLAGS_FIXED
    lea rdi, [rbx + FILE_pages + VCPU_REGS]
    mov rsi, rsp
    mov ecx, KVM_REGS_SIZE / 8
    rep movsq
    xor eax, eax
    jmp .Lvi_out
.Lvi_get:
    mov rdi, r12
    lea rsi, [rbx + FILE_pages + VCPU_REGS]
    mov edx, KVM_REGS_SIZE
    call copy_to_user
    test rax, rax
    jnz .Lvi_fault
    jmp .Lvi_out
.Lvi_run:
    test r12, r12
    jnz .Lvi_inval
    mov rdi, rbx
    call kvm_vcpu_run
    jmp .Lvi_out
.Lvi_fault:
    mov rax, -EFAULT
    jmp .Lvi_out
.Lvi_inval:
    mov rax, -EINVAL
.Lvi_out:
    add rsp, KVM_REGS_SIZE
    pop r12
    pop rbx
    ret

# kvm_vcpu_run(vcpu) -> KVM_RUN's value (vcpu_run, vcpu_enter_guest and the
# exit handlers of arch/x86/kvm/vmx/vmx.c).  Every guest-physical page the
# vCPU device holds is dropped first: the VMM may have converted, punched or
# moved memory since the last run (Linux zaps exactly those ranges through its
# invalidation hooks; zapping all is never less).  Then enter, and handle the
# exit: HLT -> KVM_EXIT_HLT (no in-kernel local APIC); OUT -> KVM_EXIT_IO, its
# data in the kvm_run page at KVM_RUN_IO_DATA; an EPT violation -> the page
# fault path, then enter again; the preemption timer -> KVM_EXIT_INTR and
# -EINTR (as a pending signal would: the guest ran a whole timeslice without
# an exit); a triple fault -> KVM_EXIT_SHUTDOWN.
kvm_vcpu_run:
    push rbx
    push r12
    mov rbx, rdi
    mov r12, qword ptr [rbx + FILE_pages + VCPU_RUN]
    PA_TO_VA r12
    mov dword ptr [r12 + KVM_RUN_exit_reason], KVM_EXIT_UNKNOWN
    mov rdi, rbx
    mov eax, VCPU_OP_ZAP
    out PORT_VCPU, eax
.Lvr_enter:
    call kvm_asi_enter
    mov rdi, rbx
    mov eax, VCPU_OP_RUN
    out PORT_VCPU, eax
    push rax
    .alternative !INJECT_ASI_KVM_LATE_RELAX, .Lvr_exit
    call kvm_asi_relax
.Lvr_exit:
    pop rax
    cmp eax, EXIT_REASON_HLT
    je .Lvr_hlt
    cmp eax, EXIT_REASON_IO_INSTRUCTION
    je .Lvr_io
    cmp eax, EXIT_REASON_EPT_VIOLATION
    je .Lvr_ept
    cmp eax, EXIT_REASON_PREEMPTION_TIMER
    je .Lvr_intr
    mov dword ptr [r12 + KVM_RUN_exit_reason], KVM_EXIT_SHUTDOWN
    xor eax, eax
    jmp .Lvr_out
.Lvr_hlt:
    mov dword ptr [r12 + KVM_RUN_exit_reason], KVM_EXIT_HLT
    xor eax, eax
    jmp .Lvr_out
.Lvr_io:
    mov rax, qword ptr [rbx + FILE_pages + VCPU_EXIT_qualification]
    mov dword ptr [r12 + KVM_RUN_exit_reason], KVM_EXIT_IO
    mov byte ptr [r12 + KVM_RUN_io_direction], KVM_EXIT_IO_OUT
    mov ecx, eax
    and ecx, 7
    inc ecx
    mov byte ptr [r12 + KVM_RUN_io_size], cl
    shr eax, 16
    mov word ptr [r12 + KVM_RUN_io_port], ax
    mov dword ptr [r12 + KVM_RUN_io_count], 1
    mov qword ptr [r12 + KVM_RUN_io_data_offset], KVM_RUN_IO_DATA
    mov rax, qword ptr [rbx + FILE_pages + VCPU_EXIT_value]
    mov qword ptr [r12 + KVM_RUN_IO_DATA], rax
    xor eax, eax
    jmp .Lvr_out
.Lvr_intr:
    mov dword ptr [r12 + KVM_RUN_exit_reason], KVM_EXIT_INTR
    mov rax, -EINTR
    jmp .Lvr_out
.Lvr_ept:
    mov rdi, rbx
    mov rsi, qword ptr [rbx + FILE_pages + VCPU_EXIT_gpa]
    mov rdx, qword ptr [rbx + FILE_pages + VCPU_EXIT_qualification]
    call kvm_tdp_page_fault
    test rax, rax
    jz .Lvr_enter
    jns .Lvr_done
.Lvr_out:
    push rax
    call kvm_asi_relax
    call kvm_asi_exit
    pop rax
    pop r12
    pop rbx
    ret
.Lvr_done:
    xor eax, eax
    jmp .Lvr_out

# kvm_tdp_page_fault(vcpu, gpa, qualification) -> 0 (mapped: enter again), 1
# (an exit to user space prepared: KVM_RUN returns 0) or -errno (an exit
# prepared: KVM_RUN returns it).  After kvm_mmu_faultin_pfn: the access is
# private unless the gpa has the shared bit; a private access to a gfn that
# is not private, or a shared access to one that is, is a memory-fault exit
# (kvm_mmu_prepare_memory_fault_exit, -EFAULT).  A private page comes from the
# slot's guest_memfd (kvm_gmem_get_pfn, allocated on first use).  A shared
# page comes from the guest_memfd too when it can be mmapped (a gmem-only
# slot, in place), else from the VMM's memory at userspace_addr (hva_to_pfn;
# a failure is a memory-fault exit and -EFAULT, kvm_handle_error_pfn).  A
# shared access outside every slot would be emulated MMIO in Linux: here it
# is KVM_EXIT_INTERNAL_ERROR (emulation).
kvm_tdp_page_fault:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi                        # the gpa as the guest used it
    mov r13, rdx
    movabs rax, KVM_GPA_SHARED
    mov r14, r12
    and r14, -PAGE_SIZE
    xor ebp, ebp                        # ebp = the access is private
    test r12, rax
    setz bpl
    not rax
    and r14, rax                        # r14 = the gpa of the page, without the shared bit
    mov rdi, qword ptr [rbx + FILE_pages + VCPU_VM]
    mov rsi, r14
    call kvm_find_memslot
    mov r15, rax
    # is the gfn private?  Only a guest_memfd that is still bound can say so
    xor edx, edx
    test r15, r15
    jz .Ltpf_attr
    mov rdi, qword ptr [r15 + MEMSLOT_gmem]
    test rdi, rdi
    jz .Ltpf_attr
    call .Ltpf_index
    mov rax, qword ptr [rdi + FILE_pages]
    mov rdx, qword ptr [rax + rsi * 8]
    and edx, GMEM_PRIVATE
.Ltpf_attr:
    cmp edx, ebp
    jne .Ltpf_memfault
    test ebp, ebp
    jz .Ltpf_shared
    mov rdi, qword ptr [r15 + MEMSLOT_gmem]
    call .Ltpf_index
    call gmem_get_page
    test rax, rax
    jz .Ltpf_memfault
    jmp .Ltpf_map
.Ltpf_shared:
    test r15, r15
    jz .Ltpf_mmio
    mov rdi, qword ptr [r15 + MEMSLOT_gmem]
    test rdi, rdi
    jz .Ltpf_hva
    test qword ptr [rdi + FILE_flags], GUEST_MEMFD_FLAG_MMAP
    jz .Ltpf_hva
    call .Ltpf_index
    call gmem_get_page
    test rax, rax
    jz .Ltpf_memfault
    jmp .Ltpf_map
.Ltpf_hva:
    mov rdi, r14
    sub rdi, qword ptr [r15 + MEMSLOT_gpa]
    add rdi, qword ptr [r15 + MEMSLOT_uaddr]
    mov rsi, r13
    and esi, EPT_VIOLATION_ACC_WRITE
    call hva_to_pfn
    test rax, rax
    js .Ltpf_memfault
.Ltpf_map:
    mov rdx, rax
    mov rdi, rbx
    mov rsi, r12
    and rsi, -PAGE_SIZE
    mov eax, VCPU_OP_MAP
    out PORT_VCPU, eax
    xor eax, eax
    jmp .Ltpf_out
.Ltpf_mmio:
    mov rax, qword ptr [rbx + FILE_pages + VCPU_RUN]
    PA_TO_VA rax
    mov dword ptr [rax + KVM_RUN_exit_reason], KVM_EXIT_INTERNAL_ERROR
    mov dword ptr [rax + KVM_RUN_internal_suberror], KVM_INTERNAL_ERROR_EMULATION
    mov eax, 1
    jmp .Ltpf_out
.Ltpf_memfault:
    mov rax, qword ptr [rbx + FILE_pages + VCPU_RUN]
    PA_TO_VA rax
    mov dword ptr [rax + KVM_RUN_exit_reason], KVM_EXIT_MEMORY_FAULT
    mov rcx, rbp
    shl rcx, 3                          # KVM_MEMORY_EXIT_FLAG_PRIVATE
    mov qword ptr [rax + KVM_RUN_memory_fault_flags], rcx
    mov qword ptr [rax + KVM_RUN_memory_fault_gpa], r14
    mov qword ptr [rax + KVM_RUN_memory_fault_size], PAGE_SIZE
    mov rax, -EFAULT
.Ltpf_out:
    RESTORE_CALLEE
    ret
# (local) rsi = the guest_memfd index of the page r14 in slot r15
.Ltpf_index:
    mov rsi, r14
    sub rsi, qword ptr [r15 + MEMSLOT_gpa]
    add rsi, qword ptr [r15 + MEMSLOT_gmem_offset]
    shr rsi, PAGE_SHIFT
    ret

# hva_to_pfn(hva, write) -> pa of the VMM's page at hva, faulted in if need be,
# or -EFAULT (virt/kvm/kvm_main.c).  An ordinary VMA goes through GUP
# (hva_to_pfn_slow -> get_user_pages), whose check_vma_flags refuses secret
# memory.  An xpfo VMA is a device mapping that GUP refuses too (gup.S, as
# check_vma_flags refuses VM_PFNMAP), so KVM takes the page from the VMA's page
# table instead (hva_to_pfn_remapped: follow_pfnmap_start, fixup_user_fault
# when nothing is mapped yet): the xpfo file's own page, never its direct-map
# alias (docs/xpfo.md, "Backing a VM").  Either way -EFAULT for no VMA, a write
# to a VMA without PROT_WRITE, or a fault that fails (an xpfo page beyond the
# size or never fallocated: SIGBUS).
hva_to_pfn:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    GET_CURRENT r13
    mov r13, qword ptr [r13 + TASK_mm]
    mov rdi, r13
    mov rsi, rbx
    call find_vma
    test rax, rax
    jz .Lhp_fault
    test qword ptr [rax + VMA_flags], VM_XPFO
    jnz .Lhp_remapped                   # VM_IO | VM_PFNMAP: hva_to_pfn_remapped
    test qword ptr [rax + VMA_flags], VM_SECRET
    jnz .Lhp_fault
.Lhp_remapped:
    test r12, r12
    jz .Lhp_look
    test qword ptr [rax + VMA_prot], PROT_WRITE
    jz .Lhp_fault
.Lhp_look:
    xor r14d, r14d                      # faulted in yet?
.Lhp_again:
    mov rdi, qword ptr [r13 + MM_pgd_va]
    mov rsi, rbx
    call lookup_address
    test rax, rax
    jz .Lhp_faultin
    cmp edx, PAGE_SHIFT
    jne .Lhp_fault
    mov rax, qword ptr [rax]
    test al, _PAGE_PRESENT
    jz .Lhp_faultin
    movabs rcx, PTE_PFN_MASK
    and rax, rcx
    jmp .Lhp_out
.Lhp_faultin:
    test r14, r14
    jnz .Lhp_fault
    inc r14
    xor edi, edi
    mov rsi, rbx
    mov edx, X86_PF_USER
    test r12, r12
    jz .Lhp_fi
    or edx, X86_PF_WRITE
.Lhp_fi:
    call handle_user_fault
    test rax, rax
    jz .Lhp_again
.Lhp_fault:
    mov rax, -EFAULT
.Lhp_out:
    RESTORE_CALLEE
    ret
