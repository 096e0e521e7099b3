; User memory is sensitive: its direct-map alias is absent from the restricted
; page table.  Reading the alias of the program's own data page in the
; restricted space faults, the #PF handler leaves ASI (asi_exit), finds the
; address readable in the full tables and retries: rax = 0 with r8 = 1 (an
; ASI exit happened).  From the full kernel page table (rdx = 0): no exit
; during the access (the 2025 RFC's probe leaves ASI first, before it counts).
; The 2019 RFC's table has no direct map: its session aborts the same way.
; isoemu: asi=on|rfc2019|rfc2025
; expect: restricted rax=0 r8=1
; expect: full rax=0 r8=0
; expect: again rax=0 r8=1
.text
_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov r12, rax
    mov eax, SYS_probe
    mov rdi, r12
    xor esi, esi
    mov edx, 1
restricted:
    syscall
    mov eax, SYS_probe
    mov rdi, r12
    xor esi, esi
    xor edx, edx
full:
    syscall
    mov eax, SYS_probe          # each syscall re-enters ASI, so it exits again
    mov rdi, r12
    xor esi, esi
    mov edx, 1
again:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
