; Secret memory is never executable: secretmem's mount is noexec and the
; mapping lacks VM_EXEC, so the page is mapped NX.  Executing it before the
; first touch faults as not present (#PF 0x14, the VMA refuses the fetch:
; SEGV_ACCERR); after a write has faulted it in, on NX: #PF 0x15.
; expect: exec_untouched fault 14 0x14
; expect: touch ok
; expect: exec_touched fault 14 0x15
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
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
    syscall
    mov r13, rax
exec_untouched:
    call r13
touch:
    mov byte ptr [r13], 0xc3            # ret
exec_touched:
    call r13
    mov eax, SYS_exit
    xor edi, edi
    syscall
