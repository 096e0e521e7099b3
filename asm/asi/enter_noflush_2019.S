; The 2019 RFC enters its restricted table with load_cr3(asi->pgd): PCID 0, a
; flushing write, and every restricted table uses that same PCID (there is one
; per VM in the RFC, one per process in the stub).  A's session maps A's stack into A's
; table, and asi_exit unmaps it after restoring CR3: PCID 0 may still hold the
; translation.  B's session starts with the flushing load_cr3, which drops it.
; With the flush left out (inject=asi_enter_noflush: NOFLUSH set) B's session
; inherits A's translations: B probing A's stack in its own session is a
; stale access (tlb=check: B's table lacks the page, the session aborts and the
; retry on the full tables succeeds, r8 = 1; tlb=lazy: the read goes through
; the stale translation without a fault, r8 = 0) -- one VM reaching another's
; kernel stack.  Without the injection: an ordinary abort and retry.
; isoemu: asi=rfc2019 inject=asi_enter_noflush|none tlb=check|lazy
; expect: session rax=0 r8=0
.include "isoemu.inc"
.text
_start:
    sys_probe session, KERNEL_DATA, PROBE_READ, PROBE_ASI
    mov eax, SYS_sched_yield
    syscall
    sys_exit 0
; process: B
; expect[inject=none]: other_stack rax=0 r8=1
; expect[inject=asi_enter_noflush]: other_stack stale stale-access
; expect[inject=asi_enter_noflush,tlb=check]: other_stack rax=0 r8=1
; expect[inject=asi_enter_noflush,tlb=lazy]: other_stack rax=0 r8=0
.include "isoemu.inc"
.text
_start:
    mov r13, VMALLOC_START                  # task 0's (A's) kernel stack
    sys_probe other_stack, r13, PROBE_READ, PROBE_ASI
    sys_exit 0
