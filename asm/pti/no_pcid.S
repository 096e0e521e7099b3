; PTI without PCID: every CR3 switch on entry and exit flushes the TLB, but
; what user mode can reach is the same -- kernel text and the direct map are
; absent from the user tables (#PF 0x4), and system calls still return
; through the switch to the user tables.
; isoemu: pti=on pcid=off
; expect: probe_text fault 14 0x4
; expect: pid rax=1
; expect: probe_direct fault 14 0x4
.text
_start:
    mov rax, KERNEL_TEXT
probe_text:
    mov bl, byte ptr [rax]
    mov eax, SYS_getpid
pid:
    syscall
    mov rax, DIRECT_MAP_BASE
probe_direct:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
