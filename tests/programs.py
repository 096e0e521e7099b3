"""Assembly snippets the tests' user programs share."""

# exit(0)
EXIT = "    mov eax, SYS_exit\n    xor edi, edi\n    syscall\n"

# mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0):
# the page's address in rax
MMAP_ANON_PAGE = """    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, PROT_READ + PROT_WRITE
    mov r10d, MAP_PRIVATE + MAP_ANONYMOUS
    mov r8, -1
    xor r9d, r9d
    syscall
"""


def getpid_loop(n: int) -> str:
    """``n`` getpid system calls, then "ok\\n" written to stdout and exit 0."""
    return f"""_start:
    mov ebx, {n}
.Lloop:
    mov eax, SYS_getpid
    syscall
    dec ebx
    jnz .Lloop
    mov eax, SYS_write
    mov edi, 1
    lea rsi, [rip + msg]
    mov edx, 3
    syscall
""" + EXIT + """
.data
msg: .ascii "ok\\n"
"""
