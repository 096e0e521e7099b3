; What each unmapped= strategy does to the direct map around one secret page
; (kernel_stub/unmapped.S, docs/frag.md).  The page's own alias is out of the
; direct map under every strategy.  Its neighbour in the same 2 MiB block
; (the alias with bit 12 flipped) stays mapped with unmapped=page, which
; splits the block and clears one PTE (mm/secretmem.c), and is out with the
; block strategies, which take whole PMD-size pages out of the direct map.
; After close (the file's release) the page is back with page, and with
; pmd-cache, whose per-file cache goes with its file (memfd_secret v6);
; reserved and unmapped-alloc keep the block for their next user.
; isoemu: asi=off unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: probe_page rax=-EFAULT rdx=0x0
; expect[unmapped=page]: probe_neighbour rax=0
; expect[unmapped=pmd-cache|reserved|unmapped-alloc]: probe_neighbour rax=-EFAULT rdx=0x0
; expect: close rax=0
; expect[unmapped=page|pmd-cache]: probe_page_released rax=0
; expect[unmapped=page|pmd-cache]: probe_neighbour_released rax=0
; expect[unmapped=reserved|unmapped-alloc]: probe_page_released rax=-EFAULT rdx=0x0
; expect[unmapped=reserved|unmapped-alloc]: probe_neighbour_released rax=-EFAULT rdx=0x0
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    secret_page r13             # memfd_secret, ftruncate, mmap shared, first touch: r12 = fd, r13
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    mov r15, rax
    xor r15, 0x1000
    sys_probe probe_page, r14, PROBE_READ, PROBE_FULL
    sys_probe probe_neighbour, r15, PROBE_READ, PROBE_FULL
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
    syscall
    mov eax, SYS_close
    mov rdi, r12
close:
    syscall
    sys_probe probe_page_released, r14, PROBE_READ, PROBE_FULL
    sys_probe probe_neighbour_released, r15, PROBE_READ, PROBE_FULL
    sys_exit 0
