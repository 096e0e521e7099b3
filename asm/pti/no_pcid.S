; PTI without PCID, booted with pti=on: every CR3 switch on entry and exit
; flushes the TLB, but user mode reaches what it reaches with PCID.  With
; pti=on, pti_kernel_image_global_ok() is false (arch/x86/mm/pti.c), so no
; kernel text, rodata, data or direct map is in the user tables (#PF 0x4, not
; present), and system calls still return through the switch to the user
; tables.  Linux's default, pti=auto, maps more without PCID: no_pcid_auto.S.
; isoemu: pti=on pcid=off
; expect: probe_text fault 14 0x4
; expect: probe_rodata fault 14 0x4
; expect: pid rax=1
; expect: probe_data fault 14 0x4
; expect: probe_direct fault 14 0x4
.text
_start:
    mov rax, KERNEL_TEXT
probe_text:
    mov bl, byte ptr [rax]
    mov rax, KERNEL_RODATA
probe_rodata:
    mov bl, byte ptr [rax]
    mov eax, SYS_getpid
pid:
    syscall
    mov rax, KERNEL_DATA
probe_data:
    mov bl, byte ptr [rax]
    mov rax, DIRECT_MAP_BASE
probe_direct:
    mov bl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
