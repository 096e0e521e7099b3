; KVM_SET_USER_MEMORY_REGION2's checks, in __kvm_set_memory_region's order
; (virt/kvm/kvm_main.c), and kvm_gmem_bind's (virt/kvm/guest_memfd.c):
; unknown flags, a size, gpa or userspace_addr not page-aligned, a user range
; that leaves user space, an unaligned guest_memfd_offset, a slot number
; beyond the slots (the stub has KVM_MAX_MEMSLOTS; as_id 1 too), a gpa range
; that wraps, deleting a slot that does not exist: -EINVAL.  A range above
; the guest's shared bit: -EINVAL (kvm_arch_prepare_memory_region, the
; largest gfn).  A new or moved slot that overlaps another: -EEXIST.  A
; change of an existing slot must keep userspace_addr and size (-EINVAL); the
; same values again change nothing (0); a new gpa moves it; a guest_memfd
; slot cannot change at all (-EINVAL).  kvm_gmem_bind: a closed fd is
; -EBADF; a file that is not a guest_memfd, or one of another VM, -EINVAL; a
; range beyond the guest_memfd's size -EINVAL; a range of the guest_memfd
; another slot is bound to -EEXIST.  Size 0 deletes.  KVM_CREATE_VCPU: an id
; at or beyond KVM_MAX_VCPU_IDS, or a vCPU beyond the VM's limit (one here),
; is -EINVAL (kvm_vm_ioctl_create_vcpu).
; expect: bad_flags rax=-EINVAL
; expect: size_unaligned rax=-EINVAL
; expect: gpa_unaligned rax=-EINVAL
; expect: uaddr_unaligned rax=-EINVAL
; expect: uaddr_kernel rax=-EINVAL
; expect: goff_unaligned rax=-EINVAL
; expect: slot_beyond rax=-EINVAL
; expect: as_id rax=-EINVAL
; expect: gpa_wrap rax=-EINVAL
; expect: delete_none rax=-EINVAL
; expect: above_shared rax=-EINVAL
; expect: create rax=0
; expect: overlap rax=-EEXIST
; expect: overlap_below rax=-EEXIST
; expect: adjacent rax=0
; expect: other_uaddr rax=-EINVAL
; expect: other_size rax=-EINVAL
; expect: same rax=0
; expect: move rax=0
; expect: move_onto rax=-EEXIST
; expect: bind_badf rax=-EBADF
; expect: bind_not_gmem rax=-EINVAL
; expect: bind_other_vm rax=-EINVAL
; expect: bind_beyond rax=-EINVAL
; expect: bind rax=0
; expect: bind_again rax=-EEXIST
; expect: bind_rest rax=0
; expect: gmem_immutable rax=-EINVAL
; expect: delete rax=0
; expect: delete_again rax=-EINVAL
; expect: recreate rax=0
; expect: vcpu_id rax=-EINVAL
; expect: vcpu rax=0..16
; expect: vcpu_second rax=-EINVAL
.include "kvm.inc"
.text
_start:
    kvm_vm r12
    xor edi, edi
    mov esi, 0x8000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    mov eax, SYS_mmap
    syscall
    mov r14, rax
    lea r15, [r14 + 0x800]
    kvm_memslot bad_flags, r12, 0, 8, 0, 0x2000, r14, 0, 0
    kvm_memslot size_unaligned, r12, 0, 0, 0, 0x1800, r14, 0, 0
    kvm_memslot gpa_unaligned, r12, 0, 0, 0x800, 0x2000, r14, 0, 0
    kvm_memslot uaddr_unaligned, r12, 0, 0, 0, 0x2000, r15, 0, 0
    movabs r15, 0xffff888000000000
    kvm_memslot uaddr_kernel, r12, 0, 0, 0, 0x2000, r15, 0, 0
    kvm_memslot goff_unaligned, r12, 0, KVM_MEM_GUEST_MEMFD, 0, 0x2000, r14, 0, 0x800
    kvm_memslot slot_beyond, r12, KVM_MAX_MEMSLOTS, 0, 0, 0x2000, r14, 0, 0
    kvm_memslot as_id, r12, 0x10000, 0, 0, 0x2000, r14, 0, 0
    mov r15, -0x1000
    kvm_memslot gpa_wrap, r12, 0, 0, r15, 0x2000, r14, 0, 0
    kvm_memslot delete_none, r12, 3, 0, 0, 0, r14, 0, 0
    movabs r15, KVM_GPA_SHARED - 0x1000
    kvm_memslot above_shared, r12, 0, 0, r15, 0x2000, r14, 0, 0
    ; slot 0: gpa 0..0x4000
    kvm_memslot create, r12, 0, 0, 0, 0x4000, r14, 0, 0
    lea r15, [r14 + 0x4000]
    kvm_memslot overlap, r12, 1, 0, 0x2000, 0x4000, r15, 0, 0
    kvm_memslot overlap_below, r12, 1, 0, 0x3000, 0x1000, r15, 0, 0
    ; slot 1: gpa 0x4000..0x8000
    kvm_memslot adjacent, r12, 1, 0, 0x4000, 0x4000, r15, 0, 0
    kvm_memslot other_uaddr, r12, 0, 0, 0, 0x4000, r15, 0, 0
    kvm_memslot other_size, r12, 0, 0, 0, 0x2000, r14, 0, 0
    kvm_memslot same, r12, 0, 0, 0, 0x4000, r14, 0, 0
    kvm_memslot move, r12, 0, 0, 0x10000, 0x4000, r14, 0, 0
    kvm_memslot move_onto, r12, 0, 0, 0x6000, 0x4000, r14, 0, 0
    ; guest_memfd slots (slot 2 and 3, gpa 0x100000...)
    gmem_fd r13, r12, 0x4000, 0
    kvm_memslot bind_badf, r12, 2, KVM_MEM_GUEST_MEMFD, 0x100000, 0x2000, 0, 15, 0
    kvm_memslot bind_not_gmem, r12, 2, KVM_MEM_GUEST_MEMFD, 0x100000, 0x2000, 0, r12, 0
    mov rbx, r12
    kvm_vm r12
    gmem_fd rbp, r12, 0x4000, 0
    mov r12, rbx
    kvm_memslot bind_other_vm, r12, 2, KVM_MEM_GUEST_MEMFD, 0x100000, 0x2000, 0, rbp, 0
    kvm_memslot bind_beyond, r12, 2, KVM_MEM_GUEST_MEMFD, 0x100000, 0x2000, 0, r13, 0x3000
    kvm_memslot bind, r12, 2, KVM_MEM_GUEST_MEMFD, 0x100000, 0x2000, 0, r13, 0
    kvm_memslot bind_again, r12, 3, KVM_MEM_GUEST_MEMFD, 0x200000, 0x2000, 0, r13, 0x1000
    kvm_memslot bind_rest, r12, 3, KVM_MEM_GUEST_MEMFD, 0x200000, 0x2000, 0, r13, 0x2000
    kvm_memslot gmem_immutable, r12, 2, KVM_MEM_GUEST_MEMFD, 0x300000, 0x2000, 0, r13, 0
    kvm_memslot delete, r12, 0, 0, 0, 0, r14, 0, 0
    kvm_memslot delete_again, r12, 0, 0, 0, 0, r14, 0, 0
    kvm_memslot recreate, r12, 0, 0, 0x2000, 0x2000, r14, 0, 0
    mov rdi, r12
    mov esi, KVM_CREATE_VCPU
    mov edx, KVM_MAX_VCPU_IDS
    mov eax, SYS_ioctl
vcpu_id:
    syscall
    mov rdi, r12
    mov esi, KVM_CREATE_VCPU
    xor edx, edx
    mov eax, SYS_ioctl
vcpu:
    syscall
    mov rdi, r12
    mov esi, KVM_CREATE_VCPU
    mov edx, 1
    mov eax, SYS_ioctl
vcpu_second:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
