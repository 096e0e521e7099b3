; The owner of a memfd_secret mapping reads and writes it like any shared
; mapping (mm/secretmem.c): the first touch faults the page in (zeroed, then
; removed from the direct map), transparently to the program.
; expect: create rax=3
; expect: size rax=0
; expect: map rax=0x7f0000000000
; expect: store ok
; expect: load rbx=0x5ec2e7
; expect: zero rcx=0
.text
_start:
    mov eax, SYS_memfd_secret
    xor edi, edi
create:
    syscall                     # the lowest free fd: 0-2 are the console
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
size:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
map:
    syscall                     # the first mapping goes at MMAP_BASE
    mov r13, rax
zero:
    mov rcx, qword ptr [r13 + 8]        # a fresh secret page reads as zeros
store:
    mov qword ptr [r13], 0x5ec2e7
load:
    mov rbx, qword ptr [r13]
    mov eax, SYS_exit
    xor edi, edi
    syscall
