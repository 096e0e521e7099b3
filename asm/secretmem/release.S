; Releasing the secret restores the direct map, but only when the page leaves
; the page cache (secretmem_free_folio -> set_direct_map_default_noflush), that
; is when the last reference to the file goes: munmap alone leaves the page
; in the file and out of the direct map; close then restores it.
; That is the page strategy's and pmd-cache's (the file's cache goes with
; it); the shared caches keep the page out of the direct map, cleared, for
; their next user (kernel_stub/unmapped.S).
; isoemu: asi=off unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: probe_mapped rax=-EFAULT rdx=0x0
; expect: unmap rax=0
; expect: probe_unmapped rax=-EFAULT rdx=0x0
; expect: close rax=0
; expect[unmapped=page|pmd-cache]: probe_released rax=0 rdx=0
; expect[unmapped=page|pmd-cache]: probe_released_write rax=0
; expect[unmapped=reserved|unmapped-alloc]: probe_released rax=-EFAULT rdx=0x0
; expect[unmapped=reserved|unmapped-alloc]: probe_released_write rax=-EFAULT
.include "isoemu.inc"
.text
_start:
    secret_page r13             # memfd_secret, ftruncate, mmap shared, first touch: r12 = fd, r13
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    sys_probe probe_mapped, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
unmap:
    syscall
    sys_probe probe_unmapped, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_close
    mov rdi, r12
close:
    syscall
    sys_probe probe_released, r14, PROBE_READ, PROBE_FULL
    sys_probe probe_released_write, r14, PROBE_WRITE, PROBE_FULL
    sys_exit 0
