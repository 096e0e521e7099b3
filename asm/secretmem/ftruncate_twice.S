; A secretmem file's size is set once: secretmem_setattr returns -EINVAL when
; i_size is already set -- for a different size and for the same one.
; expect: first rax=0
; expect: again_same rax=-22
; expect: again_other rax=-22
.text
_start:
    mov eax, SYS_memfd_secret
    xor edi, edi
    syscall
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
first:
    syscall
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
again_same:
    syscall
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 8192
again_other:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
