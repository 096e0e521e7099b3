; A user access the guest_memfd refuses is SIGBUS (kvm_gmem_fault_user_mapping
; returns VM_FAULT_SIGBUS): beyond i_size, in a mapping longer than the file
; (guest_memfd_test.c: test_fault_overflow), and any access to a private
; page, here a guest_memfd made without INIT_SHARED, so every page is private
; (test_fault_private).  The #PF is a not-present one (0x4 read, 0x6 write)
; that the kernel turns into SIGBUS; the runner resumes after it.  The pages
; inside the size keep what was written.
; expect: last_inside ok
; expect: first_beyond fault 14 0x6
; expect: far_beyond fault 14 0x4
; expect: readback rax=0xaa
; expect: private_read fault 14 0x4
; expect: private_write fault 14 0x6
.include "kvm.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x4000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    gmem_map r14, r13, 0x10000
    mov byte ptr [r14], 0xaa
last_inside:
    mov byte ptr [r14 + 0x3fff], 0xaa
first_beyond:
    mov byte ptr [r14 + 0x4000], 0xaa
far_beyond:
    mov al, byte ptr [r14 + 0xffff]
    movzx eax, byte ptr [r14 + 0x3fff]
readback:
    nop
    gmem_fd r13, r12, 0x4000, GUEST_MEMFD_FLAG_MMAP
    gmem_map r14, r13, 0x4000
private_read:
    mov al, byte ptr [r14]
private_write:
    mov byte ptr [r14 + 0x1000], 0xaa
    mov eax, SYS_exit
    xor edi, edi
    syscall
