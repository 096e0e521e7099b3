; secretmem_mmap refuses private mappings: (vm_flags & (VM_SHARED |
; VM_MAYSHARE)) == 0 -> -EINVAL.  The shared mapping that follows works.
; expect: private rax=-EINVAL
; expect: shared rax=0x7f0000000000
.include "isoemu.inc"
.text
_start:
    secret_fd r12, 4096         # memfd_secret, ftruncate 4 KiB: r12 = the fd
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE
    mov r8, r12
    xor r9d, r9d
private:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
shared:
    syscall
    sys_exit 0
