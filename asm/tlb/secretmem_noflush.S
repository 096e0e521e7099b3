; secretmem_fault removes the page from the direct map (set_direct_map_invalid_noflush)
; and must then flush the kernel's TLB entry for its alias (flush_tlb_kernel_range,
; mm/secretmem.c).  With that flush left out (inject=secretmem_noflush) the kernel's
; translation of the alias may still be cached after the fault: a kernel read through
; it is a stale access.  In tlb=check the CPU uses the tables (the probe faults, #PF
; 0x0) and the model reports the finding; in tlb=lazy the read goes through the stale
; translation and returns the secret (r10 = 0x5a).  ASI is off: asi_exit's CR3 write
; flushes the kernel PCID and would hide the missing flush (docs/tlb.md).  At exit
; the secret page goes back to the allocator while that translation may still be
; cached (freed-while-cached).
; With unmapped=pmd-cache the flush left out is the block's, with the same
; result; unmapped=reserved has no flush to leave out (the pool left the direct
; map at boot), and unmapped-alloc keeps its block at exit (asm/unmapped/).
; isoemu: asi=off inject=secretmem_noflush tlb=check|lazy unmapped=page|pmd-cache
; expect: touch ok
; expect: probe_read stale stale-access
; expect[tlb=check]: probe_read rax=-EFAULT rdx=0x0 r9=14
; expect[tlb=lazy]: probe_read rax=0 r10=0x5a
; expect: exit_call stale freed-while-cached
.include "isoemu.inc"
.text
_start:
    secret_map r13              # memfd_secret, ftruncate 4 KiB, mmap shared: r13 (untouched)
touch:
    mov byte ptr [r13], 0x5a    # the fault: allocate, zero, remove from the direct map
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    sys_probe probe_read, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
exit_call:
    syscall
