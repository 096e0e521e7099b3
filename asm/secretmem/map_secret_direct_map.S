; MAP_SECRET memory leaves the direct map at first touch and returns to it at
; unmap, as memfd_secret's does (mm/secretmem.c: secretmem_fault removes the
; page and flushes, secretmem_free_folio restores it before the free): the
; mapping's internal file holds the pages, and munmap drops the mapping's
; only reference to it.  Before the touch there is no page (no alias); after
; it the owner reads its data, while the kernel's read of the page's
; direct-map alias faults (#PF 0x0, caught by the probe's exception table)
; and a GUP-fast user gets -EFAULT (gup_fast refuses a secretmem folio, and
; the slow path refuses the VMA).  An ordinary page, by contrast, GUP reads
; fine (rdx, the quadword read).  After munmap the alias reads again: the
; page is back in the direct map, zeroed (r10, the byte read, is 0); the user
; address is gone (#PF 0x4), and the TLB model has nothing to report: each
; direct-map change was flushed.  Then the same cycle 40 times: more than the
; 32 files the stub has, so each munmap released its internal file.
; This is unmapped=page (mainline); the other strategies are asm/unmapped/.
; isoemu: asi=on|off unmapped=page
; expect: no_alias rax=-EFAULT
; expect: touch ok
; expect: owner rbx=0x5ec2e7
; expect: alias rax=DIRECT_MAP_BASE..DIRECT_MAP_BASE+0x10000000
; expect: probe rax=-EFAULT rdx=0x0 r9=14
; expect: gup rax=-EFAULT
; expect: gup_plain rax=0 rdx=0x0a7a
; expect: unmap rax=0
; expect: probe_after rax=0 rdx=0 r9=0 r10=0
; expect: gone fault 14 0x4
; expect: cycle rax=MMAP_BASE..MMAP_BASE+0x1000000
; expect: cycle_unmap rax=0
; expect: done rbx=40
.include "isoemu.inc"
.text
_start:
    secret_anon r13
    mov eax, SYS_direct_map_alias
    mov rdi, r13
no_alias:
    syscall
touch:
    mov qword ptr [r13], 0x5ec2e7
    mov rbx, qword ptr [r13]
owner:
    nop
    mov eax, SYS_direct_map_alias
    mov rdi, r13
alias:
    syscall
    mov r14, rax
    sys_probe probe, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_gup_fast_read
    mov rdi, r13
gup:
    syscall
    mov qword ptr [USER_DATA], 0x0a7a
    mov eax, SYS_gup_fast_read
    mov edi, USER_DATA
gup_plain:
    syscall
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
unmap:
    syscall
    sys_probe probe_after, r14, PROBE_READ, PROBE_FULL
gone:
    mov rbx, qword ptr [r13]
    xor ebx, ebx
.Lcycle:
    secret_anon r13
    mov rax, r13
cycle:
    nop
    mov qword ptr [r13], rbx
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
cycle_unmap:
    syscall
    inc ebx
    cmp ebx, 40
    jb .Lcycle
done:
    nop
    sys_exit 0
