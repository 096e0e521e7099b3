; mmap of a guest_memfd (guest_memfd_test.c: test_mmap_not_supported,
; test_mmap_cow, test_mmap_supported).  do_mmap refuses PROT_EXEC first
; (-EPERM: kvm_gmem_init_mount makes the mount noexec); kvm_gmem_mmap then
; refuses a guest_memfd made without GUEST_MEMFD_FLAG_MMAP (-ENODEV) and a
; mapping that is not shared (MAP_PRIVATE: -EINVAL).  With MMAP and
; INIT_SHARED, four pages written with 0xaa read back; punching the first
; page out (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) zeroes exactly that
; page, the others keep 0xaa, and the punched page can be written again.
; expect: no_mmap_flag rax=-ENODEV
; expect: cow rax=-EINVAL
; expect: exec rax=-EPERM
; expect: sums rbx=0x2a8000 r15=0
; expect: punch rax=0
; expect: after_punch rbx=0x1fe000 r15=0
; expect: refill rbx=0x2a8000
; expect: mprot_exec rax=-EACCES
.include "kvm.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 0x4000, 0
    xor edi, edi
    mov esi, 0x4000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_SHARED
    mov r8, r13
    xor r9d, r9d
    mov eax, SYS_mmap
no_mmap_flag:
    syscall
    gmem_fd r14, r12, 0x4000, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED
    xor edi, edi
    mov esi, 0x4000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE
    mov r8, r14
    xor r9d, r9d
    mov eax, SYS_mmap
cow:
    syscall
    xor edi, edi
    mov esi, 0x4000
    mov edx, PROT_READ | PROT_EXEC
    mov r10d, MAP_SHARED
    mov r8, r14
    xor r9d, r9d
    mov eax, SYS_mmap
exec:
    syscall
    gmem_map r13, r14, 0x4000
    mov rdi, r13
    mov al, 0xaa
    mov ecx, 0x4000
    rep stosb
    call sum                            # rbx = sum of the bytes, r15 = bytes neither 0 nor 0xaa
sums:
    nop
    falloc punch, r14, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 0x1000
    call sum
after_punch:
    nop
    mov rdi, r13
    mov al, 0xaa
    mov ecx, 0x1000
    rep stosb
    call sum
refill:
    nop
    mov rdi, r13
    mov esi, 0x4000
    mov edx, PROT_READ | PROT_EXEC
    mov eax, SYS_mprotect
mprot_exec:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall

sum:
    xor ebx, ebx
    xor r15d, r15d
    xor ecx, ecx
.Lsum:
    movzx eax, byte ptr [r13 + rcx]
    add rbx, rax
    test al, al
    jz .Lsum_next
    cmp al, 0xaa
    je .Lsum_next
    inc r15
.Lsum_next:
    inc ecx
    cmp ecx, 0x4000
    jb .Lsum
    ret
