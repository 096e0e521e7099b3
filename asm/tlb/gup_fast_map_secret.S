; The GUP-fast injection (see gup_fast_secretmem.S) with MAP_SECRET memory:
; the mapping's internal file makes its pages secretmem folios like a
; memfd_secret file's, so GUP-fast's folio_is_secretmem check refuses them
; (-EFAULT after the slow path's VMA check); with the check left out
; (inject=gup_fast_secretmem) the read through the direct map oopses.
; isoemu: inject=none|gup_fast_secretmem
; expect: touch ok
; expect[inject=none]: gup rax=-EFAULT
; expect[inject=gup_fast_secretmem]: gup oops 14 0x0
; expect[inject=none]: after ok
.include "isoemu.inc"
.text
_start:
    secret_anon r13
touch:
    mov qword ptr [r13], 0x5ec2e7
    mov eax, SYS_gup_fast_read
    mov rdi, r13
gup:
    syscall
after:
    sys_exit 0
