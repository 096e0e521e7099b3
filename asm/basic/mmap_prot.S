; Anonymous mappings fault as Linux's do_user_addr_fault decides from the VMA,
; while the error code is what the hardware saw in the PTE:
; - PROT_READ, never touched: the PTE is none, so a write is #PF 0x6 (not
;   present, write, user) and access_error() refuses it (SEGV_ACCERR);
; - after a read has mapped the page read-only, the write is #PF 0x7;
; - PROT_NONE: nothing is ever mapped, a read is #PF 0x4;
; - after munmap the range is gone: #PF 0x4 (SEGV_MAPERR).
; expect: ro_map rax=0x7f0000000000
; expect: ro_write_untouched fault 14 0x6
; expect: ro_read ok
; expect: ro_write_touched fault 14 0x7
; expect: none_read fault 14 0x4
; expect: rw_write ok
; expect: unmap rax=0
; expect: gone_read fault 14 0x4
.text
_start:
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
ro_map:
    syscall
    mov r12, rax
ro_write_untouched:
    mov qword ptr [r12], 1
ro_read:
    mov rbx, qword ptr [r12]
ro_write_touched:
    mov qword ptr [r12], 1
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_NONE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    syscall
    mov r13, rax
none_read:
    mov rbx, qword ptr [r13]
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    syscall
    mov r14, rax
rw_write:
    mov qword ptr [r14], 1
    mov eax, SYS_munmap
    mov rdi, r14
    mov esi, 4096
unmap:
    syscall
gone_read:
    mov rbx, qword ptr [r14]
    mov eax, SYS_exit
    xor edi, edi
    syscall
