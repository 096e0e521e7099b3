"""A machine booted from the kept build of its configuration is the machine
built from scratch (emu/linux/bootcache.py, docs/performance.md "Boot"):
the same RAM, allocator, kernel state, page-table objects, CPU registers,
hooks and TLB model, in this process and in a fresh one, and the same
results when it runs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from emu.hw.cpu import REG_IDS
from emu.hw.phys import FrameKind, byte_runs
from emu.linux import bootcache
from emu.linux.config import MachineConfig
from emu.linux.kernel import KernelBuilder
from emu.linux.machine import Machine
from emu.tools.matrix import run_matrix

PROGRAM = """
_start:
    mov eax, SYS_getpid
    syscall
    mov eax, SYS_exit
    xor edi, edi
    syscall
"""

CONFIGS = {
    "default": {},
    "pti=off": {"pti": False},
    "asi=off": {"asi": False},
    "asi=rfc2019": {"asi": "rfc2019"},
    "asi=rfc2025": {"asi": "rfc2025"},
    "la57": {"la57": True},
    "pcid=off": {"pcid": False},
    "tlb=off": {"tlb": "off"},
    "tlb=lazy": {"tlb": "lazy"},
    "unmapped=reserved": {"unmapped": "reserved"},
    "inject": {"inject": frozenset({"secretmem_noflush"})},
    "ram=4G": {"ram": 4 << 30},
}

# MSRs boot_state sets: EFER, STAR, LSTAR, FMASK, KERNEL_GS_BASE
_MSRS = (0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084, 0xC0000102)


def _ram_digest(mem) -> str:
    h = hashlib.sha1()
    view = memoryview(mem.buf)
    for i in range(0, mem.size, 64 << 20):
        h.update(view[i:i + (64 << 20)])
    view.release()
    return h.hexdigest()


def _text(v) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_text(x) for x in v) + ")"
    if type(v).__repr__ is object.__repr__:            # a policy object: its class and attributes
        return f"{type(v).__name__}{sorted(_vars(v).items())}"
    return repr(v)


def _vars(obj, skip=("mem",)) -> dict:
    return {k: _text(v) for k, v in vars(obj).items() if k not in skip}


def machine_state(m: Machine) -> dict:
    """Everything a boot leaves, as comparable text."""
    k, f, cpu = m.kernel, m.mem.frames, m.cpu
    out = {
        "ram": _ram_digest(m.mem),
        "frames": {n: (hashlib.sha1(v).hexdigest() if isinstance(v, bytearray) else
                       repr(sorted(v.items()) if isinstance(v, dict) else sorted(v) if isinstance(v, set) else v))
                   for n, v in vars(f).items() if n != "mem"},
        "kernel": {"cea": repr(k.cea), "stack_pages": repr(k.stack_pages), "percpu_base": k.percpu_base,
                   "processes": repr([(p.pid, p.name, p.task, p.mm, p.pgd, p.asi_pgd, p.stack_top, p.entry) for p in k.processes]), "config": repr(k.config), "layout": repr(k.layout)},
        "tables": {name: _vars(pt) for name, pt in (("init", k.init_pgd), ("asi_global", k.asi_global))
                   if pt is not None},
        "builder": _vars(m._kb, skip=("mem", "k", "cfg", "image")),
        "roots": repr(sorted(m._roots.items())),
        "regs": {n: cpu.reg(n) for n in REG_IDS},
        "msrs": [cpu.msr(i) for i in _MSRS],
        "hooks": {"block_starts": sorted((a, [getattr(fn, "__name__", "?") for fn in fns])
                                         for a, fns in cpu._block_starts.items()),
                  "code": sorted((a, len(fns)) for a, (h, fns) in cpu._at_addr.items()),
                  "cr3_sites": repr(sorted(cpu.cr3_sites.items())),
                  "hlt_sites": sorted(cpu.hlt_sites), "rip_sync": sorted((a, h is None) for a, h in cpu._rip_sync.items()),
                  "ports": sorted(cpu.ports)},
    }
    if m.tlb is not None:
        g = m.tlb.model.graph
        out["tlb"] = {"roots": sorted(g.roots), "parents": repr(sorted((t, sorted(p)) for t, p in g.parents.items())),
                      "scanned": sorted(g._scanned),
                      "shadow": hashlib.sha1(repr(sorted(m.tlb.shadow.items())).encode()).hexdigest()}
    return out


def boot(cfg: MachineConfig) -> Machine:
    m = Machine(cfg, programs=[("A", PROGRAM), ("B", PROGRAM)])
    m.boot()
    return m


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kept_build_is_the_fresh_build(name):
    """Cache cleared, then three machines: built, built and recorded, restored."""
    cfg = MachineConfig(**CONFIGS[name])
    bootcache.clear()
    states = []
    for _ in range(3):
        m = boot(cfg)
        states.append(machine_state(m))
        m.mem.close()
    assert (cfg, id(m.kernel.image)) in bootcache._kept, "the third machine came from the cache"
    for s in states[1:]:
        for part in states[0]:
            assert s[part] == states[0][part], part


def _built_state(kb) -> dict:
    f = kb.mem.frames
    return {"ram": _ram_digest(kb.mem), "builder": _vars(kb, skip=("mem", "k", "cfg", "image")),
            "frames": {n: repr(v) for n, v in vars(f).items() if n != "mem"},
            "kernel": {n: _text(v) for n, v in vars(kb.k).items() if n not in ("mem", "image", "init_pgd", "asi_global")},
            "tables": [_vars(pt) for pt in (kb.k.init_pgd, kb.k.asi_global) if pt is not None]}


@pytest.mark.parametrize("name", ["default", "asi=rfc2019", "unmapped=reserved"])
def test_kept_build_right_after_the_build(name):
    """Before any process: the allocator's every attribute (its search hint
    too), the builder's and the kernel's."""
    cfg = MachineConfig(**CONFIGS[name])
    bootcache.clear()
    states = []
    for _ in range(3):
        kb = KernelBuilder(cfg)
        kb.build()
        states.append(_built_state(kb))
        kb.mem.close()
    assert states[0] == states[1] == states[2]


_FRESH = """
import json, sys
from tests.test_boot_cache import CONFIGS, boot, machine_state
from emu.linux.config import MachineConfig
print(json.dumps({n: machine_state(boot(MachineConfig(**CONFIGS[n]))) for n in sys.argv[1:]}))
"""


def test_a_fresh_process_boots_the_same_machine():
    """The restored machines of this process against machines booted alone in a new process."""
    names = ["default", "pti=off", "la57", "inject"]
    fresh = json.loads(subprocess.run([sys.executable, "-c", _FRESH, *names], capture_output=True, text=True,
                                      check=True).stdout)
    for n in names:
        cfg = MachineConfig(**CONFIGS[n])
        for _ in range(3):                       # the last one certainly restored
            m = boot(cfg)
        assert (cfg, id(m.kernel.image)) in bootcache._kept
        here = json.loads(json.dumps(machine_state(m)))
        m.mem.close()
        assert here == fresh[n], n


def test_machines_from_the_cache_run_alike():
    """The matrix's cells, findings and counters, cache cleared and from the cache."""
    for cfg in (MachineConfig(), MachineConfig(asi=False, inject=frozenset({"secretmem_noflush"})),
                MachineConfig(tlb="lazy", pti=False)):
        got = []
        for _ in range(3):
            bootcache.clear()
            r = run_matrix(cfg)
            got.append(([(c.region, c.access, c.space, c.got.text()) for c in r.cells],
                        [f.line() for f in r.findings], r.stats))
        assert got[0] == got[1] == got[2]


def test_a_restored_machine_does_not_share_state():
    """Two machines from the cache: writes to one's RAM, allocator and kernel
    dicts leave the other and the kept build alone."""
    cfg = MachineConfig()
    for _ in range(3):
        a = boot(cfg)
    b = boot(cfg)
    before = machine_state(b)
    a.mem.write(a.kernel.init_pgd.root, b"\xff" * 8)
    a.mem.frames.alloc(FrameKind.USER, 0, "x")
    a.mem.frames.owner[1] = "changed"
    a.kernel.cea["idt"] = 0
    a.kernel.stack_pages.clear()
    a.kernel.init_pgd.name = "changed"
    assert machine_state(b) == before
    c = boot(cfg)
    assert machine_state(c) == before
    for m in (a, b, c):
        m.mem.close()


def test_a_value_the_cache_does_not_know_is_refused():
    """A new attribute of a mutable type on the builder's objects is refused
    when recorded, not shared between machines."""
    cfg = MachineConfig(pcid=False, smap=False)
    bootcache.clear()
    first = KernelBuilder(cfg)
    first.build()                              # the first build of a configuration is not recorded
    second = KernelBuilder(cfg)
    second._build()
    second.mem.frames.extra = object()
    with pytest.raises(AssertionError, match="FrameAllocator.extra is a object"):
        bootcache.built(second)
    for b in (first, second):
        b.mem.close()


def test_the_register_file_is_what_it_was():
    """RegFile's ids, slots and write-back set, made from module-level tables:
    the arrays a per-instance construction made (the old one, here)."""
    import ctypes

    from unicorn import x86_const as X

    from emu.hw.microcode import regs as R
    from emu.hw.x86 import MSR_KERNEL_GS_BASE

    rf = R.RegFile(ctypes.c_void_p(0))
    ids = [getattr(X, f"UC_X86_REG_{n.upper()}") for n in R._GPRS + R._OTHERS]
    ids += [X.UC_X86_REG_MSR, X.UC_X86_REG_MXCSR] + [getattr(X, f"UC_X86_REG_XMM{i}") for i in range(16)]
    n = len(ids)
    base = ctypes.addressof(rf.buf)
    keep = [i for i in range(n) if R.STATE_NAMES[i] != "cr3"]
    assert rf.n.value == n and list(rf.ids) == ids and len(rf.buf) == 16 * n
    assert list(rf.ptrs) == [base + 16 * i for i in range(n)]
    assert rf.wn.value == len(keep) and list(rf.wids) == [ids[i] for i in keep]
    assert list(rf.wptrs) == [base + 16 * i for i in keep]
    assert rf.msr == R.IDX["kernel_gs_base"] and rf._rid.value == MSR_KERNEL_GS_BASE
    assert rf.slot == {name: 2 * i + (1 if i == rf.msr else 0) for i, name in enumerate(R.STATE_NAMES)}
    assert ctypes.addressof(rf.q) == base and len(rf.q) == 2 * n and len(rf.mv) == 2 * n
    other = R.RegFile(ctypes.c_void_p(0))
    assert ctypes.addressof(other.buf) != base and other.slot is not rf.slot


@pytest.mark.parametrize("name", ["default", "unmapped=reserved"])
def test_pages_found_through_pagemap_are_every_non_zero_page(name, monkeypatch):
    """The recording reads only the frames the host backed (/proc/self/pagemap):
    the same pages as reading every allocated frame, and as a scan of all RAM."""
    kb = KernelBuilder(MachineConfig(**CONFIGS[name]))
    kb._build()
    got = bootcache._Built(kb).pages
    buf, zero = kb.mem.buf, bytes(4096)
    every = [pa for pa in range(0, kb.mem.size, 4096) if buf[pa:pa + 4096] != zero]
    assert [pa for start, data in got for pa in range(start, start + len(data), 4096)] == every
    monkeypatch.setattr(bootcache, "_touched", lambda mem, lo, hi: range(lo, hi))
    assert bootcache._Built(kb).pages == got
    kb.mem.close()


def test_runs_of_marks():
    for marks, want in ((b"", []), (b"\x00", []), (b"\x01", [(5, 6)]), (b"\x01\x01\x00\x01", [(5, 7), (8, 9)]),
                        (b"\x00\x01\x01\x01", [(6, 9)])):
        assert byte_runs(marks, 5) == want


def test_a_large_guest_is_not_kept(monkeypatch):
    monkeypatch.setattr(bootcache, "MAX_RAM_KEPT", 128 << 20)
    cfg = MachineConfig(ram=256 << 20, pcid=False, smep=False)
    bootcache.clear()
    for _ in range(3):
        kb = KernelBuilder(cfg)
        kb.build()
        kb.mem.close()
    assert not bootcache._kept
