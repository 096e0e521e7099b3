; /dev/xpfo's fallocate removes its batch of pages from the direct map and
; pays one flush for all of them (docs/xpfo.md).  Each page is zeroed through
; its direct-map alias first, so the kernel holds that translation.  With the
; batch's flush left out (inject=xpfo_noflush) the kernel read of the alias
; afterwards is a stale access, which tlb=check reports (the CPU faults,
; #PF 0x0); tlb=lazy lets the stale translation serve it (r10 = 0, the byte
; the zeroing left).  ASI off: asi_exit's CR3 write would flush the kernel
; PCID and hide it (docs/tlb.md).  The page then goes to the cache, not to
; the allocator, so nothing is freed while cached.  Under unmapped=pmd-cache
; and unmapped-alloc the flush left out is the block's refill flush (the
; allocator's, for FRAME_XPFO); reserved's pool never had one to leave out.
; isoemu: asi=off inject=xpfo_noflush tlb=check|lazy unmapped=page|pmd-cache|unmapped-alloc
; expect: probe_read stale stale-access
; expect[tlb=check]: probe_read rax=-EFAULT rdx=0x0 r9=14
; expect[tlb=lazy]: probe_read rax=0 r10=0
.include "kvm.inc"
.include "xpfo.inc"
.include "isoemu.inc"
.text
_start:
    xpfo_fd r12, 0x1000
    gmem_map r13, r12, 0x1000
    mov al, byte ptr [r13]
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r15, rax
    sys_probe probe_read, r15, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
    syscall
