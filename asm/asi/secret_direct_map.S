; A secret page's direct-map alias is absent from every kernel page table.
; Probed in the restricted space, the fault first leaves ASI (r8 = 1), then
; faults again on the full tables where the PTE is not present: rax = -EFAULT,
; rdx = 0x0 (not present, read, supervisor).  Every design agrees (the 2019
; RFC retries the access unrestricted and takes the full tables' fault).
; isoemu: asi=on|rfc2019|rfc2025
; expect: touch ok
; expect: restricted_read rax=-EFAULT rdx=0x0 r8=1 r9=14
; expect: restricted_write rax=-EFAULT rdx=0x2 r8=1
.include "isoemu.inc"
.text
_start:
    secret_map r13              # memfd_secret, ftruncate 4 KiB, mmap shared: r13 (untouched)
touch:
    mov qword ptr [r13], 42
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    sys_probe restricted_read, r14, PROBE_READ, PROBE_ASI
    sys_probe restricted_write, r14, PROBE_WRITE, PROBE_ASI
    sys_exit 0
