; Jumping into kernel text without PTI: present, supervisor-only, so the
; fetch faults on U/S: #PF 0x15 (protection, fetch, user).
; isoemu: pti=off
; expect: jump fault 14 0x15
.text
_start:
    mov rax, KERNEL_TEXT
jump:
    call rax
    mov eax, SYS_exit
    xor edi, edi
    syscall
