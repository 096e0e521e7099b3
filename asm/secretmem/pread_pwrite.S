; The memfd_secret selftest's test_file_apis (tools/testing/selftests/mm/
; memfd_secret.c) calls pread and pwrite too.  A secretmem file comes from
; alloc_file_pseudo (mm/secretmem.c) and has no FMODE_PREAD/FMODE_PWRITE, so
; ksys_pread64/ksys_pwrite64 (fs/read_write.c) answer -ESPIPE, after checking
; the position (-EINVAL when negative) and the descriptor (-EBADF).
; expect: prd rax=-ESPIPE
; expect: pwr rax=-ESPIPE
; expect: negpos rax=-EINVAL
; expect: badfd rax=-EBADF
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    secret_fd r12, 4096
    mov eax, SYS_pread64
    mov rdi, r12
    mov esi, USER_DATA
    mov edx, 16
    xor r10d, r10d
prd:
    syscall
    mov eax, SYS_pwrite64
    mov rdi, r12
    mov esi, USER_DATA
    mov edx, 16
    xor r10d, r10d
pwr:
    syscall
    mov eax, SYS_pread64
    mov rdi, r12
    mov esi, USER_DATA
    mov edx, 16
    mov r10, -1
negpos:
    syscall
    mov eax, SYS_pread64
    mov edi, 9
    mov esi, USER_DATA
    mov edx, 16
    xor r10d, r10d
badfd:
    syscall
    sys_exit 0
