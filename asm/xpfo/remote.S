; Another process cannot reach an xpfo page through the kernel (docs/xpfo.md):
; the kernel would touch it through its direct-map alias, which the
; fallocate batch removed, so GUP refuses the VMA as check_vma_flags
; (mm/gup.c) refuses secretmem's.  B's PTRACE_PEEKDATA and POKEDATA of A's
; xpfo page are -EIO (a short __access_remote_vm), its process_vm_readv
; -EFAULT; A's ordinary data word is peeked fine, and A's xpfo page keeps
; what A wrote.  B has no mapping of it at all (the matrix's xpfo_user row
; from B.user).
; isoemu: unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: touch ok
; expect: yield rax=0
; expect: check rbx=0x5ec2e7
; expect: exit 0
.include "kvm.inc"
.include "xpfo.inc"
.include "isoemu.inc"
.text
_start:
    xpfo_fd r12, 0x1000
    gmem_map r13, r12, 0x1000               ; the first mmap: at MMAP_BASE
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
; expect: attach rax=0
; expect: plain rax=0
; expect: plainval rbx=0x0a7a
; expect: peek rax=-EIO
; expect: poke rax=-EIO
; expect: remote rax=-EFAULT
; expect: detach rax=0
; expect: exit 0
.include "isoemu.inc"
.text
_start:
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
    ; process_vm_readv(1, {USER_DATA + 0x200, 8}, 1, {MMAP_BASE, 8}, 1, 0)
    mov rax, USER_DATA + 0x200
    mov qword ptr [USER_DATA + 0x300], rax
    mov qword ptr [USER_DATA + 0x308], 8
    mov rax, MMAP_BASE
    mov qword ptr [USER_DATA + 0x310], rax
    mov qword ptr [USER_DATA + 0x318], 8
    mov eax, SYS_process_vm_readv
    mov edi, 1
    mov esi, USER_DATA + 0x300
    mov edx, 1
    mov r10d, USER_DATA + 0x310
    mov r8d, 1
    xor r9d, r9d
remote:
    syscall
    mov eax, SYS_ptrace
    mov edi, PTRACE_DETACH
    mov esi, 1
    xor edx, edx
    xor r10d, r10d
detach:
    syscall
    sys_exit 0
