; Without ASI there is no restricted space: SYS_probe with rdx = 1 is -EINVAL,
; and a probe in the full kernel page table never reports an ASI exit.
; isoemu: asi=off
; expect: restricted rax=-22
; expect: full rax=0 r8=0
.text
_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov r12, rax
    mov eax, SYS_probe
    mov rdi, r12
    xor esi, esi
    mov edx, 1
restricted:
    syscall
    mov eax, SYS_probe
    mov rdi, r12
    xor esi, esi
    xor edx, edx
full:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
