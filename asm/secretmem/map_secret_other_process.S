; No other process reaches MAP_SECRET memory, and there is no descriptor to
; hand it one: the owner's page tables alone map it.  A maps a secret with
; MAP_SECRET, touches it and yields.  B, at the same virtual address in its
; own space, faults (#PF 0x4 and 0x6: nothing mapped there).  Through the
; kernel, process_vm_readv of A's secret is -EFAULT (pin_user_pages_remote's
; check_vma_flags refuses the secretmem VMA, mm/gup.c), ptrace PEEKDATA of it
; -EIO (__access_remote_vm, mm/memory.c), while A's ordinary data word reads
; fine both ways (the controls).  A's descriptor table holds only the
; console (the lowest free descriptor, which memfd_secret returns, is still
; 3), so no /proc/PID/fd entry, SCM_RIGHTS message or inherited descriptor
; could name the memory.  A's secret is intact after B exits.
; expect: map rax=MMAP_BASE
; expect: touch ok
; expect: fd rax=3
; expect: yield rax=0
; expect: check rbx=0x5ec2e7
; expect: exit 0
.include "isoemu.inc"
.text
_start:
    secret_anon r13
    mov rax, r13
map:
    nop
touch:
    mov qword ptr [r13], 0x5ec2e7
    mov qword ptr [USER_DATA], 0x0a7a
    mov eax, SYS_memfd_secret
    xor edi, edi
fd:
    syscall
    mov eax, SYS_sched_yield
yield:
    syscall
    mov rbx, qword ptr [r13]
check:
    nop
    sys_exit 0

; process: B
; expect: steal_read fault 14 0x4
; expect: steal_write fault 14 0x6
; expect: vm_plain rax=8
; expect: vm_secret rax=-EFAULT
; expect: attach rax=0
; expect: peek_plain rax=0
; expect: peek_plain_val rbx=0x0a7a
; expect: peek_secret rax=-EIO
; expect: exit 0
.include "isoemu.inc"
.text
.macro vm_read label, remote
    lea rax, [USER_DATA + 0x100]
    mov qword ptr [USER_DATA], rax
    mov qword ptr [USER_DATA + 8], 8
    mov rax, \remote
    mov qword ptr [USER_DATA + 16], rax
    mov qword ptr [USER_DATA + 24], 8
    mov eax, SYS_process_vm_readv
    mov edi, 1
    mov esi, USER_DATA
    mov edx, 1
    mov r10d, USER_DATA + 16
    mov r8d, 1
    xor r9d, r9d
\label:
    syscall
.endm
.macro peek label, addr
    mov eax, SYS_ptrace
    mov edi, PTRACE_PEEKDATA
    mov esi, 1
    mov rdx, \addr
    mov r10d, USER_DATA + 0x200
\label:
    syscall
.endm
_start:
    mov rax, MMAP_BASE
steal_read:
    mov rbx, qword ptr [rax]
steal_write:
    mov qword ptr [rax], rbx
    vm_read vm_plain, USER_DATA
    vm_read vm_secret, MMAP_BASE
    mov eax, SYS_ptrace
    mov edi, PTRACE_ATTACH
    mov esi, 1
    xor edx, edx
    xor r10d, r10d
attach:
    syscall
    peek peek_plain, USER_DATA
    mov rbx, qword ptr [USER_DATA + 0x200]
peek_plain_val:
    nop
    peek peek_secret, MMAP_BASE
    sys_exit 0
