; fallocate on a guest_memfd (guest_memfd_test.c: test_fallocate and
; test_invalid_punch_hole), 4 pages.  vfs_fallocate (fs/open.c) first: a
; negative offset or a length <= 0 is -EINVAL, a mode bit outside KEEP_SIZE
; and PUNCH_HOLE, or PUNCH_HOLE without KEEP_SIZE, -EOPNOTSUPP; a file that is
; not regular (the console) -ENODEV; one without ->fallocate (memfd_secret)
; -EOPNOTSUPP.  Then kvm_gmem_fallocate: no KEEP_SIZE is -EOPNOTSUPP, an
; offset or length not page-aligned -EINVAL; an allocation must end inside
; i_size (kvm_gmem_allocate: -EINVAL), a hole may lie anywhere.
; expect: alloc_all rax=0
; expect: unaligned_off rax=-EINVAL
; expect: at_size rax=-EINVAL
; expect: after_size rax=-EINVAL
; expect: punch_at_size rax=0
; expect: punch_after_size rax=0
; expect: unaligned_len rax=-EINVAL
; expect: punch_page rax=0
; expect: restore rax=0
; expect: bad_punch rax=-EINVAL
; expect: bad_punches rbx=10
; expect: no_keep_size rax=-EOPNOTSUPP
; expect: hole_no_keep rax=-EOPNOTSUPP
; expect: zero_range rax=-EOPNOTSUPP
; expect: len_zero rax=-EINVAL
; expect: off_negative rax=-EINVAL
; expect: overflow rax=-EFBIG
; expect: console rax=-ENODEV
; expect: secretmem rax=-EOPNOTSUPP
; expect: badf rax=-EBADF
.include "kvm.inc"
.include "isoemu.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x4000, 0
    falloc alloc_all, r13, FALLOC_FL_KEEP_SIZE, 0, 0x4000
    falloc unaligned_off, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0xfff, 0x1000
    falloc at_size, r13, FALLOC_FL_KEEP_SIZE, 0x4000, 0x1000
    falloc after_size, r13, FALLOC_FL_KEEP_SIZE, 0x5000, 0x1000
    falloc punch_at_size, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x4000, 0x1000
    falloc punch_after_size, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x5000, 0x1000
    falloc unaligned_len, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x1000, 0xfff
    falloc punch_page, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x1000, 0x1000
    falloc restore, r13, FALLOC_FL_KEEP_SIZE, 0x1000, 0x1000
    ; test_invalid_punch_hole's table: {offset, length} pairs, all -EINVAL
    xor ebx, ebx
    lea r14, [rip + punch_table]
.Lpunch:
    mov rbp, qword ptr [r14]
    mov r15, qword ptr [r14 + 8]
    falloc bad_punch, r13, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, rbp, r15
    cmp rax, -EINVAL
    jne .Lpunch_next
    inc ebx
.Lpunch_next:
    add r14, 16
    lea rax, [rip + punch_table_end]
    cmp r14, rax
    jb .Lpunch
bad_punches:
    nop
    falloc no_keep_size, r13, 0, 0, 0x1000
    falloc hole_no_keep, r13, FALLOC_FL_PUNCH_HOLE, 0, 0x1000
    falloc zero_range, r13, FALLOC_FL_KEEP_SIZE | 0x10, 0, 0x1000
    falloc len_zero, r13, FALLOC_FL_KEEP_SIZE, 0, 0
    falloc off_negative, r13, FALLOC_FL_KEEP_SIZE, -4096, 0x1000
    mov r15, 0x7ffffffffffff000
    falloc overflow, r13, FALLOC_FL_KEEP_SIZE, r15, 0x2000
    falloc console, 1, FALLOC_FL_KEEP_SIZE, 0, 0x1000
    secret_fd r15
    falloc secretmem, r15, FALLOC_FL_KEEP_SIZE, 0, 0x1000
    falloc badf, 15, FALLOC_FL_KEEP_SIZE, 0, 0x1000
    mov eax, SYS_exit
    xor edi, edi
    syscall

.rodata
punch_table:
    .quad 0, 1
    .quad 0, 0xfff
    .quad 0, 0x1001
    .quad 1, 1
    .quad 1, 0xfff
    .quad 1, 0x1000
    .quad 1, 0x1001
    .quad 0x1000, 1
    .quad 0x1000, 0xfff
    .quad 0x1000, 0x1001
punch_table_end:
