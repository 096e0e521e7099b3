; A guest that never exits is stopped after a timeslice of 100,000
; instructions (the VMX-preemption timer's exit): KVM_RUN returns -EINTR
; with KVM_EXIT_INTR, as Linux's vcpu_run does when a signal is pending
; (the selftests' own runaway detection is such a signal).  The registers
; show exactly where the guest was (a loop of two instructions: rax counts
; the iterations: 1 + 2 * 49,999 + 1 instructions leave rax 50,000 and RIP
; at the jmp), and KVM_RUN again continues it.  A guest exception has no
; IDT to go through: a triple fault, KVM_EXIT_SHUTDOWN, and KVM_RUN returns 0
; (handle_triple_fault).
; expect: spin1 rax=-EINTR
; expect: intr1 rax=KVM_EXIT_INTR rbx=50000 rcx=KVM_GPA_SHARED+spin_jmp-guest
; expect: spin2 rax=-EINTR
; expect: intr2 rbx=100000
; expect: ud rax=0
; expect: shutdown rax=KVM_EXIT_SHUTDOWN rcx=KVM_GPA_SHARED+guest_ud-guest
.include "kvm.inc"
.data
regs_buf:   .zero KVM_REGS_SIZE
.text
_start:
    kvm_vm r12
    xor edi, edi
    mov esi, 0x1000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    mov eax, SYS_mmap
    syscall
    mov r14, rax
    kvm_memslot slot, r12, 0, 0, 0, 0x1000, r14, 0, 0
    guest_copy r14, guest, guest_end
    kvm_vcpu r13, r15, r12
    lea rbp, [regs_buf]
    vcpu_regs get0, r13, KVM_GET_REGS, rbp
    movabs rax, KVM_GPA_SHARED
    mov qword ptr [rbp + KVM_REGS_rip], rax
    vcpu_regs set0, r13, KVM_SET_REGS, rbp
    kvm_run spin1, r13
    vcpu_regs get1, r13, KVM_GET_REGS, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    mov rbx, qword ptr [rbp + KVM_REGS_rax]
    mov rcx, qword ptr [rbp + KVM_REGS_rip]
intr1:
    nop
    kvm_run spin2, r13
    vcpu_regs get2, r13, KVM_GET_REGS, rbp
    mov rbx, qword ptr [rbp + KVM_REGS_rax]
intr2:
    nop
    lea rax, [guest_ud]
    lea rcx, [guest]
    sub rax, rcx
    movabs rcx, KVM_GPA_SHARED
    add rax, rcx
    mov qword ptr [rbp + KVM_REGS_rip], rax
    vcpu_regs set3, r13, KVM_SET_REGS, rbp
    kvm_run ud, r13
    vcpu_regs get3, r13, KVM_GET_REGS, rbp
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    mov rcx, qword ptr [rbp + KVM_REGS_rip]
shutdown:
    nop
    mov eax, SYS_exit
    xor edi, edi
    syscall

guest:
    xor eax, eax
spin:
    inc rax
spin_jmp:
    jmp spin
guest_ud:
    ud2
guest_end:
