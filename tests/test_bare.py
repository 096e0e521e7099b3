"""Exception delivery by the microcode on a bare system (emu/bare.py).

Every handler halts, so the test reads the frame the microcode pushed.
Expectations follow the SDM, Vol. 3A, 6.12-6.14 (64-bit IDT gates, stack
switch to TSS.RSP0 on a privilege change, error codes naming the IDT entry).
"""

import struct

import pytest

from emu.linux import abi
from emu.dev.bare import KERNEL_STACK_TOP, USER_TEXT, bare_system

KERNEL = "".join(f"vec{v}:\n    hlt\n" for v in (3, 6, 8, 11, 13, 14, 0x80))
USER = """
_start:
read_unmapped:
    mov al, byte ptr [0x10000000]
write_text:
    mov byte ptr [rip + _start], 1
breakpoint:
    int3
soft14:
    int 14
soft80:
    int 0x80
undefined:
    ud2
"""
ALL_GATES = {3: ("vec3", 3), 6: "vec6", 11: "vec11", 13: "vec13", 14: "vec14", 0x80: ("vec128", 3)}
# (label, gates, vector of the handler reached, error code or None, RIP in the frame, CR2)
CASES = [
    ("read_unmapped", ALL_GATES, 14, 0x4, "read_unmapped", 0x10000000),
    ("write_text", ALL_GATES, 14, 0x7, "write_text", USER_TEXT),
    ("breakpoint", ALL_GATES, 3, None, "soft14", None),          # a trap: RIP after int3
    ("soft80", ALL_GATES, 0x80, None, "undefined", None),
    ("undefined", ALL_GATES, 6, None, "undefined", None),
    # INT 14 through a DPL-0 gate from CPL 3: #GP(14 << 3 | IDT), not EXT
    ("soft14", ALL_GATES, 13, (14 << 3) | 2, "soft14", None),
    # a #UD whose gate is all zeros: the type check fails before the present
    # check, so #GP(6 << 3 | IDT | EXT); #UD is benign, so no #DF
    ("undefined", {k: v for k, v in ALL_GATES.items() if k != 6}, 13, (6 << 3) | 3, "undefined", None),
    # a #PF whose gate is all zeros: #GP is contributory, so #DF(0)
    ("read_unmapped", {**{k: v for k, v in ALL_GATES.items() if k != 14}, 8: "vec8"}, 8, 0,
     "read_unmapped", 0x10000000),
    # INT3 through a DPL-0 gate: #GP(3 << 3 | IDT)
    ("breakpoint", {**ALL_GATES, 3: "vec3"}, 13, (3 << 3) | 2, "breakpoint", None),
]


@pytest.mark.parametrize("label,gates,vector,ec,frame_rip,cr2", CASES,
                         ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_delivery_from_user_mode(label, gates, vector, ec, frame_rip, cr2):
    b = bare_system(KERNEL, USER, gates=gates)
    b.start_user(label)
    cpu = b.cpu
    cpu.set_reg("cr2", 0)
    assert cpu.run(100) == "halt"
    assert cpu.reg("rip") == b.kernel.symbols[f"vec{vector}"] + 1      # after its hlt
    assert cpu.reg("cs") == abi.KERNEL_CS
    n = 5 if ec is None else 6
    rsp = cpu.reg("rsp")
    assert rsp == KERNEL_STACK_TOP - 8 * n                     # RSP0, 16-byte aligned, then the frame
    words = list(struct.unpack(f"<{n}Q", _read_stack(b, rsp, 8 * n)))
    if ec is not None:
        assert words.pop(0) == ec
    assert words[0] == b.user.symbols[frame_rip]
    assert words[1] == abi.USER_CS
    assert words[2] & 0x200                                    # IF was set at CPL 3
    assert words[3] == USER_TEXT + 0x400000                    # the user RSP (USER_STACK_TOP)
    assert words[4] == abi.USER_DS
    assert not cpu.reg("rflags") & 0x200                       # interrupt gates clear IF
    if cr2 is not None:
        assert cpu.reg("cr2") == cr2


def _read_stack(b, va, n):
    from emu.dev.bare import KERNEL_DATA
    from emu.hw.paging import ControlState, translate
    t = translate(b.cpu.mem, b.pt.root, va, 0, 0, ControlState(smap=False))
    assert t.fault is None and va - KERNEL_DATA < 0x200000
    return b.cpu.mem.read(t.pa, n)


def test_software_int14_is_not_a_page_fault():
    """INT 14 through a DPL-3 gate reaches the #PF handler without an error
    code, and CR2 is untouched: Unicorn's exception_is_int tells it apart."""
    b = bare_system(KERNEL, USER, gates={**ALL_GATES, 14: ("vec14", 3)})
    b.start_user("soft14")
    b.cpu.set_reg("cr2", 0x1234)
    assert b.cpu.run(100) == "halt"
    rsp = b.cpu.reg("rsp")
    assert rsp == KERNEL_STACK_TOP - 40
    rip = struct.unpack("<Q", _read_stack(b, rsp, 8))[0]
    assert rip == b.user.symbols["soft80"]                       # after the 2-byte INT 14
    assert b.cpu.reg("cr2") == 0x1234


def test_cr3_fixup_keeps_the_tlb_a_register_write_flushes_it():
    """Cpu.write_cr3_keep_tlb (the NOFLUSH fix-up) sets CR3 without the
    full flush a CR3 register write makes: a translation cached before a
    host-side remap survives it, and is dropped by a real write."""
    from emu.hw.paging import PAGE_SHARED
    from emu.hw.phys import MiB, FrameKind

    b = bare_system("", "_start:\n    hlt\n", gates={})
    cpu = b.cpu
    root = cpu.reg("cr3")
    old = cpu.hw_translate(0x600123)
    new_frame = cpu.mem.frames.alloc(FrameKind.USER, 9, "test")
    b.pt.unmap(0x600000, 2 * MiB)
    b.pt.map(0x600000, new_frame, 2 * MiB, PAGE_SHARED)
    assert cpu.hw_translate(0x600123) == old                  # stale, as on hardware
    cpu.write_cr3_keep_tlb(root | 0x18)                        # PWT | PCD: a visible change
    assert cpu.reg("cr3") == root | 0x18
    assert cpu.hw_translate(0x600123) == old                  # still cached
    cpu.set_reg("cr3", root)
    assert cpu.hw_translate(0x600123) == new_frame + 0x123    # the write flushed



@pytest.mark.parametrize("steps", [0, 3, 40, 400])
def test_reg_reads_what_the_binding_reads(steps):
    """Cpu.reg (one raw C call per read) against Unicorn's own binding, for
    every named register, with stale high bits left in each reader's buffer
    (a selector fills only its low 16 bits)."""
    from emu.hw.cpu import REG_IDS
    from emu.linux.machine import Machine

    m = Machine(programs=[("A", "_start:\n    mov eax, SYS_getpid\n    syscall\n    mov eax, SYS_exit\n"
                                "    xor edi, edi\n    syscall\n")])
    m.boot()
    m.step(steps)
    cpu = m.cpu
    for n in REG_IDS:
        cpu.reg(n)
        cpu._reg(REG_IDS[n])._v.value = 0xFFFF_0000_0000_0000
    got = {n: cpu.reg(n) for n in REG_IDS}
    assert got == {n: cpu.uc.reg_read(i) for n, i in REG_IDS.items()}
    assert got["ss"] < 0x10000 and got["cr3"] != 0


def test_context_offsets_from_one_calibration_cpu_are_each_registers_own():
    """context_offset calibrates every register on one throwaway CPU, put
    back to its first state each time: the offsets are those a fresh CPU
    per register gives (registers calibrated earlier leave no trace)."""
    import ctypes

    from unicorn import Uc
    from unicorn import unicorn_const as UC
    from unicorn import x86_const as X
    from unicorn.unicorn_py3.unicorn import uclib

    from emu.hw.cpu import MODELS, context_offset

    def fresh(reg_id):
        uc = Uc(UC.UC_ARCH_X86, UC.UC_MODE_64, MODELS["skylake-server"])
        size = uclib.uc_context_size(uc._uch)
        blobs = []
        for v in (0x1234_5678_9ABC_D000, 0x0FED_CBA9_8765_4000):
            uc.reg_write(reg_id, v)
            ctx = uc.context_save()
            blobs.append(ctypes.string_at(ctypes.cast(ctx.context, ctypes.c_void_p).value, size))
        hits = [off for off in range(0, size - 8, 8)
                if int.from_bytes(blobs[0][off:off + 8], "little") == 0x1234_5678_9ABC_D000
                and int.from_bytes(blobs[1][off:off + 8], "little") == 0x0FED_CBA9_8765_4000]
        return hits[0] if len(hits) == 1 else None

    names = ["RAX", "RCX", "RSP", "R11", "R15", "RIP", "RFLAGS", "CR0", "CR2", "CR3", "CR4", "FS_BASE", "GS_BASE", "CS"]
    got = {n: context_offset(getattr(X, f"UC_X86_REG_{n}")) for n in reversed(names)}
    assert got == {n: fresh(getattr(X, f"UC_X86_REG_{n}")) for n in names}
    assert got["RIP"] == got["RAX"] + 128 and got["CS"] is None      # a selector is not 8 bytes
