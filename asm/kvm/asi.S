; The KVM class of ASI: KVM_RUN runs the guest from the KVM class's restricted
; space (the 2025 RFC v2's vcpu_enter_guest: asi_enter before VM entry,
; asi_relax after the exit; the 2019 RFC's session, 25/26), and guest memory
; is sensitive there.  The VMM backs a memslot with /dev/xpfo (shared) and a
; guest_memfd (private), the code page made shared.  The guest writes and
; reads back a private page, which KVM allocates on the EPT violation and
; zeroes through the direct map: a sensitive access, so the exit handler
; leaves the restricted space through a #PF (counted by tests/test_kvm_asi.py)
; and the access is retried; the guest then reports the byte the VMM wrote
; to the xpfo page, and halts.  No finding in any design: the guest always
; entered restricted, and nothing sensitive was touched in a critical
; section.  The xpfo page's direct-map alias stays absent (#PF 0x0 from the
; full tables); the TLB model has no finding.
; Two injections, each caught: asi_kvm_no_enter runs the guest from whatever
; table the ioctl was on (the machine's check at each VM entry: a
; vm-entry-unrestricted finding per entry, charged to its KVM_RUN), and
; asi_kvm_late_relax relaxes only after the exit is handled, so the zeroing
; of the private page is a sensitive access from the KVM class's critical
; section (the RFC's VM_WARN; the 2019 RFC has no critical section).
; isoemu: asi=off|on|rfc2019|rfc2025 inject=none|asi_kvm_no_enter|asi_kvm_late_relax
; expect[inject=asi_kvm_no_enter,asi=on|rfc2019|rfc2025]: run1 asi vm-entry-unrestricted
; expect[inject=asi_kvm_no_enter,asi=on|rfc2019|rfc2025]: run2 asi vm-entry-unrestricted
; expect[inject=asi_kvm_no_enter,asi=on|rfc2019|rfc2025]: run3 asi vm-entry-unrestricted
; expect[inject=asi_kvm_late_relax,asi=on|rfc2025]: run1 asi sensitive-access-in-critical-section
; expect: to_shared rax=0
; expect: slot rax=0
; expect: run1 rax=0
; expect: exit1 rax=KVM_EXIT_IO rbx=0x77
; expect: run2 rax=0
; expect: exit2 rax=KVM_EXIT_IO rbx=0x5a
; expect: run3 rax=0
; expect: exit3 rax=KVM_EXIT_HLT
; expect: probe_alias rax=-EFAULT rdx=0x0 r9=14
.include "kvm.inc"
.include "xpfo.inc"
.include "isoemu.inc"
.data
regs_buf:   .zero KVM_REGS_SIZE
.text
_start:
    kvm_vm r12
    gmem_fd rbx, r12, 0x2000, 0
    gmem_convert to_shared, rbx, 0, 0x1000, 0
    xpfo_fd r13, 0x2000
    gmem_map r14, r13, 0x2000
    guest_copy r14, guest, guest_end
    mov byte ptr [r14 + 0x800], 0x5a
    kvm_memslot slot, r12, 0, KVM_MEM_GUEST_MEMFD, 0, 0x2000, r14, rbx, 0
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
exit1:
    nop
    kvm_run run2, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    movzx ebx, byte ptr [r15 + KVM_RUN_IO_DATA]
exit2:
    nop
    kvm_run run3, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
exit3:
    nop
    mov eax, SYS_direct_map_alias
    mov rdi, r14
    syscall
    sys_probe probe_alias, rax, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
    syscall

; the guest (shared alias of gpa 0, the xpfo page): a private write and read
; at gpa 0x1000 (guest_memfd), then the VMM's byte at 0x800
guest:
    mov edi, 0x1000
    mov byte ptr [rdi], 0x77
    mov al, byte ptr [rdi]
    out 0x20, al
    movabs rdi, KVM_GPA_SHARED + 0x800
    mov al, byte ptr [rdi]
    out 0x20, al
    hlt
guest_end:
