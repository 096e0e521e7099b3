; Without NX (EFER.NXE off) bit 63 is a reserved bit, so Linux drops _PAGE_NX
; from every protection (__supported_pte_mask) and PTI does not set it on the
; kernel's copy of user PGD entries: data and stack are executable, and no
; entry anywhere trips a reserved-bit fault.
; isoemu: nx=off
; expect: plant ok
; expect: exec_data ok
; expect: exec_stack ok
; expect: probe fault 14 0x4
.text
_start:
    mov rax, USER_DATA
plant:
    mov byte ptr [rax], 0xc3            # ret
exec_data:
    call rax
    push 0xc3
exec_stack:
    call rsp
    add rsp, 8
    mov rax, KERNEL_TEXT
probe:
    mov bl, byte ptr [rax]              # PTI: not present in the user tables
    mov eax, SYS_exit
    xor edi, edi
    syscall
