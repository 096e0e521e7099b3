; Growing a memfd_secret file after it was mapped used to panic the kernel
; (84ac013046cc, "mm/secretmem: fix panic when growing a memfd_secret"):
; truncate_setsize zeroes the page-cache page at the new size from there to
; its end, truncate_inode_partial_folio, through page_address(): the direct
; map, which has no entry for a secret page.  The fix, secretmem_setattr,
; refuses any size change once the size is set (-EINVAL).  As the commit's
; reproducer, ftruncate to 10 bytes, mmap, write, munmap, ftruncate to 20.
; Without the injection the second ftruncate is -EINVAL and the process goes
; on; with it (inject=secretmem_resize) the zeroing writes through the
; removed entry: an oops on #PF 0x2 (not present, write, supervisor).
; isoemu: inject=none|secretmem_resize asi=on|off
; expect: size rax=0
; expect: touch ok
; expect: unmap rax=0
; expect[inject=none]: grow rax=-EINVAL
; expect[inject=secretmem_resize]: grow oops 14 0x2
; expect[inject=none]: after ok
.include "isoemu.inc"
.text
_start:
    mov eax, SYS_memfd_secret
    xor edi, edi
    syscall
    mov r12, rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 10
size:
    syscall
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 10
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
    syscall
    mov r13, rax
touch:
    mov dword ptr [r13], 0x34333231     # "1234"
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 10
unmap:
    syscall
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 20
grow:
    syscall
after:
    sys_exit 0
