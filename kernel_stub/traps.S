# Exception handlers, the exception table, and signal delivery.
# After arch/x86/kernel/traps.c, arch/x86/mm/fault.c, arch/x86/mm/extable.c
# and arch/x86/kernel/signal.c.

.text

# sync_regs(eregs) -> pt_regs on the task stack (traps.c): a fault from user
# mode arrives on the entry stack; the handler runs on the task stack.
sync_regs:
    mov rax, qword ptr gs:[pcpu_top_of_stack]
    sub rax, PT_SIZE
    cmp rax, rdi
    je .Lsr_done
    push rax
    mov rsi, rdi
    mov rdi, rax
    mov edx, PT_SIZE
    call memcpy
    pop rax
.Lsr_done:
    ret

# --- traps that become signals (do_trap / do_error_trap) ------------------------------
exc_divide_error:
    mov edx, SIGFPE
    mov ecx, 0
    jmp do_trap
exc_int3:
    mov edx, SIGTRAP
    mov ecx, 3
    jmp do_trap
exc_invalid_op:
    mov edx, SIGILL
    mov ecx, 6
    jmp do_trap
exc_general_protection:
    mov edx, SIGSEGV
    mov ecx, 13
    jmp do_trap

# do_trap(regs, error_code, signo, vector)
do_trap:
    test byte ptr [rdi + PT_CS], 3
    jz .Ldt_kernel
    xor r8, r8
    xor r9, r9
    jmp force_sig_fault
.Ldt_kernel:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, rcx
    mov rsi, rcx
    mov rdx, r12
    call fixup_exception
    test eax, eax
    jnz .Ldt_fixed
    mov rdi, msg_kernel_trap
    call printk
    mov rdi, r13
    call print_hex
    mov rdi, msg_at_rip
    call printk
    mov rdi, qword ptr [rbx + PT_RIP]
    call print_hex
    call print_newline
    mov rdi, msg_oops
    call panic
.Ldt_fixed:
    RESTORE_CALLEE
    ret

# fixup_exception(regs, vector, error_code) -> 1 if the faulting instruction
# is in the exception table: resume at its fixup with rax = -EFAULT,
# rdx = error code, r9 = vector.  EX_TYPE_CALL entries match the return
# address on the stack (a 'call' whose target faulted on fetch) and pop it.
fixup_exception:
    mov r8, qword ptr [rdi + PT_RIP]
    mov r9, qword ptr [rdi + PT_RSP]
    mov r9, qword ptr [r9]
    mov r10, __ex_table
    mov r11, __ex_table_count
    mov r11, qword ptr [r11]
.Lfx_loop:
    test r11, r11
    jz .Lfx_none
    cmp qword ptr [r10 + 16], EX_TYPE_CALL
    je .Lfx_call
    cmp r8, qword ptr [r10]
    je .Lfx_found
    jmp .Lfx_next
.Lfx_call:
    cmp r9, qword ptr [r10]
    je .Lfx_found_call
.Lfx_next:
    add r10, 24
    dec r11
    jmp .Lfx_loop
.Lfx_found_call:
    add qword ptr [rdi + PT_RSP], 8
.Lfx_found:
    mov rax, qword ptr [r10 + 8]
    mov qword ptr [rdi + PT_RIP], rax
    mov qword ptr [rdi + PT_RAX], -EFAULT
    mov qword ptr [rdi + PT_RDX], rdx
    mov qword ptr [rdi + PT_R9], rsi
    mov eax, 1
    ret
.Lfx_none:
    xor eax, eax
    ret

# --- the page-fault handler (exc_page_fault / handle_page_fault) -----------------------
exc_page_fault:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, cr2
    test byte ptr [rbx + PT_CS], 3
    jnz .Lpf_user
    # kernel mode.  The 2019 RFC: the entry already aborted the session (asi.S);
    # a fault it caused is reported handled and retried on the full tables.
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    jne .Lpf_asi_v2
    call asi2019_fault
    test eax, eax
    jz .Lpf_no_asi
asi2019_fault_handled:
    jmp .Lpf_done
.Lpf_asi_v2:
    # RFC v2 mechanics: while an ASI restricted page table is loaded, first
    # leave it; if the access succeeds on the full tables, retry the
    # instruction ("asi_exit() on PF, skip handling if address is accessible").
    # A fault that interrupted a critical section ends it; if the access was
    # to memory the full tables map, it is a finding (fault.c's VM_WARN_ONCE
    # "ASI-sensitive data access from critical section").
    cmp qword ptr gs:[asi_curr], 0
    je .Lpf_no_asi
    .hook asi_fault_exit
asi_exit_on_fault:
    mov edi, ASI_EXIT_PAGE_FAULT
    call asi_exit
    call asi_critical_fault
    mov r14, rax
    mov rdi, r13
    mov rsi, r12
    call kernel_access_ok
    test eax, eax
    jz .Lpf_no_asi
    test r14, r14
    jz .Lpf_done
    .hook asi_critical_access
asi_critical_access_found:
    inc qword ptr [asi_critical_findings]
    jmp .Lpf_done
.Lpf_no_asi:
    # a user address touched by the kernel (copy_to_user...): demand paging as
    # do_user_addr_fault does, unless SMAP forbids the access (AC clear)
    mov rax, USER_HALF_END
    cmp r13, rax
    jae .Lpf_extable
    cmp qword ptr [feature_smap], 0
    je .Lpf_kuser
    test qword ptr [rbx + PT_EFLAGS], X86_EFLAGS_AC
    jz .Lpf_extable
.Lpf_kuser:
    mov rdi, rbx
    mov rsi, r13
    mov rdx, r12
    call handle_user_fault
    test rax, rax
    jz .Lpf_done
.Lpf_extable:
    mov rdi, rbx
    mov esi, 14
    mov rdx, r12
    call fixup_exception
    test eax, eax
    jnz .Lpf_done
    # an oops, as Linux prints it
    mov rdi, msg_bug_pf
    call printk
    mov rdi, r13
    call print_hex
    call print_newline
    mov rdi, msg_pf_ec
    call printk
    mov rdi, r12
    call print_hex
    mov rdi, msg_at_rip
    call printk
    mov rdi, qword ptr [rbx + PT_RIP]
    call print_hex
    call print_newline
    mov rdi, msg_oops
    call panic
.Lpf_user:
    mov rdi, rbx
    mov rsi, r13
    mov rdx, r12
    call handle_user_fault
    test rax, rax
    jz .Lpf_done
    mov rdi, rbx
    mov rsi, r12
    mov edx, SIGSEGV
    cmp rax, -1
    jne .Lpf_segv
    mov edx, SIGBUS
    mov eax, 2
.Lpf_segv:
    # __bad_area_nosemaphore (arch/x86/mm/fault.c): a user access to a
    # kernel address reports X86_PF_PROT in the signal, so the layout of
    # the kernel's tables does not leak
    mov rcx, USER_HALF_END - PAGE_SIZE
    cmp r13, rcx
    jb .Lpf_sanitized
    or rsi, X86_PF_PROT
.Lpf_sanitized:
    mov ecx, 14
    mov r8, r13
    mov r9, rax
    call force_sig_fault
.Lpf_done:
    RESTORE_CALLEE
    ret

exc_double_fault:
    push rdi
    mov rdi, msg_double_fault
    call printk
    pop rdi
    mov rdi, qword ptr [rdi + PT_RIP]
    call print_hex
    call print_newline
    mov rdi, msg_oops
    call panic

# The timer interrupt (LOCAL_TIMER_VECTOR).  Records the CR3 it ran on; if a
# test set irq_touch_addr, reads that address (to exercise ASI nesting).
sysvec_apic_timer_interrupt:
    inc qword ptr gs:[irq_count]
    mov rax, cr3
    mov qword ptr gs:[last_irq_cr3], rax
    mov rax, qword ptr gs:[irq_touch_addr]
    test rax, rax
    jz .Ltimer_done
timer_touch:
    mov al, byte ptr [rax]
.Ltimer_done:
    ret

# --- signals (arch/x86/kernel/signal.c) -------------------------------------------------
# force_sig_fault(regs, error_code, signo, vector, addr, si_code): deliver to
# the current task.  Without a handler the task is killed (exit status
# 128 + signo, killed_by = signo).  With one, an rt_sigframe is built on the
# user stack as Linux does (pretcode, ucontext with sigcontext, siginfo) and
# the handler runs as handler(signo, &info, &uc); returning through the
# restorer calls rt_sigreturn.
force_sig_fault:
    SAVE_CALLEE
    sub rsp, SIGFRAME_SIZE
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    mov r15, r8
    mov rbp, r9
    GET_CURRENT rax
    mov rcx, r13
    imul rcx, rcx, 24
    lea rax, [rax + rcx + TASK_sighand]
    mov rcx, qword ptr [rax]
    cmp rcx, 1
    jbe .Lfs_kill
    # build the frame in a kernel buffer (rsp), then copy it out
    mov rdx, qword ptr [rax + 16]
    mov qword ptr [rsp], rdx
    xor eax, eax
    mov qword ptr [rsp + SIGFRAME_UC], rax
    mov qword ptr [rsp + SIGFRAME_UC + 8], rax
    mov qword ptr [rsp + SIGFRAME_UC + 16], rax
    mov qword ptr [rsp + SIGFRAME_UC + 24], rax
    mov qword ptr [rsp + SIGFRAME_UC + 32], rax
    lea rdi, [rsp + SIGFRAME_UC + UC_MCONTEXT]
    mov rsi, rbx
    call regs_to_sigcontext
    lea rdi, [rsp + SIGFRAME_UC + UC_MCONTEXT]
    mov qword ptr [rdi + SC_err], r12
    mov qword ptr [rdi + SC_trapno], r14
    mov qword ptr [rdi + SC_cr2], r15
    mov qword ptr [rdi + SC_oldmask], 0
    mov qword ptr [rdi + SC_fpstate], 0
    mov qword ptr [rsp + SIGFRAME_UC + UC_MCONTEXT + 8 * 32], 0
    lea rdi, [rsp + SIGFRAME_INFO]
    xor eax, eax
    mov ecx, 16
    rep stosq
    mov dword ptr [rsp + SIGFRAME_INFO + SI_SIGNO], r13d
    mov dword ptr [rsp + SIGFRAME_INFO + SI_CODE], ebp
    mov qword ptr [rsp + SIGFRAME_INFO + SI_ADDR], r15
    # the user frame: below the red zone, aligned so the handler sees (rsp+8)%16 == 0
    mov rdi, qword ptr [rbx + PT_RSP]
    sub rdi, 128 + SIGFRAME_SIZE
    and rdi, -16
    sub rdi, 8
    mov rbp, rdi
    mov rsi, rsp
    mov edx, SIGFRAME_SIZE
    call copy_to_user
    test rax, rax
    jnz .Lfs_kill
    GET_CURRENT rax
    mov rcx, r13
    imul rcx, rcx, 24
    mov rcx, qword ptr [rax + rcx + TASK_sighand]
    mov qword ptr [rbx + PT_RIP], rcx
    mov qword ptr [rbx + PT_RSP], rbp
    mov qword ptr [rbx + PT_RDI], r13
    lea rax, [rbp + SIGFRAME_INFO]
    mov qword ptr [rbx + PT_RSI], rax
    lea rax, [rbp + SIGFRAME_UC]
    mov qword ptr [rbx + PT_RDX], rax
    mov qword ptr [rbx + PT_RAX], 0
    and qword ptr [rbx + PT_EFLAGS], NOT_TF_IF_DF
    add rsp, SIGFRAME_SIZE
    RESTORE_CALLEE
    ret
.Lfs_kill:
    GET_CURRENT rax
    mov qword ptr [rax + TASK_killed_by], r13
    lea rdi, [r13 + 128]
    call do_exit

# regs_to_sigcontext(sc, regs)
regs_to_sigcontext:
    mov rax, qword ptr [rsi + PT_R8]
    mov qword ptr [rdi + SC_r8], rax
    mov rax, qword ptr [rsi + PT_R9]
    mov qword ptr [rdi + SC_r9], rax
    mov rax, qword ptr [rsi + PT_R10]
    mov qword ptr [rdi + SC_r10], rax
    mov rax, qword ptr [rsi + PT_R11]
    mov qword ptr [rdi + SC_r11], rax
    mov rax, qword ptr [rsi + PT_R12]
    mov qword ptr [rdi + SC_r12], rax
    mov rax, qword ptr [rsi + PT_R13]
    mov qword ptr [rdi + SC_r13], rax
    mov rax, qword ptr [rsi + PT_R14]
    mov qword ptr [rdi + SC_r14], rax
    mov rax, qword ptr [rsi + PT_R15]
    mov qword ptr [rdi + SC_r15], rax
    mov rax, qword ptr [rsi + PT_RDI]
    mov qword ptr [rdi + SC_rdi], rax
    mov rax, qword ptr [rsi + PT_RSI]
    mov qword ptr [rdi + SC_rsi], rax
    mov rax, qword ptr [rsi + PT_RBP]
    mov qword ptr [rdi + SC_rbp], rax
    mov rax, qword ptr [rsi + PT_RBX]
    mov qword ptr [rdi + SC_rbx], rax
    mov rax, qword ptr [rsi + PT_RDX]
    mov qword ptr [rdi + SC_rdx], rax
    mov rax, qword ptr [rsi + PT_RAX]
    mov qword ptr [rdi + SC_rax], rax
    mov rax, qword ptr [rsi + PT_RCX]
    mov qword ptr [rdi + SC_rcx], rax
    mov rax, qword ptr [rsi + PT_RSP]
    mov qword ptr [rdi + SC_rsp], rax
    mov rax, qword ptr [rsi + PT_RIP]
    mov qword ptr [rdi + SC_rip], rax
    mov rax, qword ptr [rsi + PT_EFLAGS]
    mov qword ptr [rdi + SC_eflags], rax
    mov rax, qword ptr [rsi + PT_CS]
    mov qword ptr [rdi + SC_csgsfs], rax
    ret

# sys_rt_sigreturn(): restore the registers from the rt_sigframe at rsp - 8
sys_rt_sigreturn:
    SAVE_CALLEE
    sub rsp, SIGFRAME_SIZE
    mov rbx, cur_syscall_regs
    mov rbx, qword ptr [rbx]
    mov rsi, qword ptr [rbx + PT_RSP]
    sub rsi, 8
    mov rdi, rsp
    mov edx, SIGFRAME_SIZE
    call copy_from_user
    test rax, rax
    jnz .Lsr_bad
    lea rsi, [rsp + SIGFRAME_UC + UC_MCONTEXT]
    mov rax, qword ptr [rsi + SC_r8]
    mov qword ptr [rbx + PT_R8], rax
    mov rax, qword ptr [rsi + SC_r9]
    mov qword ptr [rbx + PT_R9], rax
    mov rax, qword ptr [rsi + SC_r10]
    mov qword ptr [rbx + PT_R10], rax
    mov rax, qword ptr [rsi + SC_r11]
    mov qword ptr [rbx + PT_R11], rax
    mov rax, qword ptr [rsi + SC_r12]
    mov qword ptr [rbx + PT_R12], rax
    mov rax, qword ptr [rsi + SC_r13]
    mov qword ptr [rbx + PT_R13], rax
    mov rax, qword ptr [rsi + SC_r14]
    mov qword ptr [rbx + PT_R14], rax
    mov rax, qword ptr [rsi + SC_r15]
    mov qword ptr [rbx + PT_R15], rax
    mov rax, qword ptr [rsi + SC_rdi]
    mov qword ptr [rbx + PT_RDI], rax
    mov rax, qword ptr [rsi + SC_rsi]
    mov qword ptr [rbx + PT_RSI], rax
    mov rax, qword ptr [rsi + SC_rbp]
    mov qword ptr [rbx + PT_RBP], rax
    mov rax, qword ptr [rsi + SC_rbx]
    mov qword ptr [rbx + PT_RBX], rax
    mov rax, qword ptr [rsi + SC_rdx]
    mov qword ptr [rbx + PT_RDX], rax
    mov rax, qword ptr [rsi + SC_rcx]
    mov qword ptr [rbx + PT_RCX], rax
    mov rax, qword ptr [rsi + SC_rsp]
    mov qword ptr [rbx + PT_RSP], rax
    mov rax, qword ptr [rsi + SC_rip]
    mov qword ptr [rbx + PT_RIP], rax
    # only the flags user mode may change (FIX_EFLAGS); IF stays on
    mov rax, qword ptr [rsi + SC_eflags]
    and eax, FIX_EFLAGS
    or eax, X86_EFLAGS_IF + X86_EFLAGS_FIXED
    mov qword ptr [rbx + PT_EFLAGS], rax
    mov rax, qword ptr [rsi + SC_rax]
    add rsp, SIGFRAME_SIZE
    RESTORE_CALLEE
    ret
.Lsr_bad:
    GET_CURRENT rax
    mov qword ptr [rax + TASK_killed_by], SIGSEGV
    mov edi, 128 + SIGSEGV
    call do_exit

# --- user copies (STAC/CLAC, exception-table fixups) ------------------------------------
# copy_to_user(uaddr, kaddr, n) -> 0 or -EFAULT
copy_to_user:
    mov rax, rdi
    add rax, rdx
    jc .Lcu_efault
    mov rcx, USER_HALF_END
    cmp rax, rcx
    ja .Lcu_efault
    mov rcx, rdx
    stac
copy_to_user_insn:
    rep movsb
    clac
    xor eax, eax
    ret
copy_user_fixup:
    clac
    mov rax, -EFAULT
    ret
.Lcu_efault:
    mov rax, -EFAULT
    ret
.extable copy_to_user_insn, copy_user_fixup

# copy_from_user(kaddr, uaddr, n) -> 0 or -EFAULT
copy_from_user:
    mov rax, rsi
    add rax, rdx
    jc .Lcu_efault
    mov rcx, USER_HALF_END
    cmp rax, rcx
    ja .Lcu_efault
    mov rcx, rdx
    stac
copy_from_user_insn:
    rep movsb
    clac
    xor eax, eax
    ret
.extable copy_from_user_insn, copy_user_fixup

.rodata
msg_bug_pf:       .asciz "BUG: unable to handle page fault for address: "
msg_pf_ec:        .asciz "#PF: error_code("
msg_at_rip:       .asciz ") RIP: "
msg_kernel_trap:  .asciz "BUG: unhandled trap in kernel mode: vector("
msg_double_fault: .asciz "double fault at RIP: "
msg_oops:         .asciz "Oops"
