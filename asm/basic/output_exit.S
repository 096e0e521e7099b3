; write(1, ...) to the console returns the byte count; exit's status is the
; low byte of its argument.
; expect: say rax=13
; expect: output hello
; expect: output from A
; expect: exit 42
.text
_start:
    mov eax, SYS_write
    mov edi, 1
    lea rsi, [rip + msg]
    mov edx, 13
say:
    syscall
    mov eax, SYS_exit
    mov edi, 0x12a              # exit(0x12a): status 0x2a
    syscall
.rodata
msg: .ascii "hello\nfrom A\n"
