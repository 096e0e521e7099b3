; Kernel static data from user mode without PTI: present, supervisor-only.
; Read #PF 0x5, write #PF 0x7 (protection, write, user).
; isoemu: pti=off
; expect: probe_read fault 14 0x5
; expect: probe_write fault 14 0x7
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
