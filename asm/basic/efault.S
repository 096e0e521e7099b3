; A system call handed a bad user pointer gets -EFAULT instead of a signal:
; the kernel's copy_from_user faults and its exception-table fixup returns
; the error (arch/x86/mm/extable.c).  Kernel addresses are refused up front
; (access_ok), unmapped user addresses by the fault.
; expect: unmapped rax=-14
; expect: kernel rax=-14
.text
_start:
    mov eax, SYS_write
    mov edi, 1
    mov esi, 0x1000             # nothing mapped here
    mov edx, 4
unmapped:
    syscall
    mov eax, SYS_write
    mov edi, 1
    mov rsi, KERNEL_DATA
    mov edx, 4
kernel:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
