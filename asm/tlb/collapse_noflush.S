; collapse=on folds the direct map's PTE table back into one 2M page once the
; secret page is restored (41d88484c71c's collapse_large_pages), and must
; flush the TLB before the table goes back to the allocator: the CPU may
; still cache translations, and paging-structure entries, that point into
; it.  With the flush left out (inject=collapse_noflush) the table is freed
; while cached.  The release happens at close (the file's last reference).
; isoemu: asi=off unmapped=page collapse=on inject=collapse_noflush|none
; expect: close rax=0
; expect[inject=collapse_noflush]: close stale table-freed-while-cached
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
    syscall
    mov eax, SYS_close
    mov rdi, r12
close:
    syscall
    sys_probe probe_released, r14, PROBE_READ, PROBE_FULL
    sys_exit 0
