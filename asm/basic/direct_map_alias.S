; SYS_direct_map_alias(rdi = user VA) returns in rax the direct-map address of
; the byte backing it (DIRECT_MAP_BASE + its physical address: the page offset
; is kept), or -EFAULT for a kernel address and for a page with no present PTE.
; The alias of a kernel-mode probe reads fine from the full kernel page table.
; expect: alias rax=0
; expect: offset rax=0x123
; expect: probe rax=0 rdx=0 r8=0 r9=0
; expect: kernel_va rax=-14
; expect: unmapped rax=-14
; expect: null rax=-14
.text
_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov r12, rax
    mov rcx, DIRECT_MAP_BASE
    sub rax, rcx
    shr rax, 28                 # inside the first 256 MiB of the direct map
alias:
    nop
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA + 0x123
    syscall
    sub rax, r12
offset:
    nop
    mov eax, SYS_probe
    mov rdi, r12
    xor esi, esi
    xor edx, edx
probe:
    syscall
    mov eax, SYS_direct_map_alias
    mov rdi, KERNEL_DATA
kernel_va:
    syscall
    mov eax, SYS_direct_map_alias
    mov edi, 0x10000000
unmapped:
    syscall
    mov eax, SYS_direct_map_alias
    xor edi, edi
null:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
