# /dev/kvm, its VM and vCPU files, and the file calls guest_memfd needs (open,
# fstat, pread64, pwrite64, ioctl).  Memslots and vCPUs are in kvm_vm.S.  After virt/kvm/kvm_main.c, fs/open.c,
# fs/read_write.c, fs/stat.c.  docs/guest_memfd.md.

.text

# open(path, flags, mode): "/dev/kvm" (misc device; any access mode), and
# "/dev/xpfo" (xpfo.S)
sys_open:
    sub rsp, 24
    mov qword ptr [rsp + 16], rdi
    mov rsi, rdi
    mov rdi, rsp
    mov edx, 9
    call copy_from_user
    test rax, rax
    jnz .Lop_fault
    movabs rax, 0x6d766b2f7665642f      # "/dev/kvm"
    cmp qword ptr [rsp], rax
    jne .Lop_other
    cmp byte ptr [rsp + 8], 0
    jne .Lop_noent
    mov edi, FILE_KVM
    call file_alloc
    test rax, rax
    jz .Lop_nfile
    push rax
    mov rdi, rax
    call fd_install
    pop rdi
    test rax, rax
    jns .Lop_out
    push rax
    call file_put
    pop rax
    jmp .Lop_out
.Lop_nfile:
    mov rax, -ENFILE
    jmp .Lop_out
.Lop_fault:
    mov rax, -EFAULT
    jmp .Lop_out
.Lop_other:
    mov rdi, rsp
    mov rsi, qword ptr [rsp + 16]
    call xpfo_open                      # xpfo.S: "/dev/xpfo", else -ENOENT
    jmp .Lop_out
.Lop_noent:
    mov rax, -ENOENT
.Lop_out:
    add rsp, 24
    ret

# fstat(fd, statbuf): inode number, mode, links, size and block size
# (generic_fillattr; st_blksize is PAGE_SIZE for these inodes)
sys_fstat:
    push rbx
    push r12
    sub rsp, STAT_SIZE
    mov r12, rsi
    call fget
    test rax, rax
    jz .Lfs_badf
    mov rbx, rax
    mov rdi, rsp
    xor eax, eax
    mov ecx, STAT_SIZE / 8
    rep stosq
    mov rax, rbx
    sub rax, files
    xor edx, edx
    mov ecx, FILE_SIZE
    div rcx
    inc rax
    mov qword ptr [rsp + ST_INO], rax
    mov qword ptr [rsp + ST_NLINK], 1
    mov qword ptr [rsp + ST_BLKSIZE], PAGE_SIZE
    mov eax, 0x180                      # 0600: anon_inode's S_IRUSR | S_IWUSR
    mov rcx, qword ptr [rbx + FILE_type]
    cmp rcx, FILE_CONSOLE
    jne .Lfs_reg
    mov eax, S_IFCHR + 0x190            # 0620, a tty
    jmp .Lfs_mode
.Lfs_reg:
    cmp rcx, FILE_SECRETMEM
    je .Lfs_sized
    cmp rcx, FILE_GUEST_MEMFD
    je .Lfs_sized
    cmp rcx, FILE_XPFO
    jne .Lfs_mode
.Lfs_sized:
    or eax, S_IFREG                     # secretmem_file_create, __kvm_gmem_create
    mov rcx, qword ptr [rbx + FILE_size]
    mov qword ptr [rsp + ST_SIZE], rcx
.Lfs_mode:
    mov dword ptr [rsp + ST_MODE], eax
    mov rdi, r12
    mov rsi, rsp
    mov edx, STAT_SIZE
    call copy_to_user
    test rax, rax
    jnz .Lfs_fault
    xor eax, eax
    jmp .Lfs_out
.Lfs_fault:
    mov rax, -EFAULT
    jmp .Lfs_out
.Lfs_badf:
    mov rax, -EBADF
.Lfs_out:
    add rsp, STAT_SIZE
    pop r12
    pop rbx
    ret

# ioctl(fd, cmd, arg), by file: /dev/kvm (kvm_dev_ioctl: unknown is -EINVAL,
# from kvm_arch_dev_ioctl), a VM (kvm_vm_ioctl: -ENOTTY), a vCPU
# (kvm_vcpu_ioctl: -EINVAL), a guest_memfd (its ioctl of the conversion RFC;
# -ENOTTY otherwise); other files have no ioctl (-ENOTTY)
sys_ioctl:
    push rbx
    push r12
    push r13
    mov r12d, esi                       # cmd is an unsigned int
    mov r13, rdx
    call fget
    test rax, rax
    jz .Lio_badf
    mov rbx, rax
    mov rax, qword ptr [rbx + FILE_type]
    cmp rax, FILE_KVM
    je .Lio_kvm
    cmp rax, FILE_KVM_VM
    je .Lio_vm
    cmp rax, FILE_KVM_VCPU
    je .Lio_vcpu
    cmp rax, FILE_GUEST_MEMFD
    jne .Lio_notty
    mov eax, KVM_SET_MEMORY_ATTRIBUTES2
    cmp r12, rax
    jne .Lio_notty
    mov rdi, rbx
    mov rsi, r13
    call gmem_set_attributes
    jmp .Lio_out
.Lio_kvm:
    cmp r12, KVM_GET_VCPU_MMAP_SIZE
    je .Lio_mmap_size
    cmp r12, KVM_CREATE_VM
    jne .Lio_inval
    test r13, r13                       # the VM type: only KVM_X86_DEFAULT_VM
    jnz .Lio_inval
    mov edi, FILE_KVM_VM
    call file_alloc
    test rax, rax
    jz .Lio_nfile
    push rax
    mov rdi, rax
    call fd_install
    pop rdi
    test rax, rax
    jns .Lio_out
    push rax
    call file_put
    pop rax
    jmp .Lio_out
.Lio_mmap_size:
    mov eax, PAGE_SIZE
    jmp .Lio_out
.Lio_vm:
    mov eax, KVM_CREATE_GUEST_MEMFD
    cmp r12, rax
    jne .Lio_vm_region
    mov rdi, rbx
    mov rsi, r13
    call kvm_gmem_create
    jmp .Lio_out
.Lio_vm_region:
    mov eax, KVM_SET_USER_MEMORY_REGION2
    cmp r12, rax
    jne .Lio_vm_vcpu
    mov rdi, rbx
    mov rsi, r13
    call kvm_set_memory_region
    jmp .Lio_out
.Lio_vm_vcpu:
    cmp r12, KVM_CREATE_VCPU
    jne .Lio_notty
    mov rdi, rbx
    mov rsi, r13
    call kvm_create_vcpu
    jmp .Lio_out
.Lio_vcpu:
    mov rdi, rbx
    mov rsi, r12
    mov rdx, r13
    call kvm_vcpu_ioctl
    jmp .Lio_out
.Lio_nfile:
    mov rax, -ENFILE
    jmp .Lio_out
.Lio_inval:
    mov rax, -EINVAL
    jmp .Lio_out
.Lio_notty:
    mov rax, -ENOTTY
    jmp .Lio_out
.Lio_badf:
    mov rax, -EBADF
.Lio_out:
    pop r13
    pop r12
    pop rbx
    ret

# kvm_file_release(file): the last reference to a KVM or guest_memfd file
kvm_file_release:
    mov rax, qword ptr [rdi + FILE_type]
    cmp rax, FILE_GUEST_MEMFD
    je gmem_release
    cmp rax, FILE_XPFO
    je xpfo_release                     # xpfo.S
    cmp rax, FILE_KVM_VM
    je kvm_vm_release
    cmp rax, FILE_KVM_VCPU
    je kvm_vcpu_release
    ret
