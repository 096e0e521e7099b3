# Macros shared by the stub, after arch/x86/entry/calling.h.
#
# Features patched by the loader (.alternative FEATURE, TARGET is
# Linux's ALTERNATIVE "jmp TARGET", "", X86_FEATURE_x: the jmp becomes a
# NOP when the feature is on): PTI, PCID, ASI, LA57.

# --- struct pt_regs ------------------------------------------------------------
# PUSH_REGS builds pt_regs below the hardware frame and orig_ax, in the order
# of calling.h PUSH_REGS (rdi first, r15 last: r15 ends at the lowest address).
.macro PUSH_REGS rax=rax
    push rdi
    push rsi
    push rdx
    push rcx
    push \rax
    push r8
    push r9
    push r10
    push r11
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
.endm

.macro POP_REGS_NO_RDI
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
    pop r11
    pop r10
    pop r9
    pop r8
    pop rax
    pop rcx
    pop rdx
    pop rsi
.endm

.macro POP_REGS
    POP_REGS_NO_RDI
    pop rdi
.endm

# --- PTI CR3 switching (calling.h) ---------------------------------------------
# PTI_USER_PGTABLE_AND_PCID_MASK = 0x1800: bit 12 selects the user PGD of the
# 8 KiB pair, bit 11 the user PCID.  NOFLUSH is CR3 bit 63.

# ADJUST_KERNEL_CR3 + SWITCH_TO_KERNEL_CR3: read CR3, set NOFLUSH (PCID only),
# clear bits 11 and 12, write.  Kernel PCIDs are never lazily flushed.
.macro SWITCH_TO_KERNEL_CR3 scratch
    .alternative PTI, .Lend_\@
    mov \scratch, cr3
    .alternative PCID, .Ladjust_\@
    bts \scratch, X86_CR3_PCID_NOFLUSH_BIT
.Ladjust_\@:
    and \scratch, NOT_PTI_USER_PGTABLE_AND_PCID_MASK
    .cr3_write noflush
    mov cr3, \scratch
    nop                         # not a jump target: the write is seen where the next block starts
.Lend_\@:
.endm

# SWITCH_TO_USER_CR3_NOSTACK: with PCID, honour this CPU's pending flush of the
# user PCID (tlbstate_user_pcid_flush_mask, indexed by kernel PCID): if the
# bit is set, clear it and write CR3 without NOFLUSH (the write flushes the
# user PCID); else set NOFLUSH.  Then OR in the user PCID (bit 11) and the
# user PGD (bit 12).  Without PCID only bit 12 is set.
.macro SWITCH_TO_USER_CR3_NOSTACK scratch, scratch2
    .alternative PTI, .Lend_\@
    mov \scratch, cr3
    .alternative PCID, .Lwrcr3_\@
    mov \scratch2, \scratch
    and \scratch, KERNEL_PCID_MASK
    .alternative !INJECT_PTI_USER_NOFLUSH, .Lnoflush_\@
    bt qword ptr gs:[tlbstate_user_pcid_flush_mask], \scratch
    jnc .Lnoflush_\@
    btr qword ptr gs:[tlbstate_user_pcid_flush_mask], \scratch
    mov \scratch, \scratch2
    jmp .Luserpcid_\@
.Lnoflush_\@:
    mov \scratch, \scratch2
    bts \scratch, X86_CR3_PCID_NOFLUSH_BIT
.Luserpcid_\@:
    or \scratch, X86_CR3_PTI_PCID_USER
.Lwrcr3_\@:
    or \scratch, PTI_USER_PGTABLE_MASK
    .cr3_write noflush
    mov cr3, \scratch
    nop                         # not a jump target: the write is seen where the next block starts
.Lend_\@:
.endm

.macro SWITCH_TO_USER_CR3_STACK scratch
    push rax
    SWITCH_TO_USER_CR3_NOSTACK \scratch, rax
    pop rax
.endm

# Paranoid entries (#DF): save CR3 verbatim in \save and switch to the kernel
# PGD only if the user PGD (bit 12) is loaded.
.macro SAVE_AND_SWITCH_TO_KERNEL_CR3 scratch, save
    .alternative PTI, .Ldone_\@
    mov \scratch, cr3
    mov \save, \scratch
    bt \scratch, PTI_USER_PGTABLE_BIT
    jnc .Ldone_\@
    .alternative PCID, .Ladjust_\@
    bts \scratch, X86_CR3_PCID_NOFLUSH_BIT
.Ladjust_\@:
    and \scratch, NOT_PTI_USER_PGTABLE_AND_PCID_MASK
    .cr3_write noflush
    mov cr3, \scratch
    nop                         # not a jump target: the write is seen where the next block starts
.Ldone_\@:
.endm

# --- paging-structure entries ----------------------------------------------------
# SET_ENTRY ptr, val: write one entry of a live table through set_entry
# (pgtable.S), which the TLB model observes.  Any registers or an immediate;
# every register but the entry is preserved.
.macro SET_ENTRY ptr, val
    push rdi
    push rsi
    push \val
    push \ptr
    pop rdi
    pop rsi
    call set_entry
    pop rsi
    pop rdi
.endm

# --- small helpers ------------------------------------------------------------------
# Kernel functions follow the SysV ABI: args in rdi, rsi, rdx, rcx, r8, r9;
# result in rax; rbx, rbp, r12-r15 preserved.
.macro SAVE_CALLEE
    push rbx
    push rbp
    push r12
    push r13
    push r14
    push r15
.endm

.macro RESTORE_CALLEE
    pop r15
    pop r14
    pop r13
    pop r12
    pop rbp
    pop rbx
.endm

# current task pointer into \reg
.macro GET_CURRENT reg
    mov \reg, qword ptr gs:[pcpu_current_task]
.endm

# physical address -> direct-map address (page_offset_base, as Linux's __va)
.macro PA_TO_VA reg
    add \reg, qword ptr [page_offset_base]
.endm

.macro VA_TO_PA reg
    sub \reg, qword ptr [page_offset_base]
.endm
