"""The x86 facts the tracer's decoder works from: the register vector read
at every block start, register naming, and capstone's instruction ids
grouped by what they do to memory and to the CPU's state."""

from __future__ import annotations

from capstone import x86_const as CX

M64 = 0xFFFFFFFFFFFFFFFF

# --- the register vector read at every block start (one C batch call) -----------------
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15")
TRACKED = GPRS + ("rflags", "fs_base", "gs_base", "cr3", "cs")
SLOT = {n: i for i, n in enumerate(TRACKED)}
RFLAGS, RCX, CR3, CS = (SLOT[n] for n in ("rflags", "rcx", "cr3", "cs"))
RF_DF_SHIFT = 10                  # RFLAGS.DF (SDM Vol. 1 3.4.3.2)

# the registers that build addresses, which the data-flow analysis follows,
# and its name for RFLAGS.DF
STATE_REGS = GPRS + ("fs_base", "gs_base")
DF = "df"

# what an instruction may do besides its accesses (StaticInsn.flags)
FLUSH = 1     # the walk cache must go (CR write, invlpg, invpcid)
STALE = 2     # CPL/CR3/control bits may change: re-read before the next access


def ids(*names: str) -> frozenset[int]:
    """capstone ids of the named instructions this capstone knows."""
    return frozenset(getattr(CX, f"X86_INS_{n}") for n in names if hasattr(CX, f"X86_INS_{n}"))


def sized(**sizes: int) -> dict[int, int]:
    """capstone id -> a size in bytes, for the named instructions this capstone knows."""
    return {getattr(CX, f"X86_INS_{n}"): v for n, v in sizes.items() if hasattr(CX, f"X86_INS_{n}")}


# --- register names ------------------------------------------------------------------------
_SUBREGS = {"ax": "rax", "bx": "rbx", "cx": "rcx", "dx": "rdx", "si": "rsi", "di": "rdi", "bp": "rbp",
            "sp": "rsp", "al": "rax", "bl": "rbx", "cl": "rcx", "dl": "rdx", "ah": "rax", "bh": "rbx",
            "ch": "rcx", "dh": "rdx", "sil": "rsi", "dil": "rdi", "bpl": "rbp", "spl": "rsp"}
_REG64: dict[int, str] = {}


def reg64(ins, reg: int) -> str:
    """The 64-bit register holding capstone register ``reg`` (a subregister
    such as ``r8d``, ``esi``, ``al``), or its own name (``rip``, ``fs``, ``xmm0``)."""
    name = _REG64.get(reg)
    if name is None:
        n = ins.reg_name(reg)
        if n.startswith("r") and n[1:].rstrip("dwb").isdigit():
            name = "r" + n[1:].rstrip("dwb")
        elif n in ("rip", "eip"):
            name = "rip"
        else:
            key = n[1:] if len(n) == 3 and n[0] in "re" else n
            name = _SUBREGS.get(key, n)
        _REG64[reg] = name
    return name


# --- instructions by what they do to memory -----------------------------------------------------
NO_ACCESS = ids("LEA", "NOP", "PREFETCH", "PREFETCHNTA", "PREFETCHT0", "PREFETCHT1", "PREFETCHT2",
                "PREFETCHW", "PREFETCHWT1", "CLFLUSH", "CLFLUSHOPT", "CLWB", "CLDEMOTE", "INVLPG",
                "INVLPGA", "BNDCL", "BNDCU", "BNDCN", "BNDMK", "BNDLDX", "BNDSTX")
READ_WRITE = ids("CMPXCHG", "CMPXCHG8B", "CMPXCHG16B")     # capstone says read; the CPU always writes
STATE_512 = ids("FXSAVE", "FXSAVE64", "FXRSTOR", "FXRSTOR64")

# implicit stack accesses by operand size: pushf/popf, iret (5 slots), far ret (2 slots)
PUSHF = sized(PUSHF=2, PUSHFD=4, PUSHFQ=8)
POPF = sized(POPF=2, POPFD=4, POPFQ=8)
IRET = sized(IRET=10, IRETD=20, IRETQ=40)
RETF = sized(RETF=8, RETFQ=16)

# instructions after which CPL, CR3 or the control bits may differ
STATE_INSNS = ids("STAC", "CLAC", "WRMSR", "LMSW", "CLTS", "SYSRET", "SYSRETQ", "SYSEXIT", "SYSEXITQ",
                  "IRET", "IRETD", "IRETQ", "RETF", "RETFQ", "LCALL", "LJMP", "RSM") | frozenset(POPF)
FLUSH_INSNS = ids("INVLPG", "INVPCID", "INVLPGA")

# string instructions: id -> (element size, ((kind, register), ...))
STRINGS: dict[int, tuple[int, tuple]] = {}
for _sfx, _n in (("B", 1), ("W", 2), ("D", 4), ("Q", 8)):
    for _name, _acc in (("MOVS", (("r", "rsi"), ("w", "rdi"))), ("STOS", (("w", "rdi"),)),
                        ("LODS", (("r", "rsi"),)), ("CMPS", (("r", "rsi"), ("r", "rdi"))),
                        ("SCAS", (("r", "rdi"),)), ("INS", (("w", "rdi"),)), ("OUTS", (("r", "rsi"),))):
        _i = getattr(CX, f"X86_INS_{_name}{_sfx}", None)
        if _i is not None:
            STRINGS[_i] = (_n, _acc)
LODS = ids("LODSB", "LODSW", "LODSD", "LODSQ")
REP_PREFIXES = (CX.X86_PREFIX_REP, CX.X86_PREFIX_REPNE)
CR_REGS = frozenset(getattr(CX, f"X86_REG_CR{i}") for i in range(16) if hasattr(CX, f"X86_REG_CR{i}"))
SEG_BASE = {CX.X86_REG_FS: "fs", CX.X86_REG_GS: "gs"}

# effects on memory that no operand shows: a load before them cannot be
# read again afterwards (the hypercall port may write guest memory)
SIDE_EFFECTS = ids("OUT", "OUTSB", "OUTSW", "OUTSD", "IN", "INSB", "INSW", "INSD", "WRMSR", "INVPCID")
