; With PTI the kernel's copy of each user PGD entry carries NX
; (__pti_set_user_pgtbl), so kernel-mode execution of user text faults even
; with SMEP off: #PF 0x11 (present, fetch, supervisor) -- a missed CR3 switch
; crashes on the first user instruction instead of running it.
; isoemu: pti=on smep=off
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
