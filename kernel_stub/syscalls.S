# System calls.  Linux numbers where Linux has them; the dispatch table
# (sys_call_table) is generated from emu/abi.py at link time.

.text

# do_syscall_64(regs, nr).  A syscall runs in the process's restricted address
# space with today's model (asi_enter, then asi_relax: the kernel stays on the
# restricted tables until it touches sensitive data, which exits ASI) and
# leaves ASI before returning; with the 2025 RFC it starts on the restricted
# table the user ran on (asi_relax ends the user's critical section) and
# enters it again on the way out (asi.S: asi_syscall_enter/exit).  IRQs are on
# while the call runs.
do_syscall_64:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov qword ptr [cur_syscall_regs], rbx
    sti
    call asi_syscall_enter
.Lds_dispatch:
    cmp r12, NR_SYSCALLS_TABLE
    jae .Lds_enosys
    mov rax, sys_call_table
    mov rax, qword ptr [rax + r12 * 8]
    test rax, rax
    jz .Lds_enosys
    mov rdi, qword ptr [rbx + PT_RDI]
    mov rsi, qword ptr [rbx + PT_RSI]
    mov rdx, qword ptr [rbx + PT_RDX]
    mov rcx, qword ptr [rbx + PT_R10]
    mov r8, qword ptr [rbx + PT_R8]
    mov r9, qword ptr [rbx + PT_R9]
    call rax
    jmp .Lds_store
.Lds_enosys:
    mov rax, -ENOSYS
.Lds_store:
    mov qword ptr [rbx + PT_RAX], rax
    cli
    call asi_syscall_exit
    RESTORE_CALLEE
    ret

# --- files ----------------------------------------------------------------------------
# fget(fd) -> file or 0
fget:
    cmp rdi, MAX_FDS
    jae .Lfget_none
    GET_CURRENT rax
    mov rax, qword ptr [rax + TASK_files + rdi * 8]
    ret
.Lfget_none:
    xor eax, eax
    ret

# file_alloc(type) -> file (refs = 1) or 0
file_alloc:
    mov rax, files
    mov ecx, MAX_FILES
.Lfa_loop:
    cmp qword ptr [rax + FILE_type], 0
    je .Lfa_found
    add rax, FILE_SIZE
    dec ecx
    jnz .Lfa_loop
    xor eax, eax
    ret
.Lfa_found:
    push rdi
    push rax
    mov rdi, rax
    xor eax, eax
    mov ecx, FILE_SIZE / 8
    rep stosq
    pop rax
    pop rdi
    mov qword ptr [rax + FILE_type], rdi
    mov qword ptr [rax + FILE_refs], 1
    ret

# file_put(file): the last reference releases a secretmem file's pages
file_put:
    dec qword ptr [rdi + FILE_refs]
    jnz .Lfp_done
    push rbx
    push r12
    mov rbx, rdi
    cmp qword ptr [rbx + FILE_type], FILE_SECRETMEM
    jne .Lfp_other
    xor r12, r12
.Lfp_page:
    cmp r12, FILE_MAX_PAGES
    jae .Lfp_release
    mov rsi, qword ptr [rbx + FILE_pages + r12 * 8]
    test rsi, rsi
    jz .Lfp_next
    mov qword ptr [rbx + FILE_pages + r12 * 8], 0
    mov rdi, rbx
    call secret_release_page
.Lfp_next:
    inc r12
    jmp .Lfp_page
.Lfp_release:
    mov rdi, rbx
    call unmapped_release               # the file's cache goes (unmapped=pmd-cache)
    jmp .Lfp_clear
.Lfp_other:
    mov rdi, rbx
    call kvm_file_release               # kvm.S: guest_memfd, VM and vCPU files
.Lfp_clear:
    mov qword ptr [rbx + FILE_type], 0
    pop r12
    pop rbx
.Lfp_done:
    ret

# fd_install(file) -> the lowest free fd, or -EMFILE
fd_install:
    GET_CURRENT rcx
    xor eax, eax
.Lfi_loop:
    cmp rax, MAX_FDS
    jae .Lfi_full
    cmp qword ptr [rcx + TASK_files + rax * 8], 0
    je .Lfi_found
    inc rax
    jmp .Lfi_loop
.Lfi_found:
    mov qword ptr [rcx + TASK_files + rax * 8], rdi
    ret
.Lfi_full:
    mov rax, -EMFILE
    ret

# --- the calls ------------------------------------------------------------------------------
# read(fd, buf, count): the console reads as end-of-file; a secretmem fd has
# no read (vfs_read: -EINVAL without FMODE_CAN_READ)
sys_read:
    call fget
    test rax, rax
    jz .Lrd_badf
    cmp qword ptr [rax + FILE_type], FILE_CONSOLE
    jne .Lrd_inval
    xor eax, eax
    ret
.Lrd_inval:
    mov rax, -EINVAL
    ret
.Lrd_badf:
    mov rax, -EBADF
    ret

# write(fd, buf, count): to the console, copied from user memory in chunks
sys_write:
    SAVE_CALLEE
    sub rsp, 256
    mov r12, rsi
    mov r13, rdx
    call fget
    test rax, rax
    jz .Lwr_badf
    cmp qword ptr [rax + FILE_type], FILE_CONSOLE
    jne .Lwr_inval
    xor r14, r14
.Lwr_loop:
    mov rdx, r13
    sub rdx, r14
    jz .Lwr_done
    cmp rdx, 256
    jbe .Lwr_chunk
    mov edx, 256
.Lwr_chunk:
    mov r15, rdx
    mov rdi, rsp
    lea rsi, [r12 + r14]
    call copy_from_user
    test rax, rax
    jnz .Lwr_fault
    mov rdi, rsp
    mov rsi, r15
    call console_write
    add r14, r15
    jmp .Lwr_loop
.Lwr_done:
    mov rax, r13
    jmp .Lwr_out
.Lwr_fault:
    mov rax, -EFAULT
    test r14, r14
    jz .Lwr_out
    mov rax, r14
    jmp .Lwr_out
.Lwr_inval:
    mov rax, -EINVAL
    jmp .Lwr_out
.Lwr_badf:
    mov rax, -EBADF
.Lwr_out:
    add rsp, 256
    RESTORE_CALLEE
    ret

# pread64(fd, buf, count, pos), pwrite64: no file here is positional (the
# console is a stream; secretmem, guest_memfd and KVM's files are made by
# alloc_file_pseudo without FMODE_PREAD/FMODE_PWRITE): ksys_pread64 checks
# pos, then the fd, then -ESPIPE
sys_pread64:
sys_pwrite64:
    test rcx, rcx
    js .Lprw_inval
    call fget
    test rax, rax
    jz .Lprw_badf
    mov rax, -ESPIPE
    ret
.Lprw_inval:
    mov rax, -EINVAL
    ret
.Lprw_badf:
    mov rax, -EBADF
    ret

sys_close:
    cmp rdi, MAX_FDS
    jae .Lcl_badf
    GET_CURRENT rcx
    mov rax, qword ptr [rcx + TASK_files + rdi * 8]
    test rax, rax
    jz .Lcl_badf
    mov qword ptr [rcx + TASK_files + rdi * 8], 0
    mov rdi, rax
    call file_put
    xor eax, eax
    ret
.Lcl_badf:
    mov rax, -EBADF
    ret

sys_getpid:
    GET_CURRENT rax
    mov rax, qword ptr [rax + TASK_pid]
    ret

sys_exit:
sys_exit_group:
    and edi, 0xff
    call do_exit

sys_sched_yield:
    call schedule
    xor eax, eax
    ret

# memfd_secret(flags): only O_CLOEXEC (sys_memfd_secret)
sys_memfd_secret:
    mov eax, O_CLOEXEC
    not eax
    test edi, eax
    jnz .Lms_inval
    mov edi, FILE_SECRETMEM
    call file_alloc
    test rax, rax
    jz .Lms_nfile
    push rax
    mov rdi, rax
    call fd_install
    pop rdi
    test rax, rax
    js .Lms_undo
    ret
.Lms_undo:
    mov qword ptr [rdi + FILE_type], 0
    ret
.Lms_inval:
    mov rax, -EINVAL
    ret
.Lms_nfile:
    mov rax, -ENFILE
    ret

# ftruncate(fd, length): a secretmem file's size can be set once
# (secretmem_setattr: -EINVAL when i_size is already set)
sys_ftruncate:
    push rsi
    call fget
    pop rsi
    test rax, rax
    jz .Lft_badf
    cmp qword ptr [rax + FILE_type], FILE_SECRETMEM
    jne .Lft_inval
    cmp rsi, FILE_MAX_PAGES * 4096
    ja .Lft_inval
    cmp qword ptr [rax + FILE_size], 0
    jne .Lft_resize
    mov qword ptr [rax + FILE_size], rsi
    xor eax, eax
    ret
.Lft_resize:
    # secretmem_setattr refuses a size that is already set (84ac013046cc);
    # inject=secretmem_resize lets the resize through (secretmem.S)
    .alternative INJECT_SECRETMEM_RESIZE, .Lft_inval
    mov rdi, rax
    jmp secretmem_resize
.Lft_inval:
    mov rax, -EINVAL
    ret
.Lft_badf:
    mov rax, -EBADF
    ret

# rt_sigaction(sig, act, oact, sigsetsize) with struct kernel_sigaction
# {handler, flags, restorer, mask}
sys_rt_sigaction:
    SAVE_CALLEE
    sub rsp, 32
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    cmp rcx, 8
    jne .Lsa_inval
    cmp rbx, 1
    jb .Lsa_inval
    cmp rbx, NSIG
    jae .Lsa_inval
    cmp rbx, SIGKILL
    je .Lsa_inval
    GET_CURRENT r14
    imul rax, rbx, 24
    lea r14, [r14 + rax + TASK_sighand]
    test r13, r13
    jz .Lsa_set
    mov rax, qword ptr [r14]
    mov qword ptr [rsp], rax
    mov rax, qword ptr [r14 + 8]
    mov qword ptr [rsp + 8], rax
    mov rax, qword ptr [r14 + 16]
    mov qword ptr [rsp + 16], rax
    mov qword ptr [rsp + 24], 0
    mov rdi, r13
    mov rsi, rsp
    mov edx, 32
    call copy_to_user
    test rax, rax
    jnz .Lsa_out
.Lsa_set:
    test r12, r12
    jz .Lsa_ok
    mov rdi, rsp
    mov rsi, r12
    mov edx, 32
    call copy_from_user
    test rax, rax
    jnz .Lsa_out
    mov rax, qword ptr [rsp]
    mov qword ptr [r14], rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [r14 + 8], rax
    mov rax, qword ptr [rsp + 16]
    mov qword ptr [r14 + 16], rax
.Lsa_ok:
    xor eax, eax
    jmp .Lsa_out
.Lsa_inval:
    mov rax, -EINVAL
.Lsa_out:
    add rsp, 32
    RESTORE_CALLEE
    ret

# --- project calls -----------------------------------------------------------------------------
# probe(va, access, space) -> rax 0 or -EFAULT; rdx = #PF error code when it
# faulted; r8 = 1 if an ASI exit happened; r9 = the vector (14, or 13 for a
# non-canonical address); r10 = the byte read, for a read or write that did
# not fault (what a stale TLB entry lets the kernel see: docs/tlb.md).  access: 0 read, 1 write, 2 execute (a call to va,
# which should hold a 'ret').  space: 0 the full kernel page table, 1 the
# process's ASI restricted one (relaxed: asi_enter then asi_relax; with the
# 2019 RFC a session of the KVM class, ended by asi_exit), 2 the restricted one
# inside the critical section (asi_enter, the access, then asi_relax: what a
# class's untrusted-code path may not do; not with the 2019 RFC, which has no
# critical section).  User addresses are touched with STAC/CLAC, as
# copy_from_user does.  A write first reads the byte and writes the same
# value back, so memory never changes; a page that cannot be read cannot be
# written either, so the write still reports its own error code.
sys_probe:
    SAVE_CALLEE
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r15, cur_syscall_regs
    mov r15, qword ptr [r15]
    mov qword ptr [r15 + PT_RDX], 0
    mov qword ptr [r15 + PT_R8], 0
    mov qword ptr [r15 + PT_R9], 0
    mov qword ptr [r15 + PT_R10], 0
    cmp r12, 2
    ja .Lpr_inval
    test r13, r13
    jz .Lpr_full
    cmp r13, 2
    ja .Lpr_inval
    cmp qword ptr [feature_asi], 0
    je .Lpr_inval
    cmp r13, 1
    je .Lpr_enter
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    je .Lpr_inval
.Lpr_enter:
    GET_CURRENT rdi
    mov rdi, qword ptr [rdi + TASK_mm]
    call asi_enter
probe_asi_critical:
    cmp r13, 2
    je .Lpr_go
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    je .Lpr_go
    call asi_relax
    jmp .Lpr_go
.Lpr_full:
    mov edi, ASI_EXIT_MISC
    call asi_exit
.Lpr_go:
    mov r14, asi_exits
    mov r14, qword ptr [r14]
    mov rax, USER_HALF_END
    cmp rbx, rax
    jae .Lpr_nostac
    stac
.Lpr_nostac:
    mov rdi, rbx
    cmp r12, 1
    je .Lpr_write
    ja .Lpr_exec
probe_read_insn:
    mov al, byte ptr [rdi]
    jmp probe_ok
.Lpr_write:
probe_write_read_insn:
    mov al, byte ptr [rdi]
probe_write_insn:
    mov byte ptr [rdi], al
    jmp probe_ok
.Lpr_exec:
    call rdi
probe_exec_return:
    xor eax, eax                # an execute reads nothing: r10 = 0
probe_ok:
    clac
    movzx eax, al
    mov qword ptr [r15 + PT_R10], rax
    xor eax, eax
    jmp .Lpr_report
probe_fixup:
    clac
    mov qword ptr [r15 + PT_RDX], rdx
    mov qword ptr [r15 + PT_R9], r9
    mov rax, -EFAULT
.Lpr_report:
    cmp r14, qword ptr [asi_exits]
    je .Lpr_end_section
    mov qword ptr [r15 + PT_R8], 1
.Lpr_end_section:
    push rax
    cmp r13, 1
    jb .Lpr_ended
    ja .Lpr_relax
    # the 2019 RFC's session ends here (KVM leaves its space before returning)
    cmp qword ptr [asi_design], ASI_DESIGN_RFC2019
    jne .Lpr_ended
    mov edi, ASI_EXIT_MISC
    call asi_exit
    jmp .Lpr_ended
.Lpr_relax:
    call asi_relax
.Lpr_ended:
    pop rax
    jmp .Lpr_out
.Lpr_inval:
    mov rax, -EINVAL
.Lpr_out:
    RESTORE_CALLEE
    ret
probe_write_fixup:
    mov rdi, rbx
    jmp probe_write_insn
.extable probe_read_insn, probe_fixup
.extable probe_write_read_insn, probe_write_fixup
.extable probe_write_insn, probe_fixup
.extable probe_exec_return, probe_fixup, EX_TYPE_CALL

# A 'ret' in kernel text: the target of execute probes of kernel text.
probe_target_ret:
    ret
