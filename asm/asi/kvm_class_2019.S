; The 2019 RFC's restricted table, of the KVM class ("[RFC v2 00/27] Kernel
; Address Space Isolation", docs/asi.md): the entire kernel image, the
; cpu_entry_area and the current stack, which asi_enter maps and asi_exit
; unmaps.  SYS_probe with rdx = 1 runs one session.  What the table maps reads
; without leaving it (r8 = 0); anything else aborts the session at the #PF's
; entry, and asi_fault() reports it handled: the access is retried on the full
; tables (r8 = 1): user memory (no user half), the direct map (none, even for
; non-sensitive kernel data) and another task's stack.  No critical section:
; rdx = 2 is -EINVAL.  The syscall itself never enters the restricted table:
; user code and the syscall run on PTI's two tables.
; isoemu: asi=rfc2019
; expect: text rax=0 r8=0
; expect: data rax=0 r8=0
; expect: cea rax=0 r8=0
; expect: own_stack rax=0 r8=0
; expect: other_stack rax=0 r8=1
; expect: user_data rax=0 r8=1
; expect: data_alias rax=0 r8=1
; expect: critical rax=-EINVAL
; expect: text space A.user
.include "isoemu.inc"
.text
_start:
    sys_probe text, KERNEL_TEXT, PROBE_READ, PROBE_ASI
    sys_probe data, KERNEL_DATA, PROBE_READ, PROBE_ASI
    sys_probe cea, CPU_ENTRY_AREA, PROBE_READ, PROBE_ASI
    mov r13, VMALLOC_START                  # A is task 0: its stack is the first
    sys_probe own_stack, r13, PROBE_READ, PROBE_ASI
    add r13, VMAP_STACK_STRIDE              # task 1's stack (the machine makes every slot)
    sys_probe other_stack, r13, PROBE_READ, PROBE_ASI
    sys_probe user_data, USER_DATA, PROBE_READ, PROBE_ASI
    mov r13, DIRECT_MAP_BASE
    mov rax, KERNEL_DATA_PHYS
    add r13, rax
    sys_probe data_alias, r13, PROBE_READ, PROBE_ASI
    sys_probe critical, KERNEL_DATA, PROBE_READ, PROBE_CRITICAL
    sys_exit 0
