; unmapped=unmapped-alloc keeps one all-free block in reserve and gives any
; other back to the direct map (Rapoport's unmapped_alloc RFC: its cache
; returns free blocks beyond a reserve).  Two NO_DIRECT_MAP guest_memfds of
; 2 MiB each fill two blocks; punching the first file's pages empties its
; block, which is kept (still out of the direct map); punching the second
; empties the second block, and the first goes back as one 2M page.
; isoemu: asi=off unmapped=unmapped-alloc budget=200M
; expect: fill1 rax=0
; expect: fill2 rax=0
; expect: probe_first rax=-EFAULT rdx=0x0
; expect: punch1 rax=0
; expect: probe_first_kept rax=-EFAULT rdx=0x0
; expect: punch2 rax=0
; expect: probe_first_back rax=0
; expect: probe_second_kept rax=-EFAULT rdx=0x0
; expect: exit 0
.include "kvm.inc"
.include "isoemu.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x200000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    gmem_fd r14, r12, 0x200000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    falloc fill1, r13, FALLOC_FL_KEEP_SIZE, 0, 0x200000
    falloc fill2, r14, FALLOC_FL_KEEP_SIZE, 0, 0x200000
    gmem_map r15, r13, 0x1000
    mov al, byte ptr [r15]
    mov eax, SYS_direct_map_alias
    mov rdi, r15
    syscall
    mov r15, rax
    gmem_map rbx, r14, 0x1000
    mov al, byte ptr [rbx]
    mov eax, SYS_direct_map_alias
    mov rdi, rbx
    syscall
    mov rbx, rax
    sys_probe probe_first, r15, PROBE_READ, PROBE_FULL
    falloc punch1, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 0x200000
    sys_probe probe_first_kept, r15, PROBE_READ, PROBE_FULL
    falloc punch2, r14, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 0x200000
    sys_probe probe_first_back, r15, PROBE_READ, PROBE_FULL
    sys_probe probe_second_kept, rbx, PROBE_READ, PROBE_FULL
    sys_exit 0
