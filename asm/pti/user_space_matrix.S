; Where user code runs, and what a Meltdown-style read of kernel text finds
; there, with PTI and ASI each on and off (one run per combination).
; User mode always runs on the process's user page table: with PTI it is the
; user half of the PGD pair (arch/x86/mm/pti.c), without PTI the one table
; (A.user is then A.kernel).  ASI changes only the kernel's tables.  The read
; is #PF 0x4 (not present) with PTI, which leaves the kernel image out of the
; user tables, and #PF 0x5 (protection: present, supervisor-only) without.
; isoemu: pti=on|off asi=on|off
; expect: probe_text space A.user
; expect[pti=on]: probe_text fault 14 0x4
; expect[pti=off]: probe_text fault 14 0x5
; expect: pid rax=1                   # getpid after the fault: the process runs on
.text
_start:
    mov rax, KERNEL_TEXT
probe_text:
    mov bl, byte ptr [rax]
    mov eax, SYS_getpid
pid:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
