; A guest runs from guest_memfd memory that is out of the direct map (the
; direct-map-removal series' own selftest idea: GUEST_MEMFD_FLAG_MMAP |
; GUEST_MEMFD_FLAG_NO_DIRECT_MAP backing a memslot, the guest's code put
; there through the VMM's mapping).  The vCPU reaches the pages through the
; memslot (as EPT would), never through the kernel's direct map: the
; kernel's read of the page's direct-map alias faults (#PF 0x0, not present)
; before and after the guest ran, and the TLB model has no finding.  The code
; page is then converted to private: the VMM's mapping of it is gone (SIGBUS,
; #PF 0x4), and the guest runs the same code from it as private memory
; (RIP without the shared bit), writing its result to the shared data page.
; isoemu: asi=off
; expect: probe_before rax=-EFAULT rdx=0x0 r9=14
; expect: run_shared rax=0
; expect: shared_exit rax=KVM_EXIT_IO rbx=0x99
; expect: probe_after rax=-EFAULT rdx=0x0 r9=14
; expect: to_private rax=0
; expect: vmm_read fault 14 0x4
; expect: run_private rax=0
; expect: private_exit rax=KVM_EXIT_IO rbx=0x99 rcx=2
; expect: run_hlt rax=0
; expect: hlt_exit rax=KVM_EXIT_HLT
.include "kvm.inc"
.include "isoemu.inc"
.data
regs_buf:   .zero KVM_REGS_SIZE
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x2000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    gmem_map r14, r13, 0x2000
    guest_copy r14, guest, guest_end
    kvm_memslot slot, r12, 0, KVM_MEM_GUEST_MEMFD, 0, 0x2000, r14, r13, 0
    mov eax, SYS_direct_map_alias
    mov rdi, r14
    syscall
    mov rbx, rax
    sys_probe probe_before, rbx, PROBE_READ, PROBE_FULL
    kvm_vcpu rbp, r15, r12
    lea rdi, [regs_buf]
    movabs rax, KVM_GPA_SHARED
    mov qword ptr [rdi + KVM_REGS_rip], rax
    mov qword ptr [rdi + KVM_REGS_rflags], 2
    lea r8, [regs_buf]
    vcpu_regs set, rbp, KVM_SET_REGS, r8
    kvm_run run_shared, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    movzx ebx, byte ptr [r15 + KVM_RUN_IO_DATA]
shared_exit:
    nop
    mov eax, SYS_direct_map_alias
    mov rdi, r14
    syscall
    mov rbx, rax
    sys_probe probe_after, rbx, PROBE_READ, PROBE_FULL
    gmem_convert to_private, r13, 0, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE
vmm_read:
    mov al, byte ptr [r14]
    lea rdi, [regs_buf]
    mov qword ptr [rdi + KVM_REGS_rip], 0
    lea r8, [regs_buf]
    vcpu_regs set2, rbp, KVM_SET_REGS, r8
    kvm_run run_private, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    movzx ebx, byte ptr [r15 + KVM_RUN_IO_DATA]
    movzx ecx, byte ptr [r14 + 0x1000]
private_exit:
    nop
    kvm_run run_hlt, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
hlt_exit:
    nop
    mov eax, SYS_exit
    xor edi, edi
    syscall

; the guest: bumps a counter in the data page (gpa 0x1000, shared), reports
; 0x99 and halts; position-independent, so it runs at either alias
guest:
    movabs rdi, KVM_GPA_SHARED + 0x1000
    inc byte ptr [rdi]
    mov al, 0x99
    out 0x20, al
    hlt
    jmp guest
guest_end:
