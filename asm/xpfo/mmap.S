; mmap of an xpfo file (docs/xpfo.md).  The device's mount is noexec, as
; secretmem's and guest_memfd's: PROT_EXEC is -EPERM (do_mmap), and
; mprotect(PROT_EXEC) of a mapping -EACCES.  Only shared mappings
; (MAP_PRIVATE: -EINVAL, as secretmem_mmap).  A fault allocates nothing: the
; pages come from fallocate, so an access beyond the size, or to a page of a
; file never fallocated, is SIGBUS (#PF 0x4/0x6 not present, turned into
; SIGBUS; the runner resumes after it).
; isoemu: unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: exec rax=-EPERM
; expect: private rax=-EINVAL
; expect: last_inside ok
; expect: beyond_write fault 14 0x6
; expect: beyond_read fault 14 0x4
; expect: mprot_exec rax=-EACCES
; expect: mprot_ro rax=0
; expect: ro_write fault 14 0x7
; expect: empty_read fault 14 0x4
.include "kvm.inc"
.include "xpfo.inc"
.text
_start:
    xpfo_fd r12, 0x2000
    xor edi, edi
    mov esi, 0x2000
    mov edx, PROT_READ | PROT_EXEC
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
    mov eax, SYS_mmap
exec:
    syscall
    xor edi, edi
    mov esi, 0x2000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE
    mov r8, r12
    xor r9d, r9d
    mov eax, SYS_mmap
private:
    syscall
    gmem_map r13, r12, 0x4000
    mov byte ptr [r13], 0xaa
last_inside:
    mov byte ptr [r13 + 0x1fff], 0xaa
beyond_write:
    mov byte ptr [r13 + 0x2000], 0xaa
beyond_read:
    mov al, byte ptr [r13 + 0x3fff]
    mov rdi, r13
    mov esi, 0x4000
    mov edx, PROT_READ | PROT_EXEC
    mov eax, SYS_mprotect
mprot_exec:
    syscall
    mov rdi, r13
    mov esi, 0x4000
    mov edx, PROT_READ
    mov eax, SYS_mprotect
mprot_ro:
    syscall
ro_write:
    mov byte ptr [r13], 0xbb
    ; a file opened and mapped, never fallocated
    xpfo_try o2
    mov r12, rax
    gmem_map r14, r12, 0x1000
empty_read:
    mov al, byte ptr [r14]
    mov eax, SYS_exit
    xor edi, edi
    syscall
