; Secret memory is never executable: secretmem's mount is MNT_NOEXEC, so
; do_mmap refuses PROT_EXEC with -EPERM (path_noexec) before secretmem_mmap
; runs.
; expect: exec_shared rax=-1
; expect: rx_shared rax=-1
.text
_start:
    mov eax, SYS_memfd_secret
    xor edi, edi
    syscall
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
    syscall
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
    mov eax, SYS_exit
    xor edi, edi
    syscall
