; secretmem_mmap refuses private mappings: (vm_flags & (VM_SHARED |
; VM_MAYSHARE)) == 0 -> -EINVAL.  The shared mapping that follows works.
; expect: private rax=-22
; expect: shared rax=0x7f0000000000
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
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE
    mov r8, r12
    xor r9d, r9d
private:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
shared:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
