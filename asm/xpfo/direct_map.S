; An xpfo page is out of the direct map from fallocate on (docs/xpfo.md): the
; kernel's read or write of its direct-map alias faults (#PF 0x0 and 0x2, not
; present; SYS_probe's fixup returns -EFAULT), while the owner's mapping
; works, and another process cannot reach it through the kernel either
; (process_vm_readv: GUP refuses the VMA as it refuses secretmem's, since the
; kernel would touch the page through the direct map: -EFAULT).  Released
; into the cache, the page stays out of the direct map: the alias still
; faults.  An ordinary page's alias reads fine.
; isoemu: asi=off|on unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: probe_plain rax=0
; expect: probe_read rax=-EFAULT rdx=0x0 r9=14
; expect: probe_write rax=-EFAULT rdx=0x2 r9=14
; expect: remote rax=-EFAULT
; expect: probe_cached rax=-EFAULT rdx=0x0 r9=14
.include "kvm.inc"
.include "xpfo.inc"
.include "isoemu.inc"
.text
_start:
    mov rax, USER_DATA
    mov byte ptr [rax], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, USER_DATA
    syscall
    sys_probe probe_plain, rax, PROBE_READ, PROBE_FULL
    xpfo_fd r12, 0x1000
    gmem_map r13, r12, 0x1000
    mov byte ptr [r13], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, r13
    syscall
    mov r14, rax
    sys_probe probe_read, r14, PROBE_READ, PROBE_FULL
    sys_probe probe_write, r14, PROBE_WRITE, PROBE_FULL
    ; process_vm_readv(getpid(), local iov, 1, remote iov = the xpfo page, 1, 0)
    sub rsp, 64
    lea rax, [rsp + 32]
    mov qword ptr [rsp], rax
    mov qword ptr [rsp + 8], 8
    mov qword ptr [rsp + 16], r13
    mov qword ptr [rsp + 24], 8
    mov eax, SYS_getpid
    syscall
    mov rdi, rax
    mov rsi, rsp
    mov edx, 1
    lea r10, [rsp + 16]
    mov r8d, 1
    xor r9d, r9d
    mov eax, SYS_process_vm_readv
remote:
    syscall
    mov eax, SYS_munmap
    mov rdi, r13
    mov esi, 0x1000
    syscall
    mov eax, SYS_close
    mov rdi, r12
    syscall
    sys_probe probe_cached, r14, PROBE_READ, PROBE_FULL
    mov eax, SYS_exit
    xor edi, edi
    syscall
