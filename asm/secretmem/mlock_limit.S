; The memfd_secret selftest's test_mlock_limit (tools/testing/selftests/mm/
; memfd_secret.c): a secret mapping is locked memory, so secretmem_mmap
; (mm/secretmem.c) asks mlock_future_ok (mm/mmap.c) whether it fits in
; RLIMIT_MEMLOCK and refuses it with -EAGAIN if not.  The init task's limit
; is MLOCK_LIMIT, 8 MiB both soft and hard (include/uapi/linux/resource.h).
; An mmap of the whole soft limit succeeds; after munmap gives the pages back
; to mm->locked_vm, one of twice the hard limit fails.  Two mappings that
; together pass the limit: the second fails.  Lowering the limit with
; setrlimit (and reading it back with prlimit64) lowers what fits.
; expect: get rax=0
; expect: cur rbx=MLOCK_LIMIT rcx=MLOCK_LIMIT
; expect: within rax=MMAP_BASE..MMAP_BASE+0x10000000000
; expect: unmap rax=0
; expect: beyond rax=-EAGAIN
; expect: half rax=MMAP_BASE..MMAP_BASE+0x10000000000
; expect: more rax=-EAGAIN
; expect: lower rax=0
; expect: readback rax=0
; expect: newcur rbx=0x2000 rcx=MLOCK_LIMIT
; expect: small rax=-EAGAIN
; expect: unhalf rax=0
; expect: fits rax=MMAP_BASE..MMAP_BASE+0x10000000000
; expect: toobig rax=-EAGAIN
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    secret_fd r12, 4096
    mov eax, SYS_getrlimit
    mov edi, RLIMIT_MEMLOCK
    mov esi, USER_DATA
get:
    syscall
    mov rbx, qword ptr [USER_DATA]
    mov rcx, qword ptr [USER_DATA + 8]
cur:
    nop
    mov r14, rbx                # the soft limit
    mov eax, SYS_mmap
    xor edi, edi
    mov rsi, r14
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
within:
    syscall
    mov rdi, rax
    mov eax, SYS_munmap
    mov rsi, r14
unmap:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov rsi, MLOCK_LIMIT * 2
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
beyond:
    syscall
    # half the limit, then a further half plus a page
    mov eax, SYS_mmap
    xor edi, edi
    mov rsi, MLOCK_LIMIT / 2
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
half:
    syscall
    mov r15, rax
    mov eax, SYS_mmap
    xor edi, edi
    mov rsi, MLOCK_LIMIT / 2 + 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
more:
    syscall
    # setrlimit(RLIMIT_MEMLOCK, {8 KiB, unchanged max}); prlimit64(0, ..., NULL, old)
    mov qword ptr [USER_DATA], 0x2000
    mov rax, MLOCK_LIMIT
    mov qword ptr [USER_DATA + 8], rax
    mov eax, SYS_setrlimit
    mov edi, RLIMIT_MEMLOCK
    mov esi, USER_DATA
lower:
    syscall
    mov eax, SYS_prlimit64
    xor edi, edi
    mov esi, RLIMIT_MEMLOCK
    xor edx, edx
    mov r10d, USER_DATA + 16
readback:
    syscall
    mov rbx, qword ptr [USER_DATA + 16]
    mov rcx, qword ptr [USER_DATA + 24]
newcur:
    nop
    # 4 MiB are still locked: not even one page fits
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
small:
    syscall
    mov eax, SYS_munmap
    mov rdi, r15
    mov rsi, MLOCK_LIMIT / 2
unhalf:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 0x2000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
fits:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 0x1000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
toobig:
    syscall
    sys_exit 0
