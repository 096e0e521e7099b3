; GUEST_MEMFD_FLAG_NO_DIRECT_MAP (the direct-map-removal series, v12): a page
; leaves the direct map when it is allocated (after zeroing, with
; flush_tlb_kernel_range) and returns when it is freed (free_folio).  The
; kernel's read of the page's direct-map alias faults (#PF 0x0, not present)
; while the page is allocated, and succeeds once a punched hole freed it.  The
; same page of a guest_memfd without the flag stays in the direct map.
; That is unmapped=page; every cache keeps the punched page out of the direct
; map (pmd-cache until the file is released).
; isoemu: asi=off unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: probe_plain rax=0
; expect: probe_removed rax=-EFAULT rdx=0x0 r9=14
; expect: punch rax=0
; expect[unmapped=page]: probe_restored rax=0
; expect[unmapped=pmd-cache|reserved|unmapped-alloc]: probe_restored rax=-EFAULT rdx=0x0
.include "kvm.inc"
.include "isoemu.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x1000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    gmem_map r14, r13, 0x1000
    mov byte ptr [r14], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, r14
    syscall
    mov r15, rax
    sys_probe probe_plain, r15, PROBE_READ, PROBE_FULL
    gmem_fd r13, r12, 0x1000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    gmem_map r14, r13, 0x1000
    mov byte ptr [r14], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, r14
    syscall
    mov r15, rax
    sys_probe probe_removed, r15, PROBE_READ, PROBE_FULL
    falloc punch, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 0x1000
    sys_probe probe_restored, r15, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
    syscall
