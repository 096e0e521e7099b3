; The direct map (page_offset_base) from user mode, PTI on: absent from the
; user page tables, #PF 0x4 -- at its base, and at the direct-map alias of the
; program's own data page (from SYS_direct_map_alias).
; isoemu: pti=on
; expect: probe_base fault 14 0x4
; expect: in_direct_map rbx=0
; expect: probe_alias fault 14 0x4
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
    shr rbx, 28                 # the alias lies in the first 256 MiB of the direct map
probe_alias:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
