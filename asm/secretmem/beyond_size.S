; A mapping may extend past the file size, but touching a page beyond i_size
; is refused by secretmem_fault (vmf_error(-EINVAL) = VM_FAULT_SIGBUS): the
; write to the second page faults (#PF 0x6, not present) and the process gets
; SIGBUS.  The runner resumes after it; the first page works.
; expect: inside ok
; expect: outside fault 14 0x6
.include "isoemu.inc"
.text
_start:
    secret_map r13, 4096, 8192  # a 4 KiB secret file in an 8 KiB shared mapping: r13
inside:
    mov qword ptr [r13], 1
outside:
    mov qword ptr [r13 + 4096], 1
    sys_exit 0
