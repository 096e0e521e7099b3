; A non-canonical address never reaches the page tables: the CPU raises
; #GP(0), not #PF (SDM Vol. 3A 3.3.7.1), delivered to user mode as SIGSEGV.
; expect: probe fault 13 0x0
.text
_start:
    mov rax, 0x8000000000000000
probe:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
