; open("/dev/xpfo") (docs/xpfo.md): each open is a new file, a regular one on
; the device's internal mount (so that vfs_fallocate reaches it: a character
; device would be -ENODEV there), size 0 until fallocate grows it.  A path
; that only starts or ends like it is -ENOENT.  The file has no read or write
; (-EINVAL: vfs_read/vfs_write without FMODE_CAN_READ/WRITE), no positional
; I/O (-ESPIPE: alloc_file_pseudo sets no FMODE_PREAD/PWRITE), no ioctl
; (-ENOTTY); fstat says S_IFREG, the size, and a different inode per open.
; isoemu: unmapped=page|pmd-cache|reserved|unmapped-alloc
; expect: open1 rax=3
; expect: open2 rax=4
; expect: too_long rax=-ENOENT
; expect: too_short rax=-ENOENT
; expect: st_empty rax=0
; expect: size_empty rax=0 rcx&0xf000=0x8000
; expect: grow rax=0
; expect: st_grown rax=0
; expect: size_grown rax=0x3000 rbx!=0          # rbx: the two inode numbers' difference
; expect: rd rax=-EINVAL
; expect: wr rax=-EINVAL
; expect: prd rax=-ESPIPE
; expect: bad_ioctl rax=-ENOTTY
; expect: cl rax=0
; expect: st_closed rax=-EBADF
.include "kvm.inc"
.include "xpfo.inc"
.text
_start:
    xpfo_try open1
    mov r12, rax
    xpfo_try open2
    mov r13, rax
    ; "/dev/xpfoo" and "/dev/xpf"
    movabs rax, 0x6670782f7665642f
    push 0x6f6f
    push rax
    mov rdi, rsp
    mov esi, O_RDWR
    xor edx, edx
    mov eax, SYS_open
too_long:
    syscall
    mov qword ptr [rsp + 8], 0
    mov rdi, rsp
    mov esi, O_RDWR
    xor edx, edx
    mov eax, SYS_open
too_short:
    syscall
    add rsp, 16
    sub rsp, 256
    mov rdi, r12
    mov rsi, rsp
    mov eax, SYS_fstat
st_empty:
    syscall
    mov rax, qword ptr [rsp + 48]       # st_size
    mov ecx, dword ptr [rsp + 24]       # st_mode
size_empty:
    nop
    mov rbx, qword ptr [rsp + 8]        # st_ino
    falloc grow, r13, 0, 0, 0x3000
    mov rdi, r13
    mov rsi, rsp
    mov eax, SYS_fstat
st_grown:
    syscall
    mov rax, qword ptr [rsp + 48]
    sub rbx, qword ptr [rsp + 8]
size_grown:
    nop
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
    mov esi, 0x1234
    xor edx, edx
    mov eax, SYS_ioctl
bad_ioctl:
    syscall
    mov rdi, r13
    mov eax, SYS_close
cl:
    syscall
    mov rdi, r13
    mov rsi, rsp
    mov eax, SYS_fstat
st_closed:
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
