"""Memory-access tracing: one record per access of every executed instruction.

A :class:`Tracer` attached to a :class:`~emu.machine.Machine` reports, for
each instruction that touches memory, which virtual address it touched, how
(``r``/``w``/``x``), in which address space, and what the page tables made
of it (the physical address, or the fault)::

    for rec in iter_trace("prog.S", kinds="w"):
        print(rec.as_dict())

How the records are made (ARCHITECTURE.md fact 7: Unicorn's memory hooks
see physical addresses, so virtual ones come from decoding):

* A block hook decodes each translated block once with capstone into
  per-instruction *access plans* (cached by address, physical address and
  bytes, and reused while the bytes are unchanged): which operands touch
  memory and through which registers, the implicit stack accesses (push,
  pop, call, ret, leave, pushf/popf, iretq), string instructions as whole
  ranges, RIP-relative and FS/GS-relative operands.  It also makes the
  block's ``x`` record.
* A code hook runs the plan of each memory-touching instruction *before* it
  executes: reads the registers it needs, computes each virtual address,
  splits it at page boundaries and translates every piece with the
  reference walker (:func:`emu.paging.translate`) through the CR3 current
  at that moment.  Walks are cached per page and flushed on CR3/CR4 writes,
  ``invlpg``/``invpcid`` and after a fault on the page (x86 never caches a
  faulting translation).  CPL, CR3 and the control bits are re-read after
  anything that may change them: an exception, interrupt or syscall event,
  or an instruction such as ``mov cr3``, ``sysret``, ``iretq``, ``popf``.
* The exception frame written by the microcode arrives as a ``frame_write``
  event and becomes ``w`` records of the faulting instruction (same
  ``seq``); a faulting instruction fetch arrives as an ``exception`` event
  and becomes an ``x`` record with its fault.

Tracing off costs nothing: no hook exists until :meth:`Tracer.attach`, and
:meth:`Tracer.detach` removes them and drops the instrumented translations.
"""

from __future__ import annotations

import os
from operator import itemgetter
from typing import Iterable, Iterator

import capstone
from capstone import x86_const as CX

from .cpu import REG_IDS, OneReg, RegBatch
from .errors import AddressError, ConfigError
from .machine import DEFAULT_BUDGET, BudgetExhausted, KernelPanic, Machine, MachineConfig
from .paging import ADDR_MASK, PF_I, VEC_PF, ControlState, translate
from .spaces import parse_address

KINDS = "rwx"
FIELDS = ("seq", "rip", "symbol", "cpl", "cr3", "pcid", "space", "kind", "va", "size", "pa", "fault")
DEFAULT_CHUNK = 200_000          # instructions per Machine.step while iterating

_ACCESS = {"r": 0, "w": 1, "x": 2}
_M64 = 0xFFFFFFFFFFFFFFFF
_CR0_WP = 1 << 16
_CR4_SMEP, _CR4_SMAP, _CR4_PKE, _CR4_LA57 = 1 << 20, 1 << 21, 1 << 22, 1 << 12
_CR4_BITS = _CR4_SMEP | _CR4_SMAP | _CR4_PKE | _CR4_LA57
_CR4_PCIDE = 1 << 17
_RF_AC = 1 << 18
_RF_DF = 1 << 10


# --- records -----------------------------------------------------------------------
class Record(tuple):
    """One access.  ``seq`` numbers the executed blocks and memory-touching
    instructions in order (all records of one instruction share it, its
    exception frame included); ``rip``/``symbol`` name the instruction (for
    ``x``, the block's start); ``cpl`` is the privilege of the access (0 for
    the frame written by exception delivery); ``cr3`` is the page-table base
    and ``pcid`` CR3's low 12 bits when CR4.PCIDE is set (else None);
    ``fault`` is None or ``{"vector": v, "error_code": ec}``, and then ``pa``
    is None."""

    __slots__ = ()

    seq = property(itemgetter(0))
    rip = property(itemgetter(1))
    symbol = property(itemgetter(2))
    cpl = property(itemgetter(3))
    cr3 = property(itemgetter(4))
    pcid = property(itemgetter(5))
    space = property(itemgetter(6))
    kind = property(itemgetter(7))
    va = property(itemgetter(8))
    size = property(itemgetter(9))
    pa = property(itemgetter(10))
    fault = property(itemgetter(11))

    def as_dict(self, hex_addresses: bool = False) -> dict:
        """Exactly the keys of :data:`FIELDS`; ``hex_addresses`` writes rip,
        cr3, va and pa as ``0x...`` strings (as the CLI's JSON does)."""
        d = dict(zip(FIELDS, self))
        if d["fault"] is not None:
            d["fault"] = dict(d["fault"])
        if hex_addresses:
            for k in ("rip", "cr3", "va", "pa"):
                if d[k] is not None:
                    d[k] = f"{d[k]:#x}"
        return d

    def __repr__(self):
        where = f"pa={self.pa:#x}" if self.fault is None else \
            f"fault=#{self.fault['vector']}({self.fault['error_code']:#x})"
        return (f"Record(#{self.seq} {self.symbol} cpl{self.cpl} {self.space} {self.kind} "
                f"va={self.va:#x}+{self.size} {where})")


_new = tuple.__new__


# --- static decoding ----------------------------------------------------------------
# An operand plan: (kinds, seg, base, index, scale, disp, addr32)
#   kinds   ((kind, size), ...) in the order the CPU performs them
#   seg     'fs' / 'gs' / None (the other segments have base 0 in 64-bit mode)
#   base, index  64-bit register names or None (RIP-relative is folded into disp)
# A string plan: ('str', kind, elem, reg, seg, rep, addr32)

_FLUSH = 1     # the walk cache must go (CR write, invlpg, invpcid)
_STALE = 2     # CPL/CR3/control bits may change: re-read before the next access

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
                    "bp": "rbp", "sp": "rsp"}
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
# instructions after which CPL, CR3 or the control bits may differ (the block
# hook re-reads them only then, and after exceptions, interrupts and syscalls)
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


class StaticInsn:
    """What one instruction does to memory, independent of register values."""

    __slots__ = ("addr", "size", "text", "ops", "flags")

    def __init__(self, addr, size, text, ops, flags):
        self.addr, self.size, self.text, self.ops, self.flags = addr, size, text, ops, flags

    def __repr__(self):
        return f"StaticInsn({self.addr:#x} {self.text!r} ops={self.ops} flags={self.flags})"


def _mem_plan(ins, op, kinds, *, base_adjust: int = 0) -> tuple:
    m = op.mem
    seg = {CX.X86_REG_FS: "fs", CX.X86_REG_GS: "gs"}.get(m.segment)
    base = _reg64(ins, m.base) if m.base else None
    index = _reg64(ins, m.index) if m.index else None
    disp = m.disp + base_adjust
    if base == "rip":
        base, disp = None, ins.address + ins.size + m.disp     # RIP-relative: RIP of the next instruction
    return (kinds, seg, base, index, m.scale, disp, ins.addr_size == 4)


def _stack_plan(kind: str, size: int, disp: int, base: str = "rsp") -> tuple:
    return (((kind, size),), None, base, None, 1, disp, False)


def analyse(ins) -> StaticInsn:
    """The access plan of one capstone instruction (``detail`` on)."""
    iid = ins.id
    ops: list[tuple] = []
    flags = 0
    mem = [o for o in ins.operands if o.type == CX.X86_OP_MEM]
    if iid in _STRINGS and not any(o.type == CX.X86_OP_REG and ins.reg_name(o.reg).startswith("xmm")
                                   for o in ins.operands):
        elem, accesses = _STRINGS[iid]
        rep = ins.prefix[0] in _REP_PREFIXES
        src_seg = None
        for o in mem:
            if _reg64(ins, o.mem.base) == "rsi":
                src_seg = {CX.X86_REG_FS: "fs", CX.X86_REG_GS: "gs"}.get(o.mem.segment)
        for kind, reg in accesses:
            ops.append(("str", kind, elem, reg, src_seg if reg == "rsi" else None, rep, ins.addr_size == 4))
        return StaticInsn(ins.address, ins.size, f"{ins.mnemonic} {ins.op_str}".strip(), tuple(ops), flags)
    if iid in _FLUSH_INSNS:
        flags |= _FLUSH | _STALE
    if iid in _STATE_INSNS:
        flags |= _STALE
    if iid == CX.X86_INS_MOV and ins.operands and ins.operands[0].type == CX.X86_OP_REG \
            and ins.operands[0].reg in _CR_REGS:
        flags |= _FLUSH | _STALE       # mov cr3/cr4/cr0: new tables or new control bits
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
    return StaticInsn(ins.address, ins.size, f"{ins.mnemonic} {ins.op_str}".strip(), tuple(ops), flags)


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


# --- the tracer ---------------------------------------------------------------------------
class _Ctx:
    """What the registers say about where accesses go: CPL, CR3, control bits."""

    __slots__ = ("cpl", "root", "pcid", "space", "ctl", "ok", "walks", "proc")

    def __init__(self, cpl, root, pcid, space, ctl, ok, proc):
        self.cpl, self.root, self.pcid, self.space, self.ctl = cpl, root, pcid, space, ctl
        self.ok, self.proc = ok, proc
        self.walks: dict[int, int] = {}          # page << 2 | access -> physical page


_UNSET = object()
_MISSING = object()


class _Plan:
    """A :class:`StaticInsn` bound to a tracer: one closure per memory
    operand (``accs``), and the symbol, computed once per process."""

    __slots__ = ("addr", "size", "accs", "flags", "string", "sym", "sym_of")

    def __init__(self, st: StaticInsn):
        self.addr, self.size, self.flags = st.addr, st.size, st.flags
        self.accs: list = []
        self.string: tuple | None = None
        self.sym, self.sym_of = None, _UNSET


class Tracer:
    """Memory-access records of a :class:`~emu.machine.Machine`.

    ``kinds``: any of ``"rwx"``; ``space``: keep only accesses made through
    that space's page tables (a name from ``Machine.spaces()``);
    ``va_range``: ``(lo, hi)``, keep accesses overlapping ``[lo, hi)``.
    Filters never change ``seq`` numbers.

    Use as a context manager (or :meth:`attach`/:meth:`detach`); records
    accumulate in :attr:`records`; :meth:`drain` takes them; :meth:`run`
    runs the machine in chunks and yields them.  After editing page tables
    or registers from Python in the middle of a run, call :meth:`flush`.
    """

    def __init__(self, machine: Machine, kinds: str | Iterable[str] = KINDS, space: str | None = None,
                 va_range: tuple[int, int] | None = None):
        self.machine = machine
        self.kinds = parse_kinds(kinds)
        self.space = space
        if va_range is not None:
            lo, hi = va_range
            if not 0 <= lo < hi <= 1 << 64:
                raise AddressError(f"empty or out-of-range address range {lo:#x}-{hi:#x}")
        self.va_range = va_range
        self.records: list[Record] = []
        self._attached = False
        self._hooks: list[int] = []

    # -- attach / detach ----------------------------------------------------------------
    def attach(self) -> "Tracer":
        """Install the hooks (boots the machine if needed).  Re-attaching
        continues the ``seq`` numbering and keeps the decoded blocks."""
        if self._attached:
            return self
        m = self.machine
        m.boot()
        if not hasattr(self, "_cpu"):
            self._setup()
        self.flush()
        cpu = self._cpu
        self._hooks = [cpu.add_block_hook(self._on_block), cpu.add_trace_hook(self._on_insn)]
        m.on_event(self._on_event)
        self._attached = True
        return self

    def _setup(self) -> None:
        m = self.machine
        cpu = self._cpu = m.cpu
        self._space_root = None
        if self.space is not None:
            spaces = m.spaces()
            if self.space not in spaces:
                raise ConfigError(f"unknown space {self.space!r}: choose from {', '.join(sorted(spaces))}")
            self._space_root = spaces[self.space] & ADDR_MASK
        self._mem = m.mem
        self._buf = m.mem.buf
        self._rd = {n: OneReg(cpu, REG_IDS[n]).read for n in
                    ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
                     "r12", "r13", "r14", "r15", "fs_base", "gs_base", "rflags", "cr0", "cr4")}
        self._pairs: dict[tuple[str, str], tuple] = {}      # (base, index) -> (read, values)
        self._state = RegBatch(cpu, [REG_IDS[n] for n in ("cr3", "cs", "cr0", "cr4", "rflags")])
        self._nxe = bool(m.config.nx)
        self._ctls: dict[tuple, ControlState] = {}
        self._ctxs: dict[tuple, _Ctx] = {}
        self._state_key = None
        self._ctx: _Ctx | None = None
        self._stale = True
        self._blocks: dict[tuple, tuple] = {}
        self._singles: dict[tuple, _Plan | None] = {}
        self._plans: dict = {}
        self._seq = 0
        self._last_rip = None                        # the instruction that has seq self._seq
        self._frame_owner = None                     # (rip, seq) of the exception being delivered
        self._rep = None                             # (pc, root, RCX at the next iteration)
        self._halts = {i.addr for i in m.kernel.image.insns if i.mnemonic == "hlt"}
        self._want = {k: k in self.kinds for k in KINDS}
        self._want_x = self._want["x"]
        self._lo, self._hi = self.va_range if self.va_range else (0, 1 << 64)

    def detach(self) -> None:
        if not self._attached:
            return
        for h in self._hooks:
            self._cpu.del_code_hook(h)
        self._hooks = []
        self.machine.off_event(self._on_event)
        # blocks translated while attached still call into the hook list: retranslate
        self._cpu.flush_code_cache()
        self._attached = False

    def __enter__(self) -> "Tracer":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    def drain(self) -> list[Record]:
        """The records so far, removed from :attr:`records`."""
        out = self.records[:]
        self.records.clear()         # the same list: plans hold its append
        return out

    def flush(self) -> None:
        """Forget cached walks and register state (after host-side edits)."""
        for ctx in getattr(self, "_ctxs", {}).values():
            ctx.walks.clear()
        self._stale = True

    # -- running ---------------------------------------------------------------------------
    def run(self, budget: int = DEFAULT_BUDGET, chunk: int = DEFAULT_CHUNK) -> Iterator[Record]:
        """Run the machine until it halts, yielding records as they come.

        Raises :class:`~emu.machine.BudgetExhausted` (after yielding what was
        recorded) when ``budget`` instructions do not suffice, and
        :class:`~emu.machine.KernelPanic` on a stub panic."""
        if budget <= 0:
            raise ConfigError(f"the budget must be a positive number of instructions, not {budget}")
        self.attach()
        m = self.machine
        left = budget
        while left > 0:
            n = min(chunk, left)
            self.flush()
            reason = m.step(n)
            left -= n
            if reason == "halt" and m.cpu.reg("rip") - 1 not in self._halts:
                # the machine calls any stop after a byte 0xf4 a halt (e.g. after
                # 'mov r12, rsi', 49 89 f4): only the stub's HLT instructions halt
                reason = "budget"
            yield from self.drain()
            if reason == "halt":
                _check_panic(m)
                return
            if reason != "budget":
                return
        raise BudgetExhausted(f"instruction budget of {budget} exhausted at {m.where()}")

    # -- register state ----------------------------------------------------------------------
    def _refresh(self) -> None:
        v = self._state.read()
        cr3, cs, cr0, cr4, fl = v[0], v[1], v[2], v[3], v[4]
        key = (cr3, cs & 3, cr0 & _CR0_WP, cr4 & (_CR4_BITS | _CR4_PCIDE), fl & _RF_AC)
        self._stale = False
        if key == self._state_key:
            return
        self._state_key = key
        ctx = self._ctxs.get(key)
        if ctx is None:
            root = cr3 & ADDR_MASK
            space = self.machine.space_of(cr3)
            ok = self._space_root is None or root == self._space_root
            ctx = self._ctxs[key] = _Ctx(cs & 3, root, (cr3 & 0xFFF) if cr4 & _CR4_PCIDE else None, space,
                                         self._ctl(cr0, cr4, bool(fl & _RF_AC)), ok, self._proc_of(space))
        self._ctx = ctx

    def _ctl(self, cr0: int, cr4: int, ac: bool) -> ControlState:
        key = (cr0 & _CR0_WP, cr4 & _CR4_BITS, ac)
        ctl = self._ctls.get(key)
        if ctl is None:
            ctl = self._ctls[key] = ControlState(
                wp=bool(cr0 & _CR0_WP), smep=bool(cr4 & _CR4_SMEP), smap=bool(cr4 & _CR4_SMAP),
                pke=bool(cr4 & _CR4_PKE), la57=bool(cr4 & _CR4_LA57), nxe=self._nxe, ac=ac)
        return ctl

    def _proc_of(self, space: str):
        """The process whose program symbolizes user addresses of ``space``."""
        name = space.split(".", 1)[0] if "." in space else None
        for p in self.machine.processes:
            if p.name == name:
                return p
        return None

    def _walk(self, ctx: _Ctx, va: int, acc: int):
        """(pa, fault) of one access inside one page; successes are cached."""
        t = translate(self._mem, ctx.root, va, acc, ctx.cpl, ctx.ctl)
        key = (va >> 12) << 2
        if t.fault:
            # x86 never caches a faulting translation: the page's entries go
            for a in (0, 1, 2):
                ctx.walks.pop(key | a, None)
            # (a non-canonical stack access is #SS(0) in the SDM; QEMU, and
            # so this machine, raise #GP(0) as the walker says)
            return None, {"vector": t.vector, "error_code": t.error_code}
        ctx.walks[key | acc] = t.pa & ~0xFFF
        return t.pa, None

    def _symbol(self, p: _Plan, ctx: _Ctx) -> str:
        if p.sym_of is not ctx.proc:
            p.sym = self.machine.symbolize(p.addr, ctx.proc)
            p.sym_of = ctx.proc
        return p.sym

    # -- blocks: decode once, fetch records --------------------------------------------------
    def _on_block(self, addr: int, size: int) -> None:
        if self._stale:
            self._refresh()
        ctx = self._ctx
        rep = self._rep
        if rep is not None and rep[0] == addr and rep[1] == ctx.root and self._rd["rcx"]() == rep[2]:
            return         # the next iteration of a REP string instruction (QEMU: one per block)
        walks = ctx.walks
        first = 0x1000 - (addr & 0xFFF)
        pa1 = walks.get((addr >> 12) << 2 | 2)
        fault1 = None
        if pa1 is None:
            pa1, fault1 = self._walk(ctx, addr, 2)
        else:
            pa1 |= addr & 0xFFF
        if first >= size:
            first = size
            pa2 = fault2 = None
        else:
            a2 = addr + first
            pa2 = walks.get((a2 >> 12) << 2 | 2)
            fault2 = None
            if pa2 is None and fault1 is None:
                pa2, fault2 = self._walk(ctx, a2, 2)
        hit = self._blocks.get((addr, size, pa1, pa2))
        if hit is not None:
            buf = self._buf
            if buf[pa1:pa1 + first] != hit[0] if pa2 is None else \
                    buf[pa1:pa1 + first] + buf[pa2:pa2 + size - first] != hit[0]:
                hit = None             # the code changed: decode again
        if hit is None:
            hit = self._decode_block(ctx, addr, size, (addr, size, pa1, pa2))
        plans = self._plans = hit[1]
        self._seq = seq = self._seq + 1
        self._last_rip = addr
        if self._want_x and ctx.ok:
            p = plans.get(addr) or hit[2]
            sym = p.sym if p.sym_of is ctx.proc else self._symbol(p, ctx)
            self._emit_x(ctx, addr, sym, addr, first, pa1, fault1)
            if first < size and fault1 is None:
                self._emit_x(ctx, addr, sym, addr + first, size - first, pa2, fault2)

    def _emit_x(self, ctx: _Ctx, rip: int, sym: str, va: int, size: int, pa, fault) -> None:
        if va < self._hi and va + size > self._lo:
            self.records.append(_new(Record, (self._seq, rip, sym, ctx.cpl, ctx.root, ctx.pcid, ctx.space,
                                              "x", va, size, pa, fault)))

    def _code_bytes(self, ctx: _Ctx, va: int, n: int) -> bytes | None:
        """Bytes at ``va`` through the current tables (any present page)."""
        out = b""
        sup = self._ctl(0, ctx.ctl.la57 and _CR4_LA57, False)     # a supervisor read, no SMAP, no WP
        while n > 0:
            t = translate(self._mem, ctx.root, va, 0, 0, sup)
            if t.fault:
                return out or None
            chunk = min(n, 0x1000 - (va & 0xFFF))
            out += self._buf[t.pa:t.pa + chunk]
            va, n = va + chunk, n - chunk
        return out

    def _decode_block(self, ctx: _Ctx, addr: int, size: int, key: tuple) -> tuple:
        """(bytes, {addr: plan or None}, plan of the block's start)."""
        code = self._code_bytes(ctx, addr, size) if size else None
        plans: dict = {}
        for st in decode(code, addr) if code else ():
            plans[st.addr] = self._bind(st)
        entry = (code, plans, _Plan(StaticInsn(addr, 0, "", (), 0)))
        one_page = (addr & 0xFFF) + size <= 0x1000
        if code is not None and len(code) == size and key[2] is not None and (one_page or key[3] is not None):
            if len(self._blocks) > 20_000:
                self._blocks.clear()
            self._blocks[key] = entry
        return entry

    def _single(self, addr: int) -> _Plan | None:
        """The plan of an instruction outside the current block (rare)."""
        code = self._code_bytes(self._ctx, addr, 15)
        if code is None:
            return None
        key = (addr, self._ctx.root, code)
        if key not in self._singles:
            sts = decode(code, addr)
            self._singles[key] = self._bind(sts[0]) if sts else None
        return self._singles[key]

    # -- binding plans to live registers ------------------------------------------------------
    def _bind(self, st: StaticInsn) -> _Plan | None:
        if not st.ops and not st.flags:
            return None
        p = _Plan(st)
        if st.ops and st.ops[0][0] == "str":
            p.string = st.ops
            return p
        for op in st.ops:
            kinds = tuple((_ACCESS[k], k, n, self._want[k]) for k, n in op[0])
            _, seg, base, index, _, disp, addr32 = op
            simple = (self._rd[base], disp) if base and not (seg or index or addr32) else None
            p.accs.append(self._access_fn(p, self._addr_fn(op), kinds, simple))
        return p

    def _addr_fn(self, op: tuple):
        """A closure computing the operand's virtual address from live registers."""
        _, seg, base, index, scale, disp, addr32 = op
        rd = self._rd
        if seg is None and not addr32:
            if base is None and index is None:
                const = disp & _M64
                return lambda: const
            if index is None:
                rb = rd[base]
                return lambda: (rb() + disp) & _M64
            if base is None:
                ri = rd[index]
                return lambda: (ri() * scale + disp) & _M64
            if base == index:
                rb = rd[base]
                return lambda: (rb() * (1 + scale) + disp) & _M64
            pair = self._pairs.get((base, index))
            if pair is None:
                batch = RegBatch(self._cpu, [REG_IDS[base], REG_IDS[index]])
                # one C call for both; a memoryview indexes faster than the ctypes array
                pair = self._pairs[(base, index)] = (batch.read, memoryview(batch.vals).cast("B").cast("Q"))
            rp, v = pair

            def base_index():
                rp()
                return (v[0] + v[1] * scale + disp) & _M64
            return base_index
        rb = rd[base] if base else None
        ri = rd[index] if index else None
        rs = rd[f"{seg}_base"] if seg else None

        def general():
            ea = disp + (rb() if rb else 0) + (ri() * scale if ri else 0)
            if addr32:
                ea &= 0xFFFFFFFF
            return ((rs() if rs else 0) + ea) & _M64
        return general

    def _access_fn(self, p: _Plan, addr, kinds: tuple, base: tuple | None = None):
        """The records of one operand: ``access(seq, ctx)``, False if it faults.
        The common case (one page, walk cached) is inline; the rest is
        :meth:`_emit`."""
        append = self.records.append
        lo, hi = self._lo, self._hi
        slow = self._emit
        symbol = self._symbol
        rip = p.addr
        if len(kinds) == 1:
            ((acc, kind, n, want),) = kinds
            last = 0x1000 - n
            if base is not None:
                addr, disp = base            # [reg + disp], the commonest: one call less

            def access(seq: int, ctx: _Ctx) -> bool:
                va = (addr() + disp) & _M64 if base else addr()
                if va & 0xFFF <= last:
                    pa = ctx.walks.get((va >> 12) << 2 | acc)
                    if pa is not None:
                        if want and va < hi and va + n > lo:
                            append(_new(Record, (seq, rip, p.sym if p.sym_of is ctx.proc else symbol(p, ctx),
                                                 ctx.cpl, ctx.root, ctx.pcid, ctx.space, kind, va, n,
                                                 pa | (va & 0xFFF), None)))
                        return True
                return slow(seq, p, ctx, kind, va, n)
            return access

        def access_rw(seq: int, ctx: _Ctx) -> bool:
            va = addr()
            off = va & 0xFFF
            walks = ctx.walks
            for acc, kind, n, want in kinds:
                if off + n <= 0x1000:
                    pa = walks.get((va >> 12) << 2 | acc)
                    if pa is not None:
                        if want and va < hi and va + n > lo:
                            append(_new(Record, (seq, rip, p.sym if p.sym_of is ctx.proc else symbol(p, ctx),
                                                 ctx.cpl, ctx.root, ctx.pcid, ctx.space, kind, va, n, pa | off,
                                                 None)))
                        continue
                if not slow(seq, p, ctx, kind, va, n):
                    return False
            return True
        return access_rw

    def _emit(self, seq: int, p: _Plan, ctx: _Ctx, kind: str, va: int, size: int) -> bool:
        """Records of one access, split at page boundaries; False if it faults."""
        acc = _ACCESS[kind]
        want = self._want[kind]
        while True:
            off = va & 0xFFF
            n = size if off + size <= 0x1000 else 0x1000 - off
            pa = ctx.walks.get((va >> 12) << 2 | acc)
            if pa is not None:
                pa |= off
                fault = None
            else:
                pa, fault = self._walk(ctx, va, acc)
            if want and va < self._hi and va + n > self._lo:
                self.records.append(_new(Record, (seq, p.addr, self._symbol(p, ctx), ctx.cpl, ctx.root,
                                                  ctx.pcid, ctx.space, kind, va, n, pa, fault)))
            if fault is not None:
                return False
            if n == size:
                return True
            va, size = (va + n) & _M64, size - n

    # -- instructions -----------------------------------------------------------------------------
    def _on_insn(self, addr: int, size: int) -> None:
        p = self._plans.get(addr, _MISSING)
        if p is None:
            return
        if p is _MISSING:
            if self._stale:
                self._refresh()
            p = self._single(addr)
            if p is None:
                return
        if self._stale:
            self._refresh()
        if p.accs:
            self._seq = seq = self._seq + 1
            self._last_rip = addr
            ctx = self._ctx
            if ctx.ok:
                for access in p.accs:
                    if not access(seq, ctx):
                        break
        elif p.string:
            self._exec_string(p)
        flags = p.flags
        if flags:
            if flags & _FLUSH:
                self.flush()
            if flags & _STALE:
                self._stale = True

    def _exec_string(self, p: _Plan) -> None:
        """A string instruction: one range per operand (REP: RCX elements,
        downwards when RFLAGS.DF is set).  QEMU runs a REP instruction one
        iteration per block; only the first iteration makes records."""
        rd = self._rd
        ctx = self._ctx
        _, _, elem, _, _, rep, addr32 = p.string[0]
        count = 1
        if rep:
            rcx = rd["rcx"]()
            if addr32:
                rcx &= 0xFFFFFFFF
            last = self._rep
            self._rep = (p.addr, ctx.root, rcx - 1) if rcx else None
            if last is not None and last[0] == p.addr and last[1] == ctx.root and last[2] == rcx:
                return                    # a later iteration of the same execution
            if rcx == 0:
                return
            count = rcx
        down = bool(rd["rflags"]() & _RF_DF)
        self._seq = seq = self._seq + 1
        self._last_rip = p.addr
        if not ctx.ok:
            return
        for _, kind, _, reg, seg, _, _ in p.string:
            start = rd[reg]()
            if addr32:
                start &= 0xFFFFFFFF
            if seg:
                start += rd[f"{seg}_base"]()
            first = (start - (count - 1) * elem) if down else start
            if not self._emit(seq, p, ctx, kind, first & _M64, elem * count):
                break

    # -- events: exception frames and fetch faults ---------------------------------------------
    def _on_event(self, ev) -> None:
        kind = ev.kind
        if kind == "exception" or kind == "interrupt":
            self._stale = True
            d = ev.data
            rip = d.get("rip")
            if kind == "exception" and d.get("vector") == VEC_PF and (d.get("error_code") or 0) & PF_I:
                # a faulting instruction fetch never reaches the hooks: record it here
                self._seq += 1
                self._last_rip = rip
                self._fetch_fault(d)
            elif kind == "interrupt" or d.get("software") or rip != self._last_rip:
                # nothing of this instruction was recorded (INT3, UD2, an interrupt...)
                if d.get("software"):
                    # INT n / INT3 report the next RIP: name the instruction itself
                    rip = max((a for a in self._plans if rip - 2 <= a < rip), default=rip)
                self._seq += 1
                self._last_rip = rip
            self._frame_owner = (rip, self._seq)
        elif kind == "frame_write":
            self._frame_write(ev.data, self._frame_owner or (None, self._seq))
        elif kind in ("syscall", "cr3_write"):
            self._stale = True

    def _event_ctx(self, cr3: int) -> tuple:
        root = cr3 & ADDR_MASK
        pcid = (cr3 & 0xFFF) if self._rd["cr4"]() & _CR4_PCIDE else None
        space = self.machine.space_of(cr3)
        return root, pcid, space, self._space_root is None or root == self._space_root

    def _fetch_fault(self, d: dict) -> None:
        root, pcid, space, ok = self._event_ctx(d["cr3"])
        va = d.get("cr2")
        if not (ok and self._want["x"] and va is not None and va < self._hi and va + 1 > self._lo):
            return
        rip = d["rip"]
        self.records.append(_new(Record, (self._seq, rip, self.machine.symbolize(rip, self._proc_of(space)),
                                          d["cpl"], root, pcid, space, "x", va, 1, None,
                                          {"vector": VEC_PF, "error_code": d["error_code"]})))

    def _frame_write(self, d: dict, owner: tuple) -> None:
        """The frame pushed by exception delivery: implicit supervisor writes
        (CPL 0), attributed to the interrupted instruction."""
        root, pcid, space, ok = self._event_ctx(d["cr3"])
        if not (ok and self._want["w"]):
            return
        rip, seq = owner
        sym = self.machine.symbolize(rip, self._proc_of(space)) if rip is not None else "?"
        ctl = self._ctl(self._rd["cr0"](), self._rd["cr4"](), False)
        va, size = d["va"], d["size"]
        while size > 0:
            n = min(size, 0x1000 - (va & 0xFFF))
            t = translate(self._mem, root, va, 1, 0, ctl)
            pa, fault = (None, {"vector": t.vector, "error_code": t.error_code}) if t.fault else (t.pa, None)
            if va < self._hi and va + n > self._lo:
                self.records.append(_new(Record, (seq, rip, sym, 0, root, pcid, space, "w", va, n, pa, fault)))
            va, size = va + n, size - n


def _check_panic(m: Machine) -> None:
    if m.kernel.read_data("panic_flag"):
        tail = bytes(m.console).decode(errors="replace").strip().splitlines()
        raise KernelPanic("kernel panic: " + (" / ".join(tail[-3:]) if tail else "no message"))


# --- helpers for users and the CLI ----------------------------------------------------------------
def parse_kinds(kinds: str | Iterable[str]) -> str:
    """``"rw"``, ``["r", "x"]``... -> a string of distinct kinds in ``rwx`` order."""
    letters = "".join(kinds) if not isinstance(kinds, str) else kinds
    bad = sorted(set(letters) - set(KINDS))
    if bad or not letters:
        raise ConfigError(f"bad access kind {letters!r}: use r, w, x or a combination such as rw")
    return "".join(k for k in KINDS if k in letters)


def parse_range(text: str) -> tuple[int, int]:
    """``LO-HI`` -> ``(lo, hi)``, the half-open range ``[lo, hi)``.  Each end
    is read as ``isoemu walk`` reads addresses (``0x600000``; 16 hex digits)."""
    lo_s, sep, hi_s = text.partition("-")
    if not sep or not lo_s.strip() or not hi_s.strip():
        raise AddressError(f"bad range {text!r}: expected LO-HI, e.g. 0x600000-0x601000")
    lo, hi = parse_address(lo_s, "range start"), parse_address(hi_s, "range end")
    if lo >= hi:
        raise AddressError(f"bad range {text!r}: the start must be below the end")
    return lo, hi


def load_machine(program, config: MachineConfig | None = None, *, name: str = "A",
                 record_events: bool = False) -> Machine:
    """A machine running one user program, process ``name`` (so its spaces
    are ``A.user``, ``A.kernel``, ``A.asi``): source text (it contains a
    newline) or the path of a ``.S`` file."""
    path = None
    if isinstance(program, os.PathLike) or (isinstance(program, str) and "\n" not in program):
        path = os.fspath(program)
        try:
            with open(path) as f:
                source = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    elif isinstance(program, str):
        source = program
    else:
        raise ConfigError(f"a program is source text or a path, not {type(program).__name__}")
    m = Machine(config or MachineConfig(), record_events=record_events)
    m.add_process(name, source, filename=path or "<program>")
    return m


def iter_trace(program, config: MachineConfig | None = None, *, kinds: str = KINDS, space: str | None = None,
               va_range: tuple[int, int] | None = None, budget: int = DEFAULT_BUDGET,
               name: str = "A", chunk: int = DEFAULT_CHUNK) -> Iterator[Record]:
    """Run a user program (source or path) on a fresh machine, yielding its
    records as they are made (see :class:`Tracer` for the filters)."""
    m = load_machine(program, config, name=name)
    tracer = Tracer(m, kinds=kinds, space=space, va_range=va_range)
    with tracer:
        yield from tracer.run(budget, chunk)


def trace_program(program, config: MachineConfig | None = None, **options) -> list[Record]:
    """:func:`iter_trace` as a list."""
    return list(iter_trace(program, config, **options))


# --- speed (isoemu bench) ------------------------------------------------------------------------------
BENCH_PROGRAM = """
# memory-heavy user code: loads, stores, read-modify-writes and stack traffic
# over a 4 KiB buffer, forever
.text
_start:
    mov rbx, USER_DATA
    xor ecx, ecx
loop:
    mov rax, qword ptr [rbx + rcx*8]
    add rax, 1
    mov qword ptr [rbx + rcx*8 + 8], rax
    add qword ptr [rbx], rax
    mov rdx, qword ptr [rip + counter]
    mov qword ptr [rip + counter], rdx
    push rax
    pop rdx
    inc ecx
    and ecx, 0x1fe
    jmp loop
.data
counter: .quad 0
"""


def bench_trace(quick: bool) -> list[dict]:
    """Traced and untraced execution of :data:`BENCH_PROGRAM` on the default
    machine, each beside raw Unicorn running the same loop through the same
    page tables (at CPL 0, no microcode): with no hook, and with an empty
    Python code hook (the binding's ``hook_add``).  All in this run."""
    from unicorn import UC_HOOK_CODE

    from .bench import _best, figure
    from .cpu import Cpu

    m = Machine(MachineConfig(), programs=[("A", BENCH_PROGRAM)], record_events=False)
    m.boot()
    m.step(50_000)                                   # boot, enter the loop
    n_fast = 5_000_000 if quick else 50_000_000
    n_slow = 100_000 if quick else 1_000_000
    tracer = Tracer(m)
    records = []

    def untraced() -> int:
        m.step(n_fast)
        return n_fast

    def traced() -> int:
        with tracer:
            for done in range(0, n_slow, DEFAULT_CHUNK):
                m.step(min(DEFAULT_CHUNK, n_slow - done))
                records.append(len(tracer.drain()))
        return n_slow

    raw = Cpu(m.mem)
    raw.enable_paging(m.cpu.reg("cr3"), ControlState(smep=False, smap=False))
    for n in ("rip", "rsp", "rbx", "rcx"):
        raw.set_reg(n, m.cpu.reg(n))

    def raw_run(count: int):
        def go() -> int:
            raw.emu_start(raw.reg("rip"), count)
            return count
        return go

    t_untraced, _ = _best(untraced)
    t_raw, _ = _best(raw_run(n_fast))
    h = raw.uc.hook_add(UC_HOOK_CODE, lambda *a: None)
    raw.flush_code_cache()
    t_hook, _ = _best(raw_run(n_slow))
    raw.uc.hook_del(h)
    t_traced, _ = _best(traced, 2)
    baselines = {"raw Unicorn, no hooks": n_fast / t_raw,
                 "raw Unicorn, empty Python code hook": n_slow / t_hook}
    figs = []
    for name, ips, target in (
            ("traced_insn_per_s (memory-heavy user loop, every access recorded)", n_slow / t_traced, ">= 1e6"),
            ("untraced_insn_per_s (the same loop, no tracer)", n_fast / t_untraced, ">= 5e7")):
        fig = figure(name, ips, "insn/s", baseline=baselines["raw Unicorn, no hooks"],
                     baseline_name="raw Unicorn, no hooks", target=target)
        fig["baselines"] = dict(baselines)
        fig["ratios"] = {k: v / ips for k, v in baselines.items()}     # slowdowns, as "ratio"
        figs.append(fig)
    figs[0]["note"] = f"{sum(records) / (2 * n_slow):.2f} records per instruction"     # two timed runs
    return figs
