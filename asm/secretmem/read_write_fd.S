; A secretmem file has no read or write: vfs_read/vfs_write return -EINVAL
; without FMODE_CAN_READ / FMODE_CAN_WRITE.  The console fds work.
; expect: rd rax=-22
; expect: wr rax=-22
; expect: console rax=3
; expect: output ok
.text
_start:
    mov eax, SYS_memfd_secret
    xor edi, edi
    syscall
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
    syscall
    mov eax, SYS_read
    mov rdi, r12
    mov esi, USER_DATA
    mov edx, 16
rd:
    syscall
    mov eax, SYS_write
    mov rdi, r12
    mov esi, USER_DATA
    mov edx, 16
wr:
    syscall
    mov eax, SYS_write
    mov edi, 1
    lea rsi, [rip + msg]
    mov edx, 3
console:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
.rodata
msg: .ascii "ok\n"
