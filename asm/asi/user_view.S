; What user code can touch under each ASI design (docs/asi.md), read at CPL3.
; With PTI (asi=off, on, rfc2019) user code runs on PTI's user page table,
; which maps no kernel image, direct map or vmalloc space: not present, #PF 0x4.
; The 2025 RFC turns PTI off and user code runs on the restricted table
; (PeterZ's point: merge the user and kernel-exposed spaces): the non-sensitive
; kernel is present there, supervisor-only, #PF 0x5; sensitive memory (a user
; frame's direct-map alias) is not mapped, #PF 0x4.  The label 'where' shows
; the table the program runs on.
; isoemu: asi=off|on|rfc2019|rfc2025
; expect[asi=off|on|rfc2019]: text fault 14 0x4
; expect[asi=off|on|rfc2019]: data_alias fault 14 0x4
; expect[asi=off|on|rfc2019]: stack fault 14 0x4
; expect[asi=rfc2025]: text fault 14 0x5
; expect[asi=rfc2025]: data_alias fault 14 0x5
; expect[asi=rfc2025]: stack fault 14 0x5
; expect: user_alias fault 14 0x4
; expect: entry fault 14 0x5
; expect[asi=off|on|rfc2019]: where space A.user
; expect[asi=rfc2025]: where space A.asi
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_direct_map_alias
    mov edi, USER_DATA
where:
    syscall
    mov r12, rax
    mov rax, KERNEL_TEXT
text:
    mov bl, byte ptr [rax]
    mov rax, DIRECT_MAP_BASE
    mov rcx, KERNEL_DATA_PHYS
    add rax, rcx
data_alias:
    mov bl, byte ptr [rax]
    mov rax, VMALLOC_START
stack:
    mov bl, byte ptr [rax]
user_alias:
    mov bl, byte ptr [r12]
    mov rax, ENTRY_TEXT
entry:
    mov bl, byte ptr [rax]
    sys_exit 0
