; The memfd_secret selftest's test_remote_access with process_vm_readv
; (tools/testing/selftests/mm/memfd_secret.c): another process cannot copy
; a secret page out, nor write one.  process_vm_rw_core (mm/process_vm_access.c)
; pins the remote pages with pin_user_pages_remote, whose check_vma_flags
; (mm/gup.c) refuses a secretmem VMA: no page pinned, -EFAULT.  A's ordinary
; data page is readable the same way (the control).  A holds a touched
; secret page at MMAP_BASE and yields to B; B then exits and A checks its
; secret is unchanged.
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
; expect: plain rax=8
; expect: plainval rbx=0x0a7a
; expect: rd rax=-EFAULT
; expect: wr rax=-EFAULT
; expect: nopid rax=-ESRCH
; expect: empty rax=0
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    # local {USER_DATA+0x100, 8}, remote {A's USER_DATA, 8}
    lea rax, [USER_DATA + 0x100]
    mov qword ptr [USER_DATA], rax
    mov qword ptr [USER_DATA + 8], 8
    mov qword ptr [USER_DATA + 16], USER_DATA
    mov qword ptr [USER_DATA + 24], 8
    mov eax, SYS_process_vm_readv
    mov edi, 1
    mov esi, USER_DATA
    mov edx, 1
    mov r10d, USER_DATA + 16
    mov r8d, 1
    xor r9d, r9d
plain:
    syscall
    mov rbx, qword ptr [USER_DATA + 0x100]
plainval:
    nop
    # remote {A's secret at MMAP_BASE, 8}
    mov rax, MMAP_BASE
    mov qword ptr [USER_DATA + 16], rax
    mov eax, SYS_process_vm_readv
    mov edi, 1
    mov esi, USER_DATA
    mov edx, 1
    mov r10d, USER_DATA + 16
    mov r8d, 1
    xor r9d, r9d
rd:
    syscall
    mov eax, SYS_process_vm_writev
    mov edi, 1
    mov esi, USER_DATA
    mov edx, 1
    mov r10d, USER_DATA + 16
    mov r8d, 1
    xor r9d, r9d
wr:
    syscall
    mov eax, SYS_process_vm_readv
    mov edi, 77
    mov esi, USER_DATA
    mov edx, 1
    mov r10d, USER_DATA + 16
    mov r8d, 1
    xor r9d, r9d
nopid:
    syscall
    # an empty remote vector: nothing to pin, 0 before the pid is looked up
    mov qword ptr [USER_DATA + 24], 0
    mov eax, SYS_process_vm_readv
    mov edi, 77
    mov esi, USER_DATA
    mov edx, 1
    mov r10d, USER_DATA + 16
    mov r8d, 1
    xor r9d, r9d
empty:
    syscall
    sys_exit 0
