; The direct map from user mode without PTI: every page of RAM is mapped,
; present and supervisor-only, so a CPL3 read of the alias of the program's
; own data page faults on U/S alone: #PF 0x5.  (Meltdown read exactly this.)
; isoemu: pti=off
; expect: probe_base fault 14 0x5
; expect: in_direct_map rbx=0
; expect: probe_alias fault 14 0x5
.text
_start:
    mov rax, DIRECT_MAP_BASE
probe_base:
    mov bl, byte ptr [rax]
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
    syscall
    mov rbx, rax
    mov rcx, DIRECT_MAP_BASE
    sub rbx, rcx
in_direct_map:
    shr rbx, 28
probe_alias:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
