; memfd_secret(flags) accepts O_CLOEXEC and nothing else
; (mm/secretmem.c: flags & ~(SECRETMEM_FLAGS_MASK | O_CLOEXEC) -> -EINVAL).
; expect: bad_flag rax=-22
; expect: bad_mode rax=-22
; expect: cloexec rax=3
; expect: plain rax=4
.text
_start:
    mov eax, SYS_memfd_secret
    mov edi, 1
bad_flag:
    syscall
    mov eax, SYS_memfd_secret
    mov edi, O_CLOEXEC | 0x800          # O_NONBLOCK
bad_mode:
    syscall
    mov eax, SYS_memfd_secret
    mov edi, O_CLOEXEC
cloexec:
    syscall
    mov eax, SYS_memfd_secret
    xor edi, edi
plain:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
