; Jumping into kernel text from user mode.  The call itself completes; the
; instruction fetch at the target faults, with I/D set: with PTI the page is
; not in the user tables, #PF 0x14 (not present, fetch, user).  The runner
; attributes a fetch fault at a call's target to the labelled call and resumes
; at its return address.
; isoemu: pti=on
; expect: jump fault 14 0x14
.text
_start:
    mov rax, KERNEL_TEXT
jump:
    call rax
    mov eax, SYS_exit
    xor edi, edi
    syscall
