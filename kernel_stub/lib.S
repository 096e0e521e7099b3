# Library routines: console, panic, memory helpers, and the allocator call.

.text

# --- the allocator: the one call from the stub into Python ---------------------------
# hc_alloc(order, kind, flags) -> pa, or 0 when guest memory is exhausted.
#   'out 0xf0, eax' with eax = HC_ALLOC, rdi = order (0, 9, 18), rsi = frame kind
#   (emu.phys.FrameKind), rdx = flags (HC_SENSITIVE).  Python answers in rax.
#   The frame comes back zeroed.
hc_alloc:
    mov eax, HC_ALLOC
    out 0xf0, eax
    ret

# hc_free(pa): return a frame to Python (rax = 0, or -EINVAL on a bad free)
hc_free:
    mov eax, HC_FREE
    out 0xf0, eax
    ret

# --- console (COM1 data port, collected by Python) ------------------------------------
# console_write(buf, len): bytes from a kernel address
console_write:
    mov rcx, rsi
    mov rsi, rdi
    mov edx, PORT_CONSOLE
    test rcx, rcx
    jz .Lcw_done
.Lcw_loop:
    mov al, byte ptr [rsi]
    out dx, al
    inc rsi
    dec rcx
    jnz .Lcw_loop
.Lcw_done:
    ret

# printk(zero-terminated string)
printk:
    mov rsi, rdi
    mov edx, PORT_CONSOLE
.Lpk_loop:
    mov al, byte ptr [rsi]
    test al, al
    jz .Lpk_done
    out dx, al
    inc rsi
    jmp .Lpk_loop
.Lpk_done:
    ret

# print_hex(value): 0x and 16 hex digits
print_hex:
    mov rsi, rdi
    mov edx, PORT_CONSOLE
    mov al, 0x30
    out dx, al
    mov al, 0x78
    out dx, al
    mov ecx, 16
.Lph_loop:
    rol rsi, 4
    mov eax, esi
    and eax, 15
    cmp eax, 10
    jb .Lph_digit
    add eax, 0x27
.Lph_digit:
    add eax, 0x30
    out dx, al
    dec ecx
    jnz .Lph_loop
    ret

print_newline:
    mov edx, PORT_CONSOLE
    mov al, 10
    out dx, al
    ret

# panic(message): print and halt the machine (Python reports a kernel panic)
panic:
    push rdi
    mov rdi, msg_panic
    call printk
    pop rdi
    call printk
    call print_newline
    mov qword ptr [panic_flag], 1
    jmp machine_halt

# The machine stops here: no runnable task, or a panic.  Python sees the hlt.
machine_halt:
    cli
    hlt
    jmp machine_halt

# --- memory helpers -------------------------------------------------------------------
# memcpy(dst, src, n)
memcpy:
    mov rax, rdi
    mov rcx, rdx
    rep movsb
    ret

# clear_page(kernel address of a 4 KiB page)
clear_page:
    xor eax, eax
    mov ecx, 512
    rep stosq
    ret

.rodata
msg_panic: .asciz "Kernel panic - not syncing: "
