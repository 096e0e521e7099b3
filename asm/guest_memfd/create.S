; KVM_CREATE_GUEST_MEMFD's flags and sizes (virt/kvm/guest_memfd.c,
; kvm_gmem_create; tools/testing/selftests/kvm/guest_memfd_test.c,
; test_guest_memfd_flags and test_create_guest_memfd_invalid_sizes): each
; supported flag alone succeeds (MMAP bit 0, INIT_SHARED bit 1, and the
; direct-map-removal series' NO_DIRECT_MAP bit 2), every other bit of the 64
; is -EINVAL; a size that is 0, negative or not page-aligned is -EINVAL.
; Unknown flags are checked before the size.  The stub holds at most 2 MiB
; per guest_memfd (a larger one is -ENOMEM, docs/guest_memfd.md).
; expect: vm_ok r12=4              # fds 0-2 are the console, 3 is /dev/kvm
; expect: f_mmap rax=5
; expect: f_shared rax=6
; expect: f_nodm rax=7
; expect: f_all rax=8
; expect: f_bad rax=-EINVAL
; expect: bad_bits rbx=61
; expect: s_zero rax=-EINVAL
; expect: s_one rax=-EINVAL
; expect: s_page_minus rax=-EINVAL
; expect: s_page_plus rax=-EINVAL
; expect: s_negative rax=-EINVAL
; expect: s_flags_first rax=-EINVAL
; expect: s_two_pages rax=9
; expect: s_max rax=10
; expect: s_too_big rax=-ENOMEM
; expect: on_kvm_fd rax=-EINVAL
.include "kvm.inc"
.text
_start:
    kvm_vm r12
vm_ok:
    nop
    gmem_try f_mmap, r12, 4096, GUEST_MEMFD_FLAG_MMAP
    gmem_try f_shared, r12, 4096, GUEST_MEMFD_FLAG_INIT_SHARED
    gmem_try f_nodm, r12, 4096, GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    gmem_try f_all, r12, 4096, GUEST_MEMFD_VALID_FLAGS
    ; bits 3..63, one at a time: rbx counts the -EINVAL answers
    xor ebx, ebx
    mov r13d, 3
.Lbit:
    mov r14d, 1
    mov ecx, r13d
    shl r14, cl
    gmem_try f_bad, r12, 4096, r14
    cmp rax, -EINVAL
    jne .Lnext
    inc ebx
.Lnext:
    inc r13d
    cmp r13d, 64
    jb .Lbit
bad_bits:
    nop
    gmem_try s_zero, r12, 0, 0
    gmem_try s_one, r12, 1, 0
    gmem_try s_page_minus, r12, 4095, 0
    gmem_try s_page_plus, r12, 4097, 0
    gmem_try s_negative, r12, -4096, 0
    gmem_try s_flags_first, r12, 4095, 8
    gmem_try s_two_pages, r12, 8192, 0
    gmem_try s_max, r12, 0x200000, 0
    gmem_try s_too_big, r12, 0x201000, 0
    ; a VM ioctl on /dev/kvm itself: kvm_dev_ioctl -> kvm_arch_dev_ioctl's -EINVAL
    gmem_try on_kvm_fd, 3, 4096, 0
    mov eax, SYS_exit
    xor edi, edi
    syscall
