; The limits memfd_secret's selftest reads and sets, and their errors
; (do_prlimit, kernel/sys.c): a resource past RLIM_NLIMITS is -EINVAL, as is
; rlim_cur above rlim_max; raising the hard limit without CAP_SYS_RESOURCE is
; -EPERM; a bad pointer -EFAULT; prlimit64 of no such pid -ESRCH.  Lowering
; the hard limit is allowed and sticks; RLIMIT_NOFILE starts at 1024/4096
; (INIT_RLIMITS, include/asm-generic/resource.h).
; expect: badres rax=-EINVAL
; expect: curmax rax=-EINVAL
; expect: raise rax=-EPERM
; expect: badptr rax=-EFAULT
; expect: nopid rax=-ESRCH
; expect: nofile rax=0
; expect: nofileval rbx=1024 rcx=4096
; expect: lowerhard rax=0
; expect: reraise rax=-EPERM
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_getrlimit
    mov edi, 16
    mov esi, USER_DATA
badres:
    syscall
    # {cur 2 pages, max 1 page}
    mov qword ptr [USER_DATA], 0x2000
    mov qword ptr [USER_DATA + 8], 0x1000
    mov eax, SYS_setrlimit
    mov edi, RLIMIT_MEMLOCK
    mov esi, USER_DATA
curmax:
    syscall
    # {cur 4 KiB, max twice the limit}
    mov qword ptr [USER_DATA], 0x1000
    mov rax, MLOCK_LIMIT * 2
    mov qword ptr [USER_DATA + 8], rax
    mov eax, SYS_setrlimit
    mov edi, RLIMIT_MEMLOCK
    mov esi, USER_DATA
raise:
    syscall
    mov eax, SYS_getrlimit
    mov edi, RLIMIT_MEMLOCK
    mov rsi, KERNEL_TEXT
badptr:
    syscall
    mov eax, SYS_prlimit64
    mov edi, 77
    mov esi, RLIMIT_MEMLOCK
    xor edx, edx
    mov r10d, USER_DATA
nopid:
    syscall
    mov eax, SYS_prlimit64
    xor edi, edi
    mov esi, RLIMIT_NOFILE
    xor edx, edx
    mov r10d, USER_DATA + 16
nofile:
    syscall
    mov rbx, qword ptr [USER_DATA + 16]
    mov rcx, qword ptr [USER_DATA + 24]
nofileval:
    nop
    # lower the hard limit to 4 KiB, then try to raise it back
    mov qword ptr [USER_DATA], 0x1000
    mov qword ptr [USER_DATA + 8], 0x1000
    mov eax, SYS_setrlimit
    mov edi, RLIMIT_MEMLOCK
    mov esi, USER_DATA
lowerhard:
    syscall
    mov qword ptr [USER_DATA], 0x1000
    mov qword ptr [USER_DATA + 8], 0x2000
    mov eax, SYS_setrlimit
    mov edi, RLIMIT_MEMLOCK
    mov esi, USER_DATA
reraise:
    syscall
    sys_exit 0
