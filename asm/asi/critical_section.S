; The 2025 RFC's critical section runs between asi_enter and asi_relax, where a
; class runs untrusted code; touching sensitive memory there is a bug, which
; the RFC reports with VM_WARN_ONCE (arch/x86/mm/fault.c there:
; "ASI-sensitive data access from critical section").  SYS_probe with rdx = 2
; makes the access inside the section: on the direct-map alias of the
; program's data page (sensitive) it faults, ASI exits, and the access is
; retried on the full tables: rax = 0, r8 = 1, and an ASI finding.  A
; non-sensitive address (kernel data) reads without an exit or a finding.
; The same alias probed after asi_relax (rdx = 1) exits too, and is no
; finding, since the kernel may touch sensitive memory once relaxed.  Today's
; model has the same critical section; the 2019 RFC has none (-EINVAL).
; isoemu: asi=on|rfc2025|rfc2019
; expect[asi=on|rfc2025]: critical rax=0 r8=1
; expect[asi=on|rfc2025]: critical asi sensitive-access-in-critical-section
; expect[asi=on|rfc2025]: critical_data rax=0 r8=0
; expect[asi=rfc2019]: critical rax=-EINVAL
; expect[asi=rfc2019]: critical_data rax=-EINVAL
; expect: relaxed rax=0 r8=1
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov r12, rax
    sys_probe critical, r12, PROBE_READ, PROBE_CRITICAL
    sys_probe critical_data, KERNEL_DATA, PROBE_READ, PROBE_CRITICAL
    sys_probe relaxed, r12, PROBE_READ, PROBE_ASI
    sys_exit 0
