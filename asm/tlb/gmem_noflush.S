; guest_memfd with NO_DIRECT_MAP removes a page from the direct map when it
; is allocated and must flush the kernel's translation of its alias (the
; series' kvm_gmem_folio_zap_direct_map).  With the flush left out
; (inject=gmem_noflush) the kernel read of the alias right after is a stale
; access, which tlb=check reports (the CPU faults, #PF 0x0); tlb=lazy lets the
; stale translation serve it (r10 = 0x5a).  ASI off: asi_exit's CR3 write
; would flush the kernel PCID and hide it (docs/tlb.md).  At exit the page is
; freed while that translation may still be cached (freed-while-cached).
; The same with unmapped=pmd-cache, whose flush left out is the block's.
; isoemu: asi=off inject=gmem_noflush tlb=check|lazy unmapped=page|pmd-cache
; expect: probe_read stale stale-access
; expect[tlb=check]: probe_read rax=-EFAULT rdx=0x0 r9=14
; expect[tlb=lazy]: probe_read rax=0 r10=0x5a
; expect: exit_call stale freed-while-cached
.include "kvm.inc"
.include "isoemu.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x1000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED | GUEST_MEMFD_FLAG_NO_DIRECT_MAP
    gmem_map r14, r13, 0x1000
    mov eax, SYS_direct_map_alias
    mov rdi, r14
    syscall                         ; not mapped yet: the alias comes after the touch
    mov byte ptr [r14], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, r14
    syscall
    mov r15, rax
    sys_probe probe_read, r15, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
exit_call:
    syscall
