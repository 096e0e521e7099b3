# Resource limits and mlock accounting: getrlimit, setrlimit, prlimit64
# (kernel/sys.c do_prlimit) and mlock_future_ok (mm/mmap.c), which secret
# mappings pass through (mm/secretmem.c secretmem_mmap).  Processes are an
# unprivileged user's: no CAP_SYS_RESOURCE, no CAP_IPC_LOCK (the selftest
# drops them with cap_set_proc).  A task's limits are TASK_rlim: RLIM_NLIMITS
# pairs {rlim_cur, rlim_max}, the init task's values (emu/linux/abi.py).

.text

# find_task_by_vpid(pid) -> a live task or 0 (an exited task has no mm left:
# mm_access would find none, so the callers' answer is -ESRCH either way)
find_task_by_vpid:
    mov rax, tasks
    mov rcx, qword ptr [nr_tasks]
.Lftp_loop:
    test rcx, rcx
    jz .Lftp_none
    cmp qword ptr [rax + TASK_state], TASK_RUNNABLE
    jne .Lftp_next
    cmp qword ptr [rax + TASK_pid], rdi
    je .Lftp_done
.Lftp_next:
    add rax, TASK_SIZE
    dec rcx
    jmp .Lftp_loop
.Lftp_none:
    xor eax, eax
.Lftp_done:
    ret

# do_prlimit(task, resource, new, old) -> 0 or -errno; new and old are
# kernel pointers to {cur, max} or 0 (kernel/sys.c)
do_prlimit:
    cmp rsi, RLIM_NLIMITS
    jae .Ldp_inval
    lea rax, [rdi + TASK_rlim]
    shl rsi, 4
    add rax, rsi
    shr rsi, 4
    test rdx, rdx
    jz .Ldp_old
    mov r8, qword ptr [rdx]
    mov r9, qword ptr [rdx + 8]
    cmp r8, r9
    ja .Ldp_inval
    cmp rsi, RLIMIT_NOFILE
    jne .Ldp_raise
    cmp r9, NR_OPEN
    ja .Ldp_perm
.Ldp_raise:
    # raising the hard limit needs CAP_SYS_RESOURCE
    cmp r9, qword ptr [rax + 8]
    ja .Ldp_perm
.Ldp_old:
    test rcx, rcx
    jz .Ldp_new
    mov r8, qword ptr [rax]
    mov qword ptr [rcx], r8
    mov r8, qword ptr [rax + 8]
    mov qword ptr [rcx + 8], r8
.Ldp_new:
    test rdx, rdx
    jz .Ldp_ok
    mov r8, qword ptr [rdx]
    mov qword ptr [rax], r8
    mov r8, qword ptr [rdx + 8]
    mov qword ptr [rax + 8], r8
.Ldp_ok:
    xor eax, eax
    ret
.Ldp_inval:
    mov rax, -EINVAL
    ret
.Ldp_perm:
    mov rax, -EPERM
    ret

# getrlimit(resource, rlim)
sys_getrlimit:
    push rbx
    sub rsp, 16
    mov rbx, rsi
    mov rsi, rdi
    GET_CURRENT rdi
    xor edx, edx
    mov rcx, rsp
    call do_prlimit
    test rax, rax
    jnz .Lgr_out
    mov rdi, rbx
    mov rsi, rsp
    mov edx, 16
    call copy_to_user
.Lgr_out:
    add rsp, 16
    pop rbx
    ret

# setrlimit(resource, rlim)
sys_setrlimit:
    push rbx
    sub rsp, 16
    mov rbx, rdi
    mov rdi, rsp
    mov edx, 16
    call copy_from_user
    test rax, rax
    jnz .Lsr_out
    GET_CURRENT rdi
    mov rsi, rbx
    mov rdx, rsp
    xor ecx, ecx
    call do_prlimit
.Lsr_out:
    add rsp, 16
    pop rbx
    ret

# prlimit64(pid, resource, new, old): new is read before the task is looked
# up; pid 0 is the caller; another process of the same user may be changed
# (check_prlimit_permission: same uid and gid)
sys_prlimit64:
    SAVE_CALLEE
    sub rsp, 32
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    test r13, r13
    jz .Lpl_task
    mov rdi, rsp
    mov rsi, r13
    mov edx, 16
    call copy_from_user
    test rax, rax
    jnz .Lpl_out
.Lpl_task:
    GET_CURRENT rdi
    test rbx, rbx
    jz .Lpl_call
    mov rdi, rbx
    call find_task_by_vpid
    test rax, rax
    jz .Lpl_srch
    mov rdi, rax
.Lpl_call:
    mov rsi, r12
    xor edx, edx
    test r13, r13
    jz .Lpl_noold
    mov rdx, rsp
.Lpl_noold:
    xor ecx, ecx
    test r14, r14
    jz .Lpl_do
    lea rcx, [rsp + 16]
.Lpl_do:
    call do_prlimit
    test rax, rax
    jnz .Lpl_out
    test r14, r14
    jz .Lpl_out
    mov rdi, r14
    lea rsi, [rsp + 16]
    mov edx, 16
    call copy_to_user
    jmp .Lpl_out
.Lpl_srch:
    mov rax, -ESRCH
.Lpl_out:
    add rsp, 32
    RESTORE_CALLEE
    ret

# mlock_future_ok(mm, bytes) -> 1 if bytes more of locked memory stay within
# RLIMIT_MEMLOCK (mm/mmap.c: (bytes >> PAGE_SHIFT) + mm->locked_vm <=
# rlimit >> PAGE_SHIFT; the caller is not CAP_IPC_LOCK)
mlock_future_ok:
    shr rsi, PAGE_SHIFT
    add rsi, qword ptr [rdi + MM_locked_vm]
    GET_CURRENT rax
    mov rax, qword ptr [rax + TASK_rlim + RLIMIT_MEMLOCK * 16]
    shr rax, PAGE_SHIFT
    cmp rsi, rax
    setbe al
    movzx eax, al
    ret
