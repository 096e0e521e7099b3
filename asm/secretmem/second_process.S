; Another process cannot reach the secret: the pages are mapped only into the
; owner's page tables.  A creates and touches a secret page at MMAP_BASE, then
; yields; B reads and writes the same virtual address in its own address
; space, where nothing is mapped: #PF 0x4 and 0x6, SIGSEGV.
; expect: touch ok
; expect: yield rax=0
; expect: check rbx=0x5ec2e7
.include "isoemu.inc"
.text
_start:
    secret_map r13              # memfd_secret, ftruncate 4 KiB, mmap shared: r13 (untouched)
touch:
    mov qword ptr [r13], 0x5ec2e7
    mov eax, SYS_sched_yield
yield:
    syscall                     # B runs until it exits
check:
    mov rbx, qword ptr [r13]    # still A's secret
    sys_exit 0

; process: B
; expect: steal_read fault 14 0x4
; expect: steal_write fault 14 0x6
; expect: exit 0
.text
_start:
    mov rax, 0x7f0000000000     # A's secret mapping (MMAP_BASE)
steal_read:
    mov rbx, qword ptr [rax]
steal_write:
    mov qword ptr [rax], rbx
    mov eax, SYS_exit
    xor edi, edi
    syscall
