; Freed xpfo pages go to the cache of unmapped pages, zeroed, and the next
; fallocate takes them from there (docs/xpfo.md; the counters are checked in
; tests/test_xpfo.py).  Two pages written with 0x77 and released come back
; zeroed to a new file, and still out of the direct map: the alias of the new
; page is the old one's (the cache is a stack), and it faults.
; isoemu: unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: reused rbx=0 r15=0
; expect: same_page rax=0
; expect: probe_reused rax=-EFAULT rdx=0x0 r9=14
.include "kvm.inc"
.include "xpfo.inc"
.include "isoemu.inc"
.text
_start:
    xpfo_fd r12, 0x2000
    gmem_map r13, r12, 0x2000
    mov rdi, r13
    mov al, 0x77
    mov ecx, 0x2000
    rep stosb
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov rbp, rax
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 0x2000
    syscall
    mov eax, SYS_close
    mov rdi, r12
    syscall
    xpfo_fd r12, 0x2000
    gmem_map r13, r12, 0x2000
    xor ebx, ebx
    xor r15d, r15d
    xor ecx, ecx
.Lsum:
    movzx eax, byte ptr [r13 + rcx]
    add rbx, rax
    test al, al
    jz .Lzero
    inc r15
.Lzero:
    inc ecx
    cmp ecx, 0x2000
    jb .Lsum
reused:
    nop
    mov eax, SYS_direct_map_alias
    lea rdi, [r13 + 0x1000]
    syscall
    mov r14, rax
    sub rax, rbp
same_page:
    nop
    sys_probe probe_reused, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
    syscall
