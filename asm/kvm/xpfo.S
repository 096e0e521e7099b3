; A VM's memslot backed by /dev/xpfo: Andy Lutomirski's "map all the VM
; private memory from /dev/xpfo" (the 2019 ASI RFC v2 thread).  The VMM
; fallocates two pages (one batch, out of the direct map), maps them shared
; with a third page beyond the size, and makes the mapping a memslot.
; KVM_RUN finds the file's pages through the VMM's page table
; (hva_to_pfn_remapped, virt/kvm/kvm_main.c; GUP refuses the VMA), never
; through the direct map: the guest runs its code from the first page, reads
; what the VMM wrote and writes what the VMM then reads, through its own
; mapping; the direct-map alias of the data page faults (#PF 0x0) before,
; between and after the runs, and the TLB model has no finding.  A guest
; access to the page beyond the size is a memory-fault exit (the fault is
; SIGBUS: KVM_PFN_ERR_FAULT, -EFAULT), without the PRIVATE flag.
; isoemu: asi=off unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: slot rax=0
; expect: probe_before rax=-EFAULT rdx=0x0 r9=14
; expect: run1 rax=0
; expect: exit1 rax=KVM_EXIT_IO rbx=0x5a rcx=1 rdx=0x42
; expect: probe_between rax=-EFAULT rdx=0x0 r9=14
; expect: run2 rax=0
; expect: exit2 rax=KVM_EXIT_IO rbx=0x5b rcx=2
; expect: run3 rax=-EFAULT
; expect: exit3 rax=KVM_EXIT_MEMORY_FAULT rbx=0 rcx=0x2000 rdx=0x1000
; expect: probe_after rax=-EFAULT rdx=0x0 r9=14
.include "kvm.inc"
.include "xpfo.inc"
.include "isoemu.inc"
.data
regs_buf:   .zero KVM_REGS_SIZE
.text
_start:
    kvm_vm r12
    xpfo_fd r13, 0x2000
    gmem_map r14, r13, 0x3000
    guest_copy r14, guest, guest_end
    mov byte ptr [r14 + 0x1010], 0x5a
    kvm_memslot slot, r12, 0, 0, 0, 0x3000, r14, 0, 0
    mov eax, SYS_direct_map_alias
    lea rdi, [r14 + 0x1000]
    syscall
    mov rbx, rax                        # the data page's direct-map alias
    sys_probe probe_before, rbx, PROBE_READ, PROBE_FULL
    push rbx
    kvm_vcpu rbp, r15, r12
    lea rdi, [regs_buf]
    movabs rax, KVM_GPA_SHARED
    mov qword ptr [rdi + KVM_REGS_rip], rax
    mov qword ptr [rdi + KVM_REGS_rflags], 2
    lea r8, [regs_buf]
    vcpu_regs set, rbp, KVM_SET_REGS, r8
    kvm_run run1, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    movzx ebx, byte ptr [r15 + KVM_RUN_IO_DATA]
    movzx ecx, byte ptr [r14 + 0x1000]
    movzx edx, byte ptr [r14 + 0x1008]
exit1:
    nop
    mov rbx, qword ptr [rsp]
    sys_probe probe_between, rbx, PROBE_READ, PROBE_FULL
    mov byte ptr [r14 + 0x1010], 0x5b
    kvm_run run2, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    movzx ebx, byte ptr [r15 + KVM_RUN_IO_DATA]
    movzx ecx, byte ptr [r14 + 0x1000]
exit2:
    nop
    kvm_run run3, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    mov rbx, qword ptr [r15 + KVM_RUN_memory_fault_flags]
    mov rcx, qword ptr [r15 + KVM_RUN_memory_fault_gpa]
    mov rdx, qword ptr [r15 + KVM_RUN_memory_fault_size]
exit3:
    nop
    pop rbx
    sys_probe probe_after, rbx, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
    syscall

; the guest (shared alias, gpa 0): bumps the counter at 0x1000, writes 0x42
; at 0x1008, reports the byte the VMM left at 0x1010; the second run does it
; again; the third reads the page beyond the xpfo file's size
guest:
    movabs rdi, KVM_GPA_SHARED + 0x1000
    inc byte ptr [rdi]
    mov byte ptr [rdi + 8], 0x42
    mov al, byte ptr [rdi + 0x10]
    out 0x20, al
    inc byte ptr [rdi]
    mov al, byte ptr [rdi + 0x10]
    out 0x20, al
    mov al, byte ptr [rdi + 0x1000]
    hlt
guest_end:
