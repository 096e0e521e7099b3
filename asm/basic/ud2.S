; An undefined opcode raises #UD (vector 6, no error code): SIGILL.  The
; runner resumes after it.
; expect: bad fault 6
; expect: after rax=7
.text
_start:
bad:
    ud2
    mov eax, 7
after:
    nop
    mov eax, SYS_exit
    xor edi, edi
    syscall
