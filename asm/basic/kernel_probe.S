; Kernel-mode probes (SYS_probe, full kernel page table) of kernel memory:
; text reads fine, but is read-only (CR0.WP): a write is #PF 0x3 (protection,
; write, supervisor); data is NX: an execute probe is #PF 0x11 (protection,
; fetch, supervisor).
; expect: read_text rax=0 rdx=0
; expect: write_text rax=-14 rdx=0x3 r9=14
; expect: exec_data rax=-14 rdx=0x11 r9=14
; expect: write_data rax=0
.text
_start:
    mov eax, SYS_probe
    mov rdi, KERNEL_TEXT
    xor esi, esi
    xor edx, edx
read_text:
    syscall
    mov eax, SYS_probe
    mov rdi, KERNEL_TEXT
    mov esi, 1
    xor edx, edx
write_text:
    syscall
    mov eax, SYS_probe
    mov rdi, KERNEL_DATA
    mov esi, 2
    xor edx, edx
exec_data:
    syscall
    mov eax, SYS_probe
    mov rdi, KERNEL_DATA
    mov esi, 1
    xor edx, edx
write_data:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
