; MAP_SECRET memory is locked and counted against RLIMIT_MEMLOCK exactly as
; memfd_secret's (secretmem_mmap's mlock_future_ok, mm/mmap.c; -EAGAIN
; beyond), in the same mm->locked_vm: with the limit lowered to 16 KiB, a
; 12 KiB MAP_SECRET mapping fits, a further 8 KiB does not, 4 KiB of
; memfd_secret fills the limit, and then neither kind fits a page more.
; munmap of a MAP_SECRET mapping gives its pages back, after which 8 KiB
; fits.  A refused mapping leaves nothing behind (its internal file is
; dropped): 40 refusals, more than the stub's 32 files, and the next mapping
; still succeeds.
; expect: lower rax=0
; expect: a12 rax=MMAP_BASE
; expect: a8 rax=-EAGAIN
; expect: fd4 rax=MMAP_BASE+0x4000..MMAP_BASE+0x10000
; expect: a4 rax=-EAGAIN
; expect: fd4_more rax=-EAGAIN
; expect: unmap rax=0
; expect: a8_after rax=MMAP_BASE..MMAP_BASE+0x100000
; expect: refused rax=-EAGAIN
; expect: refusals rbx=40
; expect: after_refusals rax=MMAP_BASE..MMAP_BASE+0x100000
.include "isoemu.inc"
.text
.macro anon label, len
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, \len
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS | MAP_SECRET
    mov r8, -1
    xor r9d, r9d
\label:
    syscall
.endm
.macro onfd label
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
\label:
    syscall
.endm
_start:
    # setrlimit(RLIMIT_MEMLOCK, {16 KiB, MLOCK_LIMIT})
    mov qword ptr [USER_DATA], 0x4000
    mov rax, MLOCK_LIMIT
    mov qword ptr [USER_DATA + 8], rax
    mov eax, SYS_setrlimit
    mov edi, RLIMIT_MEMLOCK
    mov esi, USER_DATA
lower:
    syscall
    anon a12, 0x3000
    mov r13, rax
    anon a8, 0x2000
    secret_fd r12, 4096
    onfd fd4
    anon a4, 0x1000
    onfd fd4_more
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 0x3000
unmap:
    syscall
    anon a8_after, 0x2000
    xor ebx, ebx
.Lrefuse:
    anon refused, 0x4000
    inc ebx
    cmp ebx, 40
    jb .Lrefuse
refusals:
    nop
    anon after_refusals, 0x1000
    sys_exit 0
