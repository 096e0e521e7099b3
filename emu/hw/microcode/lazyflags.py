"""RFLAGS from QEMU's lazy-flag fields, without a call into Unicorn
(docs/unicorn-notes.md, "Kernel entry").

QEMU does not keep the arithmetic flags in ``env->eflags`` while it runs:
the last flag-setting operation leaves ``cc_op`` (which operation, of which
size), ``cc_dst`` (its result), ``cc_src`` and ``cc_src2`` (an operand or
the carry in), and the flags are computed when something reads them.
``uc_reg_read(RFLAGS)`` is QEMU's ``cpu_compute_eflags`` (target/i386/cpu.h):

    (eflags & ~(OF SF ZF AF PF CF DF)) | cpu_cc_compute_all(env, cc_op) | (df & DF)

truncated to 32 bits, ``cpu_cc_compute_all`` being ``helper_cc_compute_all``
of target/i386/cc_helper.c and cc_helper_template.h.  :data:`COMPUTE` holds
that function for each ``cc_op`` of QEMU's ``CCOp`` enum (target/i386/cpu.h)
in Python; :func:`verified` checks each of them, at its first use, against
the API's own read on a throwaway CPU (values patched into a saved context,
restored, RFLAGS read through the API) and keeps only those that agree: a
kernel entry reads RFLAGS through the API for any other ``cc_op``.
"""

from __future__ import annotations

import ctypes
import random
import struct

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from emu.hw.cpu import C, calibration_uc

_M64 = 0xFFFFFFFFFFFFFFFF
_M32 = 0xFFFFFFFF
CC_C, CC_P, CC_A, CC_Z, CC_S, CC_O = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800
DF = 0x400
ARITH_DF = CC_O | CC_S | CC_Z | CC_A | CC_P | CC_C | DF

# QEMU's parity_table (cc_helper.c): PF for the low byte of a result
PARITY = tuple(CC_P if bin(i).count("1") % 2 == 0 else 0 for i in range(256))

# QEMU's CCOp (target/i386/cpu.h), in enum order; B/W/L/Q: 8/16/32/64 bits
_FAMILIES = ("MUL", "ADD", "ADC", "SUB", "SBB", "LOGIC", "INC", "DEC", "SHL", "SAR", "BMILG")
CC_OP = {"DYNAMIC": 0, "EFLAGS": 1}
for _i, _fam in enumerate(_FAMILIES):
    for _j, _size in enumerate("BWLQ"):
        CC_OP[_fam + _size] = 2 + 4 * _i + _j
CC_OP.update(ADCX=46, ADOX=47, ADCOX=48, CLR=49, POPCNT=50)
CC_OP_NB = 51


def _family(fam: str, bits: int):
    """compute_all_<fam><size> of cc_helper_template.h as fn(dst, src1, src2)
    on the 64-bit fields (the template's arguments are DATA_TYPE: truncated)."""
    m = (1 << bits) - 1
    sign = 1 << (bits - 1)
    s_sh = bits - 8                      # lshift(dst, 8 - DATA_BITS) & CC_S
    o_sh = bits - 12                     # lshift(x, 12 - DATA_BITS) & CC_O
    cf_m = m & _M32                      # inc/dec: cf = (int)src1

    if o_sh < 0:
        def of(x):
            return (x << -o_sh) & CC_O
    else:
        def of(x):
            return (x >> o_sh) & CC_O
    P = PARITY

    if fam == "ADD":
        def fn(dst, src1, src2):
            dst &= m
            src1 &= m
            src2 = (dst - src1) & m
            return ((dst < src1) | P[dst & 0xFF] | ((dst ^ src1 ^ src2) & CC_A) | (CC_Z if dst == 0 else 0)
                    | ((dst >> s_sh) & CC_S) | of((src1 ^ src2 ^ m) & (src1 ^ dst)))
    elif fam == "ADC":
        def fn(dst, src1, src3):
            dst &= m
            src1 &= m
            src3 &= m
            src2 = (dst - src1 - src3) & m
            return (((dst <= src1) if src3 else (dst < src1)) | P[dst & 0xFF] | ((dst ^ src1 ^ src2) & CC_A)
                    | (CC_Z if dst == 0 else 0) | ((dst >> s_sh) & CC_S) | of((src1 ^ src2 ^ m) & (src1 ^ dst)))
    elif fam == "SUB":
        def fn(dst, src2, _):
            dst &= m
            src2 &= m
            src1 = (dst + src2) & m
            return ((src1 < src2) | P[dst & 0xFF] | ((dst ^ src1 ^ src2) & CC_A) | (CC_Z if dst == 0 else 0)
                    | ((dst >> s_sh) & CC_S) | of((src1 ^ src2) & (src1 ^ dst)))
    elif fam == "SBB":
        def fn(dst, src2, src3):
            dst &= m
            src2 &= m
            src3 &= m
            src1 = (dst + src2 + src3) & m
            return (((src1 <= src2) if src3 else (src1 < src2)) | P[dst & 0xFF] | ((dst ^ src1 ^ src2) & CC_A)
                    | (CC_Z if dst == 0 else 0) | ((dst >> s_sh) & CC_S) | of((src1 ^ src2) & (src1 ^ dst)))
    elif fam == "LOGIC":
        def fn(dst, _1, _2):
            dst &= m
            return P[dst & 0xFF] | (CC_Z if dst == 0 else 0) | ((dst >> s_sh) & CC_S)
    elif fam == "INC":
        def fn(dst, src1, _):
            dst &= m
            return ((src1 & cf_m) | P[dst & 0xFF] | ((dst ^ ((dst - 1) & m) ^ 1) & CC_A) | (CC_Z if dst == 0 else 0)
                    | ((dst >> s_sh) & CC_S) | (CC_O if dst == sign else 0))
    elif fam == "DEC":
        def fn(dst, src1, _):
            dst &= m
            return ((src1 & cf_m) | P[dst & 0xFF] | ((dst ^ ((dst + 1) & m) ^ 1) & CC_A) | (CC_Z if dst == 0 else 0)
                    | ((dst >> s_sh) & CC_S) | (CC_O if dst == sign - 1 else 0))
    elif fam == "SHL":
        def fn(dst, src1, _):
            dst &= m
            src1 &= m
            return (((src1 >> (bits - 1)) & CC_C) | P[dst & 0xFF] | (CC_Z if dst == 0 else 0)
                    | ((dst >> s_sh) & CC_S) | of(src1 ^ dst))
    elif fam == "SAR":
        def fn(dst, src1, _):
            dst &= m
            src1 &= m
            return ((src1 & 1) | P[dst & 0xFF] | (CC_Z if dst == 0 else 0) | ((dst >> s_sh) & CC_S)
                    | of(src1 ^ dst))
    elif fam == "MUL":
        def fn(dst, src1, _):           # src1 is target_long there: not truncated
            dst &= m
            return ((1 if src1 else 0) | P[dst & 0xFF] | (CC_Z if dst == 0 else 0) | ((dst >> s_sh) & CC_S)
                    | (CC_O if src1 else 0))
    elif fam == "BMILG":
        def fn(dst, src1, _):
            dst &= m
            return (1 if src1 & m == 0 else 0) | (CC_Z if dst == 0 else 0) | ((dst >> s_sh) & CC_S)
    else:
        raise ValueError(fam)
    return fn


def _table() -> list:
    t: list = [None] * CC_OP_NB
    t[CC_OP["EFLAGS"]] = lambda dst, src1, src2: src1
    t[CC_OP["CLR"]] = lambda dst, src1, src2: CC_Z | CC_P
    t[CC_OP["POPCNT"]] = lambda dst, src1, src2: 0 if src1 else CC_Z
    t[CC_OP["ADCX"]] = lambda dst, src1, src2: (src1 & ~CC_C) | dst
    t[CC_OP["ADOX"]] = lambda dst, src1, src2: (src1 & ~CC_O) | ((src2 << 11) & _M64)
    t[CC_OP["ADCOX"]] = lambda dst, src1, src2: (src1 & ~(CC_C | CC_O)) | dst | ((src2 << 11) & _M64)
    for fam in _FAMILIES:
        for size, bits in zip("BWLQ", (8, 16, 32, 64)):
            t[CC_OP[fam + size]] = _family(fam, bits)
    return t


# every cc_op this module knows (DYNAMIC never reaches the CPU state: None)
COMPUTE = tuple(_table())


def inline_eflags(table) -> int:
    """The cc_op the fast entries compute inline (CC_OP_EFLAGS: the flags
    are ``cc_src``), or -1 when ``table`` does not hold this module's
    function for it (not verified, or replaced by a test)."""
    op = CC_OP["EFLAGS"]
    return op if table[op] is COMPUTE[op] else -1


def rflags(compute, eflags: int, cc_op: int, dst: int, src: int, src2: int, df: int) -> int | None:
    """``cpu_compute_eflags`` from the fields (``df`` as stored: 1 or -1 as
    an unsigned or signed 32-bit value); None if ``cc_op`` is not handled
    by ``compute`` (a table like :data:`COMPUTE`)."""
    fn = compute[cc_op] if cc_op < len(compute) else None
    if fn is None:
        return None
    return ((eflags & ~ARITH_DF) | fn(dst, src, src2) | (df & DF)) & _M32


# --- verification against the API ------------------------------------------------------
def _cases(rng: random.Random) -> list[tuple[int, int, int]]:
    """(cc_dst, cc_src, cc_src2) triples: the edges of every operand size
    (0, 1, the sign bits and the values beside them, all ones: with the
    high garbage a narrow operation leaves), each with four sources and a
    carry in of 0 or 1, and random values."""
    edges = [0, 1, 2, 0x0F, 0x10, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
             0x7FFFFFFFFFFFFFFF, 0x8000000000000000, _M64]
    out = [(d, s, (k + j) & 1) for k, d in enumerate(edges)
           for j, s in enumerate((0, 1, 0x8000000000000000, _M64))]
    for _ in range(16):
        out.append((rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(1)))
        out.append((rng.getrandbits(64), rng.getrandbits(64), rng.getrandbits(64)))
    return out


class Verified:
    """:data:`COMPUTE` checked against QEMU's own computation one ``cc_op``
    at a time, at its first use (:func:`check_table` for that entry): a
    process pays only for the operations its guests leave at an entry
    (about 0.25 ms each), not for all 50 at start-up (13 ms).  ``get(op)``:
    the function, or None (not handled or disagreeing: read through the API)."""

    def __init__(self, table, L):
        self._table, self._L = tuple(table), L
        self._ok: dict[int, object] = {}

    def get(self, op: int):
        try:
            return self._ok[op]
        except KeyError:
            fn = self._table[op] if 0 <= op < len(self._table) else None
            if fn is not None:
                fn = check_table(self._table, self._L, ops=(op,))[op]
            self._ok[op] = fn
            return fn

    def __getitem__(self, op: int):
        return self.get(op)

    def __len__(self) -> int:
        return len(self._table)

    def __iter__(self):
        return (self.get(op) for op in range(len(self._table)))


_verified: list = []


def verified(L) -> Verified:
    """:data:`COMPUTE`, each entry kept only if it agrees with QEMU's own
    computation (read through the API) when first used; one table per
    process.  ``L``: the verified :class:`emu.hw.microcode.context.Layout`."""
    if not _verified:
        _verified.append(Verified(COMPUTE, L))
    return _verified[0]


def lookup(table):
    """``table``'s ``get`` (op -> function or None) for the fast entries:
    a :class:`Verified` checks an entry at its first use; a plain sequence
    (a test's table) is taken as it is."""
    if isinstance(table, Verified):
        return table.get
    return {op: fn for op, fn in enumerate(table) if fn is not None}.get


def check_table(table, L, cases=None, ops=None) -> tuple:
    """``table`` with every entry (of ``ops``, default all) that gives
    another RFLAGS than the API for one of ``cases`` (default
    :func:`_cases`) replaced by None."""
    uc = calibration_uc()
    ctx = uc.context_save()
    size = uclib.uc_context_size(uc._uch)
    addr = ctypes.cast(ctx.context, ctypes.c_void_p).value
    hv, ptr = ctypes.c_void_p(uc._uch.value), ctypes.c_void_p(addr)
    buf = (ctypes.c_char * size).from_address(addr)
    out = ctypes.c_uint64()
    outp = ctypes.byref(out)
    rid = ctypes.c_int(X.UC_X86_REG_RFLAGS)
    restore, read = C.context_restore, C.reg_read
    pack = struct.Struct("<QQQQIi").pack_into
    rng = random.Random(14)
    cases = _cases(rng) if cases is None else cases
    # eflags values: the bits QEMU keeps there (IF, IOPL, AC, ID ...) and
    # arithmetic bits that must be masked out, bit 1, bits above 31
    eflags = (0x2, 0x246, 0x3FFFFF, 0x200202, 0x1_0000_0A93)
    keep = list(table)
    for op in range(len(table)) if ops is None else ops:
        fn = table[op]
        if fn is None:
            continue
        for k, (dst, src, src2) in enumerate(cases):
            ef = eflags[k % len(eflags)]
            df = -1 if k & 1 else 1
            pack(buf, L.eflags, ef, dst, src, src2, op, df)
            restore(hv, ptr)
            read(hv, rid, outp)
            if out.value != ((ef & ~ARITH_DF) | fn(dst, src, src2) | (df & DF)) & _M32:
                keep[op] = None
                break
    return tuple(keep)
