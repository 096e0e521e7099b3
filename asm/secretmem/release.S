; Releasing the secret restores the direct map, but only when the page leaves
; the page cache (secretmem_free_folio -> set_direct_map_default_noflush), that
; is when the last reference to the file goes: munmap alone leaves the page
; in the file and out of the direct map; close then restores it.
; isoemu: asi=off
; expect: probe_mapped rax=-14 rdx=0x0
; expect: unmap rax=0
; expect: probe_unmapped rax=-14 rdx=0x0
; expect: close rax=0
; expect: probe_released rax=0 rdx=0
; expect: probe_released_write rax=0
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
    mov qword ptr [r13], 42
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    mov eax, SYS_probe
    mov rdi, r14
    xor esi, esi
    xor edx, edx
probe_mapped:
    syscall
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 4096
unmap:
    syscall
    mov eax, SYS_probe
    mov rdi, r14
    xor esi, esi
    xor edx, edx
probe_unmapped:
    syscall
    mov eax, SYS_close
    mov rdi, r12
close:
    syscall
    mov eax, SYS_probe
    mov rdi, r14
    xor esi, esi
    xor edx, edx
probe_released:
    syscall
    mov eax, SYS_probe
    mov rdi, r14
    mov esi, 1
    xor edx, edx
probe_released_write:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
