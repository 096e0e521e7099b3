; File operations on a guest_memfd (guest_memfd_test.c: test_file_read_write,
; test_file_size, test_create_guest_memfd_multiple).  kvm_gmem_fops has no
; read or write, so read and write are -EINVAL (vfs_read/vfs_write: no
; FMODE_CAN_READ/WRITE); the file comes from alloc_file_pseudo, which sets no
; FMODE_PREAD/PWRITE, so pread64 and pwrite64 are -ESPIPE (fs/read_write.c).
; fstat gives the size, a PAGE_SIZE block size, S_IFREG (__kvm_gmem_create)
; and a different inode per guest_memfd.  A guest_memfd has no ioctl but the
; conversion RFC's (-ENOTTY for any other).
; expect: rd rax=-EINVAL
; expect: wr rax=-EINVAL
; expect: prd rax=-ESPIPE
; expect: pwr rax=-ESPIPE
; expect: prd_neg rax=-EINVAL
; expect: st1 rax=0
; expect: size1 rax=4096 rbx=4096 rcx&0xf000=0x8000
; expect: st2 rax=0
; expect: size2 rax=8192 rbx!=0          # rbx: the two inode numbers' difference
; expect: st1_again rax=0
; expect: size1_again rax=4096
; expect: bad_ioctl rax=-ENOTTY
; expect: cl rax=0
; expect: st_closed rax=-EBADF
.include "kvm.inc"
.text
_start:
    kvm_vm r12
    gmem_fd r13, r12, 4096, 0
    gmem_fd r14, r12, 8192, 0
    sub rsp, 256
    mov rdi, r13
    mov rsi, rsp
    mov edx, 64
    mov eax, SYS_read
rd:
    syscall
    mov rdi, r13
    mov rsi, rsp
    mov edx, 64
    mov eax, SYS_write
wr:
    syscall
    mov rdi, r13
    mov rsi, rsp
    mov edx, 64
    xor r10d, r10d
    mov eax, SYS_pread64
prd:
    syscall
    mov rdi, r13
    mov rsi, rsp
    mov edx, 64
    xor r10d, r10d
    mov eax, SYS_pwrite64
pwr:
    syscall
    mov rdi, r13
    mov rsi, rsp
    mov edx, 64
    mov r10, -1
    mov eax, SYS_pread64
prd_neg:
    syscall
    mov rdi, r13
    mov rsi, rsp
    mov eax, SYS_fstat
st1:
    syscall
    mov rax, qword ptr [rsp + 48]       # st_size
    mov rbx, qword ptr [rsp + 56]       # st_blksize
    mov ecx, dword ptr [rsp + 24]       # st_mode
    mov r15, qword ptr [rsp + 8]        # st_ino
size1:
    nop
    mov rdi, r14
    mov rsi, rsp
    mov eax, SYS_fstat
st2:
    syscall
    mov rax, qword ptr [rsp + 48]
    mov rbx, qword ptr [rsp + 8]
    sub rbx, r15
size2:
    nop
    mov rdi, r13
    mov rsi, rsp
    mov eax, SYS_fstat
st1_again:
    syscall
    mov rax, qword ptr [rsp + 48]
size1_again:
    nop
    mov rdi, r13
    mov esi, KVM_CREATE_VM
    xor edx, edx
    mov eax, SYS_ioctl
bad_ioctl:
    syscall
    mov rdi, r14
    mov eax, SYS_close
cl:
    syscall
    mov rdi, r14
    mov rsi, rsp
    mov eax, SYS_fstat
st_closed:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
