; Without SMEP (and without PTI's NX on the kernel's copy of the user half) the
; kernel can execute a user page: the execute probe of a 'ret' in the
; program's text returns normally.
; isoemu: pti=off smep=off
; expect: exec_user rax=0 rdx=0
.text
_start:
    mov eax, SYS_probe
    lea rdi, [rip + user_ret]
    mov esi, 2
    xor edx, edx
exec_user:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
user_ret:
    ret
