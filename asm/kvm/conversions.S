; The checks of tools/testing/selftests/kvm/x86/private_mem_conversions_test.c
; that apply, with a 4-page data region (the selftest's 2 MiB ranges made
; smaller, as the guest runs under a code hook).  The region is a memslot backed
; by the VMM's memory (shared) and a guest_memfd (private), made shared
; first.  The guest asks the VMM, with OUT, to check and rewrite shared
; memory through its own mapping (port 0x10: rdi gpa, rsi size, dl the byte
; expected, ecx the byte to write or 0x100), to convert a range (0x11
; private, 0x12 shared: KVM_SET_MEMORY_ATTRIBUTES2 on the guest_memfd), or
; reports a mismatch it saw itself (0x13).  For 4 KiB at 0, 4 KiB at 4 KiB
; and all 16 KiB: shared data the guest writes is what the host sees; data the
; guest writes while the range is private never reaches the host's memory;
; odd pages converted back to shared (holes in the private range) hold the
; host's data again; the whole range shared again is the host's.  Then the
; implicit conversions (as a TDX or SNP guest's): a private access to a
; shared page is a memory-fault exit with KVM_MEMORY_EXIT_FLAG_PRIVATE, a
; shared access to a private page one without it, each with the page's gpa
; and PAGE_SIZE and KVM_RUN -EFAULT; the VMM converts the page, runs again,
; and the access completes.
; expect: done rax=0 rbx=0 rcx=1 rdx=1 rsi=11 rdi=0
.include "kvm.inc"
.data
host_mismatch:  .quad 0         ; bytes a host check found wrong
guest_fail:     .quad 0         ; mismatches the guest reported
mf_private:     .quad 0         ; memory-fault exits of a private access
mf_shared:      .quad 0         ; ... of a shared access
syncs:          .quad 0         ; host checks done
errors:         .quad 0         ; a conversion or KVM_RUN that failed, a wrong exit field
regs_buf:       .zero KVM_REGS_SIZE
.text
_start:
    kvm_vm r12
    ; slot 0: the guest's code and stack, gpa 0..0x2000, the VMM's memory
    xor edi, edi
    mov esi, 0x2000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    mov eax, SYS_mmap
    syscall
    mov rbx, rax
    kvm_memslot slot0, r12, 0, 0, 0, 0x2000, rbx, 0, 0
    guest_copy rbx, guest, guest_end
    ; slot 1: the data, gpa 0x100000..0x104000: VMM memory r14 and guest_memfd r13
    xor edi, edi
    mov esi, 0x4000
    mov edx, PROT_READ | PROT_WRITE
    mov r10d, MAP_PRIVATE | MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    mov eax, SYS_mmap
    syscall
    mov r14, rax
    gmem_fd r13, r12, 0x4000, 0
    gmem_convert shared0, r13, 0, 0x4000, 0
    kvm_memslot slot1, r12, 1, KVM_MEM_GUEST_MEMFD, 0x100000, 0x4000, r14, r13, 0
    kvm_vcpu rbx, r15, r12
    lea rbp, [regs_buf]
    vcpu_regs get0, rbx, KVM_GET_REGS, rbp
    movabs rax, KVM_GPA_SHARED
    mov qword ptr [rbp + KVM_REGS_rip], rax
    add rax, 0x2000
    mov qword ptr [rbp + KVM_REGS_rsp], rax
    vcpu_regs set0, rbx, KVM_SET_REGS, rbp
.Lrun:
    kvm_run run, rbx
    test rax, rax
    jz .Lexit
    cmp rax, -EFAULT
    jne .Lerror_done
    cmp dword ptr [r15 + KVM_RUN_exit_reason], KVM_EXIT_MEMORY_FAULT
    jne .Lerror_done
    ; the implicit conversion: the page becomes what the guest asked for
    mov rax, qword ptr [r15 + KVM_RUN_memory_fault_gpa]
    cmp rax, 0x102000
    jne .Lerror
    cmp qword ptr [r15 + KVM_RUN_memory_fault_size], PAGE_SIZE
    jne .Lerror
    mov r8, qword ptr [r15 + KVM_RUN_memory_fault_flags]
    xor r9d, r9d
    test r8, KVM_MEMORY_EXIT_FLAG_PRIVATE
    jz .Lmf_shared
    inc qword ptr [mf_private]
    mov r9d, KVM_MEMORY_ATTRIBUTE_PRIVATE
    jmp .Lmf_convert
.Lmf_shared:
    inc qword ptr [mf_shared]
.Lmf_convert:
    gmem_convert mf_conv, r13, 0x2000, PAGE_SIZE, r9
    test rax, rax
    jnz .Lerror
    jmp .Lrun
.Lexit:
    mov eax, dword ptr [r15 + KVM_RUN_exit_reason]
    cmp eax, KVM_EXIT_HLT
    je .Ldone
    cmp eax, KVM_EXIT_IO
    jne .Lerror_done
    vcpu_regs get, rbx, KVM_GET_REGS, rbp
    mov rdi, qword ptr [rbp + KVM_REGS_rdi]
    sub rdi, 0x100000                   ; the offset in the region
    mov rsi, qword ptr [rbp + KVM_REGS_rsi]
    movzx eax, word ptr [r15 + KVM_RUN_io_port]
    cmp eax, 0x10
    je .Lsync
    cmp eax, 0x13
    je .Lguest_fail
    mov r9d, KVM_MEMORY_ATTRIBUTE_PRIVATE
    cmp eax, 0x11
    je .Lconvert
    xor r9d, r9d
.Lconvert:
    mov r8, rdi
    gmem_convert conv, r13, r8, rsi, r9
    test rax, rax
    jnz .Lerror
    jmp .Lrun
.Lguest_fail:
    inc qword ptr [guest_fail]
    jmp .Lrun
.Lsync:
    inc qword ptr [syncs]
    mov rdx, qword ptr [rbp + KVM_REGS_rdx]
    mov rcx, qword ptr [rbp + KVM_REGS_rcx]
    lea rdi, [r14 + rdi]
    xor eax, eax
.Lsync_check:
    cmp rax, rsi
    jae .Lsync_write
    cmp byte ptr [rdi + rax], dl
    je .Lsync_next
    inc qword ptr [host_mismatch]
.Lsync_next:
    inc rax
    jmp .Lsync_check
.Lsync_write:
    cmp rcx, 0x100
    jae .Lrun
    mov eax, ecx
    mov rcx, rsi
    rep stosb
    jmp .Lrun
.Lerror:
    inc qword ptr [errors]
    jmp .Lrun
.Lerror_done:
    inc qword ptr [errors]
.Ldone:
    mov rax, qword ptr [host_mismatch]
    mov rbx, qword ptr [guest_fail]
    mov rcx, qword ptr [mf_private]
    mov rdx, qword ptr [mf_shared]
    mov rsi, qword ptr [syncs]
    mov rdi, qword ptr [errors]
done:
    nop
    mov eax, SYS_exit
    xor edi, edi
    syscall

; --- the guest (64-bit, no paging; r8 = the data region's shared alias,
; r9 = its private gpa; a range's private view is r9 + offset) -----------
.macro g_fill base, off, size, byte
    lea rdi, [\base + \off]
    mov ecx, \size
    mov al, \byte
    rep stosb
.endm
.macro g_check base, off, size, byte
    lea rdi, [\base + \off]
    mov ecx, \size
    mov al, \byte
    call g_memcmp
.endm
.macro g_sync off, size, expect, new
    lea rdi, [r9 + \off]
    mov esi, \size
    mov edx, \expect
    mov ecx, \new
    out 0x10, al
.endm
.macro g_map port, off, size
    lea rdi, [r9 + \off]
    mov esi, \size
    out \port, al
.endm
; one of the selftest's ranges: p1 0x11, p2 0x22, p3 0x33, p4 0x44, init 0xcc
.macro g_range off, size
    g_fill r8, \off, \size, 0x11
    g_map 0x11, \off, \size
    g_fill r9, \off, \size, 0x22
    g_sync \off, \size, 0x11, 0x100
    g_check r9, \off, \size, 0x22
.endm
guest:
    movabs r8, KVM_GPA_SHARED + 0x100000
    mov r9d, 0x100000
    g_fill r8, 0, 0x4000, 0xaa
    g_check r8, 0, 0x4000, 0xaa
    g_sync 0, 0x4000, 0xaa, 0xcc
    g_check r8, 0, 0x4000, 0xcc
    ; 4 KiB at 0: the rest still holds the initial pattern
    g_range 0, 0x1000
    g_check r8, 0x1000, 0x3000, 0xcc
    g_map 0x12, 0, 0x1000
    g_fill r8, 0, 0x1000, 0x33
    g_sync 0, 0x1000, 0x33, 0x44
    g_check r8, 0, 0x1000, 0x44
    g_fill r8, 0, 0x1000, 0xcc
    ; 4 KiB at 4 KiB
    g_range 0x1000, 0x1000
    g_check r8, 0, 0x1000, 0xcc
    g_check r8, 0x2000, 0x2000, 0xcc
    g_map 0x12, 0x1000, 0x1000
    g_fill r8, 0x1000, 0x1000, 0x33
    g_sync 0x1000, 0x1000, 0x33, 0x44
    g_check r8, 0x1000, 0x1000, 0x44
    g_fill r8, 0x1000, 0x1000, 0xcc
    ; all 16 KiB, odd pages back to shared: holes in the private range
    g_range 0, 0x4000
    g_map 0x12, 0x1000, 0x1000
    g_sync 0x1000, 0x1000, 0x11, 0x33
    g_check r8, 0x1000, 0x1000, 0x33
    g_map 0x12, 0x3000, 0x1000
    g_sync 0x3000, 0x1000, 0x11, 0x33
    g_check r8, 0x3000, 0x1000, 0x33
    g_sync 0, 0x1000, 0x11, 0x100
    g_sync 0x2000, 0x1000, 0x11, 0x100
    g_check r9, 0, 0x1000, 0x22
    g_check r9, 0x2000, 0x1000, 0x22
    g_map 0x12, 0, 0x4000
    g_fill r8, 0, 0x4000, 0x33
    g_sync 0, 0x4000, 0x33, 0x44
    g_check r8, 0, 0x4000, 0x44
    g_fill r8, 0, 0x4000, 0xcc
    ; implicit conversions: private access to a shared page, then shared
    ; access to the (now) private page; the host's copy keeps 0xcc
    mov byte ptr [r9 + 0x2000], 0x55
    g_check r9, 0x2000, 1, 0x55
    mov al, byte ptr [r8 + 0x2000]
    g_check r8, 0x2000, 1, 0xcc
    hlt
; g_memcmp(rdi, rcx, al): OUT 0x13 if a byte differs
g_memcmp:
    repe scasb
    je .Lg_same
    out 0x13, al
.Lg_same:
    ret
guest_end:
