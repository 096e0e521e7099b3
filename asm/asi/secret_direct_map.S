; A secret page's direct-map alias is absent from every kernel page table.
; Probed in the restricted space, the fault first leaves ASI (r8 = 1), then
; faults again on the full tables where the PTE is not present: rax = -EFAULT,
; rdx = 0x0 (not present, read, supervisor).
; isoemu: asi=on
; expect: touch ok
; expect: restricted_read rax=-14 rdx=0x0 r8=1 r9=14
; expect: restricted_write rax=-14 rdx=0x2 r8=1
.text
_start:
    mov eax, SYS_memfd_secret
    xor edi, edi
    syscall
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
    syscall
    mov r13, rax
touch:
    mov qword ptr [r13], 42
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    mov eax, SYS_probe
    mov rdi, r14
    xor esi, esi
    mov edx, 1
restricted_read:
    syscall
    mov eax, SYS_probe
    mov rdi, r14
    mov esi, 1
    mov edx, 1
restricted_write:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
