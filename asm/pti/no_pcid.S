; PTI without PCID.  Every CR3 switch on entry and exit flushes the TLB;
; what user mode reaches depends on how PTI was asked for
; (arch/x86/mm/pti.c).  With pti=on, pti_kernel_image_global_ok() is false:
; no kernel text, rodata, data or direct map is in the user tables (#PF 0x4,
; not present).  With pti=auto (Linux's default on a Meltdown-affected CPU)
; it holds without PCID, so pti_finalize() -> pti_clone_kernel_text()
; copies the PMDs of kernel text and rodata into the user tables, Global
; ("This reduces TLB misses, especially on non-PCID systems"): a CPL3 read of
; them is a protection fault, #PF 0x5; what lies past rodata and the direct
; map stay out.  System calls still return through the switch to the user
; tables.
; isoemu: pti=on|auto pcid=off
; expect[pti=on]: probe_text fault 14 0x4
; expect[pti=on]: probe_rodata fault 14 0x4
; expect[pti=auto]: probe_text fault 14 0x5
; expect[pti=auto]: probe_rodata fault 14 0x5
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
