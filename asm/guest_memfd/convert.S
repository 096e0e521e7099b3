; Shared <-> private conversion in place (the in-place conversion RFC's
; KVM_SET_MEMORY_ATTRIBUTES2 on the guest_memfd, 2025/26; the host-side
; checks of x86/private_mem_conversions_test.c).  A 2 MiB guest_memfd, shared
; at creation, its first 64 KiB filled with a pattern through the VMM's mapping; a 2 MiB range
; made private leaves every user mapping (unmap_mapping_range), so the next
; access is SIGBUS; a 4 KiB hole made shared again is reachable with its
; contents; the whole range made shared shows every byte as written: the
; pages never moved.  The arguments: page-aligned, non-empty, inside i_size,
; only the PRIVATE attribute, flags and reserved words 0; else -EINVAL.
; expect: to_private rax=0
; expect: private_read fault 14 0x4
; expect: hole_shared rax=0
; expect: hole_read rax=0x5
; expect: still_private fault 14 0x4
; expect: all_shared rax=0
; expect: verify rbx=0
; expect: no_size rax=-EINVAL
; expect: unaligned_off rax=-EINVAL
; expect: unaligned_size rax=-EINVAL
; expect: beyond rax=-EINVAL
; expect: bad_attr rax=-EINVAL
; expect: wrap rax=-EINVAL
.include "kvm.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x200000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    gmem_map r14, r13, 0x200000
    ; the pattern: byte i = (i >> 12) + i, low byte
    xor ecx, ecx
.Lfill:
    mov rax, rcx
    shr rax, 12
    add rax, rcx
    mov byte ptr [r14 + rcx], al
    inc rcx
    cmp rcx, 0x10000
    jb .Lfill
    gmem_convert to_private, r13, 0, 0x200000, KVM_MEMORY_ATTRIBUTE_PRIVATE
private_read:
    mov al, byte ptr [r14 + 0x1000]
    gmem_convert hole_shared, r13, 0x4000, 0x1000, 0
    movzx eax, byte ptr [r14 + 0x4001]
hole_read:
    nop
still_private:
    mov al, byte ptr [r14 + 0x5000]
    gmem_convert all_shared, r13, 0, 0x200000, 0
    ; rbx = bytes that differ from the pattern
    xor ebx, ebx
    xor ecx, ecx
.Lcheck:
    mov rax, rcx
    shr rax, 12
    add rax, rcx
    cmp byte ptr [r14 + rcx], al
    je .Lcheck_next
    inc rbx
.Lcheck_next:
    inc rcx
    cmp rcx, 0x10000
    jb .Lcheck
verify:
    nop
    gmem_convert no_size, r13, 0, 0, KVM_MEMORY_ATTRIBUTE_PRIVATE
    gmem_convert unaligned_off, r13, 0x800, 0x1000, KVM_MEMORY_ATTRIBUTE_PRIVATE
    gmem_convert unaligned_size, r13, 0, 0x1800, KVM_MEMORY_ATTRIBUTE_PRIVATE
    gmem_convert beyond, r13, 0x1ff000, 0x2000, KVM_MEMORY_ATTRIBUTE_PRIVATE
    gmem_convert bad_attr, r13, 0, 0x1000, 1
    mov r15, -4096
    gmem_convert wrap, r13, r15, 0x2000, KVM_MEMORY_ATTRIBUTE_PRIVATE
    mov eax, SYS_exit
    xor edi, edi
    syscall
