; Where two secret files' pages come from (kernel_stub/unmapped.S): the v6
; series' pmd-cache gives each file its own PMD-size page, so the two pages
; are in different 2 MiB blocks; reserved and unmapped-alloc serve every
; user from one cache, so they share a block.  rax is (alias1 ^ alias2) >> 21:
; 0 when both are in one block.
; isoemu: asi=off unmapped=pmd-cache|reserved|unmapped-alloc
; expect[unmapped=pmd-cache]: blocks rax!=0
; expect[unmapped=reserved|unmapped-alloc]: blocks rax=0
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    secret_page r13, 4096, r12
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov rbx, rax
    secret_page r13, 4096, r14
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    xor rax, rbx
blocks:
    shr rax, 21
    sys_exit 0
