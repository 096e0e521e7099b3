; System call numbers the kernel does not implement return -ENOSYS (sys_ni_syscall),
; including numbers beyond the table and -1.
; expect: unassigned rax=-38
; expect: huge rax=-38
; expect: minus_one rax=-38
; expect: getpid rax=1
.text
_start:
    mov eax, 335                # unassigned in syscall_64.tbl
unassigned:
    syscall
    mov eax, 5000
huge:
    syscall
    mov rax, -1
minus_one:
    syscall
    mov eax, SYS_getpid
getpid:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
