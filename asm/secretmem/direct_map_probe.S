; The kernel cannot reach a secret page through the direct map: secretmem_fault
; calls set_direct_map_invalid_noflush (P and RW cleared) and flushes the TLB.
; SYS_probe from the full kernel page table (space 0) of the page's
; direct-map alias: a read faults as not present, supervisor, #PF 0x0; a
; write #PF 0x2.  The stub's exception table turns the fault into
; rax = -EFAULT, rdx = the error code, r9 = the vector; r8 = 0 (no ASI exit).
; isoemu: asi=off
; expect: touch ok
; expect: probe_read rax=-14 rdx=0x0 r8=0 r9=14
; expect: probe_write rax=-14 rdx=0x2 r8=0 r9=14
; expect: probe_user rax=0 rdx=0
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
    xor esi, esi                # read
    xor edx, edx                # the full kernel page table
probe_read:
    syscall
    mov eax, SYS_probe
    mov rdi, r14
    mov esi, 1                  # write
    xor edx, edx
probe_write:
    syscall
    mov eax, SYS_probe          # the owner's own mapping stays readable by the kernel (STAC)
    mov rdi, r13
    xor esi, esi
    xor edx, edx
probe_user:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
