# Entry and exit code: the only code the PTI user page tables map (.entry.text
# is 2 MiB aligned and cloned at PMD level, as pti_clone_entry_text does).
# After arch/x86/entry/entry_64.S (Linux 6.1).

.section .entry.text

# ---------------------------------------------------------------------------------
# SYSCALL from user mode.  On entry (set by the CPU): rcx = user rip,
# r11 = user rflags, CS/SS from STAR, CPL 0, rflags &= ~FMASK; CR3 and RSP are
# still the user's.
entry_SYSCALL_64:
    swapgs
    # tss.sp2 is scratch space: the per-CPU TSS page is mapped into the user
    # page tables for exactly this store (pti_clone_user_shared)
    mov qword ptr gs:[cpu_tss_rw + TSS_sp2], rsp
    SWITCH_TO_KERNEL_CR3 rsp
    mov rsp, qword ptr gs:[pcpu_top_of_stack]
entry_SYSCALL_64_safe_stack:
    push USER_DS
    push qword ptr gs:[cpu_tss_rw + TSS_sp2]
    push r11
    push USER_CS
    push rcx
entry_SYSCALL_64_after_hwframe:
    push rax
    PUSH_REGS -ENOSYS
    mov rdi, rsp
    movsxd rsi, eax
    call do_syscall_64
    .hook syscall_return
entry_SYSCALL_64_after_call:
    # SYSRET only if it would restore exactly what IRET would
    mov rcx, qword ptr [rsp + PT_RCX]
    cmp rcx, qword ptr [rsp + PT_RIP]
    jne swapgs_restore_regs_and_return_to_usermode
    mov r11, qword ptr [rsp + PT_R11]
    cmp r11, qword ptr [rsp + PT_EFLAGS]
    jne swapgs_restore_regs_and_return_to_usermode
    test r11, X86_EFLAGS_RF + X86_EFLAGS_TF
    jnz swapgs_restore_regs_and_return_to_usermode
    # Intel SYSRET #GPs at CPL0 on a non-canonical RCX: check it here
    .alternative LA57, .Lcanon48
    shl rcx, 7
    sar rcx, 7
    jmp .Lcanon_done
.Lcanon48:
    shl rcx, 16
    sar rcx, 16
.Lcanon_done:
    cmp rcx, qword ptr [rsp + PT_RIP]
    jne swapgs_restore_regs_and_return_to_usermode
    cmp qword ptr [rsp + PT_CS], USER_CS
    jne swapgs_restore_regs_and_return_to_usermode
    # isoemu: the TLB model looks at the return to user mode only while it
    # holds stale records (a Python call per system call otherwise); the
    # per-CPU page is mapped wherever this runs, ASI's tables included
    cmp qword ptr gs:[tlb_watch_return], 0
    je .Lsysret_unwatched
    .hook return_to_user_sysret
syscall_return_via_sysret:
    nop
.Lsysret_unwatched:
    POP_REGS_NO_RDI
    # switch to the trampoline (entry) stack, which the user tables map
    mov rdi, rsp
    mov rsp, qword ptr gs:[cpu_tss_rw + TSS_sp0]
    push qword ptr [rdi + 40]
    push qword ptr [rdi]
    SWITCH_TO_USER_CR3_STACK rdi
    pop rdi
    pop rsp
entry_SYSRETQ_unsafe_stack:
    swapgs
    sysretq
entry_SYSRETQ_end:
    int3

# ---------------------------------------------------------------------------------
# Exceptions and interrupts.  The CPU pushed SS, RSP, RFLAGS, CS, RIP and, for
# some vectors, an error code, on TSS.sp0 (the entry stack) when coming from
# user mode, on the current stack from kernel mode, or on an IST stack.
.macro IDTENTRY_NOERR name, handler
\name:
    clac
    cld
    push -1
    PUSH_REGS
    mov r12, \handler
    jmp idtentry_body
.endm

.macro IDTENTRY_ERR name, handler
\name:
    clac
    cld
    PUSH_REGS
    mov r12, \handler
    jmp idtentry_body
.endm

IDTENTRY_NOERR asm_exc_divide_error, exc_divide_error
IDTENTRY_NOERR asm_exc_int3, exc_int3
IDTENTRY_NOERR asm_exc_invalid_op, exc_invalid_op
IDTENTRY_ERR asm_exc_general_protection, exc_general_protection
IDTENTRY_ERR asm_exc_page_fault, exc_page_fault
IDTENTRY_NOERR asm_sysvec_apic_timer_interrupt, sysvec_apic_timer_interrupt

# error_entry + the body of idtentry: from user mode swapgs, switch to the
# kernel CR3 and move pt_regs from the entry stack to the task stack
# (sync_regs); then call the handler (r12) with (regs, error_code).
idtentry_body:
    test byte ptr [rsp + PT_CS], 3
    jz .Lfrom_kernel
    swapgs
    SWITCH_TO_KERNEL_CR3 rax
    mov rdi, rsp
    call sync_regs
    mov rsp, rax
.Lfrom_kernel:
    call asi_intr_enter
    mov rdi, rsp
    mov rsi, qword ptr [rsp + PT_ORIG_RAX]
    mov qword ptr [rsp + PT_ORIG_RAX], -1
    call r12
    call asi_intr_exit
error_return:
    test byte ptr [rsp + PT_CS], 3
    jz restore_regs_and_return_to_kernel

# IRET to user mode, via the trampoline stack
swapgs_restore_regs_and_return_to_usermode:
    call prepare_exit_to_usermode
    .hook return_to_user_iret
    POP_REGS_NO_RDI
    mov rdi, rsp
    mov rsp, qword ptr gs:[cpu_tss_rw + TSS_sp0]
    push qword ptr [rdi + 48]
    push qword ptr [rdi + 40]
    push qword ptr [rdi + 32]
    push qword ptr [rdi + 24]
    push qword ptr [rdi + 16]
    push qword ptr [rdi]
    SWITCH_TO_USER_CR3_STACK rdi
    pop rdi
    swapgs
native_irq_return_iret:
    iretq

restore_regs_and_return_to_kernel:
    POP_REGS
    add rsp, 8
    iretq

# #DF on IST1: paranoid entry, CR3 saved verbatim; never returns.
asm_exc_double_fault:
    clac
    cld
    PUSH_REGS
    SAVE_AND_SWITCH_TO_KERNEL_CR3 rax, r14
    mov ecx, 0xc0000101
    rdmsr
    test edx, edx
    js .Ldf_kernel_gs
    swapgs
.Ldf_kernel_gs:
    mov rdi, rsp
    mov rsi, qword ptr [rsp + PT_ORIG_RAX]
    mov rdx, r14
    call exc_double_fault
    jmp machine_halt

# A new task starts here: its kernel stack holds the initial pt_regs.
ret_from_fork:
    jmp swapgs_restore_regs_and_return_to_usermode

# A 'ret' in entry text: the target of the fault matrix's execute probes.
entry_probe_ret:
    ret
