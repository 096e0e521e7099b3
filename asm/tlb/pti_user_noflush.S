; With PTI and PCIDs the kernel cannot flush a user PCID while it runs on the kernel
; PCID.  Without INVPCID, flush_tlb_one_user marks the user PCID in
; user_pcid_flush_mask (invalidate_user_asid, arch/x86/mm/tlb.c) and the return to
; user mode loads the user CR3 *without* NOFLUSH, which flushes it
; (SWITCH_TO_USER_CR3, arch/x86/entry/calling.h).  With that deferred flush never
; honoured (inject=pti_user_noflush: NOFLUSH always set) the user PCID keeps the
; translation munmap removed.  The page was freed while that PCID could still use
; it, and the return to user mode enters it with the stale translation:
; freed-while-cached and stale-at-user-return, both charged to the munmap call; the
; touch after it is a stale access.  Without the injection all three disappear.
; isoemu: inject=pti_user_noflush|none pti=on pcid=on invpcid=off asi=off tlb=check|lazy
; expect: touch ok
; expect[inject=pti_user_noflush]: munmap_call stale freed-while-cached
; expect[inject=pti_user_noflush]: munmap_call stale stale-at-user-return
; expect[inject=pti_user_noflush]: touch_again stale stale-access
; expect[inject=none]: touch_again fault 14 0x4
; expect[inject=pti_user_noflush,tlb=check]: touch_again fault 14 0x4
; expect[inject=pti_user_noflush,tlb=lazy]: touch_again rax=0x77
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
