; A secretmem file has no read or write: vfs_read/vfs_write return -EINVAL
; without FMODE_CAN_READ / FMODE_CAN_WRITE.  The console fds work.
; expect: rd rax=-EINVAL
; expect: wr rax=-EINVAL
; expect: console rax=3
; expect: output ok
.include "isoemu.inc"
.text
_start:
    secret_fd r12, 4096         # memfd_secret, ftruncate 4 KiB: r12 = the fd
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
    sys_exit 0
.rodata
msg: .ascii "ok\n"
