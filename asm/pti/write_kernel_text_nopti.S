; A user write to kernel text without PTI: present, supervisor, read-only --
; the U/S check fails first, #PF 0x7 (protection, write, user).
; isoemu: pti=off
; expect: poke fault 14 0x7
.text
_start:
    mov rax, KERNEL_TEXT
poke:
    mov byte ptr [rax], 0xcc
    mov eax, SYS_exit
    xor edi, edi
    syscall
