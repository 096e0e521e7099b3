; Meltdown-style probe of kernel text from user mode, PTI on.
; With PTI the user page tables map none of the kernel image outside the entry
; text (arch/x86/mm/pti.c: pti_clone_entry_text, pti_clone_user_shared), so a
; CPL3 read of __START_KERNEL faults as not present: #PF 0x4 (read, user).
; isoemu: pti=on
; expect: probe_text fault 14 0x4
; expect: probe_rodata fault 14 0x4
; expect: exit 0
.text
_start:
    mov rax, KERNEL_TEXT
probe_text:
    mov bl, byte ptr [rax]
    mov rax, KERNEL_RODATA
probe_rodata:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
