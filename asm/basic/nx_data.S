; NX: the data page and the stack are mapped with XD (EFER.NXE on), so a
; fetch from them faults with P and I/D set: #PF 0x15 (protection, fetch,
; user), delivered as SIGSEGV.
; expect: plant ok
; expect: exec_data fault 14 0x15
; expect: exec_stack fault 14 0x15
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
    mov eax, SYS_exit
    xor edi, edi
    syscall
