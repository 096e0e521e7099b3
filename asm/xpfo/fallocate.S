; fallocate on an xpfo file (docs/xpfo.md).  vfs_fallocate's checks first
; (fs/open.c), in its order: a negative offset or a length <= 0 is -EINVAL; a
; mode bit outside KEEP_SIZE and PUNCH_HOLE, or PUNCH_HOLE without KEEP_SIZE,
; -EOPNOTSUPP; offset + length past the mount's s_maxbytes (XPFO_MAX_BYTES,
; 256 KiB) or overflowing -EFBIG.  Then the device's own: no hole punching
; (-EOPNOTSUPP: memory returns only when the file is released); offset and
; length page-aligned (-EINVAL).  Sizes of 1, 33 (the single-page flush
; ceiling), 34 and 64 pages (the whole of s_maxbytes) succeed; without
; KEEP_SIZE the size grows to the end of the range, with it the size stays.
; isoemu: unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: one_page rax=0
; expect: ceiling rax=0
; expect: past_ceiling rax=0
; expect: whole rax=0
; expect: whole_size rax=0x40000
; expect: keep rax=0
; expect: keep_size rax=0x1000
; expect: again rax=0
; expect: len_zero rax=-EINVAL
; expect: off_negative rax=-EINVAL
; expect: zero_range rax=-EOPNOTSUPP
; expect: hole_no_keep rax=-EOPNOTSUPP
; expect: punch rax=-EOPNOTSUPP
; expect: unaligned_off rax=-EINVAL
; expect: unaligned_len rax=-EINVAL
; expect: past_max rax=-EFBIG
; expect: overflow rax=-EFBIG
; expect: badf rax=-EBADF
.include "kvm.inc"
.include "xpfo.inc"
.text
_start:
    sub rsp, 256
    xpfo_try o1
    mov r12, rax
    falloc one_page, r12, 0, 0, 0x1000
    xpfo_try o2
    mov r12, rax
    falloc ceiling, r12, 0, 0, 33 * 0x1000
    xpfo_try o3
    mov r12, rax
    falloc past_ceiling, r12, 0, 0, 34 * 0x1000
    xpfo_try o4
    mov r12, rax
    falloc whole, r12, 0, 0, XPFO_MAX_BYTES
    call size
whole_size:
    nop
    xpfo_try o5
    mov r12, rax
    falloc keep, r12, 0, 0, 0x1000
    falloc again, r12, FALLOC_FL_KEEP_SIZE, 0x1000, 0x1000
    call size
keep_size:
    nop
    falloc len_zero, r12, 0, 0, 0
    falloc off_negative, r12, 0, -4096, 0x1000
    falloc zero_range, r12, 0x10, 0, 0x1000
    falloc hole_no_keep, r12, FALLOC_FL_PUNCH_HOLE, 0, 0x1000
    falloc punch, r12, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 0x1000
    falloc unaligned_off, r12, 0, 0x800, 0x1000
    falloc unaligned_len, r12, 0, 0, 0x800
    falloc past_max, r12, 0, XPFO_MAX_BYTES, 0x1000
    mov r15, 0x7ffffffffffff000
    falloc overflow, r12, 0, r15, 0x2000
    falloc badf, 15, 0, 0, 0x1000
    mov eax, SYS_exit
    xor edi, edi
    syscall

; Returns in rax the st_size of r12.
size:
    mov rdi, r12
    lea rsi, [rsp + 8]
    mov eax, SYS_fstat
    syscall
    mov rax, qword ptr [rsp + 8 + 48]
    ret
