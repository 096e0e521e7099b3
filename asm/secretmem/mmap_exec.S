; Secret memory is never executable: secretmem's mount is MNT_NOEXEC, so
; do_mmap refuses PROT_EXEC with -EPERM (path_noexec) before secretmem_mmap
; runs.
; expect: exec_shared rax=-EPERM
; expect: rx_shared rax=-EPERM
.include "isoemu.inc"
.text
_start:
    secret_fd r12, 4096         # memfd_secret, ftruncate 4 KiB: r12 = the fd
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_EXEC
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
exec_shared:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_EXEC
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
rx_shared:
    syscall
    sys_exit 0
