; The kernel reaches a page that is out of the direct map only through a
; temporary mapping: map, access, unmap with its flush (docs/guest_memfd.md).
; Punching a NO_DIRECT_MAP page out zeroes it that way before it returns to
; the direct map.  With the unmap's flush left out (inject=gmem_kunmap_noflush)
; the translation of the temporary slot may survive the unmap: the page is
; then freed while cached (freed-while-cached, charged to the fallocate), and
; a kernel read of the slot afterwards is a stale access.
; With unmapped=page the punched page is freed at once (a cache would keep it).
; isoemu: asi=off inject=gmem_kunmap_noflush unmapped=page
; expect: punch rax=0
; expect: punch stale freed-while-cached
; expect: probe_slot stale stale-access
; expect: probe_slot rax=-EFAULT rdx=0x0 r9=14
.include "kvm.inc"
.include "isoemu.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x1000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    gmem_map r14, r13, 0x1000
    mov byte ptr [r14], 0x5a
    falloc punch, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, 0x1000
    movabs r15, GMEM_KMAP_VA
    sys_probe probe_slot, r15, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
    syscall
