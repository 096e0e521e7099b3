; The release order of 6f86d0534fdd (see secretmem_free_before_restore.S)
; with MAP_SECRET memory: the mapping holds the only reference to its
; internal file, so munmap itself releases the page.  With the order reversed
; (inject=secretmem_free_before_restore) the page goes back to the allocator
; while it is out of the direct map: freed-out-of-direct-map, charged to the
; munmap.  Either way the alias reads again afterwards.
; The order is the page strategy's (unmapped=page): the caches keep the page out.
; isoemu: inject=secretmem_free_before_restore|none asi=off unmapped=page
; expect: touch ok
; expect: unmap rax=0
; expect[inject=secretmem_free_before_restore]: unmap stale freed-out-of-direct-map
; expect: probe_released rax=0 rdx=0
.include "isoemu.inc"
.text
_start:
    secret_anon r13
touch:
    mov qword ptr [r13], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
unmap:
    syscall
    sys_probe probe_released, r14, PROBE_READ, PROBE_FULL
    sys_exit 0
