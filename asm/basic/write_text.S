; Program text and read-only data are mapped without RW: a user write faults
; with P, W and U set: #PF 0x7.  Reading them is fine.
; expect: read_text ok
; expect: write_text fault 14 0x7
; expect: write_rodata fault 14 0x7
.text
_start:
    lea rax, [rip + _start]
read_text:
    mov bl, byte ptr [rax]
write_text:
    mov byte ptr [rax], 0x90
    lea rax, [rip + constant]
write_rodata:
    mov qword ptr [rax], 0
    mov eax, SYS_exit
    xor edi, edi
    syscall
.rodata
constant: .quad 42
