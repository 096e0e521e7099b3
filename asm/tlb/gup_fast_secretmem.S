; GUP-fast must not take a secret page (CVE-2024-35872; the fix, "mm/secretmem:
; fix GUP-fast succeeding on secretmem folios", made folio_is_secretmem in
; gup_fast_folio_allowed, mm/gup.c, stop trusting the LRU flag, which a fresh
; secretmem folio may not have yet).  A GUP user then reads the page through
; kmap_local_page, its direct-map address (SYS_gup_fast_read,
; docs/secretmem.md).  Without the injection GUP-fast refuses the folio, the
; slow path refuses the VMA, and the call is -EFAULT, for memfd_secret and
; MAP_SECRET memory alike; an ordinary page reads fine.  With the check left
; out (inject=gup_fast_secretmem), GUP-fast hands out the secret page and the
; read through its removed direct-map entry is a kernel #PF with no fix-up,
; so an oops (#PF 0x0, not present, read, supervisor), as the CVE's crash.
; This file uses memfd_secret's page; gup_fast_map_secret.S the same with
; MAP_SECRET memory.
; isoemu: inject=none|gup_fast_secretmem asi=on|off
; expect: plain rax=0 rdx=0x0a7a
; expect: touch ok
; expect[inject=none]: gup rax=-EFAULT
; expect[inject=gup_fast_secretmem]: gup oops 14 0x0
; expect[inject=none]: after ok
.include "isoemu.inc"
.text
_start:
    mov qword ptr [USER_DATA], 0x0a7a
    mov eax, SYS_gup_fast_read
    mov edi, USER_DATA
plain:
    syscall
    secret_map r13
touch:
    mov qword ptr [r13], 0x5ec2e7
    mov eax, SYS_gup_fast_read
    mov rdi, r13
gup:
    syscall
after:
    sys_exit 0
