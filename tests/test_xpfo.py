"""/dev/xpfo's counters (docs/xpfo.md): pages removed from the direct map,
flushes paid, pages served from the cache, pages in the cache and pages given
back to the direct map; and the flush count of N pages, one for xpfo's batch
against N for secretmem's per-page path, under each unmapped= strategy
(docs/frag.md: xpfo takes its pages from the unmapped allocator).  The asm tests in asm/xpfo/ check
the ABI; these read the state the stub keeps where the program stops (a spin
the budget ends)."""

import pytest

from emu.linux.config import MachineConfig
from emu.linux.machine import BudgetExhausted, Machine

PROLOGUE = """
.include "kvm.inc"
.include "xpfo.inc"
.include "isoemu.inc"
.text
_start:
"""
SPIN = """
.Lspin:
    jmp .Lspin
"""
CLOSE = "    mov rdi, r12\n    mov eax, SYS_close\n    syscall\n"
KEYS = ("xpfo_pages", "xpfo_pages_removed", "xpfo_flushes", "xpfo_cache_hits", "xpfo_cached_pages",
        "xpfo_pages_restored")


def fd(pages: int) -> str:
    return f"    xpfo_fd r12, {pages * 0x1000}\n"


def run(body: str, cfg: MachineConfig | None = None) -> dict[str, int]:
    m = Machine(cfg or MachineConfig(), programs=[("A", PROLOGUE + body + SPIN)])
    with pytest.raises(BudgetExhausted):
        m.run(3_000_000)
    assert m.findings == []
    return m.stats()


CASES = [
    # (body, pages, removed, flushes, cache hits, cached, restored)
    ("", 0, 0, 0, 0, 0, 0),
    (fd(1), 1, 1, 1, 0, 0, 0),
    (fd(8), 8, 8, 1, 0, 0, 0),
    (fd(33), 33, 33, 1, 0, 0, 0),                       # the last batch flushed page by page
    (fd(34), 34, 34, 1, 0, 0, 0),                       # flush_tlb_all: still one flush
    (fd(64), 64, 64, 1, 0, 0, 0),
    # two fallocates of one file: a batch each
    (fd(2) + "    falloc a, r12, 0, 0x2000, 0x2000\n", 4, 4, 2, 0, 0, 0),
    # a range already allocated costs nothing
    (fd(2) + "    falloc a, r12, 0, 0, 0x2000\n", 2, 2, 1, 0, 0, 0),
    # released: into the cache, still out of the direct map
    (fd(4) + CLOSE, 0, 4, 1, 0, 4, 0),
    # reused: every page from the cache, no flush
    (fd(4) + CLOSE + fd(4), 4, 4, 1, 4, 0, 0),
    # partly: two from the cache, two new pages and their one flush
    (fd(2) + CLOSE + fd(4), 4, 4, 2, 2, 0, 0),
    # the cache holds 64 pages; the rest go back to the direct map
    (fd(64) + "    mov rbx, r12\n" + fd(16) + CLOSE + "    mov r12, rbx\n" + CLOSE, 0, 80, 2, 0, 64, 16),
    # an error removes nothing
    ("    xpfo_try o\n    mov r12, rax\n    falloc a, r12, 0, 0x800, 0x1000\n", 0, 0, 0, 0, 0, 0),
]


STRATEGIES = ("page", "pmd-cache", "reserved", "unmapped-alloc")


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("body, pages, removed, flushes, hits, cached, restored", CASES)
def test_xpfo_counters(body, pages, removed, flushes, hits, cached, restored, strategy):
    """The table is unmapped=page's; the block strategies hand out pages
    already flushed with their block (or, reserved, never in the direct map
    since boot), so the batches owe no flush of their own: xpfo_flushes 0,
    every other counter the same ('restored': given back to the allocator)."""
    s = run(body, MachineConfig(unmapped=strategy))
    if strategy != "page":
        flushes = 0
    assert tuple(s[k] for k in KEYS) == (pages, removed, flushes, hits, cached, restored)


SECRET = """
    secret_map r13, {size}, {size}, r12
    xor ecx, ecx
.Ltouch:
    mov byte ptr [r13 + rcx], 1
    add ecx, 0x1000
    cmp ecx, {size}
    jb .Ltouch
"""


#: per strategy, for N pages of a fresh machine: (kernel TLB flushes xpfo's batch pays, of them
#: xpfo's own batch flushes, flushes secretmem's N first-touch faults pay) -- N stands for N
FLUSHES = {
    "page": (1, 1, "N"),            # the batch's one flush against one per page
    "pmd-cache": (1, 0, 1),         # one 2M block out with one flush, for either
    "reserved": (0, 0, 0),          # the pool left the direct map at boot
    "unmapped-alloc": (1, 0, 1),    # the shared cache's first block, one flush
}


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("pages", [1, 8, 33, 34, 64])
def test_flushes_per_batch_against_secretmem(pages, strategy):
    """N pages out of the direct map: under unmapped=page xpfo pays 1 kernel
    TLB flush (one IPI round on SMP), secretmem's first-touch faults N, each
    split of a 2M direct-map page one more in both; the block strategies pay
    a block's flush (or none) for either."""
    cfg = MachineConfig(unmapped=strategy)
    base = run("", cfg)
    x = run(fd(pages), cfg)
    sec = run(SECRET.format(size=pages * 0x1000), cfg)

    def paid(s):
        splits = s["direct_map_level2_splits"] - base["direct_map_level2_splits"]
        return s["kernel_tlb_flushes"] - base["kernel_tlb_flushes"] - splits

    xpfo, own, secret = FLUSHES[strategy]
    assert (paid(x), x["xpfo_flushes"]) == (xpfo, own)
    assert (paid(sec), sec["secret_pages"]) == (pages if secret == "N" else secret, pages)


@pytest.mark.parametrize("strategy, unmapped_flushes", [("page", 1), ("pmd-cache", 0), ("unmapped-alloc", 0)])
def test_noflush_injection_pays_nothing(strategy, unmapped_flushes):
    """xpfo_noflush leaves out the batch's flush (page) or its block's (the
    block strategies): no xpfo flush, and inside the allocator only the 2M
    split's flush under page (asm/tlb/xpfo_noflush.S catches the stale alias)."""
    s = run(fd(4), MachineConfig(asi="off", unmapped=strategy, inject=("xpfo_noflush",)))
    assert (s["xpfo_pages_removed"], s["xpfo_flushes"]) == (4, 0)
    assert s["unmapped_tlb_full_flushes"] + s["unmapped_tlb_cr4_flushes"] == unmapped_flushes


def test_bench_secret_group():
    """``isoemu bench --only secret``: flushes per page of xpfo's batch
    against secretmem's (exact counts), and three lifecycle rates, each with
    the anonymous-page lifecycle of the same run as its baseline."""
    from emu.dev.bench import run_bench

    figs = run_bench(quick=True, only=["secret"])["figures"]
    assert [f["name"].split(" ")[0] for f in figs] == [
        "xpfo_flushes_per_page", "secret_page_lifecycles_per_s", "guest_memfd_page_lifecycles_per_s",
        "xpfo_page_lifecycles_per_s"]
    assert (figs[0]["value"], figs[0]["baseline"], figs[0]["met"]) == (1 / 64, 1.0, True)
    assert all(f["value"] > 0 and f["baseline"] > 0 and "ratio" in f for f in figs)
    assert len({f["baseline"] for f in figs[1:]}) == 1


VM = """
    kvm_vm r12
    xpfo_fd r13, 0x2000
    gmem_map r14, r13, 0x2000
    guest_copy r14, vm_guest, vm_guest_end
    kvm_memslot .Lslot, r12, 0, 0, 0, 0x2000, r14, 0, 0
    kvm_vcpu rbp, r15, r12
    sub rsp, KVM_REGS_SIZE
    mov rdi, rsp
    xor eax, eax
    mov ecx, KVM_REGS_SIZE / 8
    rep stosq
    movabs rax, KVM_GPA_SHARED
    mov qword ptr [rsp + KVM_REGS_rip], rax
    mov qword ptr [rsp + KVM_REGS_rflags], 2
    mov r8, rsp
    vcpu_regs .Lset, rbp, KVM_SET_REGS, r8
    mov ebx, {runs}
.Lrun:
    kvm_run .Lkr, rbp
    dec ebx
    jnz .Lrun
.Lspin:
    jmp .Lspin
vm_guest:
    movabs rdi, KVM_GPA_SHARED + 0x1000
vm_guest_loop:
    inc byte ptr [rdi]
    out 0x20, al
    jmp vm_guest_loop
vm_guest_end:
"""


@pytest.mark.parametrize("runs", [1, 4])
def test_vm_on_xpfo_pays_no_flush_per_run(runs):
    """A memslot backed by xpfo (asm/kvm/xpfo.S): every KVM_RUN maps the
    file's pages into the guest again (the run starts with the map empty) and
    removes nothing from the direct map, so the batch's one flush is all the
    VM ever pays: the same kernel TLB flushes after 1 run as after 4, against
    a same-run baseline of the machine alone.  The guest's counter shows each
    run happened."""
    base = run("")
    m = Machine(MachineConfig(asi="off"), programs=[("A", PROLOGUE + VM.format(runs=runs))])
    with pytest.raises(BudgetExhausted):
        m.run(3_000_000)
    assert m.findings == []
    s = m.stats()
    splits = s["direct_map_level2_splits"] - base["direct_map_level2_splits"]
    assert (s["xpfo_pages"], s["xpfo_pages_removed"], s["xpfo_flushes"]) == (2, 2, 1)
    assert s["kernel_tlb_flushes"] - base["kernel_tlb_flushes"] - splits == 1
    assert m.read_virt(m.cpu.reg("r14") + 0x1000, 1, "A.user") == bytes([runs])
