; 5-level paging (LA57) moves the direct map to ff11000000000000; PTI keeps it
; out of the user tables there too, and kernel text stays at
; ffffffff81000000: both #PF 0x4 from user mode.
; isoemu: la57=on pti=on
; expect: probe_direct fault 14 0x4
; expect: probe_text fault 14 0x4
; expect: dm rbx=0xff11000000000000
.text
_start:
    mov rbx, DIRECT_MAP_BASE
dm:
    mov rax, rbx
probe_direct:
    mov cl, byte ptr [rax]
    mov rax, KERNEL_TEXT
probe_text:
    mov cl, byte ptr [rax]
    mov eax, SYS_exit
    xor edi, edi
    syscall
