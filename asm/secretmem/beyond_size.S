; A mapping may extend past the file size, but touching a page beyond i_size
; is refused by secretmem_fault (vmf_error(-EINVAL) = VM_FAULT_SIGBUS): the
; write to the second page faults (#PF 0x6, not present) and the process gets
; SIGBUS.  The runner resumes after it; the first page works.
; expect: inside ok
; expect: outside fault 14 0x6
.text
_start:
    mov eax, SYS_memfd_secret
    xor edi, edi
    syscall
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 8192
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
    syscall
    mov r13, rax
inside:
    mov qword ptr [r13], 1
outside:
    mov qword ptr [r13 + 4096], 1
    mov eax, SYS_exit
    xor edi, edi
    syscall
