# The asm-test runtime, linked after each test program (docs/asm-tests.md,
# "How faults are recorded and resumed").
#
# It is the process's entry point (as crt1 runs before main): it installs
# one handler for SIGSEGV, SIGBUS, SIGILL, SIGFPE and SIGTRAP, clears the
# registers and jumps to _start.  The handler looks the faulting RIP up in
# the site table (__isoemu_rt_sites .. __isoemu_rt_sites_end, three quads
# per entry: kind, match address, resume address), which the runner
# generates for each test as a separate .rodata file.  The constants
# (__isoemu_rt_*) are predefined by the runner from emu/linux/abi.py.

.text
# a program that runs past its last instruction lands here
__isoemu_rt_end_of_text:
    ud2
__isoemu_rt_entry:
    # struct kernel_sigaction on the stack: handler, flags, restorer, mask
    sub rsp, 32
    lea rax, [rip + __isoemu_rt_handler]
    mov qword ptr [rsp], rax
    mov rax, __isoemu_rt_SA_FLAGS
    mov qword ptr [rsp + 8], rax
    lea rax, [rip + __isoemu_rt_restorer]
    mov qword ptr [rsp + 16], rax
    mov qword ptr [rsp + 24], 0
    mov edi, SIGSEGV
    call __isoemu_rt_sigaction
    mov edi, SIGBUS
    call __isoemu_rt_sigaction
    mov edi, SIGILL
    call __isoemu_rt_sigaction
    mov edi, SIGFPE
    call __isoemu_rt_sigaction
    mov edi, SIGTRAP
    call __isoemu_rt_sigaction
    add rsp, 32
    # the program starts as a freshly exec'd one would: registers zero
    xor eax, eax
    xor ebx, ebx
    xor ecx, ecx
    xor edx, edx
    xor esi, esi
    xor edi, edi
    xor ebp, ebp
    xor r8d, r8d
    xor r9d, r9d
    xor r10d, r10d
    xor r11d, r11d
    xor r12d, r12d
    xor r13d, r13d
    xor r14d, r14d
    xor r15d, r15d
    push 0x202
    popfq
    jmp _start

# rt_sigaction(edi, the kernel_sigaction above the return address, NULL, 8)
__isoemu_rt_sigaction:
    lea rsi, [rsp + 8]
    xor edx, edx
    mov r10d, 8
    mov eax, SYS_rt_sigaction
    syscall
    test rax, rax
    jnz __isoemu_rt_setup_failed
    ret
__isoemu_rt_setup_failed:
    mov edi, 127
    mov eax, SYS_exit
    syscall

# handler(signo, &info, &uc): find the faulting RIP among the labelled sites
__isoemu_rt_handler:
    lea r13, [rdx + __isoemu_rt_UC_MCONTEXT]
    mov rcx, qword ptr [r13 + __isoemu_rt_SC_RIP]
    lea r8, [rip + __isoemu_rt_sites]
    lea r9, [rip + __isoemu_rt_sites_end]
    xor ebx, ebx
.Lh_loop:
    cmp r8, r9
    jae .Lh_none
    mov rax, qword ptr [r8]
    cmp rax, __isoemu_rt_SITE_CALL_TARGET
    je .Lh_call
    cmp rcx, qword ptr [r8 + 8]
    jne .Lh_next
    cmp rax, __isoemu_rt_SITE_TRAP
    jne .Lh_match
    # a trap site matches #BP and #OF only (they report the next instruction)
    mov rax, qword ptr [r13 + __isoemu_rt_SC_TRAPNO]
    cmp rax, 3
    je .Lh_match
    cmp rax, 4
    je .Lh_match
    jmp .Lh_next
.Lh_call:
    # an instruction fetch at the target of the call (#PF with I/D set): its
    # return address is on top of the stack
    cmp qword ptr [r13 + __isoemu_rt_SC_TRAPNO], 14
    jne .Lh_next
    test qword ptr [r13 + __isoemu_rt_SC_ERR], 16
    jz .Lh_next
    mov rax, qword ptr [r13 + __isoemu_rt_SC_RSP]
    mov rax, qword ptr [rax]
    cmp rax, qword ptr [r8 + 16]
    jne .Lh_next
    add qword ptr [r13 + __isoemu_rt_SC_RSP], 8
.Lh_match:
    mov rax, qword ptr [r8 + 16]
    mov qword ptr [r13 + __isoemu_rt_SC_RIP], rax
    jmp __isoemu_rt_decided
.Lh_next:
    add r8, 24
    inc rbx
    jmp .Lh_loop
.Lh_none:
    # not an expected site: SIG_DFL, so the fault repeats and kills.  A trap
    # (#BP) reports the instruction after int3 / int 3: step back onto it, or
    # the program would run on where Linux's default action (core) kills it.
    cmp qword ptr [r13 + __isoemu_rt_SC_TRAPNO], 3
    jne .Lh_default
    mov rax, qword ptr [r13 + __isoemu_rt_SC_RIP]
    cmp byte ptr [rax - 1], 0xcc
    jne .Lh_int_3
    dec qword ptr [r13 + __isoemu_rt_SC_RIP]
    jmp .Lh_default
.Lh_int_3:
    cmp word ptr [rax - 2], 0x3cd
    jne .Lh_default
    sub qword ptr [r13 + __isoemu_rt_SC_RIP], 2
.Lh_default:
    sub rsp, 32
    xor eax, eax
    mov qword ptr [rsp], rax
    mov qword ptr [rsp + 8], rax
    mov qword ptr [rsp + 16], rax
    mov qword ptr [rsp + 24], rax
    mov rsi, rsp
    xor edx, edx
    mov r10d, 8
    mov eax, SYS_rt_sigaction
    syscall
    add rsp, 32
    mov rcx, qword ptr [r13 + __isoemu_rt_SC_RIP]
    mov rbx, -1
# rbx = the matched site (or -1), rcx = the faulting RIP, rdi = the signal,
# r13 = &uc_mcontext: the runner's code hook reads them here
__isoemu_rt_decided:
    ret

__isoemu_rt_restorer:
    mov eax, SYS_rt_sigreturn
    syscall
    ud2
