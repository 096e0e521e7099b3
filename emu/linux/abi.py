"""What the kernel stub and Python agree on, defined once.

Syscall numbers, errno values, struct layouts, per-CPU offsets, I/O ports
and layout addresses.  :func:`asm_symbols` exports all of it to the stub's
assembler as predefined symbols, so no number is written twice.

Linux names and numbers are used wherever Linux has them
(arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/errno*.h,
arch/x86/include/asm/ptrace.h, arch/x86/include/uapi/asm/sigcontext.h).
"""

from __future__ import annotations

from emu.hw import paging as pg
from emu.hw.paging import mode_for
from emu.linux.layout import Layout
from emu.hw.phys import FrameKind
from emu.linux import kvm_abi
from emu.linux.config import UNMAPPED_STRATEGIES

# --- syscalls -------------------------------------------------------------------
SYSCALLS = {
    "read": 0, "write": 1, "open": 2, "close": 3, "fstat": 5, "mmap": 9, "mprotect": 10, "munmap": 11,
    "rt_sigaction": 13, "rt_sigreturn": 15, "ioctl": 16, "sched_yield": 24, "getpid": 39, "exit": 60,
    "ftruncate": 77, "exit_group": 231, "fallocate": 285, "memfd_secret": 447,
    # memfd_secret's selftest (tools/testing/selftests/mm/memfd_secret.c) and docs/secretmem.md
    "pread64": 17, "pwrite64": 18, "getrlimit": 97, "ptrace": 101, "setrlimit": 160,
    "prlimit64": 302, "process_vm_readv": 310, "process_vm_writev": 311,
    # project calls (numbers above Linux's range)
    "probe": 1000, "direct_map_alias": 1001, "gup_fast_read": 1002,
}
NR_SYSCALLS_TABLE = 1003          # size of the dispatch table in the stub

# errno (positive; syscalls return -errno)
ERRNO = {"EPERM": 1, "ENOENT": 2, "ESRCH": 3, "EINTR": 4, "EIO": 5, "EBADF": 9, "EAGAIN": 11, "ENOMEM": 12,
         "EACCES": 13, "EFAULT": 14, "EBUSY": 16, "EEXIST": 17, "ENODEV": 19, "EINVAL": 22, "ENFILE": 23, "EMFILE": 24,
         "ENOTTY": 25, "EFBIG": 27, "ESPIPE": 29, "ENOSYS": 38, "EOPNOTSUPP": 95}
ERRNO_NAMES = {v: k for k, v in ERRNO.items()}

SIGNALS = {"SIGILL": 4, "SIGTRAP": 5, "SIGBUS": 7, "SIGFPE": 8, "SIGKILL": 9, "SIGSEGV": 11}
SIGNAL_NAMES = {v: k for k, v in SIGNALS.items()}

# mmap / memfd flags (uapi)
PROT = {"PROT_NONE": 0, "PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4}
MAP = {"MAP_SHARED": 0x01, "MAP_PRIVATE": 0x02, "MAP_FIXED": 0x10, "MAP_ANONYMOUS": 0x20,
       "MAP_POPULATE": 0x8000,
       # not in Linux: the value of MAP_EXCLUSIVE in Rapoport's 2019 RFC ("mm: add MAP_EXCLUSIVE to
       # create exclusive user mappings", include/uapi/asm-generic/mman-common.h), still unused by
       # mman-common.h and arch/x86's mman.h (docs/secretmem.md, "MAP_SECRET")
       "MAP_SECRET": 0x200000}
O_CLOEXEC = 0o2000000

# resource limits (include/uapi/asm-generic/resource.h); the init task's values
# (include/asm-generic/resource.h INIT_RLIMITS; NPROC and SIGPENDING as fork_init sets them)
RLIMITS = ["RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS",
           "RLIMIT_NPROC", "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS",
           "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE", "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME"]
RLIM_NLIMITS = len(RLIMITS)
RLIM_INFINITY = (1 << 64) - 1
MLOCK_LIMIT = 8 << 20             # include/uapi/linux/resource.h (since 5.16)
NR_OPEN = 1024 * 1024             # sysctl_nr_open: RLIMIT_NOFILE's hard ceiling


def init_rlimits(ram: int) -> list[tuple[int, int]]:
    """(cur, max) per resource for a process: INIT_RLIMITS, with NPROC and
    SIGPENDING at max_threads / 2 as fork_init() sets them (kernel/fork.c
    set_max_threads: RAM / (8 * THREAD_SIZE))."""
    inf = RLIM_INFINITY
    half = max(20, ram // (8 * THREAD_SIZE)) // 2
    vals = {"RLIMIT_STACK": (8 << 20, inf), "RLIMIT_CORE": (0, inf), "RLIMIT_NPROC": (half, half),
            "RLIMIT_NOFILE": (1024, 4096), "RLIMIT_MEMLOCK": (MLOCK_LIMIT, MLOCK_LIMIT),
            "RLIMIT_SIGPENDING": (half, half), "RLIMIT_MSGQUEUE": (819200, 819200),
            "RLIMIT_NICE": (0, 0), "RLIMIT_RTPRIO": (0, 0)}
    return [vals.get(name, (inf, inf)) for name in RLIMITS]


# ptrace requests (include/uapi/linux/ptrace.h)
PTRACE = {"PTRACE_PEEKTEXT": 1, "PTRACE_PEEKDATA": 2, "PTRACE_POKETEXT": 4, "PTRACE_POKEDATA": 5,
          "PTRACE_ATTACH": 16, "PTRACE_DETACH": 17}
UIO_MAXIOV = 1024
MAP_FAILED_BASE = -4095          # returns above this are -errno

# --- segments (arch/x86/include/asm/segment.h) -------------------------------------
KERNEL_CS, KERNEL_DS, USER32_CS, USER_DS, USER_CS = 0x10, 0x18, 0x23, 0x2B, 0x33
GDT_ENTRY_TSS = 8                 # two entries, x86_64 segment.h
# the GDT's code and data descriptors (GDT_ENTRY_* of segment.h, flat, 64-bit CS)
GDT = {1: 0x00CF9B000000FFFF,     # KERNEL32_CS
       2: 0x00AF9B000000FFFF,     # KERNEL_CS  (0x10)
       3: 0x00CF93000000FFFF,     # KERNEL_DS  (0x18)
       4: 0x00CFFB000000FFFF,     # USER32_CS  (0x23)
       5: 0x00CFF3000000FFFF,     # USER_DS    (0x2b)
       6: 0x00AFFB000000FFFF}     # USER_CS    (0x33)
GDT_ENTRIES = 16
TSS_SELECTOR = GDT_ENTRY_TSS * 8
# MSR_SYSCALL_MASK as syscall_init() sets it: CF PF AF ZF SF TF IF DF OF IOPL NT RF AC ID
SYSCALL_FMASK = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800 | 0x3000 | 0x4000 \
    | 0x10000 | 0x40000 | 0x200000

# --- x86_hw_tss (packed) -------------------------------------------------------------
TSS_sp0, TSS_sp1, TSS_sp2, TSS_ist = 4, 12, 20, 36
TSS_iomap_base, TSS_SIZE = 102, 0x68

# --- struct pt_regs (arch/x86/include/asm/ptrace.h) -----------------------------------
PT_REGS = ["r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
           "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss"]
PT = {name: 8 * i for i, name in enumerate(PT_REGS)}
PT_SIZE = 8 * len(PT_REGS)

# --- exception vectors -----------------------------------------------------------------
VECTORS = {"DE": 0, "DB": 1, "NMI": 2, "BP": 3, "UD": 6, "DF": 8, "GP": 13, "PF": 14}
TIMER_VECTOR = 0xEC               # LOCAL_TIMER_VECTOR
IST_DF, IST_NMI, IST_DB, IST_MCE = 1, 2, 3, 4

# --- I/O ports ----------------------------------------------------------------------------
PORT_CONSOLE = 0x3F8              # COM1 data: one byte per 'out dx, al'
PORT_HYPERCALL = 0xF0             # the allocator call: 'out 0xf0, eax'
HC_ALLOC, HC_FREE = 1, 2
HC_SENSITIVE = 1                  # rdx flag: allocation is sensitive (ASI leaves it unmapped)

# --- kernel structures (our own; offsets in bytes) ---------------------------------------
def _struct(fields: list[tuple[str, int]]) -> tuple[dict[str, int], int]:
    off, out = 0, {}
    for name, size in fields:
        out[name] = off
        off += size
    return out, off


MAX_TASKS = 8
MAX_FDS = 16
MAX_VMAS = 32
MAX_FILES = 32
FILE_MAX_PAGES = 64               # a memfd holds at most 256 KiB
NSIG = 32

TASK, TASK_SIZE = _struct([
    ("state", 8), ("pid", 8), ("mm", 8), ("sp", 8), ("stack_top", 8), ("exit_code", 8),
    ("killed_by", 8), ("asi_target", 8), ("asi_nest", 8), ("comm", 16),
    ("files", 8 * MAX_FDS), ("sighand", 24 * NSIG), ("ptracer", 8), ("rlim", 16 * 16), ("asi_class", 8),
    ("pad", 7 * 8)])
TASK_UNUSED, TASK_RUNNABLE, TASK_DEAD = 0, 1, 2

VMA, VMA_SIZE = _struct([("start", 8), ("end", 8), ("prot", 8), ("flags", 8), ("file", 8),
                         ("pgoff", 8)])
VM_SHARED, VM_SECRET, VM_LOCKED = 1, 2, 4     # our VMA flag bits
VM_GMEM = 8                       # a guest_memfd mapping (its pages belong to the file)
VM_XPFO = 16                      # a /dev/xpfo mapping (likewise; kernel_stub/xpfo.S)
VM_KVM_RUN = 32                   # a vCPU file's mapping: its kvm_run page

MM, MM_SIZE = _struct([
    ("pgd", 8), ("pgd_va", 8), ("ctx_id", 8), ("tlb_gen", 8), ("asi_pgd", 8), ("asi_pgd_va", 8),
    ("mmap_base", 8), ("nr_vmas", 8), ("vmas", VMA_SIZE * MAX_VMAS), ("locked_vm", 8)])

FILE, FILE_SIZE = _struct([("type", 8), ("refs", 8), ("size", 8), ("flags", 8),
                           ("pages", 8 * FILE_MAX_PAGES)])
FILE_CONSOLE, FILE_SECRETMEM = 1, 2
# /dev/kvm, a VM, a vCPU and a guest_memfd (emu/linux/kvm_abi.py: what their 'pages' hold)
FILE_KVM, FILE_KVM_VM, FILE_KVM_VCPU, FILE_GUEST_MEMFD = 3, 4, 5, 6
FILE_XPFO = 7                     # a file opened from /dev/xpfo (docs/xpfo.md)
XPFO_MAX_BYTES = FILE_MAX_PAGES * pg.PAGE_SIZE   # the xpfo mount's s_maxbytes: one file's page array
XPFO_CACHE_PAGES = 64             # the cache of unmapped pages that released xpfo pages go to

# per-CPU area: page 0 is cpu_tss_rw (mapped into the PTI user tables), page 1 holds
# the rest, page 2 the GDT.  The assembler gives the offsets (zero-based section).
PERCPU_PAGES = 3

# rt_sigframe (arch/x86/include/asm/sigframe.h + uapi sigcontext.h / ucontext.h)
SIGCONTEXT = ["r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx",
              "rdx", "rax", "rcx", "rsp", "rip", "eflags", "csgsfs", "err", "trapno", "oldmask",
              "cr2", "fpstate", "reserved1", "r1", "r2", "r3", "r4", "r5", "r6", "r7"]
SC = {name: 8 * i for i, name in enumerate(SIGCONTEXT)}
UC_MCONTEXT = 40                  # uc_flags, uc_link, uc_stack (24)
UC_SIGMASK = UC_MCONTEXT + 8 * len(SIGCONTEXT)
UCONTEXT_SIZE = UC_SIGMASK + 8
SIGFRAME_UC = 8                   # after pretcode
SIGFRAME_INFO = SIGFRAME_UC + UCONTEXT_SIZE
SIGINFO_SIZE = 128
SIGFRAME_SIZE = SIGFRAME_INFO + SIGINFO_SIZE
SI_SIGNO, SI_ERRNO, SI_CODE, SI_ADDR = 0, 4, 8, 16
SEGV_MAPERR, SEGV_ACCERR = 1, 2

# the unmapped allocator (kernel_stub/unmapped.S): its table of 2 MiB blocks out of the direct
# map, each {pa, owner (a file, or UNMAPPED_SHARED), pages in use, a 512-bit map of them, and
# of the pages freed by a user of a shared cache and not cleared since}
UNMAPPED_MAX_BLOCKS = 64
UBLK, UBLK_SIZE = _struct([("pa", 8), ("owner", 8), ("used", 8), ("map", 64), ("dirty", 64)])
UNMAPPED_SHARED = 1               # the owner of a cache every user draws from (reserved, unmapped-alloc)
EX_TYPE_DEFAULT, EX_TYPE_CALL = 0, 1
EX_TABLE_MAX = 128

# ASI (docs/asi.md).  The designs, as the stub's asi_design word holds them
ASI_DESIGN = {"off": 0, "on": 1, "rfc2019": 2, "rfc2025": 3}
# 2025 RFC v2: PCID bits just below PTI's user bit 11; classes of include/asm-generic/asi.h
X86_CR3_ASI_PCID_BITS_SHIFT = 9
ASI_CLASS_KVM, ASI_CLASS_USERSPACE = 0, 1      # asi_pcid = kern_pcid | (class + 1) << 9
# why asi_exit() left the restricted table (enum asi_exit_reason of the ASI branch's
# include/linux/asi_exit.h), and the names Machine.stats() gives their counters
ASI_EXIT_REASONS = {"ASI_EXIT_PAGE_FAULT": 0, "ASI_EXIT_USER_RET": 1, "ASI_EXIT_CONTEXT_SWITCH": 2,
                    "ASI_EXIT_TLB_FLUSH": 3, "ASI_EXIT_MISC": 4}
ASI_EXIT_STATS = ("asi_fault_exits", "asi_user_return_exits", "asi_context_switch_exits",
                  "asi_tlb_flush_exits", "asi_other_exits")
# the RFC v2 taints (arch/x86/include/asm/asi.h there): what uarch state a domain may leave
ASI_TAINTS = {"ASI_TAINT_KERNEL_DATA": 1 << 0, "ASI_TAINT_USER_DATA": 1 << 1, "ASI_TAINT_GUEST_DATA": 1 << 2,
              "ASI_TAINT_OTHER_MM_DATA": 1 << 3, "ASI_TAINT_USER_CONTROL": 1 << 4,
              "ASI_TAINT_GUEST_CONTROL": 1 << 5, "ASI_TAINT_OTHER_MM_CONTROL": 1 << 6}
_T = ASI_TAINTS
ASI_TAINT_MASKS = {
    "ASI_TAINTS_CONTROL_MASK": _T["ASI_TAINT_USER_CONTROL"] | _T["ASI_TAINT_GUEST_CONTROL"]
    | _T["ASI_TAINT_OTHER_MM_CONTROL"],
    "ASI_TAINTS_DATA_MASK": _T["ASI_TAINT_KERNEL_DATA"] | _T["ASI_TAINT_USER_DATA"] | _T["ASI_TAINT_OTHER_MM_DATA"],
    "ASI_TAINTS_GUEST_MASK": _T["ASI_TAINT_GUEST_DATA"] | _T["ASI_TAINT_GUEST_CONTROL"],
    "ASI_TAINTS_USER_MASK": _T["ASI_TAINT_USER_DATA"] | _T["ASI_TAINT_USER_CONTROL"],
}
# struct asi_taint_policy per class: (prevent_control, protect_data, set).  Userspace:
# asi_init_userspace_class(); KVM: kvm_x86_init_asi_class() on a CPU without
# IBPB_ON_VMEXIT (the patch assigns set = GUEST_CONTROL, replacing GUEST_DATA)
ASI_TAINT_POLICY = {
    ASI_CLASS_KVM: (_T["ASI_TAINT_OTHER_MM_CONTROL"],
                    _T["ASI_TAINT_KERNEL_DATA"] | _T["ASI_TAINT_OTHER_MM_DATA"] | _T["ASI_TAINT_USER_DATA"],
                    _T["ASI_TAINT_GUEST_CONTROL"]),
    ASI_CLASS_USERSPACE: (_T["ASI_TAINT_GUEST_CONTROL"] | _T["ASI_TAINT_OTHER_MM_CONTROL"],
                          _T["ASI_TAINT_KERNEL_DATA"] | _T["ASI_TAINT_OTHER_MM_DATA"],
                          _T["ASI_TAINT_USER_CONTROL"] | _T["ASI_TAINT_USER_DATA"]),
}
# the flushes the taint policy issues (maybe_flush_control: IBPB and the RSB fill;
# maybe_flush_data: the L1D flush of arch/x86/lib/l1tf.c), as event and counter names
ASI_FLUSHES = ("ibpb", "rsb", "l1d")
RSB_CLEAR_LOOPS = 32              # arch/x86/include/asm/nospec-branch.h
# the 2019 RFC's per-CPU session (enum asi_session_state)
ASI_SESSION_STATE = {"ASI_SESSION_STATE_INACTIVE": 0, "ASI_SESSION_STATE_ACTIVE": 1,
                     "ASI_SESSION_STATE_ABORTED": 2}

# user address-space layout for programs
USER_TEXT = 0x400000
USER_RODATA = 0x500000
USER_DATA = 0x600000
USER_BSS = 0x700000
USER_STACK_TOP = 0x7FFFFFFFF000
USER_STACK_SIZE = 0x10000
MMAP_BASE = 0x7F0000000000

# kernel image (physical start 16 MiB, as CONFIG_PHYSICAL_START); 2 MiB aligned sections
# so PTI can clone .entry.text alone at PMD level (vmlinux.lds.S ALIGN_ENTRY_TEXT_*)
KERNEL_PHYS = 0x1000000
KSECTIONS = {".text": 0x000000, ".entry.text": 0x200000, ".rodata": 0x400000, ".data": 0x600000,
             ".bss": 0x700000, ".data..percpu": 0x800000}
KERNEL_IMAGE_SIZE = 0xA00000
THREAD_SIZE = 0x4000
VMAP_STACK_STRIDE = 0x8000        # stack + guard gap per task in vmalloc space


def paging_symbols(levels: int) -> dict[str, int]:
    """Page-table bits, masks and geometry, by Linux's names
    (arch/x86/include/asm/pgtable_types.h, page_types.h, pgtable_64_types.h,
    processor-flags.h, tlbflush.h), from the Python definitions: the stub
    writes no number for them."""
    mode = mode_for(levels)
    bits = {"PRESENT": pg.P, "RW": pg.RW, "USER": pg.US, "PWT": pg.PWT, "PCD": pg.PCD, "ACCESSED": pg.A,
            "DIRTY": pg.D, "PSE": pg.PS, "PAT": pg.PAT, "GLOBAL": pg.G, "PAT_LARGE": pg.PAT_LARGE, "NX": pg.NX}
    s = {f"_PAGE_{k}": v for k, v in bits.items() if k != "NX"}
    # a PROT_NONE user page: P clear, the Global bit's place marks it (pgtable_types.h)
    s["_PAGE_PROTNONE"] = pg.G
    # mprotect's change_protection: the bits it recomputes, negated for 'and'
    s["NOT_PAGE_RIGHTS"] = ~(pg.P | pg.RW | pg.G)
    s.update({f"_PAGE_BIT_{k}": v.bit_length() - 1 for k, v in bits.items()})
    s.update({
        "PTE_PFN_MASK": pg.ADDR_MASK,                 # PTE_PFN_MASK: address bits 51:12
        "PTE_FLAGS_MASK": pg.FLAGS_MASK,
        "_PAGE_TABLE": pg.PAGE_TABLE, "_KERNPG_TABLE": pg.KERNPG_TABLE,
        # PAGE_KERNEL without _PAGE_GLOBAL (__default_kernel_pte_mask under PTI/ASI), less NX:
        # the NX bit is set separately where __supported_pte_mask has it
        "__PAGE_KERNEL_NOGLOBAL": pg.PAGE_KERNEL & ~pg.G & ~pg.NX,
        # a user page's PTE: present, user, accessed; writable adds RW and DIRTY
        "_PAGE_USER_BASE": pg.P | pg.US | pg.A, "_PAGE_USER_WRITE": pg.RW | pg.D,
        # set_direct_map_invalid_noflush: what an invalid direct-map PTE loses
        "_PAGE_INVALID_CLEARS": pg.INVALID_CLEARS,
        # the same masks negated, for 'and' (keystone cannot negate a symbol)
        "NOT_PAGE_INVALID_CLEARS": ~pg.INVALID_CLEARS, "NOT_PAGE_PSE": ~pg.PS, "NOT_PAGE_GLOBAL": ~pg.G,
        "NOT_PAGE_PSE_PAT_LARGE": ~(pg.PS | pg.PAT_LARGE),
        "PAGE_SHIFT": 12, "PAGE_SIZE": pg.PAGE_SIZE,
        "PMD_SHIFT": 21, "PMD_SIZE": 1 << 21, "PUD_SHIFT": 30, "PUD_SIZE": 1 << 30,
        "PGDIR_SHIFT": mode.top_shift, "PTRS_PER_PTE": 512,
        # the lowest level whose entries cannot map a page (PS reserved: PML4E, PML5E)
        "PS_RESERVED_SHIFT": min(lv.shift for lv in mode.levels if lv.ps_reserved),
        "USER_PTRS_PER_PGD": 256,                     # the user half of a PGD
        # CR3 (arch/x86/include/asm/processor-flags.h, calling.h)
        "X86_CR3_PCID_NOFLUSH_BIT": 63, "X86_CR3_PTI_PCID_USER_BIT": 11, "PTI_USER_PGTABLE_BIT": 12,
        "PTI_USER_PGTABLE_AND_PCID_MASK": (1 << 12) | (1 << 11),
        "NOT_PTI_USER_PGTABLE_AND_PCID_MASK": ~((1 << 12) | (1 << 11)),
        "X86_CR3_PTI_PCID_USER": 1 << 11, "PTI_USER_PGTABLE_MASK": 1 << 12,
        "KERNEL_PCID_MASK": (1 << 11) - 1,            # the ASID bits SWITCH_TO_USER_CR3 tests
        "X86_CR4_PGE_BIT": 7,
        # flush_tlb_kernel_range flushes page by page up to this many pages, then
        # everything (tlb_single_page_flush_ceiling, arch/x86/mm/tlb.c)
        "TLB_SINGLE_PAGE_FLUSH_CEILING": 33,
        # #PF error code bits (arch/x86/include/asm/trap_pf.h)
        "X86_PF_PROT": pg.PF_P, "X86_PF_WRITE": pg.PF_W, "X86_PF_USER": pg.PF_U, "X86_PF_INSTR": pg.PF_I,
        # RFLAGS (processor-flags.h)
        "X86_EFLAGS_TF": 1 << 8, "X86_EFLAGS_IF": 1 << 9, "X86_EFLAGS_DF": 1 << 10,
        "X86_EFLAGS_RF": 1 << 16, "X86_EFLAGS_AC": 1 << 18, "X86_EFLAGS_FIXED": 1 << 1,
        "NOT_TF_IF_DF": ~((1 << 8) | (1 << 9) | (1 << 10)),
        # FIX_EFLAGS (arch/x86/kernel/signal.c): the flags sigreturn may restore
        "FIX_EFLAGS": 0x50DD5,
    })
    return s


def asm_symbols(layout: Layout) -> dict[str, int]:
    """Every constant the stub may use, by the names the stub uses."""
    s: dict[str, int] = paging_symbols(layout.levels)
    s.update({f"SYS_{k}": v for k, v in SYSCALLS.items()})
    s.update(ERRNO)
    s.update(SIGNALS)
    s.update(PROT)
    s["PROT_UNKNOWN_BITS"] = ~(PROT["PROT_READ"] | PROT["PROT_WRITE"] | PROT["PROT_EXEC"])
    s.update(MAP)
    s.update({"O_CLOEXEC": O_CLOEXEC, "NR_SYSCALLS_TABLE": NR_SYSCALLS_TABLE,
              "KERNEL_CS": KERNEL_CS, "KERNEL_DS": KERNEL_DS, "USER_CS": USER_CS, "USER_DS": USER_DS,
              "TSS_sp0": TSS_sp0, "TSS_sp2": TSS_sp2, "TSS_ist": TSS_ist,
              "PT_SIZE": PT_SIZE, "PORT_CONSOLE": PORT_CONSOLE, "PORT_HYPERCALL": PORT_HYPERCALL,
              "HC_ALLOC": HC_ALLOC, "HC_FREE": HC_FREE, "HC_SENSITIVE": HC_SENSITIVE,
              "TIMER_VECTOR": TIMER_VECTOR, "MAX_TASKS": MAX_TASKS, "MAX_FDS": MAX_FDS,
              "MAX_VMAS": MAX_VMAS, "MAX_FILES": MAX_FILES, "FILE_MAX_PAGES": FILE_MAX_PAGES,
              "TASK_SIZE": TASK_SIZE, "MM_SIZE": MM_SIZE, "VMA_SIZE": VMA_SIZE, "FILE_SIZE": FILE_SIZE,
              "TASK_UNUSED": TASK_UNUSED, "TASK_RUNNABLE": TASK_RUNNABLE, "TASK_DEAD": TASK_DEAD,
              "VM_SHARED": VM_SHARED, "VM_SECRET": VM_SECRET, "VM_LOCKED": VM_LOCKED, "VM_GMEM": VM_GMEM,
              "VM_XPFO": VM_XPFO, "FILE_XPFO": FILE_XPFO, "XPFO_MAX_BYTES": XPFO_MAX_BYTES,
              "XPFO_CACHE_PAGES": XPFO_CACHE_PAGES,
              "VM_KVM_RUN": VM_KVM_RUN,
              "FILE_KVM": FILE_KVM, "FILE_KVM_VM": FILE_KVM_VM, "FILE_KVM_VCPU": FILE_KVM_VCPU,
              "FILE_GUEST_MEMFD": FILE_GUEST_MEMFD, "FILE_CONSOLE": FILE_CONSOLE, "FILE_SECRETMEM": FILE_SECRETMEM,
              "NSIG": NSIG, "RLIM_NLIMITS": RLIM_NLIMITS, "NR_OPEN": NR_OPEN, "UIO_MAXIOV": UIO_MAXIOV,
              "SIGFRAME_SIZE": SIGFRAME_SIZE, "SIGFRAME_UC": SIGFRAME_UC, "SIGFRAME_INFO": SIGFRAME_INFO,
              "UC_MCONTEXT": UC_MCONTEXT, "SI_SIGNO": SI_SIGNO, "SI_CODE": SI_CODE, "SI_ADDR": SI_ADDR,
              "SEGV_MAPERR": SEGV_MAPERR, "SEGV_ACCERR": SEGV_ACCERR,
              "ASI_PCID_SHIFT": X86_CR3_ASI_PCID_BITS_SHIFT, "ASI_CLASS_USERSPACE": ASI_CLASS_USERSPACE,
              "ASI_CLASS_KVM": ASI_CLASS_KVM, "RSB_CLEAR_LOOPS": RSB_CLEAR_LOOPS,
              "NR_ASI_EXIT_REASONS": len(ASI_EXIT_REASONS),
              "THREAD_SIZE": THREAD_SIZE, "UNMAPPED_MAX_BLOCKS": UNMAPPED_MAX_BLOCKS,
              "UBLK_SIZE": UBLK_SIZE, "UNMAPPED_SHARED": UNMAPPED_SHARED,
              "EX_TYPE_DEFAULT": EX_TYPE_DEFAULT, "EX_TYPE_CALL": EX_TYPE_CALL,
              "EX_TABLE_MAX": EX_TABLE_MAX,
              "PAGE_OFFSET": layout.page_offset, "MMAP_BASE": MMAP_BASE,
              "USER_STACK_TOP": USER_STACK_TOP, "USER_HALF_END": layout.user_end,
              "KERNEL_PHYS": KERNEL_PHYS, "KERNEL_TEXT_VA": layout.kernel_text})
    s.update({f"ASI_DESIGN_{k.upper()}": v for k, v in ASI_DESIGN.items()})
    s.update(ASI_EXIT_REASONS)
    s.update(ASI_TAINTS)
    s.update(ASI_TAINT_MASKS)
    # negated for 'and' (keystone cannot negate a symbol)
    s.update({f"NOT_{k}": ~v for k, v in ASI_TAINT_MASKS.items()})
    s["NOT_ASI_TAINTS_GUEST_USER_MASK"] = ~(ASI_TAINT_MASKS["ASI_TAINTS_GUEST_MASK"]
                                            | ASI_TAINT_MASKS["ASI_TAINTS_USER_MASK"])
    s.update({f"ASI_FLUSH_{k.upper()}": i for i, k in enumerate(ASI_FLUSHES)})
    s.update(ASI_SESSION_STATE)
    s.update(kvm_abi.stub_symbols())
    s["GMEM_KMAP_VA"] = layout.vmalloc_start + kvm_abi.GMEM_KMAP_OFFSET
    s.update({f"FRAME_{k.name}": int(k) for k in FrameKind})
    s.update({f"PT_{k.upper()}": v for k, v in PT.items()})
    s.update({f"TASK_{k}": v for k, v in TASK.items()})
    s.update({f"MM_{k}": v for k, v in MM.items()})
    s.update({f"VMA_{k}": v for k, v in VMA.items()})
    s.update({f"FILE_{k}": v for k, v in FILE.items()})
    s.update({f"UBLK_{k}": v for k, v in UBLK.items()})
    # UNMAPPED_PAGE, UNMAPPED_PMD_CACHE, UNMAPPED_RESERVED, UNMAPPED_ALLOC: the boot word unmapped_strategy
    s.update({"UNMAPPED_" + n.upper().replace("-", "_").removeprefix("UNMAPPED_"): i
              for i, n in enumerate(UNMAPPED_STRATEGIES)})
    s.update({f"SC_{k}": v for k, v in SC.items()})
    s.update({k: i for i, k in enumerate(RLIMITS)})
    s.update(PTRACE)
    return s
