; ASI's restricted page table maps the non-sensitive kernel: text, static data
; and the cpu_entry_area.  SYS_probe in the restricted space (rdx = 1) reads
; them without leaving ASI: rax = 0 and r8 = 0 (no ASI exit).  So does the 2019
; RFC's KVM-class table ("the entire kernel", the cpu_entry_area).
; isoemu: asi=on|rfc2019|rfc2025
; expect: text rax=0 r8=0
; expect: rodata rax=0 r8=0
; expect: data rax=0 r8=0
; expect: cea rax=0 r8=0
.text
_start:
    mov eax, SYS_probe
    mov rdi, KERNEL_TEXT
    xor esi, esi
    mov edx, 1
text:
    syscall
    mov eax, SYS_probe
    mov rdi, KERNEL_RODATA
    xor esi, esi
    mov edx, 1
rodata:
    syscall
    mov eax, SYS_probe
    mov rdi, KERNEL_DATA
    xor esi, esi
    mov edx, 1
data:
    syscall
    mov eax, SYS_probe
    mov rdi, CPU_ENTRY_AREA
    xor esi, esi
    mov edx, 1
cea:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
