; The owner's access to its xpfo memory works (docs/xpfo.md): four pages
; fallocated, mapped shared, start zeroed (the pages were cleared through the
; direct map before they left it), take a pattern and read it back whole.
; Removing the pages from the kernel's direct map takes nothing from the
; user's mapping.
; isoemu: unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: zeroed rbx=0 r15=0
; expect: sums rbx=0x2a8000 r15=0
.include "kvm.inc"
.include "xpfo.inc"
.text
_start:
    xpfo_fd r12, 0x4000
    gmem_map r13, r12, 0x4000
    mov dl, 0
    call sum
zeroed:
    nop
    mov rdi, r13
    mov al, 0xaa
    mov ecx, 0x4000
    rep stosb
    mov dl, 0xaa
    call sum
sums:
    nop
    mov eax, SYS_exit
    xor edi, edi
    syscall

; Sum: rbx = the sum of the 4 pages' bytes, r15 = how many differ from dl
sum:
    xor ebx, ebx
    xor r15d, r15d
    xor ecx, ecx
.Lsum:
    movzx eax, byte ptr [r13 + rcx]
    add rbx, rax
    cmp al, dl
    je .Lsame
    inc r15
.Lsame:
    inc ecx
    cmp ecx, 0x4000
    jb .Lsum
    ret
