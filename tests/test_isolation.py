"""PTI, ASI and secret memory, as Linux does them.

Sources of the expectations: arch/x86/entry/calling.h (CR3 bits),
arch/x86/mm/tlb.c (ASIDs, pending user flush), mm/secretmem.c,
arch/x86/mm/pat/set_memory.c (splits, counters), pgtable-invert.h (L1TF),
and the 2025 ASI RFCv2 (PCID bits, exit-and-retry, interrupt nesting).
"""

import struct

import pytest

from emu.linux import abi
from emu.linux.machine import Machine, MachineConfig
from emu.tools.matrix import run_matrix
from emu.hw.paging import ControlState, translate
from emu.hw.phys import PAGE_SIZE, SIZE_2M, FrameKind

from .programs import EXIT, MMAP_ANON_PAGE

NOFLUSH = 1 << 63


@pytest.fixture(scope="module")
def matrix():
    return run_matrix()


def cell(result, region, space, access):
    return next(c for c in result.cells if (c.region, c.space, c.access) == (region, space, access))


# The rows of the issue, written out by hand: (region, space, access, outcome text)
ISSUE_ROWS = [
    ("direct_map", "A.user", "r", "#PF 0x4"),
    ("kernel_text", "A.user", "r", "#PF 0x4"),
    ("entry_text", "A.user", "r", "#PF 0x5"),
    ("cpu_entry_area", "A.user", "r", "#PF 0x5"),
    ("direct_map", "A.kernel", "r", "ok"),
    ("kernel_text", "A.kernel", "r", "ok"),
    ("kernel_data", "A.kernel", "r", "ok"),
    ("secret_user", "A.user", "r", "ok"),
    ("secret_user", "A.user", "w", "ok"),
    ("secret_user", "A.user", "x", "#PF 0x15"),
    ("secret_direct_map", "A.kernel", "r", "#PF 0x0"),
    ("secret_direct_map", "A.kernel", "w", "#PF 0x2"),
    ("secret_direct_map", "A.asi", "r", "asi-exit→#PF 0x0"),
    ("kernel_text", "A.asi", "r", "ok"),
    ("kernel_data", "A.asi", "r", "ok"),
    ("cpu_entry_area", "A.asi", "r", "ok"),
    ("direct_map_sensitive", "A.asi", "r", "asi-exit→ok"),
    ("secret_user", "B.user", "r", "#PF 0x4"),
    ("user_text", "A.user", "w", "#PF 0x7"),
    ("secret_direct_map_released", "A.kernel", "r", "ok"),
    # /dev/xpfo's page: the owner's mapping works (noexec), another process
    # has none, and the fallocate batch took it out of the direct map
    ("xpfo_user", "A.user", "r", "ok"),
    ("xpfo_user", "A.user", "w", "ok"),
    ("xpfo_user", "A.user", "x", "#PF 0x15"),
    ("xpfo_user", "B.user", "r", "#PF 0x4"),
    ("xpfo_user", "B.user", "w", "#PF 0x6"),
    ("xpfo_direct_map", "A.kernel", "r", "#PF 0x0"),
    ("xpfo_direct_map", "A.kernel", "w", "#PF 0x2"),
    ("xpfo_direct_map", "A.asi", "r", "asi-exit→#PF 0x0"),
    ("xpfo_direct_map", "B.user", "r", "#PF 0x4"),
]


@pytest.mark.parametrize("region,space,access,want", ISSUE_ROWS,
                         ids=[f"{r[1]}-{r[2]}-{r[0]}" for r in ISSUE_ROWS])
def test_issue_rows(matrix, region, space, access, want):
    assert cell(matrix, region, space, access).got.text() == want


def test_split_counter_stays_after_release(matrix):
    before, after = matrix.stats_before_release, matrix.stats
    assert (before["secret_pages"], after["secret_pages"]) == (1, 0)
    assert before["direct_map_level2_splits"] == after["direct_map_level2_splits"] == 1


WITH_ASI = ["A.user", "A.kernel", "A.asi", "B.user"]


@pytest.mark.parametrize("cfg,columns", [
    (MachineConfig(), WITH_ASI),
    (MachineConfig(pti=False), WITH_ASI),
    (MachineConfig(asi=False), ["A.user", "A.kernel", "B.user"]),
    (MachineConfig(pti=False, asi=False), ["A.user", "A.kernel", "B.user"]),
    (MachineConfig(pcid=False), WITH_ASI),
    (MachineConfig(la57=True), WITH_ASI),
    # the designs of docs/asi.md
    (MachineConfig(asi="rfc2019"), WITH_ASI),
    (MachineConfig(asi="rfc2019", pti=False), WITH_ASI),
    (MachineConfig(asi="rfc2019", pcid=False), WITH_ASI),
    (MachineConfig(asi="rfc2019", la57=True), WITH_ASI),
    (MachineConfig(asi="rfc2025"), WITH_ASI),
    (MachineConfig(asi="rfc2025", pcid=False), WITH_ASI),
    (MachineConfig(asi="rfc2025", invpcid=False), WITH_ASI),
    (MachineConfig(asi="rfc2025", la57=True), WITH_ASI),
], ids=lambda v: v.describe().replace(" ", ",") if isinstance(v, MachineConfig) else "")
def test_every_cell_matches_linux(cfg, columns):
    r = run_matrix(cfg)
    assert r.spaces == columns
    # 18 regions x r/w/x in each of A's spaces, then the released secret's row;
    # B.user has no released row (B never owned the secret page)
    assert len(r.cells) == 54 * (len(columns) - 1) + 51
    assert [(c.region, c.space, c.access, c.got.text(), c.want.text()) for c in r.mismatches] == []


def test_meltdown_layout_without_pti():
    r = run_matrix(MachineConfig(pti=False))
    for region in ("direct_map", "kernel_text", "kernel_data"):
        assert cell(r, region, "A.user", "r").got.text() == "#PF 0x5"     # present, supervisor
        assert cell(r, region, "B.user", "w").got.text() == "#PF 0x7"


# --- PTI CR3 switching ---------------------------------------------------------------
def cr3_writes(m, since=0):
    return [(e.symbol.split("+")[0], e.new) for e in m.events_of("cr3_write") if e.seq > since]


GETPID = ("_start:\n    mov eax, SYS_getpid\n    syscall\nsecond:\n    mov eax, SYS_getpid\n    syscall\n"
          "after:\n" + EXIT)


@pytest.mark.parametrize("cfg,expect", [
    # PTI + PCID + ASI: entry (NOFLUSH, kernel PCID 1), ASI in and out, exit
    # (user PGD bit 12, user PCID bit 11, NOFLUSH: no flush pending)
    (MachineConfig(), lambda pgd, asi: [
        ("entry_SYSCALL_64", pgd | 0x1 | NOFLUSH),
        ("__asi_enter", asi | 0x401),                 # kern_pcid | (class 1 + 1) << 9
        ("asi_exit", pgd | 0x1),
        ("syscall_return_via_sysret", pgd | 0x1000 | 0x800 | 0x1 | NOFLUSH)]),
    (MachineConfig(asi=False), lambda pgd, asi: [
        ("entry_SYSCALL_64", pgd | 0x1 | NOFLUSH),
        ("syscall_return_via_sysret", pgd | 0x1000 | 0x800 | 0x1 | NOFLUSH)]),
    # without PCID only bit 12 changes, and every write flushes
    (MachineConfig(asi=False, pcid=False), lambda pgd, asi: [
        ("entry_SYSCALL_64", pgd),
        ("syscall_return_via_sysret", pgd | 0x1000)]),
    (MachineConfig(pti=False, asi=False), lambda pgd, asi: []),
    # the 2019 RFC enters its restricted space only for its class (SYS_probe's
    # sessions here): a syscall is PTI's two writes
    (MachineConfig(asi="rfc2019"), lambda pgd, asi: [
        ("entry_SYSCALL_64", pgd | 0x1 | NOFLUSH),
        ("syscall_return_via_sysret", pgd | 0x1000 | 0x800 | 0x1 | NOFLUSH)]),
    # the 2025 RFC: the syscall runs on the restricted table the user ran on
    (MachineConfig(asi="rfc2025"), lambda pgd, asi: []),
])
def test_cr3_on_syscall_entry_and_exit(cfg, expect):
    """The CR3 writes of one getpid round trip (the second one: the first
    return to user already cleared any pending flush)."""
    m = Machine(cfg, programs=[("A", GETPID)])
    m.boot()
    syms = m.process("A").image.symbols
    marks = []
    for label in ("second", "after"):
        m.cpu.add_code_hook(syms[label], lambda a: marks.append(m._seq))
    m.run()
    p = m.process("A")
    assert len(marks) == 2
    got = [w for w in m.events_of("cr3_write") if marks[0] < w.seq <= marks[1]]
    assert [(e.symbol.split("+")[0], e.new) for e in got] == expect(p.pgd, p.asi_pgd or 0)


def test_cr3_register_never_holds_noflush():
    m = Machine(MachineConfig(), programs=[("A", GETPID)])
    seen = []
    m.boot()
    m.cpu.add_code_hook(m.process("A").image.symbols["second"], lambda a: seen.append(m.cpu.reg("cr3")))
    m.run()
    user_writes = [e.new for e in m.events_of("cr3_write") if e.new_space == "A.user"]
    assert all(w & NOFLUSH for w in user_writes[1:])
    assert seen[0] == user_writes[1] & ~NOFLUSH


def test_pending_user_flush_after_a_new_asid():
    """switch_mm to an mm with no ASID slot flushes (new ASID): the user PCID
    flush is deferred (user_pcid_flush_mask) and the next SWITCH_TO_USER_CR3
    writes without NOFLUSH, clearing the bit; later returns use NOFLUSH."""
    a = "_start:\n    mov eax, SYS_sched_yield\n    syscall\n" + EXIT
    m = Machine(MachineConfig(asi=False), programs=[("A", a), ("B", GETPID)])
    m.run()
    b = m.process("B")
    to_b_user = [e.new for e in m.events_of("cr3_write") if e.new_space == "B.user"]
    assert to_b_user[0] == b.pgd | 0x1000 | 0x800 | 0x2                 # ASID 1: PCID 2, flush
    assert to_b_user[1] == b.pgd | 0x1000 | 0x800 | 0x2 | NOFLUSH
    switch = [e.new for e in m.events_of("cr3_write") if e.symbol.startswith("switch_mm_irqs_off")]
    assert switch[0] == b.pgd | 0x2                                      # new ASID: no NOFLUSH
    # each exit flushed its mm (free_pgtables -> flush_tlb_mm_local): the user
    # PCIDs of ASIDs 0 and 1 (kernel PCIDs 1 and 2) wait for their lazy flush
    assert m.kernel.read_percpu("tlbstate_user_pcid_flush_mask") == 0b110


def test_without_invpcid_a_user_flush_is_deferred():
    src = """
_start:
""" + MMAP_ANON_PAGE + """    mov byte ptr [rax], 1
    mov rdi, rax
    mov eax, SYS_munmap
    mov esi, 4096
    syscall
""" + EXIT
    m = Machine(MachineConfig(asi=False, invpcid=False), programs=[("A", src)])
    m.run()
    a = m.process("A")
    user = [e.new for e in m.events_of("cr3_write") if e.new_space == "A.user"]
    # returns to user: ret_from_fork, mmap, the demand fault (a new PTE needs
    # no flush), munmap: the pending flush of the user PCID drops NOFLUSH
    assert [bool(w & NOFLUSH) for w in user] == [True, True, True, False]
    assert user[3] == a.pgd | 0x1801
    assert m.events_of("invpcid") == []


def test_kernel_pgd_user_half_has_nx_and_user_pgd_maps_only_shared_ranges():
    m = Machine(MachineConfig(), programs=[("A", "_start:\n" + EXIT)])
    m.boot()
    p = m.process("A")
    for i in range(256):
        k, u = m.mem.read_u64(p.pgd + 8 * i), m.mem.read_u64(p.user_pgd + 8 * i)
        if u & 1:
            assert k == u | NOFLUSH                 # NX in the kernel copy (bit 63)
    kernel_half = {i for i in range(256, 512) if m.mem.read_u64(p.user_pgd + 8 * i) & 1}
    assert kernel_half == {508, 510, 511}           # cpu_entry_area, espfix, entry text + TSS page


# --- pti=auto vs pti=on: kernel text in the user tables without PCID ----------------------
IMAGE_SECTIONS = (".text", ".entry.text", ".rodata", ".data", ".data..percpu")
# (pti, pcid) -> the image's 2 MiB PMDs the user PGD maps (arch/x86/mm/pti.c:
# pti_clone_entry_text always; pti_clone_kernel_text, [_text,
# __end_rodata_aligned), when pti_kernel_image_global_ok(): pti=auto and no
# PCID).  pti_set_kernel_image_nonglobal() leaves the rest of the image
# without Global; pti_clone_pgtable() sets it on every PMD it clones.
PTI_CLONES = [
    ("on", True, {".entry.text"}),
    ("on", False, {".entry.text"}),
    ("auto", True, {".entry.text"}),
    ("auto", False, {".text", ".entry.text", ".rodata"}),
]


@pytest.mark.parametrize("la57", [False, True], ids=["4-level", "5-level"])
@pytest.mark.parametrize("pti,pcid,cloned", PTI_CLONES, ids=[f"pti={p}-pcid={'on' if c else 'off'}"
                                                             for p, c, _ in PTI_CLONES])
def test_pti_clones_kernel_text_exactly_when_linux_does(pti, pcid, cloned, la57):
    from emu.hw.paging import G, PageTable

    m = Machine(MachineConfig(pti=pti, pcid=pcid, la57=la57), programs=[("A", "_start:\n" + EXIT)])
    m.boot()
    p = m.process("A")
    kernel = PageTable(m.mem, p.pgd, m.config.levels)
    user = PageTable(m.mem, p.user_pgd, m.config.levels)
    in_user, global_ = set(), set()
    for sec in IMAGE_SECTIONS:
        # the PMD's last page: the first page of .data..percpu is the TSS,
        # which the user PGD maps alone (below)
        va = m.layout.kernel_text + abi.KSECTIONS[sec] + SIZE_2M - PAGE_SIZE
        k_shift, k_epa, k_e = kernel.lookup(va)
        u = user.lookup(va)
        if u is not None:
            in_user.add(sec)
            # one PMD entry, the same in both tables (they share what is below)
            assert (u[0], u[2]) == (k_shift, k_e) == (21, k_e) and u[1] != k_epa
        if k_e & G:
            global_.add(sec)
    assert in_user == cloned
    assert global_ == cloned
    # pti_clone_user_shared: the per-CPU TSS page, a 4 KiB PTE of PAGE_KERNEL (no Global)
    tss = user.lookup(m.kernel.percpu_va("cpu_tss_rw"))
    assert tss[0] == 12 and not tss[2] & G


def test_the_no_pcid_asm_test_runs_pti_on_and_auto():
    """asm/pti/no_pcid.S states both modes, each a configuration of its own."""
    import pathlib

    from emu.linux.config import PtiMode
    from emu.tools.asmtest import parse_file

    root = pathlib.Path(__file__).resolve().parent.parent
    variants = parse_file(str(root / "asm/pti/no_pcid.S")).variants()
    assert [(v.id, v.config.pti, v.config.pcid) for v in variants] == \
        [("pti=on", PtiMode.ON, False), ("pti=auto", PtiMode.AUTO, False)]


# --- ASI --------------------------------------------------------------------------------
def test_asi_map_and_unmap_follow_page_tables():
    """A new page table is non-sensitive: it appears in ASI's direct map
    (asi_map); freed at exit it leaves it again (asi_unmap_page, then
    flush_tlb_kernel_range: INVPCID on the user PCID, other ASIDs lazily)."""
    src = """
_start:
""" + MMAP_ANON_PAGE + """    mov byte ptr [rax], 1
""" + EXIT
    m = Machine(MachineConfig(), programs=[("A", src)])
    g = m.kernel.asi_global
    ctl = ControlState(smap=False)
    dm = m.layout.page_offset

    def in_asi(pa):
        return translate(m.mem, g.root, dm + pa, 0, 0, ctl).fault is None
    alive = {}
    m.exit_hooks.append(lambda mm, p: alive.update(
        {e.pa: in_asi(e.pa) for e in m.events_of("alloc")}))
    m.run()
    kinds = [(e.frame_kind, e.sensitive) for e in m.events_of("alloc")]
    # the anonymous page, then PUD, PMD and PTE tables for 0x7f0000000000
    assert kinds == [("user", 1), ("pgtable", 0), ("pgtable", 0), ("pgtable", 0)]
    tables = [e.pa for e in m.events_of("alloc") if e.frame_kind == "pgtable"]
    user = next(e.pa for e in m.events_of("alloc") if e.frame_kind == "user")
    assert alive == {user: False, **{t: True for t in tables}}
    assert {e.pa for e in m.events_of("free")} >= set(tables) | {user}
    assert [in_asi(t) for t in tables] == [False, False, False]
    inv = {e.addr: (e.type, e.pcid) for e in m.events_of("invpcid")}
    assert [inv.get(dm + t) for t in tables] == [(0, 0x801)] * 3


def test_sensitive_and_non_sensitive_in_the_restricted_direct_map():
    m = Machine(MachineConfig(), programs=[("A", "_start:\n" + EXIT)])
    m.boot()
    p = m.process("A")
    dm = m.layout.page_offset
    ctl = ControlState(smap=False)
    user_data = translate(m.mem, p.pgd, abi.USER_DATA, 0, 0, ctl).pa
    assert m.mem.frames.kind_of(user_data) == FrameKind.USER
    assert translate(m.mem, p.asi_pgd, dm + user_data, 0, 0, ctl).error_code == 0x0       # sensitive
    assert translate(m.mem, p.asi_pgd, dm + p.pgd, 0, 0, ctl).fault is None              # a page table
    assert translate(m.mem, p.asi_pgd, dm + abi.KERNEL_PHYS, 0, 0, ctl).fault is None    # kernel image


def probe_program(space=1):
    return f"""
_start:
    mov eax, SYS_probe
    mov rdi, KERNEL_DATA
    xor esi, esi
    mov edx, {space}
    syscall
{EXIT}"""


@pytest.mark.parametrize("touch", [False, True])
def test_interrupt_while_restricted(touch):
    """In the critical section (after asi_enter, before asi_relax) an
    interrupt runs on the restricted tables.  If the handler touches
    sensitive memory, ASI exits (nesting depth 2), and the outermost
    asi_intr_exit re-enters the restricted tables (depth 0)."""
    m = Machine(MachineConfig(), programs=[("A", probe_program())])
    m.boot()
    k = m.kernel
    p = m.process("A")
    if touch:
        sensitive = m.layout.page_offset + translate(m.mem, p.pgd, abi.USER_DATA, 0, 0,
                                                     ControlState(smap=False)).pa
        k.write_percpu("irq_touch_addr", sensitive)
    h = m.cpu.add_code_hook(k.sym("probe_asi_critical"), lambda a: m.stop("critical"))
    assert m.step(1_000_000) == "critical"
    m.cpu.del_code_hook(h)
    assert m.space_of(m.cpu.reg("cr3")) == "A.asi"
    assert k.read_q(k.current_task() + abi.TASK["asi_target"]) == p.mm     # tense
    start = m._seq
    assert m.inject_interrupt(abi.TIMER_VECTOR)
    back = []
    m.cpu.add_code_hook(k.sym("asi_relax"), lambda a: back.append(m.space_of(m.cpu.reg("cr3"))))
    m.run()
    assert m.space_of(k.read_percpu("last_irq_cr3")) == "A.asi"      # stayed restricted
    assert back[0] == "A.asi"                                         # still restricted afterwards
    after = [(e.kind, e.get("symbol", "").split("+")[0]) for e in m.events
             if e.seq > start and e.kind != "frame_write"]
    if touch:
        # the handler's #PF exits ASI; the outermost asi_intr_exit re-enters
        # before iret (the next asi_exit is the syscall's own, after relax)
        assert after[:6] == [("interrupt", "probe_asi_critical"), ("exception", "timer_touch"),
                             ("asi_exit", "timer_touch"), ("cr3_write", "asi_exit"),
                             ("cr3_write", "__asi_enter"), ("cr3_write", "asi_exit")]
    else:
        # no CR3 write at all until the syscall leaves ASI on its way out
        assert after[:3] == [("interrupt", "probe_asi_critical"), ("cr3_write", "asi_exit"),
                             ("syscall_return", "")]


def test_probe_reports_asi_exit_in_r8():
    src = """
_start:
    mov eax, SYS_direct_map_alias
    mov rdi, USER_DATA
    syscall
    mov rbx, rax
    mov eax, SYS_probe
    mov rdi, rbx
    xor esi, esi
    mov edx, 1
    syscall
    mov qword ptr [rip + out], rax
    mov qword ptr [rip + out + 8], r8
    mov eax, SYS_probe
    mov rdi, KERNEL_DATA
    xor esi, esi
    mov edx, 1
    syscall
    mov qword ptr [rip + out + 16], rax
    mov qword ptr [rip + out + 24], r8
""" + EXIT + ".data\nout: .zero 32\n"
    m = Machine(MachineConfig(), programs=[("A", src)])
    got = {}
    m.exit_hooks.append(lambda mm, p: got.update(v=struct.unpack("<4Q", mm.read_virt(
        p.image.symbols["out"], 32, "A.kernel"))))
    m.run()
    assert got["v"] == (0, 1, 0, 0)          # sensitive: exit then ok; kernel data: no exit


# --- secret memory ------------------------------------------------------------------------
SECRET_SETUP = """
    mov eax, SYS_memfd_secret
    mov edi, {flags}
    syscall
    mov r12, rax
    mov qword ptr [rip + out], rax
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 4096
    syscall
    mov qword ptr [rip + out + 8], rax
"""


def run_secret(body, flags=0):
    src = "_start:\n" + SECRET_SETUP.format(flags=flags) + body + EXIT + ".data\nout: .zero 64\n"
    m = Machine(MachineConfig(), programs=[("A", src)])
    got = {}
    m.exit_hooks.append(lambda mm, p: got.update(v=[x - (1 << 64) if x >> 63 else x for x in struct.unpack(
        "<8Q", mm.read_virt(p.image.symbols["out"], 64, "A.kernel"))]))
    m.run()
    return m, got["v"]


MMAP = """
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 4096
    mov edx, {prot}
    mov r10d, {flags}
    mov r8, r12
    xor r9d, r9d
    syscall
    mov qword ptr [rip + out + 16], rax
"""


@pytest.mark.parametrize("flags,body,expect", [
    (1, "", [-22]),                                                                # only O_CLOEXEC
    (abi.O_CLOEXEC, "", [3, 0]),
    (0, MMAP.format(prot=3, flags=abi.MAP["MAP_PRIVATE"]), [3, 0, -22]),          # shared only
    (0, MMAP.format(prot=7, flags=abi.MAP["MAP_SHARED"]), [3, 0, -1]),            # noexec mount: EPERM
    (0, MMAP.format(prot=5, flags=abi.MAP["MAP_PRIVATE"]), [3, 0, -1]),           # EPERM before EINVAL
    (0, MMAP.format(prot=3, flags=abi.MAP["MAP_SHARED"]), [3, 0, abi.MMAP_BASE]),
    (0, """
    mov eax, SYS_ftruncate
    mov rdi, r12
    mov esi, 8192
    syscall
    mov qword ptr [rip + out + 16], rax
""", [3, 0, -22]),                                                                 # size set once
    (0, """
    mov eax, SYS_read
    mov rdi, r12
    lea rsi, [rip + out + 32]
    mov edx, 8
    syscall
    mov qword ptr [rip + out + 16], rax
    mov eax, SYS_write
    mov rdi, r12
    lea rsi, [rip + out + 32]
    mov edx, 8
    syscall
    mov qword ptr [rip + out + 24], rax
""", [3, 0, -22, -22]),                                                            # no read/write
])
def test_memfd_secret_rules(flags, body, expect):
    _, got = run_secret(body, flags)
    assert got[:len(expect)] == expect


def test_secret_beyond_the_file_size_is_sigbus():
    body = """
    mov eax, SYS_mmap
    xor edi, edi
    mov esi, 8192
    mov edx, 3
    mov r10d, MAP_SHARED
    mov r8, r12
    xor r9d, r9d
    syscall
    mov byte ptr [rax + 4096], 1
"""
    m, _ = run_secret(body)
    assert m.exits[1]["signal"] == "SIGBUS"


SECRET_TOUCH = MMAP.format(prot=3, flags=abi.MAP["MAP_SHARED"]) + """
    mov rbx, qword ptr [rip + out + 16]
    mov byte ptr [rbx], 0x5a
    mov eax, SYS_direct_map_alias
    mov rdi, rbx
    syscall
    mov qword ptr [rip + out + 24], rax
"""


def test_secret_fault_path_splits_and_inverts():
    m = Machine(MachineConfig(), programs=[("A", "_start:\n" + SECRET_SETUP.format(flags=0) + SECRET_TOUCH
                                            + "    mov eax, SYS_sched_yield\n    syscall\n" + EXIT
                                            + ".data\nout: .zero 64\n")])
    before = m.stats()
    dm = {}

    def at_yield(e):
        if e.kind == "syscall" and e.nr == abi.SYSCALLS["sched_yield"]:
            a = m.process("A")
            dm["va"] = m.read_u64(a.image.symbols["out"] + 24, "A.kernel")
            dm["stats"] = m.stats()
            hit = m.kernel.init_pgd.lookup(dm["va"])
            dm["pte"] = (hit[0], hit[2])
    m.on_event(at_yield)
    m.run()
    pa = dm["va"] - m.layout.page_offset
    shift, pte = dm["pte"]
    assert shift == 12
    # pfn_pte(pfn, prot) with protnone_mask: the PFN stored inverted, P/RW/G clear
    assert pte == ((~pa) & 0x000FFFFFFFFFF000) | 0x8000000000000060
    mid, after = dm["stats"], m.stats()
    assert before["direct_map_level2_splits"] == 0 and mid["direct_map_level2_splits"] == 1
    assert (mid["DirectMap2M"], mid["DirectMap4k"]) == (before["DirectMap2M"] - 2048, 2048)
    assert after["direct_map_level2_splits"] == 1 and after["secret_pages"] == 0
    # released: present and writable again, PFN as is
    hit = m.kernel.init_pgd.lookup(dm["va"])
    assert hit[2] == pa | 0x8000000000000063


def test_one_gib_direct_map_splits_twice():
    """A 1 GiB direct-map page: the first secret page splits 1G->2M (level 3)
    then 2M->4K (level 2)."""
    m = Machine(MachineConfig(ram=4 << 30), programs=[("A", "_start:\n" + SECRET_SETUP.format(flags=0)
                                                       + SECRET_TOUCH + EXIT + ".data\nout: .zero 64\n")])
    # push secretmem's 2 MiB block above the first GiB (split at boot for the image)
    frames = m.mem.frames
    held = []
    while True:
        pa = frames.alloc(FrameKind.KERNEL_DATA, 9, "test")
        if pa >= 1 << 30:
            frames.free(pa)
            break
        held.append(pa)
    before = m.stats()
    m.run()
    after = m.stats()
    assert (after["direct_map_level3_splits"], after["direct_map_level2_splits"]) == (1, 1)
    assert after["DirectMap1G"] == before["DirectMap1G"] - 1048576
    assert after["DirectMap2M"] == before["DirectMap2M"] + 1048576 - 2048
    assert after["DirectMap4k"] == before["DirectMap4k"] + 2048


def test_another_process_cannot_reach_the_secret(matrix):
    for acc, ec in (("r", 0x4), ("w", 0x6), ("x", 0x14)):
        assert cell(matrix, "secret_user", "B.user", acc).got.text() == f"#PF {ec:#x}"
        assert cell(matrix, "secret_direct_map", "B.user", acc).got.text() == f"#PF {ec:#x}"
