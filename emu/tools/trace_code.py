"""The tracer's view of code: access plans, register tracking, compiled blocks.

:func:`decode` turns the bytes of a translated block into one
:class:`StaticInsn` per instruction: which operands touch memory and
through which registers (the *access plan*), the implicit stack accesses,
string instructions as ranges, and what the instruction does to the
registers that build addresses (its *effects*).

:func:`analyse_block` then runs the block's instructions over an abstract
register state, so that every access's address is known as a function of
the registers at the start of a *segment* of the block (``E``), of the
registers when the segment ended (``X``), or of memory:

* a register is ``E[reg] + k``, a sum of such terms, or a constant, as
  long as the block only moves, adds, subtracts, scales or pushes/pops it;
* anything else (a load, an ``and``, a ``cpuid``...) makes a *definition*
  ``d``.  Its value is recovered from ``X`` when some register still holds
  ``d + k`` wherever the segment may have ended after its first use, or by
  reading the loaded bytes again when no store follows the load in the
  segment.  Failing both, the instruction that needs it becomes an
  *anchor*: a code hook there starts a new segment with fresh registers.

:func:`segment_code` turns a segment into a small Python function that
makes the segment's records.  ``E`` and ``X`` are register vectors in the
order of :data:`TRACKED`.

QEMU behaviour this relies on, checked on this machine: a REP string
instruction ends its translated block after one iteration, and each further
iteration (and a last one with RCX = 0) is a block of its own holding just
that instruction; a block ends inside an instruction QEMU cannot decode
(INVPCID, which the microcode then emulates).  Instructions that change
CPL, CR3 or control bits end blocks too; should one not, the next
instruction gets an anchor.
"""

from __future__ import annotations

import re

import capstone
from capstone import x86_const as CX

M64 = 0xFFFFFFFFFFFFFFFF

# --- the register vector read at every block start (one C batch call) -----------------
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15")
TRACKED = GPRS + ("rflags", "fs_base", "gs_base", "cr3", "cs")
SLOT = {n: i for i, n in enumerate(TRACKED)}
RFLAGS, RCX, CR3, CS = (SLOT[n] for n in ("rflags", "rcx", "cr3", "cs"))
_RF_DF_SHIFT = 10

# the abstract state's keys: the registers that build addresses, and RFLAGS.DF
_STATE_REGS = GPRS + ("fs_base", "gs_base")
_DF = "df"
_DF_SRC = -1            # a term source meaning "RFLAGS.DF at the segment's start"
_DEF0 = 1000            # term sources >= _DEF0 are definitions (index - _DEF0)

# --- access plans -----------------------------------------------------------------------
# An operand plan: (kinds, seg, base, index, scale, disp, addr32)
#   kinds   ((kind, size), ...) in the order the CPU performs them
#   seg     'fs' / 'gs' / None (the other segments have base 0 in 64-bit mode)
#   base, index  64-bit register names or None (RIP-relative is folded into disp)
# A string plan: ('str', kind, elem, reg, seg, rep, addr32)

FLUSH = 1     # the walk cache must go (CR write, invlpg, invpcid)
STALE = 2     # CPL/CR3/control bits may change: re-read before the next access

_REG64: dict[int, str] = {}


def _reg64(ins, reg: int) -> str:
    """The 64-bit register holding a (sub)register used in an address."""
    name = _REG64.get(reg)
    if name is None:
        n = ins.reg_name(reg)
        if n.startswith("r") and n[1:].rstrip("dwb").isdigit():
            name = "r" + n[1:].rstrip("dwb")
        elif n in ("rip", "eip"):
            name = "rip"
        else:
            base = {"ax": "rax", "bx": "rbx", "cx": "rcx", "dx": "rdx", "si": "rsi", "di": "rdi",
                    "bp": "rbp", "sp": "rsp", "al": "rax", "bl": "rbx", "cl": "rcx", "dl": "rdx",
                    "ah": "rax", "bh": "rbx", "ch": "rcx", "dh": "rdx", "sil": "rsi", "dil": "rdi",
                    "bpl": "rbp", "spl": "rsp"}
            key = n[1:] if len(n) == 3 and n[0] in "re" else n
            name = base.get(key, n)
        _REG64[reg] = name
    return name


def _ids(*names: str) -> set[int]:
    return {getattr(CX, f"X86_INS_{n}") for n in names if hasattr(CX, f"X86_INS_{n}")}


_NO_ACCESS = _ids("LEA", "NOP", "PREFETCH", "PREFETCHNTA", "PREFETCHT0", "PREFETCHT1", "PREFETCHT2",
                  "PREFETCHW", "PREFETCHWT1", "CLFLUSH", "CLFLUSHOPT", "CLWB", "CLDEMOTE", "INVLPG",
                  "INVLPGA", "BNDCL", "BNDCU", "BNDCN", "BNDMK", "BNDLDX", "BNDSTX")
_READ_WRITE = _ids("CMPXCHG", "CMPXCHG8B", "CMPXCHG16B")     # capstone says read; the CPU always writes
_STATE_512 = _ids("FXSAVE", "FXSAVE64", "FXRSTOR", "FXRSTOR64")


def _sized(**sizes: int) -> dict[int, int]:
    return {getattr(CX, f"X86_INS_{n}"): v for n, v in sizes.items() if hasattr(CX, f"X86_INS_{n}")}


# implicit stack accesses by operand size: pushf/popf, iret (5 slots), far ret (2 slots)
_PUSHF = _sized(PUSHF=2, PUSHFD=4, PUSHFQ=8)
_POPF = _sized(POPF=2, POPFD=4, POPFQ=8)
_IRET = _sized(IRET=10, IRETD=20, IRETQ=40)
_RETF = _sized(RETF=8, RETFQ=16)
# instructions after which CPL, CR3 or the control bits may differ
_STATE_INSNS = _ids("STAC", "CLAC", "WRMSR", "LMSW", "CLTS", "SYSRET", "SYSRETQ", "SYSEXIT", "SYSEXITQ",
                    "IRET", "IRETD", "IRETQ", "RETF", "RETFQ", "LCALL", "LJMP", "RSM") | set(_POPF)
_FLUSH_INSNS = _ids("INVLPG", "INVPCID", "INVLPGA")

# string instructions: id -> (element size, ((kind, register), ...))
_STRINGS: dict[int, tuple[int, tuple]] = {}
for _sfx, _n in (("B", 1), ("W", 2), ("D", 4), ("Q", 8)):
    for _name, _acc in (("MOVS", (("r", "rsi"), ("w", "rdi"))), ("STOS", (("w", "rdi"),)),
                        ("LODS", (("r", "rsi"),)), ("CMPS", (("r", "rsi"), ("r", "rdi"))),
                        ("SCAS", (("r", "rdi"),)), ("INS", (("w", "rdi"),)), ("OUTS", (("r", "rsi"),))):
        _i = getattr(CX, f"X86_INS_{_name}{_sfx}", None)
        if _i is not None:
            _STRINGS[_i] = (_n, _acc)
_REP_PREFIXES = (CX.X86_PREFIX_REP, CX.X86_PREFIX_REPNE)
_CR_REGS = {getattr(CX, f"X86_REG_CR{i}") for i in range(16) if hasattr(CX, f"X86_REG_CR{i}")}
_SEG_BASE = {CX.X86_REG_FS: "fs", CX.X86_REG_GS: "gs"}

# --- register effects ----------------------------------------------------------------------
# An effect is a tuple applied, in order, to the abstract state after the
# instruction's accesses (whose addresses use the state before it):
#   ("add", r, c)          r += c                  ("set", r, c)       r = c
#   ("copy", d, s)         d = s                   ("sum", d, s, k)    d += k * s
#   ("mul", r, c)          r *= c                  ("swap", a, b)
#   ("lea", d, plan)       d = the plan's effective address (no segment base)
#   ("load", d, i, n)      d = the n bytes read by the instruction's access plan i
#   ("entry", d, name)     d = the register ``name`` at the segment's start (mov r, cr3)
#   ("zx32", r)            r &= 0xffffffff (a 32-bit result)
#   ("alu", r, op, src, w) r = r op src on w bytes, src ('imm', c) or ('reg', s): constants only
#   ("strstep", r, elem)   r += elem, or -= elem when RFLAGS.DF is set
#   ("df", v)              RFLAGS.DF = v (cld/std)
#   ("opaque", r)          r = anything
_ALU = {CX.X86_INS_AND: "and", CX.X86_INS_OR: "or", CX.X86_INS_XOR: "xor", CX.X86_INS_SHL: "shl",
        CX.X86_INS_SHR: "shr", CX.X86_INS_SAR: "sar"}
# registers written that capstone's regs_access() leaves out, or that the
# microcode's hooks write (the hypercall port answers in RAX, SYSCALL sets
# RCX/R11, SWAPGS and WRMSR change the GS/FS bases)
_EXTRA_WRITES = {
    CX.X86_INS_SYSCALL: ("rcx", "r11", _DF), CX.X86_INS_OUT: ("rax",), CX.X86_INS_XLATB: ("rax",),
    CX.X86_INS_SWAPGS: ("gs_base",), CX.X86_INS_WRMSR: ("fs_base", "gs_base"),
    CX.X86_INS_CMPXCHG: ("rax",), CX.X86_INS_CMPXCHG8B: ("rax", "rdx"), CX.X86_INS_CMPXCHG16B: ("rax", "rdx"),
    CX.X86_INS_IRETQ: ("rsp", _DF), CX.X86_INS_IRET: ("rsp", _DF), CX.X86_INS_IRETD: ("rsp", _DF),
    CX.X86_INS_SYSRET: (_DF,), CX.X86_INS_RDMSR: ("rax", "rdx"), CX.X86_INS_CPUID: ("rax", "rbx", "rcx", "rdx"),
    CX.X86_INS_RDTSC: ("rax", "rdx"), CX.X86_INS_RDTSCP: ("rax", "rdx", "rcx"),
}
# effects on memory that no operand shows: a load before them cannot be
# read again afterwards (the hypercall port may write guest memory)
_SIDE_EFFECTS = _ids("OUT", "OUTSB", "OUTSW", "OUTSD", "IN", "INSB", "INSW", "INSD", "WRMSR", "INVPCID")


class StaticInsn:
    """What one instruction does to memory and to address registers,
    independent of register values."""

    __slots__ = ("addr", "size", "text", "ops", "flags", "eff", "stores")

    def __init__(self, addr, size, text, ops, flags, eff=(), stores=False):
        self.addr, self.size, self.text, self.ops, self.flags = addr, size, text, ops, flags
        self.eff, self.stores = eff, stores

    @property
    def string(self) -> bool:
        return bool(self.ops) and self.ops[0][0] == "str"

    @property
    def rep(self) -> bool:
        return self.string and self.ops[0][5]

    def __repr__(self):
        return f"StaticInsn({self.addr:#x} {self.text!r} ops={self.ops} flags={self.flags})"


def _mem_plan(ins, op, kinds, *, base_adjust: int = 0) -> tuple:
    m = op.mem
    seg = _SEG_BASE.get(m.segment)
    base = _reg64(ins, m.base) if m.base else None
    index = _reg64(ins, m.index) if m.index else None
    disp = m.disp + base_adjust
    if base == "rip":
        base, disp = None, ins.address + ins.size + m.disp     # RIP-relative: RIP of the next instruction
    return (kinds, seg, base, index, m.scale, disp, ins.addr_size == 4)


def _stack_plan(kind: str, size: int, disp: int, base: str = "rsp") -> tuple:
    return (((kind, size),), None, base, None, 1, disp, False)


def _dest(ins):
    """(64-bit register, width in bytes) of a register first operand, else None."""
    ops = ins.operands
    if ops and ops[0].type == CX.X86_OP_REG:
        name = _reg64(ins, ops[0].reg)
        if name in _STATE_REGS:
            return name, ops[0].size
    return None


def _effects(ins, ops_plans: list) -> tuple:
    """The register effects of one instruction (see the table above)."""
    iid = ins.id
    ops = ins.operands
    R, I, MEM = CX.X86_OP_REG, CX.X86_OP_IMM, CX.X86_OP_MEM
    dst = _dest(ins)
    two = len(ops) == 2
    src_reg = _reg64(ins, ops[1].reg) if two and ops[1].type == R else None
    eff: list[tuple] = []

    def width(name: str, w: int, *core):
        """Effects for a w-byte destination: 64-bit exact, 32-bit zero-extended, else opaque."""
        if w == 8:
            return list(core)
        if w == 4:
            return list(core) + [("zx32", name)]
        return [("opaque", name)]

    if iid == CX.X86_INS_PUSH:
        return (("add", "rsp", -ops_plans[-1][0][0][1]),)
    if iid == CX.X86_INS_POP:
        n = ops_plans[0][0][0][1]
        out = [("add", "rsp", n)]
        if ops[0].type == R:
            name = _reg64(ins, ops[0].reg)
            if name in _STATE_REGS:
                out.append(("load", name, 0, 8) if n == 8 else ("opaque", name))
            elif name in ("fs", "gs"):
                out.append(("opaque", f"{name}_base"))
        return tuple(out)
    if iid in _PUSHF or iid == CX.X86_INS_CALL:
        return (("add", "rsp", -ops_plans[-1][0][0][1]),)
    if iid in _POPF:
        return (("add", "rsp", _POPF[iid]), ("opaque", _DF))
    if iid == CX.X86_INS_RET:
        return (("add", "rsp", 8 + (ops[0].imm if ops else 0)),)
    if iid == CX.X86_INS_LEAVE:
        return (("copy", "rsp", "rbp"), ("add", "rsp", 8), ("load", "rbp", 0, 8))
    if iid == CX.X86_INS_ENTER:
        if len(ops) == 2 and ops[1].imm == 0:
            return (("add", "rsp", -8), ("copy", "rbp", "rsp"), ("add", "rsp", -ops[0].imm))
        return (("opaque", "rsp"), ("opaque", "rbp"))
    if iid == CX.X86_INS_CLD or iid == CX.X86_INS_STD:
        return (("df", 1 if iid == CX.X86_INS_STD else 0),)
    if iid in _STRINGS and ins.prefix[0] not in _REP_PREFIXES and ops_plans and ops_plans[0][0] == "str":
        out = [("strstep", reg, _STRINGS[iid][0]) for _, reg in _STRINGS[iid][1]]
        if iid in _ids("LODSB", "LODSW", "LODSD", "LODSQ"):
            out.append(("opaque", "rax"))
        return tuple(out)
    if dst is not None and two:
        d, w = dst
        if iid in (CX.X86_INS_MOV, CX.X86_INS_MOVABS):
            if ops[1].type == I:
                return tuple(width(d, w, ("set", d, ops[1].imm & M64)) if w != 4 else
                             [("set", d, ops[1].imm & 0xFFFFFFFF)])
            if ops[1].type == R and src_reg in _STATE_REGS:
                return tuple(width(d, w, ("copy", d, src_reg)))
            if ops[1].type == R and ops[1].reg == CX.X86_REG_CR3:
                return (("entry", d, "cr3"),)
            if ops[1].type == MEM and w in (4, 8) and ops_plans:
                return (("load", d, 0, w),)
        if iid == CX.X86_INS_MOVZX and ops[1].type == MEM and w in (4, 8) and ops_plans:
            return (("load", d, 0, ops[1].size),)
        if iid == CX.X86_INS_LEA and ins.addr_size == 8:
            return tuple(width(d, w, ("lea", d, _mem_plan(ins, ops[1], ()))))
        if iid in (CX.X86_INS_ADD, CX.X86_INS_SUB):
            sign = 1 if iid == CX.X86_INS_ADD else -1
            if ops[1].type == I:
                return tuple(width(d, w, ("add", d, sign * ops[1].imm)))
            if ops[1].type == R and src_reg in _STATE_REGS:
                if src_reg == d and sign < 0 and w in (4, 8):
                    return (("set", d, 0),)
                return tuple(width(d, w, ("sum", d, src_reg, sign)))
        if iid == CX.X86_INS_XOR and ops[1].type == R and ops[1].reg == ops[0].reg and w in (4, 8):
            return (("set", d, 0),)
        if iid in _ALU and ops[1].type in (I, R):
            src = ("imm", ops[1].imm) if ops[1].type == I else ("reg", src_reg)
            if src[0] == "reg" and src_reg not in _STATE_REGS:
                return (("opaque", d),)
            if iid == CX.X86_INS_SHL and src[0] == "imm" and w == 8:
                return (("mul", d, 1 << (src[1] & 63)),)
            return tuple(width(d, w, ("alu", d, _ALU[iid], src, w)))
        if iid == CX.X86_INS_XCHG and ops[1].type == R and src_reg in _STATE_REGS and w == 8:
            return (("swap", d, src_reg),)
        if iid == CX.X86_INS_IMUL and len(ops) == 3 and ops[1].type == R and ops[2].type == I \
                and src_reg in _STATE_REGS and w == 8:
            return (("copy", d, src_reg), ("mul", d, ops[2].imm))
    if dst is not None and len(ops) == 1 and iid in (CX.X86_INS_INC, CX.X86_INS_DEC, CX.X86_INS_NEG):
        d, w = dst
        if iid == CX.X86_INS_NEG:
            return tuple(width(d, w, ("mul", d, M64)))
        return tuple(width(d, w, ("add", d, 1 if iid == CX.X86_INS_INC else -1)))
    # anything else: every tracked register it writes becomes opaque
    written = set(_EXTRA_WRITES.get(iid, ()))
    try:
        written.update(_reg64(ins, r) for r in ins.regs_access()[1])
    except capstone.CsError:
        pass
    written.update(_reg64(ins, o.reg) for o in ops if o.type == R and o.access & 2)
    if "fs" in written:
        written.add("fs_base")
    if "gs" in written:
        written.add("gs_base")
    if iid in _STRINGS:          # a REP string instruction: its pointers and count move
        written.update(("rsi", "rdi", "rcx"))
    eff = [("opaque", r) for r in sorted(written) if r in _STATE_REGS or r == _DF]
    return tuple(eff)


def analyse(ins) -> StaticInsn:
    """The access plan and register effects of one capstone instruction (``detail`` on)."""
    iid = ins.id
    ops: list[tuple] = []
    flags = 0
    text = f"{ins.mnemonic} {ins.op_str}".strip()
    mem = [o for o in ins.operands if o.type == CX.X86_OP_MEM]
    if iid in _STRINGS and not any(o.type == CX.X86_OP_REG and ins.reg_name(o.reg).startswith("xmm")
                                   for o in ins.operands):
        elem, accesses = _STRINGS[iid]
        rep = ins.prefix[0] in _REP_PREFIXES
        src_seg = None
        for o in mem:
            if _reg64(ins, o.mem.base) == "rsi":
                src_seg = _SEG_BASE.get(o.mem.segment)
        for kind, reg in accesses:
            ops.append(("str", kind, elem, reg, src_seg if reg == "rsi" else None, rep, ins.addr_size == 4))
        stores = any(k == "w" for k, _ in accesses) or iid in _SIDE_EFFECTS
        return StaticInsn(ins.address, ins.size, text, tuple(ops), flags, _effects(ins, ops), stores)
    if iid in _FLUSH_INSNS:
        flags |= FLUSH | STALE
    if iid in _STATE_INSNS:
        flags |= STALE
    if iid == CX.X86_INS_MOV and ins.operands and ins.operands[0].type == CX.X86_OP_REG \
            and ins.operands[0].reg in _CR_REGS:
        flags |= FLUSH | STALE       # mov cr3/cr4/cr0: new tables or new control bits
    if iid == CX.X86_INS_PUSH:
        o = ins.operands[0]
        n = 2 if o.size == 2 and not (o.type == CX.X86_OP_REG and ins.reg_name(o.reg) in ("fs", "gs")) else 8
        if o.type == CX.X86_OP_MEM:
            ops.append(_mem_plan(ins, o, (("r", n),)))      # the address uses RSP before the push
        ops.append(_stack_plan("w", n, -n))
    elif iid == CX.X86_INS_POP:
        o = ins.operands[0]
        n = 2 if o.size == 2 and not (o.type == CX.X86_OP_REG and ins.reg_name(o.reg) in ("fs", "gs")) else 8
        ops.append(_stack_plan("r", n, 0))
        if o.type == CX.X86_OP_MEM:
            # SDM POP: an RSP-based destination uses RSP after the increment
            adj = n if o.mem.base and _reg64(ins, o.mem.base) == "rsp" else 0
            ops.append(_mem_plan(ins, o, (("w", n),), base_adjust=adj))
    elif iid in _PUSHF:
        ops.append(_stack_plan("w", _PUSHF[iid], -_PUSHF[iid]))
    elif iid in _POPF:
        ops.append(_stack_plan("r", _POPF[iid], 0))
    elif iid == CX.X86_INS_CALL:
        for o in mem:
            ops.append(_mem_plan(ins, o, (("r", 8),)))
        ops.append(_stack_plan("w", 8, -8))
    elif iid == CX.X86_INS_RET:
        ops.append(_stack_plan("r", 8, 0))
    elif iid in _RETF:
        ops.append(_stack_plan("r", _RETF[iid], 0))
    elif iid == CX.X86_INS_LEAVE:
        ops.append(_stack_plan("r", 8, 0, base="rbp"))    # RSP <- RBP; pop RBP
    elif iid == CX.X86_INS_ENTER:
        ops.append(_stack_plan("w", 8, -8))                # push RBP (nesting level 0)
    elif iid in _IRET:
        ops.append(_stack_plan("r", _IRET[iid], 0))
    elif iid not in _NO_ACCESS:
        for o in mem:
            acc = o.access or 1
            size = 512 if iid in _STATE_512 else o.size
            if iid in _READ_WRITE:
                acc = 3
            kinds = tuple(k for k, bit in (("r", 1), ("w", 2)) if acc & bit)
            ops.append(_mem_plan(ins, o, tuple((k, size) for k in kinds)))
    stores = any(k == "w" for op in ops for k, _ in op[0]) or iid in _SIDE_EFFECTS
    return StaticInsn(ins.address, ins.size, text, tuple(ops), flags, _effects(ins, ops), stores)


_cs: capstone.Cs | None = None
_DECODED: dict[tuple[int, bytes], list[StaticInsn]] = {}


def decode(code: bytes, addr: int) -> list[StaticInsn]:
    """Access plans of the instructions in ``code`` (a block) at ``addr``.

    Cached by (address, bytes) for the whole process: a block is decoded
    once however many machines run it."""
    key = (addr, code)
    hit = _DECODED.get(key)
    if hit is not None:
        return hit
    global _cs
    if _cs is None:
        _cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        _cs.detail = True
    out = [analyse(ins) for ins in _cs.disasm(code, addr)]
    if len(_DECODED) > 50_000:
        _DECODED.clear()
    _DECODED[key] = out
    return out


# --- abstract values ------------------------------------------------------------------------
# A value is (terms, off): off + sum(mult * source) mod 2**64, with terms a
# sorted tuple of (source, mult).  A source is a TRACKED slot (the register
# at the segment's start), _DF_SRC, or _DEF0 + i (definition i).

def _const(c: int) -> tuple:
    return ((), c & M64)


def _add(v: tuple, c: int) -> tuple:
    return (v[0], (v[1] + c) & M64)


def _comb(a: tuple, b: tuple, k: int = 1) -> tuple:
    """a + k * b."""
    terms = dict(a[0])
    for src, mult in b[0]:
        terms[src] = (terms.get(src, 0) + k * mult) & M64
    return (tuple(sorted((s, m) for s, m in terms.items() if m)), (a[1] + k * b[1]) & M64)


def _mul(v: tuple, c: int) -> tuple:
    c &= M64
    return (tuple((s, m * c & M64) for s, m in v[0] if m * c & M64), v[1] * c & M64)


def _alu(op: str, a: int, b: int, w: int) -> int:
    """x86 and/or/xor/shl/shr/sar on w-byte constants (the result before zero-extension)."""
    mask = (1 << 8 * w) - 1
    a &= mask
    n = b & (63 if w == 8 else 31)
    if op == "and":
        return a & b
    if op == "or":
        return a | b
    if op == "xor":
        return a ^ b
    if op == "shl":
        return a << n
    if op == "shr":
        return a >> n
    sign = 1 << (8 * w - 1)           # sar
    return ((a ^ sign) - sign) >> n


class Def:
    """A value made inside a segment that the linear state cannot follow:
    ``load`` (the ``size`` bytes at ``addr``, an address triple) or ``opaque``."""

    __slots__ = ("index", "insn", "kind", "addr", "size")

    def __init__(self, index: int, insn: int, kind: str, addr=None, size: int = 0):
        self.index, self.insn, self.kind, self.addr, self.size = index, insn, kind, addr, size


class Access:
    """One planned access of a segment: instruction index, plan index, and
    its address as a triple (effective address, addr32, segment base) of
    values; for a string plan the values of (src, dst, count, df)."""

    __slots__ = ("insn", "plan", "addr", "string")

    def __init__(self, insn, plan, addr=None, string=None):
        self.insn, self.plan, self.addr, self.string = insn, plan, addr, string

    def values(self) -> list[tuple]:
        if self.string is not None:
            (src, _, sseg), (dst, _, _), count, df = self.string
            return [v for v in (src, sseg, dst, count, df) if v is not None]
        ea, _, seg = self.addr
        return [ea] + ([seg] if seg is not None else [])


class SegmentState:
    """The abstract run of instructions [a, b) of a block from their entry
    state: ``states[i - a]`` is the state before instruction i
    (``states[b - a]`` after the last), ``accesses`` in order, ``defs``."""

    def __init__(self, insns: list[StaticInsn], a: int, b: int):
        self.insns, self.a, self.b = insns, a, b
        st = {r: (((SLOT[r], 1),), 0) for r in _STATE_REGS}
        st[_DF] = (((_DF_SRC, 1),), 0)
        self.defs: list[Def] = []
        self.accesses: list[Access] = []
        self.states = [dict(st)]
        for i in range(a, b):
            st = self._step(i, st)
            self.states.append(dict(st))

    def _new_def(self, i: int, kind: str, addr=None, size: int = 0) -> tuple:
        d = Def(len(self.defs), i, kind, addr, size)
        self.defs.append(d)
        return (((_DEF0 + d.index, 1),), 0)

    def _ea(self, st: dict, plan: tuple, with_seg: bool = True):
        _, seg, base, index, scale, disp, addr32 = plan
        v = _const(disp)
        for reg, k in ((base, 1), (index, scale)):
            if reg is None:
                continue
            if reg not in st:
                return None          # not a register the state follows (VSIB...): not traced
            v = _comb(v, st[reg], k)
        segv = st[f"{seg}_base"] if seg and with_seg else None
        return (v, addr32, segv)

    def _step(self, i: int, st: dict) -> dict:
        ins = self.insns[i]
        addrs = []
        if ins.string:
            _, _, _, _, seg, rep, addr32 = ins.ops[0]
            src = (st["rsi"], addr32, st[f"{seg}_base"] if seg else None)
            dst = (st["rdi"], addr32, None)
            count = st["rcx"] if rep else None
            self.accesses.append(Access(i, 0, string=(src, dst, count, st[_DF])))
        else:
            for j, plan in enumerate(ins.ops):
                a = self._ea(st, plan)
                addrs.append(a)
                if a is not None:
                    self.accesses.append(Access(i, j, addr=a))
        st = dict(st)
        for e in ins.eff:
            op = e[0]
            if op == "add":
                st[e[1]] = _add(st[e[1]], e[2])
            elif op == "set":
                st[e[1]] = _const(e[2])
            elif op == "copy":
                st[e[1]] = st[e[2]]
            elif op == "sum":
                st[e[1]] = _comb(st[e[1]], st[e[2]], e[3])
            elif op == "mul":
                st[e[1]] = _mul(st[e[1]], e[2])
            elif op == "swap":
                st[e[1]], st[e[2]] = st[e[2]], st[e[1]]
            elif op == "lea":
                a = self._ea(st, e[2], with_seg=False)
                st[e[1]] = a[0] if a is not None and not a[1] else self._new_def(i, "opaque")
            elif op == "load":
                a = addrs[e[2]] if e[2] < len(addrs) else None
                st[e[1]] = self._new_def(i, "load" if a is not None else "opaque", a, e[3])
            elif op == "entry":
                st[e[1]] = (((SLOT[e[2]], 1),), 0)
            elif op == "zx32":
                v = st[e[1]]
                st[e[1]] = _const(v[1] & 0xFFFFFFFF) if not v[0] else self._new_def(i, "opaque")
            elif op == "alu":
                v, (kind, x) = st[e[1]], e[3]
                w = st.get(x) if kind == "reg" else _const(x)
                if not v[0] and w is not None and not w[0]:
                    st[e[1]] = _const(_alu(e[2], v[1], w[1], e[4]))
                else:
                    st[e[1]] = self._new_def(i, "opaque")
            elif op == "strstep":
                df = st[_DF]
                st[e[1]] = _add(st[e[1]], -e[2] if df[1] else e[2]) if not df[0] else self._new_def(i, "opaque")
            elif op == "df":
                st[_DF] = _const(e[1])
            elif op == "opaque":
                st[e[1]] = self._new_def(i, "opaque")
        return st

    # -- where a definition's value can come from -------------------------------------------------
    def held(self, d: int, c: int):
        """(register, offset) with register = def d + offset in the state
        before instruction c, or None."""
        src = _DEF0 + d
        for r in _STATE_REGS:
            terms, off = self.states[c - self.a][r]
            if len(terms) == 1 and terms[0] == (src, 1):
                return r, off
        return None

    def replayable(self, d: int, end: int) -> bool:
        """Def d is a load, and nothing in [its instruction, end) may have
        changed the bytes it read."""
        df = self.defs[d]
        return df.kind == "load" and not any(self.insns[i].stores for i in range(df.insn, end))

    def sources(self, v: tuple) -> list[int]:
        return [s - _DEF0 for s, _ in v[0] if s >= _DEF0]

    def needs(self, acc: Access) -> list[int]:
        """Every definition the access's address needs, replayed loads' included."""
        out: list[int] = []
        todo = [d for v in acc.values() for d in self.sources(v)]
        while todo:
            d = todo.pop()
            if d in out:
                continue
            out.append(d)
            df = self.defs[d]
            if df.kind == "load":
                todo.extend(x for v in (df.addr[0], df.addr[2]) if v is not None for x in self.sources(v))
        return sorted(out)


_ANCHORS: dict[tuple, frozenset[int]] = {}


def block_anchors(addr: int, insns: list[StaticInsn], cuts: set[int]) -> frozenset[int]:
    """:func:`analyse_block`, cached for the process by the block's
    instructions (decode() shares them for the same address and bytes)."""
    key = (addr, id(insns), frozenset(cuts))
    hit = _ANCHORS.get(key)
    if hit is None or hit[0] is not insns:
        if len(_ANCHORS) > 50_000:
            _ANCHORS.clear()
        hit = _ANCHORS[key] = (insns, frozenset(analyse_block(insns, cuts)))
    return hit[1]


def analyse_block(insns: list[StaticInsn], cuts: set[int]) -> set[int]:
    """Where a block needs anchors, given those it has (``cuts``, instruction
    indices): a definition needed at instruction k must be recoverable
    wherever the segment may end after k (the next cut or the block's end,
    or earlier: a fault or a stop), from X or by reading memory again.
    Also after an instruction that changes CPL/CR3/control bits, should one
    not end the block (QEMU ends it there).  Returns the new anchor indices.

    One pass from the left: a cut only shortens the segment before it, in
    which what was recoverable stays so."""
    n = len(insns)
    new = {i + 1 for i in range(n - 1) if insns[i].flags & STALE} - set(cuts)
    ends = sorted((set(cuts) | new | {n}) - {0})
    a = 0
    while a < n:
        b = next(c for c in ends if c > a)
        seg = SegmentState(insns, a, b)
        k = next((acc.insn for acc in seg.accesses if acc.insn > a and any(
            not (seg.replayable(d, b) or all(seg.held(d, c) for c in range(acc.insn + 1, b + 1)))
            for d in seg.needs(acc))), None)
        if k is None:
            a = b
        else:
            new.add(k)             # instruction k starts a segment of its own
            a = k
    return new


# --- code generation --------------------------------------------------------------------------
def _hexs(c: int) -> str:
    """A 64-bit constant, signed when that reads better (-0x8 for 0xfff...f8)."""
    return f"-{(1 << 64) - c:#x}" if c >= 1 << 63 else f"{c:#x}"


def _term(src: int, mult: int, regs: str) -> str:
    if src == _DF_SRC:
        t = f"(({regs}[{RFLAGS}] >> {_RF_DF_SHIFT}) & 1)"
    elif src >= _DEF0:
        t = f"d{src - _DEF0}"
    else:
        t = f"{regs}[{src}]"
    return t if mult == 1 else f"{t} * {_hexs(mult)}"


def value_code(v: tuple, regs: str = "E") -> tuple[str, bool]:
    """(Python expression, already within 64 bits) of an abstract value."""
    terms, off = v
    if not terms:
        return f"{off:#x}", True
    parts = [_term(s, m, regs) for s, m in terms]
    code = " + ".join(parts)
    exact = len(terms) == 1 and terms[0][1] == 1 and off == 0
    if off:
        code += f" + {_hexs(off)}" if off < 1 << 63 else f" - {(1 << 64) - off:#x}"
    return code, exact


def addr_code(a: tuple) -> str:
    ea, addr32, seg = a
    code, exact = value_code(ea)
    if addr32:
        code, exact = f"(({code}) & 0xFFFFFFFF)", True
    if seg is not None:
        s, _ = value_code(seg)
        code, exact = f"{code} + {s}", False
    return code if exact else f"({code}) & {M64:#x}"


class Compiler:
    """Python source for the records of instructions [a, c) of a block.

    The function ``seg(E, X, seq, ctx, S, *HELPERS)`` returns the new
    ``seq``; E holds the registers at instruction a, X those before
    instruction c (None for a single instruction whose own accesses need
    only E); S the symbols of the block's instructions; the helpers are the
    tracer's (bound once, see :data:`HELPERS`).  ``emit`` False: numbering only (the space
    filter rejects the context).  ``unsure``: the run stopped at the REP
    instruction that ends the range, which may not have started (its
    handler compares RCX with X).  ``want``: kinds recorded; ``va_range``.
    ``fetch``: (address, size, pa1, fault1, pa2, fault2, bytes in the first
    page) of the block, whose ``x`` record (and seq) a range starting at
    instruction 0 makes first."""

    def __init__(self, insns, a: int, c: int, *, emit: bool, unsure: bool, want: dict, va_range,
                 fetch: tuple | None = None):
        self.insns, self.a, self.c = insns, a, c
        self.emit, self.unsure, self.want, self.va_range = emit, unsure, want, va_range
        self.fetch = fetch if a == 0 else None
        self.seg = SegmentState(insns, a, c)
        self.lines: list[str] = []
        self.unresolved = 0

    def source(self) -> str:
        """The function's source.  Speed matters here (about half the traced
        run's time): registers and repeated addresses go to locals once,
        helpers are default arguments (local variables)."""
        seg, L = self.seg, self.lines
        L.append(f"def seg(E, X, seq, ctx, S, {', '.join(HELPERS)}):")
        if self.emit:
            L.append("    wr, ww, wx = ctx.walks; cpl = ctx.cpl; root = ctx.root; pcid = ctx.pcid; space = ctx.space")
        if self.fetch is not None:
            self._fetch()
        needed = sorted({d for acc in seg.accesses for d in seg.needs(acc)})
        for d in needed:
            L.append(f"    d{d} = {self._resolve(d)}")
        by_insn: dict[int, list[Access]] = {}
        for acc in seg.accesses:
            by_insn.setdefault(acc.insn, []).append(acc)
        for i in range(self.a, self.c):
            ins = self.insns[i]
            accs = by_insn.get(i, ())
            if ins.string:
                src, dst, count, df = accs[0].string
                x = "X" if self.unsure and i == self.c - 1 else "None"
                cnt = value_code(count)[0] if count is not None else "None"
                L.append(f"    seq = _string(seq, INS[{i}], S[{i}], ctx, {addr_code(src)}, {addr_code(dst)}, "
                         f"{cnt}, {value_code(df)[0]}, {x}, {self.emit})")
            elif ins.ops:
                L.append("    seq += 1")
                if self.emit and accs:
                    self._accesses(i, [(kind, size, acc) for acc in accs
                                       for kind, size in ins.ops[acc.plan][0]], "    ")
            if ins.flags & FLUSH:
                L.append("    _flush()")
            if ins.flags & STALE:
                L.append("    _stale()")
        L.append("    return seq")
        # E[i] -> a local e<i>, read once
        body = "\n".join(L[1:])
        slots = sorted({int(x) for x in re.findall(r"\bE\[(\d+)\]", body)})
        if slots:
            body = re.sub(r"\bE\[(\d+)\]", r"e\1", body)
            body = "    " + "; ".join(f"e{i} = E[{i}]" for i in slots) + "\n" + body
        return L[0] + "\n" + body + "\n"

    def _fetch(self) -> None:
        """The block's x record: one per page it spans."""
        L = self.lines
        L.append("    seq += 1")
        if not (self.emit and self.want["x"]):
            return
        addr, size, pa1, fault1, pa2, fault2, first = self.fetch
        pieces = [(addr, first, pa1, fault1)]
        if first < size and fault1 is None:
            pieces.append((addr + first, size - first, pa2, fault2))
        lo, hi = self.va_range or (0, 1 << 64)
        for va, n, pa, fault in pieces:
            if va < hi and va + n > lo:
                L.append(f"    app((seq, {addr:#x}, S[0], cpl, root, pcid, space, 'x', {va:#x}, {n}, "
                         f"{'None' if pa is None else hex(pa)}, {fault!r}))")

    def _resolve(self, d: int) -> str:
        seg = self.seg
        h = seg.held(d, self.c) if self.c > self.a else None
        if h is not None:
            r, off = h
            return f"X[{SLOT[r]}]" if off == 0 else f"(X[{SLOT[r]}] - {_hexs(off)}) & {M64:#x}"
        df = seg.defs[d]
        if df.kind == "load":
            if not seg.replayable(d, self.c):
                self.unresolved += 1        # an anchor should have prevented this: read anyway
            return f"_load(ctx, {addr_code(df.addr)}, {df.size})"
        self.unresolved += 1
        return "0"

    def _accesses(self, i: int, items: list, ind: str) -> None:
        """Records of instruction i's accesses, in order; after one that
        faults (per the walker) the instruction's later accesses are not made."""
        L = self.lines
        rip = self.insns[i].addr
        lo_hi = self.va_range
        prev = None
        for n_item, (kind, size, acc) in enumerate(items):
            last = n_item == len(items) - 1
            acc_id = {"r": 0, "w": 1, "x": 2}[kind]
            code = addr_code(acc.addr)
            if code != prev:      # read-modify-write: the same address again
                L.append(f"{ind}va = {code}")
            prev = code
            L.append(f"{ind}o = va & 0xFFF")
            probe = f"{('wr', 'ww', 'wx')[acc_id]}.get(va >> 12)"
            if size > 1:
                probe += f" if o <= {0x1000 - size:#x} else None"
            L.append(f"{ind}p = {probe}")
            fail = "pass" if last else "ok = False"
            if not last:
                L.append(f"{ind}ok = True")
            slow = f"_emit(seq, {rip:#x}, S[{i}], ctx, {kind!r}, va, {size})"
            if self.want[kind]:
                L.append(f"{ind}if p is not None:")
                rec = (f"app((seq, {rip:#x}, S[{i}], cpl, root, pcid, space, {kind!r}, va, {size}, "
                       f"p | o, None))")
                if lo_hi is not None:
                    L.append(f"{ind}    if va < {lo_hi[1]:#x} and va + {size} > {lo_hi[0]:#x}:")
                    L.append(f"{ind}        {rec}")
                else:
                    L.append(f"{ind}    {rec}")
                L.append(f"{ind}elif not {slow}:")
            else:
                L.append(f"{ind}if p is None and not {slow}:")
            L.append(f"{ind}    {fail}")
            if not last:
                L.append(f"{ind}if ok:")
                ind += "    "


# names a compiled segment takes after (E, X, seq, ctx, S): bound per tracer
# as the function's defaults (local variables, faster than globals)
HELPERS = ("app", "_emit", "_string", "_load", "_flush", "_stale", "INS")
_CODE: dict[tuple, object] = {}


def segment_code(insns: list[StaticInsn], a: int, c: int, *, emit: bool, unsure: bool, want: dict, va_range,
                 fetch: tuple | None) -> tuple[object, int]:
    """(code object of the segment function, unresolved count), compiled once
    per process for the same instructions and options: Python's compile()
    costs about 0.3 ms a segment, which short traces feel."""
    f = fetch if a == 0 else None
    key = (id(insns), a, c, emit, unsure, tuple(sorted(want.items())), va_range, f)
    hit = _CODE.get(key) if f is None or not (f[3] or f[5]) else None
    if hit is not None and hit[0] is insns:
        return hit[1], hit[2]
    comp = Compiler(insns, a, c, emit=emit, unsure=unsure, want=want, va_range=va_range, fetch=fetch)
    src = comp.source()
    name = f"<trace {insns[0].addr if insns else 0:#x}[{a}:{c}]>"
    module = compile(src, name, "exec")
    code = next(k for k in module.co_consts if getattr(k, "co_name", None) == "seg")
    if f is None or not (f[3] or f[5]):         # fault dicts are unhashable, and rare
        if len(_CODE) > 50_000:
            _CODE.clear()
        _CODE[key] = (insns, code, comp.unresolved)
    return code, comp.unresolved
