; munmap clears the PTE, flushes the range, and only then frees the page
; (zap_pte_range batches the pages and tlb_finish_mmu flushes before freeing them,
; mm/mmu_gather.c).  With the flush left out (inject=munmap_noflush) the page goes
; back to the allocator while the CPU may still hold the user translation:
; freed-while-cached, charged to the munmap call.
; What happens next depends on the CR3 writes on the way back to user mode.  PCIDs
; are off here, so every CR3 write flushes all non-global entries:
; - pti=on: the return to user mode writes the user CR3, which drops the stale
;   translation; the touch after munmap faults as it should and nothing is stale.
; - pti=off: no CR3 write at all: the return to user mode enters the PCID with the
;   stale user translation (stale-at-user-return, charged to the munmap call), and
;   the touch goes through it (stale-access).  tlb=check: the CPU uses the tables (#PF 0x4) and the model
;   reports it; tlb=lazy: the read returns what the freed frame still holds (0x77).
; isoemu: inject=munmap_noflush pcid=off asi=off pti=on|off tlb=check|lazy
; expect: touch ok
; expect: munmap_call stale freed-while-cached
; expect[pti=on]: touch_again fault 14 0x4
; expect[pti=off]: munmap_call stale stale-at-user-return
; expect[pti=off]: touch_again stale stale-access
; expect[pti=off,tlb=check]: touch_again fault 14 0x4
; expect[pti=off,tlb=lazy]: touch_again rax=0x77
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ + PROT_WRITE
    mov r10d, MAP_PRIVATE + MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    syscall
    mov r13, rax
touch:
    mov byte ptr [r13], 0x77
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
munmap_call:
    syscall
    xor eax, eax
touch_again:
    mov al, byte ptr [r13]
    sys_exit 0
