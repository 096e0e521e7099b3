; PTI without PCID, booted with pti=auto (Linux's default on a
; Meltdown-affected CPU): pti_kernel_image_global_ok() holds, so
; pti_finalize() -> pti_clone_kernel_text() copies the PMDs of kernel text
; and rodata into the user tables, Global (arch/x86/mm/pti.c: "This reduces
; TLB misses, especially on non-PCID systems").  A CPL3 read of them is a
; protection fault, #PF 0x5 (present, read, user); what lies past rodata and
; the direct map stay out (#PF 0x4).  The same program with pti=on:
; no_pcid.S.  The pti switch is not set here: its default is auto.
; isoemu: pcid=off
; expect: probe_text fault 14 0x5
; expect: probe_rodata fault 14 0x5
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
