; Every ASI transition writes CR3 without NOFLUSH (the 2025 RFC v2 20/29: "we
; currently never set the noflush bit in CR3 for ASI transitions"): asi_exit's
; write flushes the kernel PCID, which is how changes made while the
; restricted PCID was current reach it.  Here a SYS_probe of the page on the
; full table caches its user translation in the kernel PCID; munmap then runs
; on the restricted table (relaxed), so its INVLPG flushes the restricted PCID
; only; the next probe on the full table exits ASI.  With the flush left out
; (inject=asi_exit_noflush) the kernel PCID still holds the translation of the
; freed page: stale-access (tlb=check: the CPU uses the tables and faults;
; tlb=lazy: the read goes through and returns what the frame held, 0x77); and
; the freed frame was cached in a PCID made current again without an
; invalidation (freed-while-cached), at the first asi_exit after the munmap:
; today's model leaves ASI on munmap's way back to user mode, the 2025 RFC only
; at the next probe.  The same happens at exit: exit_mmap
; unmaps and frees on the restricted table, and flush_tlb_mm_local's asi_exit
; makes the kernel PCID current again with the freed pages' translations.
; Today's model (asi=on) and the 2025 RFC alike; without the injection the
; probe faults cleanly and nothing is stale.
; isoemu: asi=on|rfc2025 inject=asi_exit_noflush|none tlb=check|lazy
; expect: touch ok
; expect: first rax=0 r10=0x77
; expect[inject=none]: again rax=-EFAULT rdx=0x0
; expect[inject=asi_exit_noflush]: again stale stale-access
; expect[inject=asi_exit_noflush,asi=on]: munmap_call stale freed-while-cached
; expect[inject=asi_exit_noflush,asi=rfc2025]: again stale freed-while-cached
; expect[inject=asi_exit_noflush,tlb=check]: again rax=-EFAULT rdx=0x0
; expect[inject=asi_exit_noflush,tlb=lazy]: again rax=0 r10=0x77
; expect[inject=asi_exit_noflush]: exit_call stale freed-while-cached
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
    sys_probe first, r13, PROBE_READ, PROBE_FULL
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
munmap_call:
    syscall
    sys_probe again, r13, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
exit_call:
    syscall
