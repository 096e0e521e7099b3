; mprotect and execution on MAP_SECRET memory behave as on memfd_secret's:
; the secretmem mount is noexec, so mmap with PROT_EXEC is -EPERM and
; mprotect to PROT_EXEC -EACCES (mprotect_fixup's may_exec check on a
; noexec mount), and the page's PTE never lacks NX: a call into it faults
; #PF 0x15 (present, user, instruction fetch).  Otherwise mprotect is the
; ordinary one (mm/mprotect.c, change_protection): read-only makes a write
; fault #PF 0x7 while reads go on; PROT_NONE makes a read fault #PF 0x4 (a
; PROT_NONE PTE is _PAGE_PROTNONE with P clear: not present to the CPU);
; back to read-write, the secret is still there and writable.  The page stays out
; of the direct map throughout (the probe of its alias faults).
; expect: touch ok
; expect: to_exec rax=-EACCES
; expect: exec_call fault 14 0x15
; expect: to_ro rax=0
; expect: ro_read rbx=0x5ec2e7
; expect: ro_write fault 14 0x7
; expect: to_none rax=0
; expect: none_read fault 14 0x4
; expect: to_rw rax=0
; expect: rw_read rbx=0x5ec2e7
; expect: rw_write ok
; expect: probe rax=-EFAULT rdx=0x0 r9=14
.include "isoemu.inc"
.text
.macro prot label, p
    mov eax, SYS_mprotect
    mov rdi, r13
    mov esi, 4096
    mov edx, \p
\label:
    syscall
.endm
_start:
    secret_anon r13
touch:
    mov byte ptr [r13 + 8], 0xc3        # a ret, should it ever run
    mov qword ptr [r13], 0x5ec2e7
    prot to_exec, PROT_READ | PROT_WRITE | PROT_EXEC
    lea rax, [r13 + 8]
exec_call:
    call rax
    prot to_ro, PROT_READ
    mov rbx, qword ptr [r13]
ro_read:
    nop
ro_write:
    mov qword ptr [r13], 1
    prot to_none, PROT_NONE
none_read:
    mov rbx, qword ptr [r13]
    prot to_rw, PROT_READ | PROT_WRITE
    mov rbx, qword ptr [r13]
rw_read:
    nop
rw_write:
    mov qword ptr [r13 + 16], 2
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    sys_probe probe, r14, PROBE_READ, PROBE_FULL
    sys_exit 0
