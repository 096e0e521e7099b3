; The direct-map alias of the kernel image is non-sensitive (the 2025 RFC maps
; it into ASI's global non-sensitive tables): reading the alias of kernel .data
; in the restricted space needs no ASI exit, in today's model and the RFC.
; The 2019 RFC's KVM-class table has no direct map at all: the read aborts the
; session and is retried on the full tables (r8 = 1; docs/asi.md).  The kernel
; image is loaded at physical 16 MiB (KERNEL_PHYS, as CONFIG_PHYSICAL_START)
; and .data starts 6 MiB into it: its alias is DIRECT_MAP_BASE + KERNEL_DATA_PHYS.
; isoemu: asi=on|rfc2019|rfc2025
; expect[asi=on|rfc2025]: alias_data rax=0 r8=0
; expect[asi=on|rfc2025]: alias_text rax=0 r8=0
; expect[asi=rfc2019]: alias_data rax=0 r8=1
; expect[asi=rfc2019]: alias_text rax=0 r8=1
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
