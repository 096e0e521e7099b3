"""The CPU state a kernel entry patches (docs/unicorn-notes.md, "Kernel
entry"): where QEMU's ``CPUX86State`` fields sit in a saved context
(:func:`layout`, verified through the API), and the live state that a
context save copies (:func:`live_state_address`)."""

from __future__ import annotations

import bisect
import ctypes
import os
import struct

from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from emu.hw.cpu import C, calibration_uc, context_offset, old_exception_offset

SEG = 24                  # sizeof(SegmentCache): selector, base, limit, flags
CC_FLAGS = 0x8D5          # OF SF ZF AF PF CF: QEMU keeps them in cc_src
DF = 0x400


# --- the saved-context layout -----------------------------------------------------------
class Layout:
    """Offsets in a saved context of the fields an in-place entry patches
    (QEMU's ``CPUX86State``, target/i386/cpu.h: regs[16], eip, eflags,
    cc_dst, cc_src, cc_src2, cc_op, df, hflags, hflags2, segs[6], ..., cr[5])."""

    def __init__(self, rax: int, rip: int, cr2: int, old_exception: int):
        self.gpr = {n: rax + 8 * i for i, n in enumerate(
            ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"))}
        self.rip = rip
        self.eflags = rip + 8
        self.cc_src = rip + 24
        self.cc_op = rip + 40          # uint32
        self.df = rip + 44             # int32: 1, or -1 with DF set
        self.hflags = rip + 48         # uint32 hflags, uint32 hflags2
        self.segs = rip + 56           # ES, CS, SS, DS, FS, GS
        self.cs = self.segs + SEG
        self.ss = self.segs + 2 * SEG
        self.cr2 = cr2
        self.old_exception = old_exception
        self.cc_dst = rip + 16
        self.cc_src2 = rip + 32
        self.cc_op_eflags: int | None = None     # QEMU's CC_OP_EFLAGS, read at verification


_layout: list = []


def layout() -> Layout | None:
    """The verified layout of this Unicorn build, found once per process; None
    if any offset is not where QEMU's layout puts it or the API disagrees."""
    if not _layout:
        _layout.append(_find_layout())
    return _layout[0]


def _find_layout() -> Layout | None:
    off = {n: context_offset(getattr(X, f"UC_X86_REG_{n.upper()}"))
           for n in ("rax", "rcx", "rsp", "r11", "rip", "cr0", "cr2", "fs_base")}
    old = old_exception_offset()
    if None in off.values() or old is None:
        return None
    L = Layout(off["rax"], off["rip"], off["cr2"], old)
    # the offsets found one by one must sit where the struct puts them
    if (off["rip"] != off["rax"] + 128 or off["rcx"] != L.gpr["rcx"] or off["rsp"] != L.gpr["rsp"]
            or off["r11"] != L.gpr["r11"] or off["cr0"] != L.segs + 10 * SEG
            or off["fs_base"] != L.segs + 4 * SEG + 8):
        return None
    return L if _verify(L) else None


def _verify(L: Layout) -> bool:
    """Write registers through the API and read them in the saved context;
    patch the context and read them back through the API after a restore."""
    uc = calibration_uc()
    size = uclib.uc_context_size(uc._uch)
    ctx = uc.context_save()
    addr = ctypes.cast(ctx.context, ctypes.c_void_p).value
    hv = ctypes.c_void_p(uc._uch.value)
    buf = (ctypes.c_char * size).from_address(addr)
    q = memoryview(buf).cast("B")
    u64 = lambda o: int.from_bytes(q[o:o + 8], "little")            # noqa: E731
    u32 = lambda o: int.from_bytes(q[o:o + 4], "little")            # noqa: E731
    regs = {"rip": (X.UC_X86_REG_RIP, L.rip), "cr2": (X.UC_X86_REG_CR2, L.cr2)}
    regs.update({n: (getattr(X, f"UC_X86_REG_{n.upper()}"), o) for n, o in L.gpr.items()})
    for i, (name, (rid, o)) in enumerate(regs.items()):
        v = 0x0123_4567_89AB_C000 + 0x1111 * i
        uc.reg_write(rid, v)
        C.context_save(hv, ctypes.c_void_p(addr))
        if u64(o) != v:
            return False
        q[o:o + 8] = (v ^ 0x5A5A00).to_bytes(8, "little")
        C.context_restore(hv, ctypes.c_void_p(addr))
        if uc.reg_read(rid) != v ^ 0x5A5A00:
            return False
    # RFLAGS: QEMU keeps the arithmetic flags in cc_src and DF in df; the
    # patch must leave the fields exactly as the API's write does
    for v in (0x2, 0x246, 0xAD7, 0x602, 0x40283, 0x10002):
        uc.reg_write(X.UC_X86_REG_RFLAGS, v)
        C.context_save(hv, ctypes.c_void_p(addr))
        want = bytes(q[L.eflags:L.hflags])
        if L.cc_op_eflags is None:
            L.cc_op_eflags = u32(L.cc_op)
        uc.reg_write(X.UC_X86_REG_RFLAGS, 0x2 if v != 0x2 else 0x8D7)
        uc.reg_write(X.UC_X86_REG_RAX, v)
        uc.reg_write(X.UC_X86_REG_RAX, 0)
        C.context_save(hv, ctypes.c_void_p(addr))
        patch_rflags(q, L, v)
        got = bytes(q[L.eflags:L.hflags])
        # cc_dst and cc_src2 are don't-cares under CC_OP_EFLAGS
        for o in (L.eflags, L.cc_src, L.cc_op, L.df):
            a, b = o - L.eflags, o - L.eflags + (8 if o < L.cc_op else 4)
            if want[a:b] != got[a:b]:
                return False
        C.context_restore(hv, ctypes.c_void_p(addr))
        if uc.reg_read(X.UC_X86_REG_RFLAGS) != v:
            return False
    return True


def patch_rflags(q, L: Layout, v: int) -> None:
    """RFLAGS into a saved context as QEMU's own write stores it."""
    q[L.eflags:L.eflags + 8] = v.to_bytes(8, "little")
    q[L.cc_src:L.cc_src + 8] = (v & CC_FLAGS).to_bytes(8, "little")
    q[L.cc_op:L.cc_op + 4] = L.cc_op_eflags.to_bytes(4, "little")
    q[L.df:L.df + 4] = (0xFFFFFFFF if v & DF else 1).to_bytes(4, "little")


# --- the live CPU state ----------------------------------------------------------------
#: (offset of uc->cpu in uc_struct, offset of cpu->env_ptr): tried first, and
#: kept only where the state found there passes every check below; the
#: pinned Unicorn 2.1.4's on x86-64 Linux (found by the search on this build),
#: else what the search finds once per process (it costs about 8 ms)
_live_path: list = [(440, 296)]


def _readable_ranges() -> list[tuple[int, int]]:
    """The readable mappings of this process (Linux /proc/self/maps), sorted."""
    out = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                addrs, perms = line.split()[:2]
                if perms[0] == "r":
                    lo, hi = addrs.split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return sorted(out)


def _peek(addr: int, n: int) -> bytes | None:
    """``n`` bytes of this process's memory at ``addr``, or None where any
    is not mapped: read through /proc/self/mem (opened for each read, so a
    forked child reads its own memory), which fails instead of faulting."""
    try:
        fd = os.open("/proc/self/mem", os.O_RDONLY)
    except OSError:
        return None
    try:
        b = os.pread(fd, n, addr)
    except (OSError, OverflowError, ValueError):
        return None
    finally:
        os.close(fd)
    return b if len(b) == n else None


def live_state_address(cpu) -> int | None:
    """:func:`find_live_state` once per CPU (the kernel entry and the CR3
    access both ask)."""
    if not hasattr(cpu, "_live_state"):
        cpu._live_state = find_live_state(cpu)
    return cpu._live_state


def find_live_state(cpu) -> int | None:
    """The address to which the offsets of a saved context (:func:`context_offset`)
    apply in the live CPU state: ``uc_context_save`` copies QEMU's
    ``CPUX86State`` (at ``uc->cpu->env_ptr``) behind the ``uc_context``
    header, and ``uc_context_restore`` copies it back, each a plain
    ``memcpy`` (Unicorn 2.1.4 uc.c), so patching the live state from a hook
    is a save, patch and restore without the two calls (docs/unicorn-notes.md,
    "Kernel entry").  The header's length is RAX's offset (``regs[0]`` opens
    the struct).

    Unicorn has no API for the address: the two pointers are found by
    following the words of the ``uc_struct``, then those of the ``CPUState``
    each points to (only inside readable mappings), keeping an address whose
    bytes equal a context just saved; the path found is tried first for the
    next CPU.  The address is then checked through the API (:func:`check_live`).
    None if any of this fails (the caller saves and restores)."""
    head_len = context_offset(X.UC_X86_REG_RAX)
    if head_len is None:
        return None
    size = uclib.uc_context_size(cpu.handle)
    ctx = cpu.uc.context_save()
    saved = ctypes.string_at(ctypes.cast(ctx.context, ctypes.c_void_p).value, size)[head_len:]
    n = len(saved)
    ranges: list = []
    starts: list = []

    def readable(a: int, k: int) -> bool:
        i = bisect.bisect_right(starts, a) - 1
        return i >= 0 and a + k <= ranges[i][1]

    def words(a: int, k: int) -> tuple:
        return struct.unpack_from(f"<{k // 8}Q", ctypes.string_at(a, k)) if readable(a, k) else ()

    def is_state(e: int) -> bool:
        return readable(e - head_len, n + head_len) and ctypes.string_at(e, n) == saved

    uc_at = cpu.handle.value
    found = None
    if _live_path:
        # the known path, read through /proc/self/mem: no parse of the mappings
        a, b = _live_path[0]
        w = _peek(uc_at + a, 8)
        e = _peek(int.from_bytes(w, "little") + b, 8) if w else None
        e = int.from_bytes(e, "little") if e else None
        if e is not None and _peek(e - head_len, head_len) is not None and _peek(e, n) == saved:
            found = e
    if found is None:
        ranges = _readable_ranges()
        starts = [lo for lo, _ in ranges]
        head = saved[:64]
        hits = []
        for a, w in enumerate(words(uc_at, 4096)):
            if w & 7 or w < 0x10000:
                continue
            for b, e in enumerate(words(w, 4096)):
                if w < e < w + (1 << 20) and readable(e, n) and ctypes.string_at(e, 64) == head and is_state(e):
                    hits.append((e, 8 * a, 8 * b))
        if len({e for e, _, _ in hits}) != 1:
            return None
        found = hits[0][0]
        _live_path[:] = [hits[0][1:]]
    base = found - head_len
    return base if check_live(cpu, base, head_len, size) else None


def check_live(cpu, base: int, head_len: int, size: int) -> bool:
    """The address found by :func:`live_state_address` through the API:
    registers written through the API appear at their offsets, values
    written there read back through the API, and a save equals the live
    bytes after each.  The CPU's state is left as it was."""
    ctx = cpu.uc.context_save()
    ctx_at = ctypes.cast(ctx.context, ctypes.c_void_p).value
    before = ctypes.string_at(ctx_at + head_len, size - head_len)
    ok = True
    for rid in (X.UC_X86_REG_RAX, X.UC_X86_REG_R11, X.UC_X86_REG_RIP, X.UC_X86_REG_CR2):
        off = context_offset(rid)
        if off is None:
            ok = False
            break
        cell = ctypes.c_uint64.from_address(base + off)
        v = 0x0123_4567_89AB_C000 ^ (rid << 4)
        cpu.uc.reg_write(rid, v)
        if cell.value != v:
            ok = False
            break
        cell.value = v ^ 0x5A5A000
        if cpu.uc.reg_read(rid) != v ^ 0x5A5A000:
            ok = False
            break
        probe = cpu.uc.context_save()
        at = ctypes.cast(probe.context, ctypes.c_void_p).value
        if ctypes.string_at(at + head_len, size - head_len) != ctypes.string_at(base + head_len, size - head_len):
            ok = False
            break
    cpu.uc.context_restore(ctx)
    return ok and ctypes.string_at(base + head_len, size - head_len) == before
