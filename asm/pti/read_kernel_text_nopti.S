; The same probe of kernel text without PTI: the one page table maps the kernel
; as present but supervisor-only, the layout Meltdown exploited.  The CPL3
; read faults on the U/S bit: #PF 0x5 (protection, read, user).
; isoemu: pti=off
; expect: probe_text fault 14 0x5
; expect: probe_rodata fault 14 0x5
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
