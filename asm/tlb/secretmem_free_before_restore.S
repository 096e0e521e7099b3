; A secret page goes back to the allocator only after its direct-map entry is
; restored (secretmem_free_folio: set_direct_map_default_noflush, then the free;
; 6f86d0534fdd fixed the opposite order in mm/secretmem.c).  Linux's allocator
; hands out pages through the direct map, so a page freed while it is out of the
; direct map breaks its next owner.  With the order reversed
; (inject=secretmem_free_before_restore) the release, when the last reference to
; the file goes at close, frees the page first: freed-out-of-direct-map.
; The order is the page strategy's (unmapped=page): the caches keep the page out.
; isoemu: inject=secretmem_free_before_restore|none asi=off unmapped=page
; expect: unmap rax=0
; expect: close rax=0
; expect[inject=secretmem_free_before_restore]: close stale freed-out-of-direct-map
; expect: probe_released rax=0 rdx=0
.include "isoemu.inc"
.text
_start:
    secret_page r13             # memfd_secret, ftruncate, mmap shared, first touch: r12 = fd, r13
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
unmap:
    syscall
    mov eax, SYS_close
    mov rdi, r12
close:
    syscall
    sys_probe probe_released, r14, PROBE_READ, PROBE_FULL
    sys_exit 0
