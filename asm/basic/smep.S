; SMEP: the kernel may not execute user pages.  An execute probe of a 'ret' in
; the program's text from kernel mode faults with P, I/D and U/S clear:
; #PF 0x11 (protection, fetch, supervisor).  PTI is off here so the NX that
; PTI puts on the kernel copy of the user PGD entries is not what stops it.
; isoemu: pti=off smep=on
; expect: exec_user rax=-14 rdx=0x11 r9=14
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
