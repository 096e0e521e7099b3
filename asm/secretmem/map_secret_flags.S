; MAP_SECRET's argument rules (docs/secretmem.md, "MAP_SECRET").  The flag is
; anonymous-only: without MAP_ANONYMOUS the descriptor is looked up first
; (-EBADF for none), then the flag refused (-EINVAL), as ksys_mmap_pgoff
; (mm/mmap.c) refuses MAP_HUGETLB on a file that is not hugetlbfs's; a
; memfd_secret descriptor is no exception.  Private only (the 2019
; MAP_EXCLUSIVE RFC's rule: no descriptor to share through): MAP_SHARED is
; -EINVAL.  PROT_EXEC is -EPERM, as on the noexec secretmem mount (do_mmap's
; path_noexec).  A length of 0 is -EINVAL; beyond what a secretmem file of
; the stub holds (FILE_MAX_PAGES, 256 KiB) -ENOMEM.  MAP_SECRET is 0x200000.
; expect: value rax=0x200000
; expect: ok_map rax=MMAP_BASE
; expect: shared rax=-EINVAL
; expect: nofd rax=-EBADF
; expect: onfd rax=-EINVAL
; expect: exec rax=-EPERM
; expect: rx rax=-EPERM
; expect: zero rax=-EINVAL
; expect: huge rax=-ENOMEM
; expect: ok_again rax=MMAP_BASE+0x2000
.include "isoemu.inc"
.text
.macro try label, len, prot, flags, fd=-1
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, \len
    mov edx, \prot
    mov r10d, \flags
    mov r8, \fd
    xor r9d, r9d
\label:
    syscall
.endm
_start:
    mov eax, MAP_SECRET
value:
    nop
    try ok_map, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_SECRET
    try shared, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_SECRET
    try nofd, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_SECRET
    secret_fd r12, 4096
    try onfd, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_SECRET, r12
    try exec, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_SECRET
    try rx, 4096, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_SECRET
    try zero, 0, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_SECRET
    try huge, 0x41000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_SECRET
    try ok_again, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_SECRET
    sys_exit 0
