; The kernel cannot reach a secret page through the direct map: secretmem_fault
; calls set_direct_map_invalid_noflush (P and RW cleared) and flushes the TLB.
; SYS_probe from the full kernel page table (space 0) of the page's
; direct-map alias: a read faults as not present, supervisor, #PF 0x0; a
; write #PF 0x2.  The stub's exception table turns the fault into
; rax = -EFAULT, rdx = the error code, r9 = the vector; r8 = 0 (no ASI exit).
; isoemu: asi=off
; expect: touch ok
; expect: probe_read rax=-EFAULT rdx=0x0 r8=0 r9=14
; expect: probe_write rax=-EFAULT rdx=0x2 r8=0 r9=14
; expect: probe_user rax=0 rdx=0
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
    sys_probe probe_read, r14, PROBE_READ, PROBE_FULL
    sys_probe probe_write, r14, PROBE_WRITE, PROBE_FULL
    # the owner's own mapping stays readable by the kernel (STAC)
    sys_probe probe_user, r13, PROBE_READ, PROBE_FULL
    sys_exit 0
