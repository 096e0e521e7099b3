; What PTI does map for user mode: the entry text and the cpu_entry_area
; (GDT, TSS, entry stacks), needed to switch CR3 on kernel entry.  They are
; present but supervisor-only, so a CPL3 read faults with P set: #PF 0x5,
; while the rest of the kernel faults as not present (0x4).
; isoemu: pti=on
; expect: probe_entry fault 14 0x5
; expect: probe_cea fault 14 0x5
; expect: probe_text fault 14 0x4
.text
_start:
    mov rax, ENTRY_TEXT
probe_entry:
    mov bl, byte ptr [rax]
    mov rax, CPU_ENTRY_AREA
probe_cea:
    mov bl, byte ptr [rax]
    mov rax, KERNEL_TEXT
probe_text:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
