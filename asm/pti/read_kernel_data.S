; Kernel static data (.data) from user mode, PTI on: not in the user page
; tables at all, #PF 0x4.  A write is refused the same way, with W set: 0x6.
; isoemu: pti=on
; expect: probe_read fault 14 0x4
; expect: probe_write fault 14 0x6
.text
_start:
    mov rax, KERNEL_DATA
probe_read:
    mov rbx, qword ptr [rax]
probe_write:
    mov qword ptr [rax], rbx
    mov eax, SYS_exit
    xor edi, edi
    syscall
