; A guest runs until it exits to the VMM (arch/x86/kvm/vmx/vmx.c's exit
; handlers; struct kvm_run of include/uapi/linux/kvm.h).  The guest's code is
; in the VMM's own memory, a memslot without guest_memfd, so it is shared: it
; runs at its shared alias (guest-physical bit 47, KVM_GPA_SHARED).  Fetched
; as private (bit 47 clear) it is a memory-fault exit: flags PRIVATE, the
; page's gpa, PAGE_SIZE, and KVM_RUN is -EFAULT (kvm_mmu_faultin_pfn ->
; kvm_mmu_prepare_memory_fault_exit).  OUT is KVM_EXIT_IO with its data in the
; kvm_run page; HLT is KVM_EXIT_HLT (no in-kernel APIC); the registers come
; back with KVM_GET_REGS.  A vCPU starts at RIP 0xfff0, RFLAGS 0x2
; (kvm_vcpu_reset); KVM_SET_REGS forces RFLAGS bit 1 (__set_regs).  A
; shared access to a slot whose userspace_addr maps nothing is a memory-fault
; exit without the PRIVATE flag, and -EFAULT (hva_to_pfn fails:
; kvm_handle_error_pfn); a shared access outside every slot would be
; emulated MMIO, which the stub reports as KVM_EXIT_INTERNAL_ERROR
; (KVM_INTERNAL_ERROR_EMULATION), KVM_RUN 0.
; expect: slot rax=0
; expect: reset rax=0xfff0 rbx=0x2
; expect: set rax=0
; expect: run_private rax=-EFAULT
; expect: fault_exit rax=KVM_EXIT_MEMORY_FAULT rbx=KVM_MEMORY_EXIT_FLAG_PRIVATE rcx=0 rdx=PAGE_SIZE
; expect: run_io rax=0
; expect: io_exit rax=KVM_EXIT_IO rbx=KVM_EXIT_IO_OUT rcx=1 rdx=0x10 rsi=1 rdi=KVM_RUN_IO_DATA r8=0x41
; expect: run_hlt rax=0
; expect: hlt_exit rax=KVM_EXIT_HLT
; expect: get rax=0
; expect: regs rax=0x41 rbx=0x1234 rcx=KVM_GPA_SHARED+guest_after_hlt-guest rdx=0x2
; expect: nohva_slot rax=0
; expect: run_nohva rax=-EFAULT
; expect: nohva_exit rax=KVM_EXIT_MEMORY_FAULT rbx=0 rcx=0x10000 rdx=PAGE_SIZE
; expect: run_noslot rax=0
; expect: noslot_exit rax=KVM_EXIT_INTERNAL_ERROR rbx=KVM_INTERNAL_ERROR_EMULATION
; expect: run_arg rax=-EINVAL
; expect: bad_ioctl rax=-EINVAL
.include "kvm.inc"
.text
_start:
    kvm_vm r12
    xor edi, edi
    mov esi, 0x2000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    mov eax, SYS_mmap
    syscall
    mov r14, rax
    kvm_memslot slot, r12, 0, 0, 0, 0x2000, r14, 0, 0
    guest_copy r14, guest, guest_end
    kvm_vcpu r13, r15, r12
    sub rsp, KVM_REGS_SIZE
    mov rbx, rsp
    vcpu_regs get0, r13, KVM_GET_REGS, rbx
    mov rax, qword ptr [rbx + KVM_REGS_rip]
    mov rbx, qword ptr [rbx + KVM_REGS_rflags]
reset:
    nop
    mov rbx, rsp
    mov qword ptr [rbx + KVM_REGS_rip], 0
    mov qword ptr [rbx + KVM_REGS_rflags], 0
    vcpu_regs set, r13, KVM_SET_REGS, rbx
    kvm_run run_private, r13
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    mov rbx, qword ptr [r15 + KVM_RUN_memory_fault_flags]
    mov rcx, qword ptr [r15 + KVM_RUN_memory_fault_gpa]
    mov rdx, qword ptr [r15 + KVM_RUN_memory_fault_size]
fault_exit:
    nop
    mov rbx, rsp
    movabs rax, KVM_GPA_SHARED
    mov qword ptr [rbx + KVM_REGS_rip], rax
    vcpu_regs set2, r13, KVM_SET_REGS, rbx
    kvm_run run_io, r13
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    movzx ebx, byte ptr [r15 + KVM_RUN_io_direction]
    movzx ecx, byte ptr [r15 + KVM_RUN_io_size]
    movzx edx, word ptr [r15 + KVM_RUN_io_port]
    mov esi, dword ptr [r15 + KVM_RUN_io_count]
    mov rdi, qword ptr [r15 + KVM_RUN_io_data_offset]
    movzx r8d, byte ptr [r15 + rdi]
io_exit:
    nop
    kvm_run run_hlt, r13
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
hlt_exit:
    nop
    mov rbx, rsp
    vcpu_regs get, r13, KVM_GET_REGS, rbx
    mov rbx, rsp
    mov rax, qword ptr [rbx + KVM_REGS_rax]
    mov rcx, qword ptr [rbx + KVM_REGS_rip]
    mov rdx, qword ptr [rbx + KVM_REGS_rflags]
    mov rbx, qword ptr [rbx + KVM_REGS_rbx]
regs:
    nop
    mov rbx, 0x500000000                ; nothing is mapped there
    kvm_memslot nohva_slot, r12, 1, 0, 0x10000, 0x1000, rbx, 0, 0
    lea rax, [guest_nohva]
    call .Lset_rip
    kvm_run run_nohva, r13
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    mov rbx, qword ptr [r15 + KVM_RUN_memory_fault_flags]
    mov rcx, qword ptr [r15 + KVM_RUN_memory_fault_gpa]
    mov rdx, qword ptr [r15 + KVM_RUN_memory_fault_size]
nohva_exit:
    nop
    lea rax, [guest_noslot]
    call .Lset_rip
    kvm_run run_noslot, r13
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    mov ebx, dword ptr [r15 + KVM_RUN_internal_suberror]
noslot_exit:
    nop
    mov rdi, r13
    mov esi, KVM_RUN
    mov edx, 1
    mov eax, SYS_ioctl
run_arg:
    syscall
    mov rdi, r13
    mov esi, KVM_CREATE_VM
    xor edx, edx
    mov eax, SYS_ioctl
bad_ioctl:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall

; .Lset_rip(rax = a label of the guest): its RIP, at the shared alias of gpa 0
.Lset_rip:
    lea rcx, [guest]
    sub rax, rcx
    movabs rcx, KVM_GPA_SHARED
    add rax, rcx
    lea rbx, [rsp + 8]
    mov qword ptr [rbx + KVM_REGS_rip], rax
    vcpu_regs .Lset_regs, r13, KVM_SET_REGS, rbx
    ret

; the guest: 64-bit code, no paging (docs/guest_memfd.md, "The VM")
guest:
    mov eax, 0x41
    out 0x10, al
    mov ebx, 0x1234
    hlt
guest_after_hlt:
    jmp guest
guest_nohva:
    movabs rax, KVM_GPA_SHARED + 0x10000
    mov al, byte ptr [rax]
    hlt
guest_noslot:
    movabs rax, KVM_GPA_SHARED + 0x20000
    mov al, byte ptr [rax]
    hlt
guest_end:
