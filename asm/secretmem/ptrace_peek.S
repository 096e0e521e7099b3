; The memfd_secret selftest's test_remote_access with ptrace
; (tools/testing/selftests/mm/memfd_secret.c): a tracer's PTRACE_PEEKDATA of
; the tracee's secret page fails.  generic_ptrace_peekdata (kernel/ptrace.c)
; reads through ptrace_access_vm -> __access_remote_vm (mm/memory.c), whose
; get_user_pages_remote refuses the secretmem VMA (check_vma_flags, mm/gup.c);
; fewer bytes than a word copied is -EIO.  A's ordinary data word is peeked
; fine (the raw call stores it at data and returns 0); POKEDATA of the secret
; fails the same way, and A's secret is unchanged.  PEEKDATA before attaching
; is -ESRCH (ptrace_check_attach).
; expect: touch ok
; expect: yield rax=0
; expect: check rbx=0x5ec2e7
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    secret_map r13
touch:
    mov qword ptr [r13], 0x5ec2e7
    mov qword ptr [USER_DATA], 0x0a7a
    mov eax, SYS_sched_yield
yield:
    syscall
    mov rbx, qword ptr [r13]
check:
    nop
    sys_exit 0

; process: B
; expect: unattached rax=-ESRCH
; expect: attach rax=0
; expect: plain rax=0
; expect: plainval rbx=0x0a7a
; expect: peek rax=-EIO
; expect: poke rax=-EIO
; expect: detach rax=0
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_ptrace
    mov edi, PTRACE_PEEKDATA
    mov esi, 1
    mov edx, USER_DATA
    mov r10d, USER_DATA + 0x100
unattached:
    syscall
    mov eax, SYS_ptrace
    mov edi, PTRACE_ATTACH
    mov esi, 1
    xor edx, edx
    xor r10d, r10d
attach:
    syscall
    mov eax, SYS_ptrace
    mov edi, PTRACE_PEEKDATA
    mov esi, 1
    mov edx, USER_DATA
    mov r10d, USER_DATA + 0x100
plain:
    syscall
    mov rbx, qword ptr [USER_DATA + 0x100]
plainval:
    nop
    mov eax, SYS_ptrace
    mov edi, PTRACE_PEEKDATA
    mov esi, 1
    mov rdx, MMAP_BASE
    mov r10d, USER_DATA + 0x100
peek:
    syscall
    mov eax, SYS_ptrace
    mov edi, PTRACE_POKEDATA
    mov esi, 1
    mov rdx, MMAP_BASE
    xor r10d, r10d
poke:
    syscall
    mov eax, SYS_ptrace
    mov edi, PTRACE_DETACH
    mov esi, 1
    xor edx, edx
    xor r10d, r10d
detach:
    syscall
    sys_exit 0
