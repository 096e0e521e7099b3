# Another process's memory: ptrace's PEEK/POKE (kernel/ptrace.c,
# mm/memory.c __access_remote_vm) and process_vm_readv/writev
# (mm/process_vm_access.c).  Both reach the pages through
# get_user_pages_remote (gup.S), which refuses secret memory: the
# memfd_secret selftest's "process_vm_read" and "ptrace" cases.
# Simplifications (docs/secretmem.md): PTRACE_ATTACH does not stop the
# tracee (a process here runs only when the others yield, which is as good
# as stopped for PEEK/POKE); every process is the same unprivileged user, so
# the ptrace access check passes for any other live process (no Yama).

.text

# access_remote_vm(mm, addr, kbuf, len, write) -> bytes copied, page by page
# through get_user_pages_remote with FOLL_FORCE, stopping at the first page
# it refuses (secretmem has no vm_ops->access to fall back on)
access_remote_vm:
    SAVE_CALLEE
    push r8
    mov rbx, rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    xor r15d, r15d
.Larv_loop:
    cmp r15, r14
    jae .Larv_done
    mov rdi, rbx
    lea rsi, [r12 + r15]
    mov rdx, qword ptr [rsp]
    mov ecx, 1
    call gup_remote
    test rax, rax
    js .Larv_done
    lea rcx, [r12 + r15]
    and ecx, PAGE_SIZE - 1
    add rax, rcx
    PA_TO_VA rax
    mov rdx, PAGE_SIZE
    sub rdx, rcx
    mov rcx, r14
    sub rcx, r15
    cmp rdx, rcx
    jbe .Larv_n
    mov rdx, rcx
.Larv_n:
    lea rcx, [r13 + r15]
    add r15, rdx
    cmp qword ptr [rsp], 0
    jne .Larv_write
    mov rdi, rcx
    mov rsi, rax
    call memcpy
    jmp .Larv_loop
.Larv_write:
    mov rdi, rax
    mov rsi, rcx
    call memcpy
    jmp .Larv_loop
.Larv_done:
    mov rax, r15
    pop r8
    RESTORE_CALLEE
    ret

# ptrace(request, pid, addr, data): ATTACH, DETACH, PEEKTEXT/PEEKDATA (the
# word is stored at data: the raw call, as generic_ptrace_peekdata),
# POKETEXT/POKEDATA; other requests -EIO (ptrace_request's default)
sys_ptrace:
    SAVE_CALLEE
    sub rsp, 16
    mov rbx, rdi
    mov r12, rdx
    mov r13, rcx
    mov rdi, rsi
    call find_task_by_vpid
    test rax, rax
    jz .Lpt_srch
    mov r14, rax
    GET_CURRENT r15
    cmp rbx, PTRACE_ATTACH
    jne .Lpt_attached
    # ptrace_attach: not oneself, not a task someone already traces
    cmp r14, r15
    je .Lpt_perm
    cmp qword ptr [r14 + TASK_ptracer], 0
    jne .Lpt_perm
    mov rax, qword ptr [r15 + TASK_pid]
    mov qword ptr [r14 + TASK_ptracer], rax
    jmp .Lpt_ok
.Lpt_attached:
    # ptrace_check_attach: the caller must be the tracer
    mov rax, qword ptr [r15 + TASK_pid]
    cmp qword ptr [r14 + TASK_ptracer], rax
    jne .Lpt_srch
    cmp rbx, PTRACE_DETACH
    je .Lpt_detach
    cmp rbx, PTRACE_PEEKTEXT
    je .Lpt_peek
    cmp rbx, PTRACE_PEEKDATA
    je .Lpt_peek
    cmp rbx, PTRACE_POKETEXT
    je .Lpt_poke
    cmp rbx, PTRACE_POKEDATA
    je .Lpt_poke
    jmp .Lpt_eio
.Lpt_detach:
    mov qword ptr [r14 + TASK_ptracer], 0
    jmp .Lpt_ok
.Lpt_peek:
    mov rdi, qword ptr [r14 + TASK_mm]
    mov rsi, r12
    mov rdx, rsp
    mov ecx, 8
    xor r8d, r8d
    call access_remote_vm
    cmp rax, 8
    jne .Lpt_eio
    mov rdi, r13
    mov rsi, rsp
    mov edx, 8
    call copy_to_user
    jmp .Lpt_out
.Lpt_poke:
    mov qword ptr [rsp], r13
    mov rdi, qword ptr [r14 + TASK_mm]
    mov rsi, r12
    mov rdx, rsp
    mov ecx, 8
    mov r8d, 1
    call access_remote_vm
    cmp rax, 8
    jne .Lpt_eio
.Lpt_ok:
    xor eax, eax
    jmp .Lpt_out
.Lpt_eio:
    mov rax, -EIO
    jmp .Lpt_out
.Lpt_perm:
    mov rax, -EPERM
    jmp .Lpt_out
.Lpt_srch:
    mov rax, -ESRCH
.Lpt_out:
    add rsp, 16
    RESTORE_CALLEE
    ret

# exit_ptrace(task): the tasks it traced are released (kernel/ptrace.c)
exit_ptrace:
    mov rdx, qword ptr [rdi + TASK_pid]
    mov rax, tasks
    mov ecx, MAX_TASKS
.Lep_loop:
    cmp qword ptr [rax + TASK_ptracer], rdx
    jne .Lep_next
    mov qword ptr [rax + TASK_ptracer], 0
.Lep_next:
    add rax, TASK_SIZE
    dec ecx
    jnz .Lep_loop
    ret

sys_process_vm_readv:
    xor eax, eax
    jmp process_vm_rw
sys_process_vm_writev:
    mov eax, 1

# process_vm_rw(pid, lvec, liovcnt, rvec, riovcnt, flags; eax = write):
# flags must be 0; both iovec arrays are read and checked first
# (import_iovec, iovec_from_user: more than UIO_MAXIOV -EINVAL, unreadable
# -EFAULT, a negative length -EINVAL); nothing to copy (either side) returns 0; then the
# task (-ESRCH); then page by page, through get_user_pages_remote, into or
# out of the local buffers.  Returns the bytes copied, or -EFAULT when the
# first page could not be reached (process_vm_rw_core).
.equ PVM_LBASE, 0
.equ PVM_LLEN, 8
.equ PVM_RBASE, 16
.equ PVM_RLEN, 24
.equ PVM_TOTAL, 32
.equ PVM_WRITE, 40
.equ PVM_RC, 48
.equ PVM_PID, 56
.equ PVM_N, 64
.equ PVM_FRAME, 80
process_vm_rw:
    SAVE_CALLEE
    sub rsp, PVM_FRAME
    mov qword ptr [rsp + PVM_WRITE], rax
    mov qword ptr [rsp + PVM_PID], rdi
    mov r12, rsi
    mov r13, rdx
    mov r14, rcx
    mov r15, r8
    test r9, r9
    jnz .Lpvm_inval
    # the local vector: its total length
    mov rdi, r12
    mov rsi, r13
    call iovec_total
    test rax, rax
    js .Lpvm_out
    jz .Lpvm_out
    mov rdi, r14
    mov rsi, r15
    call iovec_total
    test rax, rax
    js .Lpvm_out
    # no remote page to pin: 0 before the task is looked up
    jz .Lpvm_out
    mov rdi, qword ptr [rsp + PVM_PID]
    call find_task_by_vpid
    test rax, rax
    jz .Lpvm_srch
    mov rbx, qword ptr [rax + TASK_mm]
    xor eax, eax
    mov qword ptr [rsp + PVM_LLEN], rax
    mov qword ptr [rsp + PVM_RLEN], rax
    mov qword ptr [rsp + PVM_TOTAL], rax
    mov qword ptr [rsp + PVM_RC], rax
.Lpvm_core:
    cmp qword ptr [rsp + PVM_RLEN], 0
    jne .Lpvm_local
    test r15, r15
    jz .Lpvm_done
    lea rdi, [rsp + PVM_RBASE]
    mov rsi, r14
    mov edx, 16
    call copy_from_user
    test rax, rax
    jnz .Lpvm_fault
    add r14, 16
    dec r15
    jmp .Lpvm_core
.Lpvm_local:
    cmp qword ptr [rsp + PVM_LLEN], 0
    jne .Lpvm_copy
    test r13, r13
    jz .Lpvm_done
    lea rdi, [rsp + PVM_LBASE]
    mov rsi, r12
    mov edx, 16
    call copy_from_user
    test rax, rax
    jnz .Lpvm_fault
    add r12, 16
    dec r13
    jmp .Lpvm_local
.Lpvm_copy:
    # n = min(rlen, llen, the rest of the remote page)
    mov rcx, qword ptr [rsp + PVM_RBASE]
    and ecx, PAGE_SIZE - 1
    mov rax, PAGE_SIZE
    sub rax, rcx
    cmp rax, qword ptr [rsp + PVM_RLEN]
    jbe .Lpvm_n1
    mov rax, qword ptr [rsp + PVM_RLEN]
.Lpvm_n1:
    cmp rax, qword ptr [rsp + PVM_LLEN]
    jbe .Lpvm_n2
    mov rax, qword ptr [rsp + PVM_LLEN]
.Lpvm_n2:
    mov qword ptr [rsp + PVM_N], rax
    mov rdi, rbx
    mov rsi, qword ptr [rsp + PVM_RBASE]
    mov rdx, qword ptr [rsp + PVM_WRITE]
    xor ecx, ecx
    call gup_remote
    test rax, rax
    js .Lpvm_fault
    mov rcx, qword ptr [rsp + PVM_RBASE]
    and ecx, PAGE_SIZE - 1
    add rax, rcx
    PA_TO_VA rax
    mov rdx, qword ptr [rsp + PVM_N]
    cmp qword ptr [rsp + PVM_WRITE], 0
    jne .Lpvm_w
    mov rdi, qword ptr [rsp + PVM_LBASE]
    mov rsi, rax
    call copy_to_user
    jmp .Lpvm_copied
.Lpvm_w:
    mov rdi, rax
    mov rsi, qword ptr [rsp + PVM_LBASE]
    call copy_from_user
.Lpvm_copied:
    test rax, rax
    jnz .Lpvm_fault
    mov rax, qword ptr [rsp + PVM_N]
    add qword ptr [rsp + PVM_LBASE], rax
    sub qword ptr [rsp + PVM_LLEN], rax
    add qword ptr [rsp + PVM_RBASE], rax
    sub qword ptr [rsp + PVM_RLEN], rax
    add qword ptr [rsp + PVM_TOTAL], rax
    jmp .Lpvm_core
.Lpvm_fault:
    mov qword ptr [rsp + PVM_RC], -EFAULT
.Lpvm_done:
    mov rax, qword ptr [rsp + PVM_TOTAL]
    test rax, rax
    jnz .Lpvm_out
    mov rax, qword ptr [rsp + PVM_RC]
    jmp .Lpvm_out
.Lpvm_srch:
    mov rax, -ESRCH
    jmp .Lpvm_out
.Lpvm_inval:
    mov rax, -EINVAL
.Lpvm_out:
    add rsp, PVM_FRAME
    RESTORE_CALLEE
    ret

# iovec_total(uvec, count) -> the sum of the lengths, -EINVAL (more than
# UIO_MAXIOV, or a length negative as ssize_t) or -EFAULT (unreadable)
iovec_total:
    push rbx
    push r12
    push r13
    sub rsp, 16
    mov rbx, rdi
    mov r12, rsi
    xor r13d, r13d
    cmp r12, UIO_MAXIOV
    ja .Lit_inval
.Lit_loop:
    test r12, r12
    jz .Lit_done
    mov rdi, rsp
    mov rsi, rbx
    mov edx, 16
    call copy_from_user
    test rax, rax
    jnz .Lit_out
    mov rax, qword ptr [rsp + 8]
    test rax, rax
    js .Lit_inval
    add r13, rax
    add rbx, 16
    dec r12
    jmp .Lit_loop
.Lit_done:
    mov rax, r13
    jmp .Lit_out
.Lit_inval:
    mov rax, -EINVAL
.Lit_out:
    add rsp, 16
    pop r13
    pop r12
    pop rbx
    ret
