; The direct-map alias of the kernel image is non-sensitive (the RFC maps it
; into ASI's global non-sensitive tables): reading the alias of kernel .data
; in the restricted space needs no ASI exit.  The kernel image is loaded at
; physical 16 MiB (KERNEL_PHYS, as CONFIG_PHYSICAL_START) and .data starts
; 6 MiB into it: its alias is DIRECT_MAP_BASE + KERNEL_DATA_PHYS.
; isoemu: asi=on
; expect: alias_data rax=0 r8=0
; expect: alias_text rax=0 r8=0
.text
_start:
    mov rdi, DIRECT_MAP_BASE
    mov rax, KERNEL_DATA_PHYS
    add rdi, rax
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 1
alias_data:
    syscall
    mov rdi, DIRECT_MAP_BASE
    mov rax, KERNEL_PHYS
    add rdi, rax
    mov eax, SYS_probe
    xor esi, esi
    mov edx, 1
alias_text:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
