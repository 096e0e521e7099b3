# Page allocation: frames from Python's allocator (the hypercall in lib.S), and
# ASI's non-sensitive mappings of them.  After mm/page_alloc.c and the ASI
# RFC's "Map non-user buddy allocations as nonsensitive".

.text

# alloc_page(order, kind, flags) -> pa (zeroed) or 0.  A non-sensitive 4 KiB
# page is also mapped into ASI's global non-sensitive direct map (RFCv2:
# "Map non-user buddy allocations as nonsensitive").
alloc_page:
    push rbx
    push r12
    mov r12, rdx
    call hc_alloc
    mov rbx, rax
    test rax, rax
    jz .Lap_done
    test r12, HC_SENSITIVE
    jnz .Lap_done
    cmp qword ptr [feature_asi_global], 0
    je .Lap_done
    mov rdi, rax
    call asi_map_page
.Lap_done:
    mov rax, rbx
    pop r12
    pop rbx
    ret

# free_page(pa, flags)
free_page:
    push rbx
    mov rbx, rdi
    test rsi, HC_SENSITIVE
    jnz .Lfp_free
    cmp qword ptr [feature_asi_global], 0
    je .Lfp_free
    call asi_unmap_page
.Lfp_free:
    mov rdi, rbx
    call hc_free
    pop rbx
    ret
